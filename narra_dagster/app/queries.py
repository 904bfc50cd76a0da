"""Queries: text search over every kind, images similar to a picture, the image catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from narra_dagster import registry
from narra_dagster.defs.image import imaging
from narra_dagster.defs.image.similarity import compare
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.image_index import ImageIndex
from narra_dagster.resources.recognizer import ImageClassifier
from narra_dagster.resources.search_index import SearchHit, SearchIndex

CATALOG_CATEGORIES = imaging.CATEGORIES


def search_text(query: str, *, embedder: TextEmbedder, search_index: SearchIndex,
                kind: str | None = None, limit: int = 10,
                min_relevance: float | None = None) -> list[SearchHit]:
    """Hybrid (vector + full-text) search over every indexed item, best first, at most one hit
    per place; an empty list when nothing indexed is relevant enough ("no good match").

    Args:
        query: what to look for, in words.
        kind: only hits of this registry kind (``video``, ``image``, ``document``); None for all.
        limit: at most this many hits.
        min_relevance: leave out hits below this relevance in [0, 1]; None for the index's
            default (``LanceSearchIndex.min_relevance``), 0 for every hit.

    Raises:
        UnknownKindError: for a ``kind`` that is not in the registry (the message lists them).
    """
    if kind is not None:
        kind = registry.get(kind).name
    return search_index.search(query, embedder.embed([query])[0], kind=kind, limit=limit,
                               min_relevance=min_relevance)


def find_similar_images(path: Path, *, image_classifier: ImageClassifier,
                        image_index: ImageIndex, limit: int = 10) -> list[dict[str, Any]]:
    """The stored images most similar to a picture that is not ingested (``narra search
    --image``): the picture is validated and embedded like an upload, then compared with the
    ``images`` table, nearest first.

    Returns:
        Per image: ``media_id``, ``source_name``, ``cosine_distance``, ``phash_distance``,
        ``dhash_distance`` (bits of 64) and ``duplicate`` (``"exact"``, ``"near"`` or None).

    Raises:
        BadInputError: when the picture is not a valid image (see :func:`imaging.validate_image`).
    """
    path = Path(path)
    imaging.validate_image(path)
    picture = imaging.load_rgb(path)
    (recognition,) = image_classifier.recognize([np.asarray(picture)], top_k=1)
    hashes = imaging.perceptual_hashes(picture)
    neighbours = image_index.nearest(np.asarray(recognition.features, np.float32), limit=limit)
    return compare(neighbours, hashes["phash"], hashes["dhash"])


def image_catalog(*, image_index: ImageIndex, category: str | None = None) -> list[dict[str, Any]]:
    """The image catalog, every image with its category, capture date and camera; only
    ``category`` when given.

    Raises:
        ValueError: for a category that is not one of :data:`CATALOG_CATEGORIES`.
    """
    if category is not None and category not in CATALOG_CATEGORIES:
        raise ValueError(f"unknown category {category!r}; the categories are "
                         f"{', '.join(CATALOG_CATEGORIES)}")
    return image_index.catalog(category=category)
