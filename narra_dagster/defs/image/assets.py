"""The image chain: source -> metadata, thumbnails, labels, text -> embedding -> similarity ->
catalog, and index rows.

Each asset is partitioned by the ``images`` dynamic partitions (one partition per uploaded file,
keyed by a prefix of its SHA-256), reads the upload (or an upstream artifact) from the media
store, writes its own artifact atomically and describes it in its materialization metadata. Bad
input fails the first stage with a classified, non-retryable error; model and index steps retry
transient errors. Each stage is one stage function made an asset by ``@image_stage``.
"""

import base64
import functools
import logging
import time
from typing import Any

import dagster as dg
import numpy as np
from PIL import Image

from narra_dagster.core import pools
from narra_dagster.defs.image import imaging
from narra_dagster.defs.image.partitions import image_stage
from narra_dagster.defs.image.similarity import (
    EXACT_DUPLICATE_COSINE,
    EXACT_DUPLICATE_PHASH,
    NEAR_DUPLICATE_COSINE,
    NEAR_DUPLICATE_PHASH,
    compare,
    without,
)
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.image_index import ImageIndex, ImageRecord
from narra_dagster.resources.media_store import SOURCE, MediaStore
from narra_dagster.resources.ocr import OcrEngine
from narra_dagster.resources.recognizer import PACKAGED_LABELS, ImageClassifier, read_labels
from narra_dagster.resources.search_index import IndexRow, SearchIndex


VALIDATION = "validation.json"
METADATA = "metadata.json"
THUMBNAILS = {"small": "thumb_small.webp", "medium": "thumb_medium.webp"}
LABELS = "labels.json"
FEATURES = "features.npy"
TEXT = "ocr.json"
EMBEDDING = "embedding.json"
SIMILARITY = "similarity.json"
CATALOG = "catalog.json"

CHECK_THUMBNAIL_SIZES = "thumbnails_exist_with_right_size"
CHECK_EMBEDDING_UNIT_NORM = "embedding_unit_norm"
CHECK_NOT_DUPLICATE = "not_a_duplicate"
CHECK_INDEX_ROWS = "index_rows_match_labels_and_text"

NORM_TOLERANCE = 1e-3
TOP_K = 5
NEIGHBOURS = 5
# Labels below this probability are kept in labels.json but not indexed (the top one always is).
MIN_INDEXED_LABEL_SCORE = 0.05
# OCR lines with fewer letters or digits than this are kept in ocr.json but not indexed: on
# photos the detector reads texture as lone characters ("O" on scikit-image's cat).
MIN_INDEXED_TEXT_CHARS = 2
# OCR input is reduced to this longest side (pixels); boxes are mapped back to the original.
OCR_MAX_SIDE = 2560



def _manifest(media_store: MediaStore, key: str) -> dict[str, Any]:
    try:
        return media_store.manifest(key)
    except FileNotFoundError:
        return {}


