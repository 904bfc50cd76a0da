"""A deleted image taken out of the other images: their nearest neighbours and duplicates.

``image_similarity`` writes, for each image, the earlier images nearest to it
(``similarity.json``, and the ``references`` table of the image index), and ``image_catalog``
files the one it duplicates (``duplicate_of``). Deleting an image removes its own rows; this
module rewrites the others, so no item page lists a neighbour or a duplicate that is gone.
"""

from __future__ import annotations

from narra_dagster.defs.image.similarity import without
from narra_dagster.resources.image_index import ImageIndex
from narra_dagster.resources.item_lock import item_lock
from narra_dagster.resources.media_store import MediaStore

SIMILARITY = "similarity.json"
CATALOG = "catalog.json"


def referencing(image_index: ImageIndex, media_id: str) -> list[str]:
    """The images that name ``media_id`` (read before its rows are deleted)."""
    return image_index.referencing(media_id)


def forget_image(media_id: str, referrers: list[str], media_store: MediaStore,
                 image_index: ImageIndex) -> int:
    """Take the deleted image ``media_id`` out of each image in ``referrers``: its
    ``similarity.json`` and ``catalog.json`` and its catalog row; return how many changed.

    Each referrer is rewritten under its own item lock (so it is not being deleted meanwhile:
    a deleted referrer is skipped, never re-created) and under the index's reference lock (so
    a comparison running now either ran before and is rewritten here, or sees the tombstone of
    ``media_id`` and leaves it out, see ``image_similarity``). The caller has written the
    tombstone of ``media_id`` and holds no item lock.

    Raises:
        OSError: when an artifact cannot be rewritten (the deletion can be run again).
    """
    changed = 0
    with image_index.reference_lock():
        for other in referrers:
            with item_lock(other):
                if media_store.tombstone(other) is not None:
                    continue
                touched = False
                if media_store.exists(other, SIMILARITY):
                    before = media_store.read_json(other, SIMILARITY)
                    after = without(before, media_id)
                    if after != before:
                        media_store.write_json(other, SIMILARITY, after)
                        touched = True
                    image_index.set_references(
                        other, [n["media_id"] for n in after.get("neighbours", [])])
                entry = image_index.catalog_entry(other)
                if entry is not None and entry.get("duplicate_of") == media_id:
                    entry["duplicate_of"] = (without(media_store.read_json(other, SIMILARITY),
                                                     media_id).get("duplicate_of")
                                             if media_store.exists(other, SIMILARITY) else None)
                    image_index.upsert_catalog(entry)
                    if media_store.exists(other, CATALOG):
                        media_store.write_json(other, CATALOG, entry)
                    touched = True
                changed += touched
    return changed
