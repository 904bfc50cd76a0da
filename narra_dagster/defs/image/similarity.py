"""Near-duplicate verdicts: how close two images' features and perceptual hashes must be."""

from typing import Any

from narra_dagster.defs.image import imaging
from narra_dagster.resources.image_index import Neighbour

# Duplicate thresholds, measured with scripts/measure_duplicates.py on the 19 scikit-image
# pictures that load offline, each against a copy cropped 5% per side, halved and re-saved as
# JPEG quality 60: cosine distance of the features at most 0.37 (mean 0.17), pHash Hamming
# distance at most 24 bits; between different pictures the cosine distance is at least 0.50 and
# pHash at least 20 bits. So the features decide (0.40 sits between the two groups) and a pHash
# within 10 bits, far below any pair of different pictures, also counts. A copy re-saved as JPEG
# quality 95 measured at most 0.012 and 2 bits: "exact" is within 0.02 and 2 bits.
NEAR_DUPLICATE_COSINE = 0.40
NEAR_DUPLICATE_PHASH = 10
EXACT_DUPLICATE_COSINE = 0.02
EXACT_DUPLICATE_PHASH = 2


def duplicate_kind(cosine_distance: float, phash_distance: int) -> str | None:
    """``"exact"``, ``"near"`` or None, by the measured thresholds above."""
    if cosine_distance <= EXACT_DUPLICATE_COSINE and phash_distance <= EXACT_DUPLICATE_PHASH:
        return "exact"
    if cosine_distance <= NEAR_DUPLICATE_COSINE or phash_distance <= NEAR_DUPLICATE_PHASH:
        return "near"
    return None


def compare(neighbours: list[Neighbour], phash: str, dhash: str) -> list[dict[str, Any]]:
    """Distances and verdict per neighbour: cosine distance of the features, pHash and dHash
    Hamming distances (bits of 64), ``duplicate`` = ``"exact"`` / ``"near"`` / None."""
    return [
        {"media_id": n.media_id, "source_name": n.source_name,
         "cosine_distance": round(n.cosine_distance, 4),
         "phash_distance": imaging.hamming(phash, n.phash),
         "dhash_distance": imaging.hamming(dhash, n.dhash),
         "duplicate": duplicate_kind(n.cosine_distance, imaging.hamming(phash, n.phash))}
        for n in neighbours
    ]


def without(similarity: dict[str, Any], media_id: str) -> dict[str, Any]:
    """An image's comparison (``similarity.json``) once the image ``media_id`` is deleted: that
    neighbour dropped, and the duplicate it named replaced by the closest remaining duplicate
    (or none)."""
    neighbours = [n for n in similarity.get("neighbours", []) if n.get("media_id") != media_id]
    out = {**similarity, "neighbours": neighbours}
    if similarity.get("duplicate_of") == media_id:
        duplicates = [n for n in neighbours if n.get("duplicate")]
        best = min(duplicates, key=lambda n: n["cosine_distance"]) if duplicates else None
        out["duplicate_of"] = best["media_id"] if best else None
        out["duplicate"] = best["duplicate"] if best else None
    return out