def _md_cell(value: Any) -> str:
    return str(value if value is not None else "").replace("|", "/").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]], empty: str = "(nothing)") -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    if not rows:
        lines.append("| " + " | ".join([empty] + [""] * (len(header) - 1)) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def _source_rgb(media_store: MediaStore, key: str) -> Image.Image:
    return imaging.load_rgb(media_store.local_path(key, SOURCE))


def label_name(label: str) -> str:
    """The display name of a class: the first of its comma-separated synonyms."""
    return label.split(",")[0].strip()


@functools.lru_cache(maxsize=1)
def _imagenet_index() -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(read_labels(PACKAGED_LABELS)):
        index.setdefault(name, i)
    return index


# ---------------------------------------------------------------------------------------------
# image_source: validation


@image_stage(kinds={"pillow"})
def image_source(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """The uploaded image, validated with Pillow: an accepted format (JPEG, PNG, WebP, GIF, TIFF,
    BMP, HEIC), at most 100 MiB and Pillow's pixel limit (a decompression bomb fails here), a
    `verify()` and a full decode, EXIF orientation applied to the reported size. A bad file fails
    here with a classified error and nothing downstream runs.

    Validate one upload with Pillow and record what it is (``validation.json``).

    Raises:
        BadInputError: ``empty_file``, ``too_large``, ``not_image``, ``unsupported_format``,
            ``decompression_bomb``, ``corrupt_image`` (see :func:`imaging.validate_image`)."""
    manifest = _manifest(media_store, key)
    started = time.perf_counter()
    info = imaging.validate_image(media_store.local_path(key, SOURCE))
    elapsed = time.perf_counter() - started
    info["source_name"] = manifest.get("source_name")
    info["validation_s"] = round(elapsed, 4)
    media_store.write_json(key, VALIDATION, info)
    log.info(f"{key}: {info['format']} {info['width']}x{info['height']} {info['mode']}, "
             f"{info['size_bytes']} bytes, valid ({elapsed:.3f} s)")
    return dg.MaterializeResult(metadata={
        "source_name": info["source_name"] or "",
        "format": info["format"],
        "width_px": dg.MetadataValue.int(info["width"]),
        "height_px": dg.MetadataValue.int(info["height"]),
        "mode": info["mode"],
        "frames": dg.MetadataValue.int(info["frames"]),
        "exif_orientation": dg.MetadataValue.int(info["exif_orientation"]),
        "size_bytes": dg.MetadataValue.int(info["size_bytes"]),
        "validation_s": dg.MetadataValue.float(info["validation_s"]),
        "path": dg.MetadataValue.path(media_store.uri(key, SOURCE)),
    })


# ---------------------------------------------------------------------------------------------
# image_metadata


@image_stage(kinds={"pillow"}, deps=[image_source])
def image_metadata(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """What the file says about itself: width and height (pixels, upright), mode, format and the
    EXIF fields a catalog needs (camera make and model, lens, capture time, GPS in decimal
    degrees) when present.

    Size, mode, format and EXIF (camera, lens, capture time, GPS) of one image
    (``metadata.json``); the size is upright, in pixels."""
    validation = media_store.read_json(key, VALIDATION)
    exif = imaging.read_exif(media_store.local_path(key, SOURCE))
    camera = " ".join(p for p in (exif["camera_make"], exif["camera_model"]) if p) or None
    if exif["camera_make"] and exif["camera_model"] and exif["camera_model"].startswith(exif["camera_make"]):
        camera = exif["camera_model"]
    meta = {
        "width": validation["width"], "height": validation["height"], "mode": validation["mode"],
        "format": validation["format"], "frames": validation["frames"],
        "size_bytes": validation["size_bytes"], "source_name": validation.get("source_name"),
        "camera": camera, **exif,
    }
    media_store.write_json(key, METADATA, meta)
    gps = exif["gps"]
    rows = [["size", f"{meta['width']} x {meta['height']} px"], ["mode", meta["mode"]],
            ["format", meta["format"]], ["camera", camera or "-"], ["lens", exif["lens"] or "-"],
            ["captured at", exif["captured_at"] or "-"],
            ["GPS", f"{gps['latitude']}, {gps['longitude']}" if gps else "-"]]
    return dg.MaterializeResult(metadata={
        "width_px": dg.MetadataValue.int(meta["width"]),
        "height_px": dg.MetadataValue.int(meta["height"]),
        "mode": meta["mode"],
        "format": meta["format"],
        "camera": camera or "",
        "lens": exif["lens"] or "",
        "captured_at": exif["captured_at"] or "",
        "gps": dg.MetadataValue.json(gps or {}),
        "summary": _md_table(["field", "value"], rows),
        "path": dg.MetadataValue.path(media_store.uri(key, METADATA)),
    })


# ---------------------------------------------------------------------------------------------
# image_thumbnails


@image_stage(
    kinds={"pillow", "webp"}, deps=[image_source],
    check_specs=[dg.AssetCheckSpec(
        CHECK_THUMBNAIL_SIZES, asset="image_thumbnails",
        description="Both WebP thumbnails exist and their longest side is 128 / 512 px (or the "
                    "image's own, when smaller).")],
)
def image_thumbnails(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """Two WebP thumbnails, small (longest side 128 px) and medium (512 px), aspect kept, never
    enlarged, written atomically; the small one is previewed here.

    A small (128 px) and a medium (512 px) WebP thumbnail, longest side, never enlarged."""
    picture = _source_rgb(media_store, key)
    longest = max(picture.size)
    metadata: dict[str, Any] = {}
    sizes = {}
    small_bytes = b""
    for name, side in imaging.THUMBNAIL_SIZES.items():
        data, size = imaging.thumbnail_webp(picture, side)
        media_store.write_bytes(key, THUMBNAILS[name], data)
        sizes[name] = size
        if name == "small":
            small_bytes = data
        metadata[f"{name}_path"] = dg.MetadataValue.path(media_store.uri(key, THUMBNAILS[name]))
        metadata[f"{name}_size"] = f"{size[0]}x{size[1]}"
        metadata[f"{name}_bytes"] = dg.MetadataValue.int(len(data))
    # The small thumbnail is a few kilobytes: shown inline in the UI as a data URI.
    uri = "data:image/webp;base64," + base64.b64encode(small_bytes).decode()
    metadata["preview"] = dg.MetadataValue.md(f"![thumbnail]({uri})")
    problems = []
    for name, side in imaging.THUMBNAIL_SIZES.items():
        if not media_store.exists(key, THUMBNAILS[name]):
            problems.append(f"{name} missing")
            continue
        with Image.open(media_store.local_path(key, THUMBNAILS[name])) as thumb:
            if thumb.format != "WEBP" or max(thumb.size) != min(side, longest):
                problems.append(f"{name} is {thumb.format} {thumb.size}, expected longest side "
                                f"{min(side, longest)}")
    return dg.MaterializeResult(metadata=metadata, check_results=[dg.AssetCheckResult(
        check_name=CHECK_THUMBNAIL_SIZES, passed=not problems,
        metadata={"problems": "; ".join(problems) or "none",
                  "sizes": dg.MetadataValue.json({k: list(v) for k, v in sizes.items()})})])


# ---------------------------------------------------------------------------------------------
# image_labels: recognition


@image_stage(kinds={"onnx"}, deps=[image_source], retry=True)
def image_labels(key: str, *, media_store: MediaStore, image_classifier: ImageClassifier,
                       log: logging.Logger) -> dg.MaterializeResult:
    """What the picture shows: the top-5 ImageNet classes with probabilities, from
    EfficientNet-Lite0 on onnxruntime, and the coarse catalog category of the top one. The same
    forward pass gives the pooled features used for similarity.

    Top-5 classes with probabilities (``labels.json``) and the pooled, L2-normalized features
    of the same forward pass (``features.npy``, float32 [feature_dim])."""
    picture = np.asarray(_source_rgb(media_store, key))
    started = time.perf_counter()
    (recognition,) = image_classifier.recognize([picture], top_k=TOP_K)
    elapsed = time.perf_counter() - started
    indices = list(recognition.indices)
    if not indices and image_classifier.imagenet_classes:
        indices = [_imagenet_index().get(name, -1) for name, _ in recognition.labels]
    top_index = indices[0] if indices and image_classifier.imagenet_classes else None
    category = imaging.category_for_class(top_index)
    labels = [{"label": name, "name": label_name(name), "score": score,
               "class_index": indices[i] if i < len(indices) else None}
              for i, (name, score) in enumerate(recognition.labels)]
    media_store.write_json(key, LABELS, {"model": image_classifier.model_name, "labels": labels,
                                         "category": category, "recognition_s": round(elapsed, 4)})
    features = np.asarray(recognition.features, np.float32)
    with media_store.writer(key, FEATURES) as tmp, open(tmp, "wb") as fh:
        np.save(fh, features)
    log.info(f"{key}: {labels[0]['name']} ({labels[0]['score']:.2f}), category {category}, "
             f"{elapsed:.3f} s")
    return dg.MaterializeResult(metadata={
        "model": image_classifier.model_name,
        "top_label": labels[0]["name"],
        "top_score": dg.MetadataValue.float(round(labels[0]["score"], 4)),
        "category": category,
        "recognition_s": dg.MetadataValue.float(round(elapsed, 4)),
        "labels": _md_table(["label", "probability"],
                            [[lab["label"], f"{lab['score']:.3f}"] for lab in labels]),
        "path": dg.MetadataValue.path(media_store.uri(key, LABELS)),
    })


# ---------------------------------------------------------------------------------------------
# image_text: OCR


@image_stage(kinds={"onnx"}, deps=[image_source], retry=True)
def image_text(key: str, *, media_store: MediaStore, ocr: OcrEngine,
                     log: logging.Logger) -> dg.MaterializeResult:
    """Text visible in the picture, read by RapidOCR (PP-OCRv4 on onnxruntime): one entry per
    line with its confidence and box in pixels.

    Text lines read with OCR (``ocr.json``): text, confidence and ``[x0, y0, x1, y1]`` box in
    pixels of the upright image. Pictures over 2560 px are read at that size and the boxes mapped
    back."""
    picture = _source_rgb(media_store, key)
    scale = 1.0
    if max(picture.size) > OCR_MAX_SIDE:
        scale = max(picture.size) / OCR_MAX_SIDE
        picture = picture.resize((round(picture.width / scale), round(picture.height / scale)),
                                 Image.Resampling.LANCZOS)
    started = time.perf_counter()
    lines = ocr.read(np.asarray(picture))
    elapsed = time.perf_counter() - started
    out = [{"text": line.text, "confidence": line.confidence,
            "box": [round(v * scale, 1) for v in line.box]} for line in lines]
    media_store.write_json(key, TEXT, {"lines": out, "ocr_s": round(elapsed, 4)})
    words = sum(len(line["text"].split()) for line in out)
    log.info(f"{key}: {len(out)} text lines, {words} words ({elapsed:.3f} s)")
    return dg.MaterializeResult(metadata={
        "lines": dg.MetadataValue.int(len(out)),
        "words": dg.MetadataValue.int(words),
        "mean_confidence": dg.MetadataValue.float(
            round(float(np.mean([line["confidence"] for line in out])), 4) if out else 0.0),
        "ocr_s": dg.MetadataValue.float(round(elapsed, 4)),
        "preview": _md_table(["text", "confidence", "box (px)"],
                             [[line["text"], f"{line['confidence']:.2f}",
                               ", ".join(f"{v:.0f}" for v in line["box"])] for line in out[:15]],
                             empty="(no text)"),
        "path": dg.MetadataValue.path(media_store.uri(key, TEXT)),
    })


# ---------------------------------------------------------------------------------------------
# image_embedding


@image_stage(
    kinds={"numpy"}, deps=[image_labels],
    check_specs=[dg.AssetCheckSpec(CHECK_EMBEDDING_UNIT_NORM, asset="image_embedding",
                                   description="float32 [1280] features, finite, unit L2 norm.")],
)
def image_embedding(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """The picture's similarity signature: EfficientNet-Lite0's pooled features (1280 floats,
    unit length, compared by cosine distance) plus its perceptual hashes (pHash, dHash; compared
    by Hamming distance).

    The image's similarity signature (``embedding.json``): the classifier's pooled features
    (``features.npy``, L2-normalized, written by image_labels) and 64-bit pHash and dHash
    (imagehash) of the upright RGB picture."""
    features = np.load(media_store.local_path(key, FEATURES))
    started = time.perf_counter()
    hashes = imaging.perceptual_hashes(_source_rgb(media_store, key))
    elapsed = time.perf_counter() - started
    norm = float(np.linalg.norm(features))
    valid = (features.ndim == 1 and features.dtype == np.float32 and bool(np.isfinite(features).all())
             and abs(norm - 1.0) <= NORM_TOLERANCE)
    model = media_store.read_json(key, LABELS).get("model")
    media_store.write_json(key, EMBEDDING, {**hashes, "dim": int(features.shape[0]), "norm": norm,
                                            "model": model, "features": FEATURES,
                                            "hash_s": round(elapsed, 4)})
    return dg.MaterializeResult(
        metadata={
            "dim": dg.MetadataValue.int(int(features.shape[0])),
            "model": model or "",
            "phash": hashes["phash"],
            "dhash": hashes["dhash"],
            "hash_s": dg.MetadataValue.float(round(elapsed, 4)),
            "path": dg.MetadataValue.path(media_store.uri(key, FEATURES)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_EMBEDDING_UNIT_NORM, passed=valid,
            metadata={"norm": norm, "shape": str(list(features.shape)), "dtype": str(features.dtype),
                      "tolerance": NORM_TOLERANCE})],
    )


# ---------------------------------------------------------------------------------------------
# image_similarity: comparison


@image_stage(
    kinds={"lancedb"}, deps=[image_embedding], pool=pools.IMAGE_INDEX, retry=True,
    check_specs=[dg.AssetCheckSpec(CHECK_NOT_DUPLICATE, asset="image_similarity",
                                   description="Warns when the image duplicates an earlier one.")],
)
def image_similarity(key: str, *, media_store: MediaStore, image_index: ImageIndex,
                           log: logging.Logger) -> dg.MaterializeResult:
    """How this image compares with the images before it: its nearest earlier images (cosine
    distance of the features, pHash and dHash Hamming distances) and, for an exact or near
    duplicate (re-encoded, resized, lightly cropped), the partition it duplicates. Writes the
    image's row of the LanceDB `images` table (serialized by the `image_index` pool).

    Store the image in the ``images`` table and compare it with the images stored before it
    (``similarity.json``): its nearest earlier images by cosine distance, and the partition it
    duplicates when the nearest duplicate is within the thresholds.

    "Earlier" is by ingest time, then by when each image was first compared, so re-materializing
    an old image does not make it a duplicate of a later copy."""
    features = np.load(media_store.local_path(key, FEATURES))
    signature = media_store.read_json(key, EMBEDDING)
    manifest = _manifest(media_store, key)
    existing = image_index.image(key)
    record = ImageRecord(
        media_id=key, source_name=manifest.get("source_name"), ingested_at=manifest.get("ingested_at"),
        indexed_at=existing.indexed_at if existing else time.time(),
        phash=signature["phash"], dhash=signature["dhash"], vector=features.tolist())
    started = time.perf_counter()
    image_index.upsert_image(record)
    order = (record.ingested_at or "", record.indexed_at)
    # Neighbours chosen and recorded under the reference lock, which a deletion holds while it
    # takes its image out of the others' neighbours: an image deleted before this block is left
    # out here (its tombstone is written before its rows go), one deleted after finds this
    # image in ``references`` and rewrites it (narra_dagster.defs.image.references).
    with image_index.reference_lock():
        candidates = image_index.nearest(features, limit=NEIGHBOURS * 4, exclude=key)
        earlier = [n for n in candidates if (n.ingested_at or "", n.indexed_at) < order
                   and media_store.tombstone(n.media_id) is None][:NEIGHBOURS]
        elapsed = time.perf_counter() - started
        compared = compare(earlier, record.phash, record.dhash)
        duplicates = [c for c in compared if c["duplicate"]]
        best = min(duplicates, key=lambda c: c["cosine_distance"]) if duplicates else None
        nearest = compared[0] if compared else None
        result = {"neighbours": compared, "duplicate_of": best and best["media_id"],
                  "duplicate": best and best["duplicate"],
                  "thresholds": {"near_cosine": NEAR_DUPLICATE_COSINE,
                                 "near_phash": NEAR_DUPLICATE_PHASH,
                                 "exact_cosine": EXACT_DUPLICATE_COSINE,
                                 "exact_phash": EXACT_DUPLICATE_PHASH}}
        media_store.write_json(key, SIMILARITY, result)
        image_index.set_references(key, [c["media_id"] for c in compared])
    if best:
        log.warning(f"{key} is a {best['duplicate']} duplicate of {best['media_id']} "
                    f"({best['source_name']}): cosine {best['cosine_distance']:.3f}, "
                    f"pHash {best['phash_distance']} bits")
    table = _md_table(
        ["media_id", "source", "cosine", "pHash bits", "dHash bits", "duplicate"],
        [[c["media_id"], c["source_name"], f"{c['cosine_distance']:.3f}", c["phash_distance"],
          c["dhash_distance"], c["duplicate"] or ""] for c in compared], empty="(no earlier images)")
    return dg.MaterializeResult(
        metadata={
            "duplicate_of": (best or {}).get("media_id") or "",
            "duplicate": (best or {}).get("duplicate") or "",
            **({"nearest": nearest["media_id"],
                "nearest_cosine_distance": dg.MetadataValue.float(nearest["cosine_distance"]),
                "nearest_phash_distance": dg.MetadataValue.int(nearest["phash_distance"])}
               if nearest else {"nearest": ""}),
            "earlier_compared": dg.MetadataValue.int(len(compared)),
            "images_total": dg.MetadataValue.int(image_index.count()),
            "compare_s": dg.MetadataValue.float(round(elapsed, 4)),
            "neighbours": table,
            "path": dg.MetadataValue.path(media_store.uri(key, SIMILARITY)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_NOT_DUPLICATE, passed=best is None,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"duplicate_of": (best or {}).get("media_id") or "",
                      "kind": (best or {}).get("duplicate") or ""})],
    )


# ---------------------------------------------------------------------------------------------
# image_catalog: metadata sorting


@image_stage(
    kinds={"lancedb"}, deps=[image_metadata, image_thumbnails, image_labels, image_text, image_similarity],
    pool=pools.IMAGE_INDEX, retry=True,
)
def image_catalog(key: str, *, media_store: MediaStore, image_index: ImageIndex,
                        log: logging.Logger) -> dg.MaterializeResult:
    """The image's entry in the catalog ("metadata sorting"): filed by coarse category (animal,
    food, vehicle, landscape, person, plant, object, from the top ImageNet class), capture date
    and camera, with its top label, size, text line count, duplicate and thumbnail. The whole
    catalog is listed below and by `narra catalog`.

    File the image in the ``catalog`` table by category, capture date and camera
    (``catalog.json`` holds the same row)."""
    meta = media_store.read_json(key, METADATA)
    labels = media_store.read_json(key, LABELS)
    text = media_store.read_json(key, TEXT)
    with image_index.reference_lock():  # the duplicate filed is not one deleted meanwhile
        similarity = media_store.read_json(key, SIMILARITY)
        duplicate = similarity.get("duplicate_of")
        if duplicate and media_store.tombstone(duplicate) is not None:
            similarity = without(similarity, duplicate)
        entry = _file_in_catalog(key, meta, labels, text, similarity, media_store, image_index)
    rows = image_index.catalog()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    listing = _md_table(
        ["category", "date", "camera", "label", "source", "media_id"],
        [[r["category"], r["capture_date"] or "-", r["camera"] or "-", r["label"],
          r["source_name"], r["media_id"]] for r in rows[:30]])
    return dg.MaterializeResult(metadata={
        "category": entry["category"],
        "label": entry["label"],
        "capture_date": entry["capture_date"] or "",
        "camera": entry["camera"] or "",
        "catalog_size": dg.MetadataValue.int(len(rows)),
        "categories": dg.MetadataValue.json(counts),
        "catalog": listing,
        "path": dg.MetadataValue.path(media_store.uri(key, CATALOG)),
    })


def _file_in_catalog(key: str, meta: dict[str, Any], labels: dict[str, Any],
                     text: dict[str, Any], similarity: dict[str, Any], media_store: MediaStore,
                     image_index: ImageIndex) -> dict[str, Any]:
    top = labels["labels"][0]
    captured = meta.get("captured_at")
    entry = {
        "media_id": key, "source_name": meta.get("source_name"), "category": labels["category"],
        "label": top["name"], "label_score": top["score"], "captured_at": captured,
        "capture_date": captured[:10] if captured else None, "camera": meta.get("camera"),
        "width": meta["width"], "height": meta["height"], "format": meta["format"],
        "ocr_lines": len(text["lines"]), "duplicate_of": similarity.get("duplicate_of"),
        "thumbnail": media_store.uri(key, THUMBNAILS["small"]),
        "ingested_at": _manifest(media_store, key).get("ingested_at"),
    }
    image_index.upsert_catalog(entry)
    media_store.write_json(key, CATALOG, entry)
    return entry


# ---------------------------------------------------------------------------------------------
# image_index_rows


def index_texts(labels: dict[str, Any], text: dict[str, Any]) -> list[dict[str, Any]]:
    """The searchable texts of one image: first its labels (every synonym of the classes above
    5% probability, and always the top one, with the category), then one entry per OCR line with
    its box in pixels (lines of at least two letters or digits)."""
    kept = [lab for i, lab in enumerate(labels["labels"])
            if i == 0 or lab["score"] >= MIN_INDEXED_LABEL_SCORE]
    out = [{"text": "; ".join(lab["label"] for lab in kept) + f" ({labels['category']})", "box": None}]
    out += [{"text": line["text"], "box": tuple(line["box"])} for line in text["lines"]
            if sum(ch.isalnum() for ch in line["text"]) >= MIN_INDEXED_TEXT_CHARS]
    return out


@image_stage(
    kinds={"lancedb"}, deps=[image_labels, image_text], pool=pools.SEARCH_INDEX,
    retry=True,
    check_specs=[dg.AssetCheckSpec(CHECK_INDEX_ROWS, asset="image_index_rows",
                                   description="One row for the labels and one per OCR line.")],
)
def image_index_rows(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                           search_index: SearchIndex, log: logging.Logger) -> dg.MaterializeResult:
    """The image's rows in the search index: its labels (so `narra search cat` finds a cat) and
    each line of text read in it, with the line's box in pixels; replaced as a whole each time.

    Make the search index hold this image's rows (origin ``image_index_rows``): one row of
    labels, one per OCR line with its box; each with its 384-d text embedding."""
    labels = media_store.read_json(key, LABELS)
    text = media_store.read_json(key, TEXT)
    texts = index_texts(labels, text)
    vectors = embedder.embed([t["text"] for t in texts])
    source_name = _manifest(media_store, key).get("source_name")
    rows = [IndexRow(media_id=key, kind="image", origin="image_index_rows", source_name=source_name,
                     chunk_index=i, box=t["box"], text=t["text"], vector=v.tolist())
            for i, (t, v) in enumerate(zip(texts, vectors))]
    started = time.perf_counter()
    count = search_index.upsert_partition(key, "image", rows, origin="image_index_rows")
    elapsed = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(count),
            "label_rows": dg.MetadataValue.int(1),
            "text_rows": dg.MetadataValue.int(len(texts) - 1),
            "index_rows_total": dg.MetadataValue.int(search_index.count()),
            "upsert_s": dg.MetadataValue.float(round(elapsed, 4)),
            "preview": _md_table(["#", "text", "box (px)"],
                                 [[i, t["text"], ", ".join(f"{v:.0f}" for v in t["box"]) if t["box"] else ""]
                                  for i, t in enumerate(texts[:15])]),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_INDEX_ROWS, passed=count == len(texts),
            metadata={"rows": count, "expected": len(texts)})],
    )
