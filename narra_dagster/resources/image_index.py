"""The image tables in the LanceDB database of the search index: ``images`` and ``catalog``.

- ``images``: one row per image partition, its classifier features (float32 [1280], unit
  length, compared by cosine distance), its perceptual hashes and when it was ingested, so the
  comparison stage can find each new image's nearest earlier images.
- ``catalog``: one row per image, filed by category, capture date and camera, for
  ``narra catalog`` and the UI.
- ``references``: one row per (image, earlier image it lists among its nearest), so deleting an
  image finds the images whose ``similarity.json`` and catalog row name it, without reading
  every image's artifacts.

Both are written per partition with ``merge_insert`` keyed on ``media_id`` (one commit; writing
the same row twice leaves one row), from steps in the ``image_index`` pool so writes are
serialized across runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from abc import ABC, abstractmethod
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.index_lock import write_lock

IMAGES_TABLE = "images"
CATALOG_TABLE = "catalog"
REFERENCES_TABLE = "references"
REFERENCES_SCHEMA = pa.schema([
    pa.field("media_id", pa.string(), nullable=False),  # the image whose neighbours these are
    pa.field("neighbour_id", pa.string(), nullable=False),  # an earlier image it lists
])
FEATURE_DIM = 1280


def images_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("media_id", pa.string(), nullable=False),
        pa.field("source_name", pa.string()),
        pa.field("ingested_at", pa.string()),  # ISO 8601 UTC, from the manifest
        # Seconds since the epoch when the row was first written (kept on rewrites): orders
        # images ingested within the same second by when they were first compared.
        pa.field("indexed_at", pa.float64()),
        pa.field("phash", pa.string()),  # 16 hex digits (64-bit pHash)
        pa.field("dhash", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
    ])


CATALOG_SCHEMA = pa.schema([
    pa.field("media_id", pa.string(), nullable=False),
    pa.field("source_name", pa.string()),
    pa.field("category", pa.string()),
    pa.field("label", pa.string()),
    pa.field("label_score", pa.float32()),
    pa.field("captured_at", pa.string()),  # ISO 8601 from EXIF, or null
    pa.field("capture_date", pa.string()),  # YYYY-MM-DD from EXIF, or null
    pa.field("camera", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("ocr_lines", pa.int32()),
    pa.field("duplicate_of", pa.string()),
    pa.field("thumbnail", pa.string()),
    pa.field("ingested_at", pa.string()),
])


class ImageRecord(BaseModel):
    """One row of ``images``; ``vector`` float32 unit-length features."""

    media_id: str
    source_name: str | None = None
    ingested_at: str | None = None
    indexed_at: float
    phash: str
    dhash: str
    vector: list[float]


class Neighbour(BaseModel):
    """An image near another one: cosine distance of the features (0 = same direction, 2 =
    opposite) and the stored record."""

    media_id: str
    source_name: str | None
    ingested_at: str | None
    indexed_at: float
    phash: str
    dhash: str
    cosine_distance: float


class ImageIndex(dg.ConfigurableResource, ABC):
    """Interface of the image similarity and catalog tables."""

    @abstractmethod
    def upsert_image(self, record: ImageRecord) -> None:
        """Insert or replace the row of ``record.media_id`` in ``images``.

        Raises:
            ValueError: for a malformed partition key or a vector of the wrong length.
        """

    @abstractmethod
    def nearest(self, vector: np.ndarray, *, limit: int = 5,
                exclude: str | None = None) -> list[Neighbour]:
        """The ``limit`` images closest to ``vector`` (float32 [dim], unit length) by cosine
        distance, best first, without ``exclude``."""

    @abstractmethod
    def image(self, media_id: str) -> ImageRecord | None:
        """The stored row of one image, or None."""

    @abstractmethod
    def upsert_catalog(self, entry: dict[str, Any]) -> None:
        """Insert or replace one catalog row (keys of ``CATALOG_SCHEMA``)."""

    @abstractmethod
    def set_references(self, media_id: str, neighbour_ids: list[str]) -> None:
        """Record the images ``media_id`` lists among its nearest (replacing what it listed).

        Raises:
            ValueError: for a malformed partition key.
        """

    @abstractmethod
    def referencing(self, media_id: str) -> list[str]:
        """The images that list ``media_id`` among their nearest or as the image they duplicate
        (``references`` and the catalog's ``duplicate_of``), sorted."""

    @abstractmethod
    def catalog_entry(self, media_id: str) -> dict[str, Any] | None:
        """One image's catalog row, or None."""

    @abstractmethod
    @contextlib.contextmanager
    def reference_lock(self) -> Iterator[None]:
        """Held while an image's neighbours are chosen and recorded, and while a deletion takes
        an image out of the others' neighbours, so neither misses the other."""

    @abstractmethod
    def delete_item(self, media_id: str) -> int:
        """Remove one item's row from the images table and the catalog, and its references (as
        an image and as a neighbour); return rows removed.

        Raises:
            ValueError: when ``media_id`` is not a partition key.
        """

    @abstractmethod
    def catalog(self, *, category: str | None = None) -> list[dict[str, Any]]:
        """Catalog rows sorted by category, capture date (undated last), then source name."""

    @abstractmethod
    def count(self, table: str = IMAGES_TABLE) -> int:
        """Rows in ``images`` or ``catalog``."""


_locks: dict[str, threading.Lock] = {}


class LanceImageIndex(ImageIndex):
    """The ``images`` and ``catalog`` tables in a LanceDB database (by default the search
    index's, ``$NARRA_HOME/index``)."""

    uri: str = Field(default_factory=lambda: str(settings.index_dir()),
                     description="LanceDB database location; default $NARRA_HOME/index.")
    feature_dim: int = Field(default=FEATURE_DIM, description="Length of the image features.")

    _db = PrivateAttr(default=None)

    def _open(self, name: str, schema: pa.Schema):
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.uri)
        with _locks.setdefault(self.uri, threading.Lock()):
            try:
                return self._db.open_table(name)
            except (ValueError, FileNotFoundError):
                return self._db.create_table(name, schema=schema, exist_ok=True)

    def _images(self):
        return self._open(IMAGES_TABLE, images_schema(self.feature_dim))

    def _catalog(self):
        return self._open(CATALOG_TABLE, CATALOG_SCHEMA)

    def _references(self):
        return self._open(REFERENCES_TABLE, REFERENCES_SCHEMA)

    @contextlib.contextmanager
    def reference_lock(self) -> Iterator[None]:
        # its own lock file: the table writes inside the block take the tables' locks
        with write_lock(self.uri, "neighbour-choice"):
            yield

    def set_references(self, media_id: str, neighbour_ids: list[str]) -> None:
        for key in (media_id, *neighbour_ids):
            if not is_partition_key(key):
                raise ValueError(f"not a partition key: {key!r}")
        table = self._references()
        with write_lock(self.uri, table.name):
            table.checkout_latest()
            table.delete(f"media_id = '{media_id}'")
            if neighbour_ids:
                table.add(pa.Table.from_pylist(
                    [{"media_id": media_id, "neighbour_id": n} for n in dict.fromkeys(neighbour_ids)],
                    schema=REFERENCES_SCHEMA))

    def referencing(self, media_id: str) -> list[str]:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        found = set()
        for table, column in ((self._references(), "neighbour_id"), (self._catalog(), "duplicate_of")):
            table.checkout_latest()
            rows = table.search().where(f"{column} = '{media_id}'").select(["media_id"]).limit(
                None).to_list()
            found.update(r["media_id"] for r in rows)
        return sorted(found - {media_id})

    def catalog_entry(self, media_id: str) -> dict[str, Any] | None:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        table = self._catalog()
        table.checkout_latest()
        rows = table.search().where(f"media_id = '{media_id}'").limit(1).to_list()
        return {k: rows[0][k] for k in CATALOG_SCHEMA.names} if rows else None

    def _upsert(self, table, rows: list[dict], schema: pa.Schema) -> None:
        data = pa.Table.from_pylist(rows, schema=schema)
        with write_lock(self.uri, table.name):
            table.checkout_latest()  # match against rows other writers committed meanwhile
            table.merge_insert("media_id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def delete_item(self, media_id: str) -> int:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        removed = 0
        where = f"media_id = '{media_id}'"
        for table, condition in ((self._images(), where), (self._catalog(), where),
                                 (self._references(), f"{where} OR neighbour_id = '{media_id}'")):
            with write_lock(self.uri, table.name):
                table.checkout_latest()
                count = table.count_rows(condition)
                if count:
                    table.delete(condition)
                removed += count
        return removed

    def upsert_image(self, record: ImageRecord) -> None:
        if not is_partition_key(record.media_id):
            raise ValueError(f"not a partition key: {record.media_id!r}")
        if len(record.vector) != self.feature_dim:
            raise ValueError(f"{len(record.vector)}-d features, not {self.feature_dim}")
        self._upsert(self._images(), [record.model_dump()], images_schema(self.feature_dim))

    def nearest(self, vector: np.ndarray, *, limit: int = 5,
                exclude: str | None = None) -> list[Neighbour]:
        table = self._images()
        query = table.search(np.asarray(vector, np.float32), vector_column_name="vector")
        query = query.distance_type("cosine")
        if exclude is not None:
            if not is_partition_key(exclude):
                raise ValueError(f"not a partition key: {exclude!r}")
            query = query.where(f"media_id != '{exclude}'", prefilter=True)
        rows = query.limit(limit).to_list()
        return [
            Neighbour(media_id=r["media_id"], source_name=r["source_name"],
                      ingested_at=r["ingested_at"], indexed_at=r["indexed_at"],
                      phash=r["phash"], dhash=r["dhash"],
                      cosine_distance=round(float(r["_distance"]), 6))
            for r in rows
        ]

    def image(self, media_id: str) -> ImageRecord | None:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        rows = self._images().search().where(f"media_id = '{media_id}'").limit(1).to_list()
        if not rows:
            return None
        row = rows[0]
        return ImageRecord(**{k: row[k] for k in ImageRecord.model_fields})

    def upsert_catalog(self, entry: dict[str, Any]) -> None:
        if not is_partition_key(entry.get("media_id", "")):
            raise ValueError(f"not a partition key: {entry.get('media_id')!r}")
        row = {name: entry.get(name) for name in CATALOG_SCHEMA.names}
        self._upsert(self._catalog(), [row], CATALOG_SCHEMA)

    def catalog(self, *, category: str | None = None) -> list[dict[str, Any]]:
        table = self._catalog()
        rows = table.to_arrow().to_pylist()
        if category:
            rows = [r for r in rows if r["category"] == category]
        rows.sort(key=lambda r: (r["category"] or "", r["capture_date"] is None,
                                 r["capture_date"] or "", r["source_name"] or "", r["media_id"]))
        return rows

    def count(self, table: str = IMAGES_TABLE) -> int:
        if table == IMAGES_TABLE:
            return self._images().count_rows()
        if table == CATALOG_TABLE:
            return self._catalog().count_rows()
        raise ValueError(f"unknown table: {table!r}")
