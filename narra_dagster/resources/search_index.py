"""The search index: one LanceDB table of chunks from every media kind.

Each row is one searchable text with a locator: seconds for video and audio (``start_s``,
``end_s``; a video frame has ``start_s == end_s``), a 1-based ``page`` for PDFs, and a ``box`` in
pixels for text found in an image or a frame; plus a 384-d embedding of the text. ``origin`` names
the asset that wrote the row (``video_index_rows``, ``image_index_rows``...), so several assets of
one item each own their rows.

Writes are per (item, origin): :meth:`LanceSearchIndex.upsert_partition` replaces those rows in a
single LanceDB commit (``merge_insert`` keyed on ``id`` with ``when_not_matched_by_source_delete``
limited to that item and origin), so re-materializing an asset never duplicates rows, leaves no
stale ones, and a failure leaves the previous rows intact.

Search is hybrid: a vector query (cosine distance on the unit-length embeddings) and a BM25
full-text query over ``text``, each side's scores normalized to [0, 1], then fused by LanceDB's
``LinearCombinationReranker``: 0.3 x vector similarity + 0.7 x BM25 (``fusion``,
``vector_weight``). Chosen on ``python -m bench --only relevance`` (140 judged queries): MRR@10
0.90 against 0.79 for LanceDB's reciprocal-rank fusion (RRF, k = 60), which ranked a page
holding the exact phrase below pages that only the vector side liked; weights 0.2-0.35 gave
0.896-0.901, 0.5 gave 0.85 and 0.7 gave 0.76. ``fusion="rrf"`` restores the old ranking.

Kept healthy as it grows (:meth:`LanceSearchIndex.maintain`, run daily by the
``search_index_maintenance`` asset): scalar indices on the keys upserts and filters use (``id``
BTREE for the merge join, ``media_id`` BTREE, ``origin`` and ``kind`` BITMAP) are made with the
first rows; an ANN index on ``vector`` (cosine; IVF_HNSW_SQ by default: HNSW graphs over 8-bit
scalar-quantized vectors within IVF partitions) once the table has ``ann_min_rows`` rows; then
``optimize()`` compacts small fragments (every upsert is a commit), adds new rows to the
existing indices and removes versions older than ``cleanup_older_than``. Rows not yet in an
index stay searchable (Lance scans them flat), so maintenance never changes results, only speed.
With an ANN index, a query probes ``nprobes`` IVF partitions and re-ranks ``refine_factor`` x
limit candidates by exact distance (LanceDB's documented recall/latency knobs).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.embedder import EMBEDDING_DIM
from narra_dagster.resources.index_lock import write_lock

CANDIDATES = 50  # rows per side of a hybrid search before fusion
TABLE = "chunks"

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("media_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source_name", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("page", pa.int32()),
        # [x0, y0, x1, y1] in pixels of the image or frame the text was read from.
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("origin", pa.string()),
        pa.field("text", pa.string()),
        # [[word, start_s, end_s], ...] as JSON: lets a hit point at the second a phrase is said.
        pa.field("words", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ]
)


class IndexRow(BaseModel):
    """One row as stored in the index: times in seconds, ``page`` 1-based (PDFs), ``box``
    ``[x0, y0, x1, y1]`` in pixels (text in an image or frame), ``origin`` the writing asset."""

    media_id: str
    kind: str
    origin: str
    source_name: str | None = None
    chunk_index: int
    start_s: float | None = None
    end_s: float | None = None
    page: int | None = None
    box: tuple[float, float, float, float] | None = None
    text: str
    words: list[tuple[str, float, float]] = Field(default_factory=list)
    vector: list[float]

    @property
    def id(self) -> str:
        return f"{self.media_id}:{self.origin}:{self.chunk_index:05d}"


class SearchHit(BaseModel):
    """One search result. ``start_s``/``end_s`` point at the matched words when the query's words
    occur in the chunk, else at the whole chunk (``chunk_start_s``/``chunk_end_s``)."""

    media_id: str
    kind: str
    origin: str | None
    source_name: str | None
    chunk_index: int
    start_s: float | None
    end_s: float | None
    chunk_start_s: float | None
    chunk_end_s: float | None
    page: int | None
    box: list[float] | None
    text: str
    score: float


_TOKEN = re.compile(r"[\w']+")
# Words too common to say where a phrase is (a short English stop list).
_STOP = frozenset(
    "a an and are as at be but by for from has have i in is it its of on or so that the this "
    "to was were will with".split()
)


def _tokens(text: str) -> list[str]:
    return [t.lower().strip("'") for t in _TOKEN.findall(text)]


def _same_word(a: str, b: str) -> bool:
    # A shared 5-letter prefix stands in for stemming: sleeps ~ sleeping, launch ~ launches.
    return a == b or (len(a) >= 5 and len(b) >= 5 and a[:5] == b[:5])


def locate_phrase(query: str, words: Sequence[Sequence[Any]]) -> tuple[float, float] | None:
    """Find where the query's words are spoken inside a chunk.

    Slides a window of (query words + 3) over the chunk's words and keeps the first window that
    contains the most distinct query words; stop words are ignored unless the query has nothing
    else.

    Args:
        query: the search text.
        words: ``[[word, start_s, end_s], ...]`` of the chunk, times in seconds.

    Returns:
        ``(start_s, end_s)`` from the first to the last matched word, or ``None`` when no query
        word occurs in the chunk.
    """
    query_tokens = _tokens(query)
    wanted = [t for t in query_tokens if t not in _STOP] or query_tokens
    if not wanted or not words:
        return None
    spoken = [(_tokens(str(w[0])) or [""])[0] for w in words]
    matches = [next((q for q in wanted if _same_word(q, w)), None) for w in spoken]
    span = len(query_tokens) + 3
    best, best_at = 0, None
    for i in range(len(words)):
        if matches[i] is None:
            continue
        window = [j for j in range(i, min(i + span, len(words))) if matches[j] is not None]
        found = len({matches[j] for j in window})
        if found > best:
            best, best_at = found, (window[0], window[-1])
    if best_at is None:
        return None
    return float(words[best_at[0]][1]), float(words[best_at[1]][2])


class SearchIndex(dg.ConfigurableResource, ABC):
    """Interface of the search index."""

    @abstractmethod
    def upsert_partition(self, media_id: str, kind: str, rows: list[IndexRow], *,
                         origin: str) -> int:
        """Make the index hold exactly ``rows`` for (``media_id``, ``origin``); return that row
        count after. Rows of the same item from other origins are not touched.

        Raises:
            ValueError: when a row belongs to another item or origin, or has the wrong vector
                length.
        """

    @abstractmethod
    def count(self, media_id: str | None = None) -> int:
        """Rows in the index, for one item or all."""

    @abstractmethod
    def search(self, query: str, vector: np.ndarray, *, kind: str | None = None,
               limit: int = 10) -> list[SearchHit]:
        """Hybrid search. ``vector`` is the query's float32 [384] unit embedding."""

    @abstractmethod
    def delete_item(self, media_id: str) -> int:
        """Remove every row of one item, of every origin, in one commit; return how many went.

        Raises:
            ValueError: when ``media_id`` is not a partition key.
        """

    def maintain(self, *, cleanup_older_than: dt.timedelta = dt.timedelta(hours=24),
                 ) -> dict[str, Any] | None:
        """Upkeep as the index grows (compaction, indices, old versions); a backend that needs
        none returns None, as this default does."""
        return None


_locks: dict[str, threading.Lock] = {}
_ORIGIN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_KIND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Per database URI: the scalar indices are known to exist (checked once per process).
_scalar_ready: set[str] = set()

# Column -> scalar index type: BTREE for high-cardinality keys (``id`` joins merge_insert,
# ``media_id`` selects an item's rows), BITMAP for the few-valued ``origin`` and ``kind``.
SCALAR_INDICES = {"id": "BTREE", "media_id": "BTREE", "origin": "BITMAP", "kind": "BITMAP"}
VECTOR_INDEX = "vector_idx"


def _needs_setup(table) -> bool:
    """True when the table lacks a column of :data:`SCHEMA` or its full-text index."""
    return (not {"box", "origin"} <= set(table.schema.names)
            or not any(i.index_type == "FTS" for i in table.list_indices()))


def _ensure_fts(table) -> None:
    """Create the BM25 full-text index on ``text`` if it is missing. New rows stay searchable
    before they are indexed: Lance scans unindexed fragments flat."""
    if not any(i.index_type == "FTS" for i in table.list_indices()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table.create_fts_index("text", replace=True)


def _migrate(table) -> None:
    """Bring a table made by an older version up to :data:`SCHEMA` by adding missing columns.

    Rows written before ``origin`` existed were all transcript chunks of videos; they get
    ``video_index_rows`` and are replaced, under their new ids, the next time their video's
    index rows are materialized.
    """
    names = set(table.schema.names)
    if "box" not in names:
        table.add_columns(pa.field("box", pa.list_(pa.float32(), 4)))
    if "origin" not in names:
        table.add_columns({"origin": "'video_index_rows'"})


class LanceSearchIndex(SearchIndex):
    """LanceDB at a local path (or any URI LanceDB accepts), one table ``chunks``."""

    uri: str = Field(
        default_factory=lambda: str(settings.index_dir()),
        description="LanceDB database location; default $NARRA_HOME/index.",
    )

    ann_min_rows: int = Field(
        default=100_000, ge=256,
        description="Rows from which maintain() builds an ANN index; below it exact search is "
                    "fast enough (a flat scan of 100k 384-d rows takes tens of ms).")
    ann_index_type: str = Field(
        default="IVF_HNSW_SQ",
        description="IVF_HNSW_SQ (default), IVF_SQ, IVF_FLAT or IVF_PQ. Bench tables (clustered "
                    "synthetic 384-d rows, busy 2-core machine): at 1M rows IVF_HNSW_SQ gave "
                    "recall@10 1.0 at p50 25 ms (nprobes 16; built in 7 min), IVF_SQ 0.9 at 36 "
                    "ms (built faster); at 100k IVF_PQ reached only 0.59.")
    nprobes: int = Field(default=16, ge=1, description="IVF partitions probed per query.")
    single_commit_max_rows: int = Field(
        default=100_000, ge=0,
        description="Below this many rows an upsert is one commit (merge_insert with a by-source "
                    "delete); from it on, an upsert by id plus a delete of the item's stale rows, "
                    "since the by-source delete scans the whole table.")
    refine_factor: int = Field(
        default=10, ge=1, description="Candidates re-ranked by exact distance, x limit.")
    fusion: str = Field(
        default="linear", pattern="^(linear|rrf)$",
        description="How the vector and BM25 sides are fused: 'linear' (normalized scores, "
                    "weighted; see the module docstring) or 'rrf' (reciprocal ranks, k = 60).")
    vector_weight: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="Weight of the vector side in the linear fusion (BM25 gets the rest).")

    _db = PrivateAttr(default=None)

    def _table(self):
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.uri)
        lock = _locks.setdefault(self.uri, threading.Lock())
        with lock:
            try:
                table = self._db.open_table(TABLE)
            except (ValueError, FileNotFoundError):  # no table yet
                with write_lock(self.uri, TABLE):
                    table = self._db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
            if _needs_setup(table):
                with write_lock(self.uri, TABLE):
                    table.checkout_latest()
                    _migrate(table)
                    _ensure_fts(table)
        return table

    def delete_item(self, media_id: str) -> int:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        table = self._table()
        with write_lock(self.uri, TABLE):
            table.checkout_latest()
            before = table.count_rows(f"media_id = '{media_id}'")
            if before:
                table.delete(f"media_id = '{media_id}'")
        return before

    def upsert_partition(self, media_id: str, kind: str, rows: list[IndexRow], *,
                         origin: str) -> int:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        if not _ORIGIN.match(origin):
            raise ValueError(f"not an asset name: {origin!r}")
        table = self._table()
        for row in rows:
            if row.media_id != media_id or row.origin != origin:
                raise ValueError(f"row {row.id} belongs to {row.media_id}/{row.origin}, "
                                 f"not {media_id}/{origin}")
            if len(row.vector) != EMBEDDING_DIM:
                raise ValueError(f"row {row.id} has a {len(row.vector)}-d vector, not {EMBEDDING_DIM}")
        where = f"media_id = '{media_id}' AND origin = '{origin}'"
        if not rows:
            with write_lock(self.uri, TABLE):
                table.checkout_latest()
                table.delete(where)
            return 0
        data = pa.Table.from_pylist(
            [
                {**row.model_dump(exclude={"words"}), "id": row.id,
                 "words": json.dumps(row.words, separators=(",", ":"))}
                for row in rows
            ],
            schema=SCHEMA,
        )
        with write_lock(self.uri, TABLE):
            # Match against the newest version: a handle opened before another writer committed
            # would not see that writer's rows and insert them a second time.
            table.checkout_latest()
            if table.count_rows() < self.single_commit_max_rows:
                # One commit: new rows in, stale rows of this item and origin out.
                (
                    table.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(where)
                    .execute(data)
                )
            else:
                # A by-source delete makes merge_insert scan the whole table (1.5 s at 1M rows here);
                # upsert by id (uses the id index) then delete this item's rows that are not in the
                # new set (uses the media_id index): ~25 ms. Between the two commits, or if the second
                # fails (the asset then fails and is retried), the item can also show old rows with
                # higher chunk numbers; never duplicates, never a missing new row.
                table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
                keep = ", ".join(f"'{row.id}'" for row in rows)
                table.delete(f"{where} AND id NOT IN ({keep})")
            if self.uri not in _scalar_ready:
                self._ensure_scalar_indices(table)
        return table.count_rows(where)

    def _ensure_scalar_indices(self, table) -> list[str]:
        """Create the missing :data:`SCALAR_INDICES` (once the table has rows); return their
        columns."""
        if table.count_rows() == 0:
            return []
        have = {tuple(i.columns) for i in table.list_indices()}
        made = []
        for column, index_type in SCALAR_INDICES.items():
            if (column,) not in have:
                table.create_scalar_index(column, index_type=index_type, replace=False)
                made.append(column)
        _scalar_ready.add(self.uri)
        return made

    def _vector_index(self, table):
        return next((i for i in table.list_indices() if "vector" in i.columns), None)

    def maintain(self, *, cleanup_older_than: dt.timedelta = dt.timedelta(hours=24)) -> dict[str, Any]:
        """Keep the table fast as it grows: scalar indices, an ANN index past ``ann_min_rows``,
        compaction, index updates for new rows, removal of old versions.

        Args:
            cleanup_older_than: table versions older than this are deleted (a reader still on
                such a version would fail, so keep it well above the longest query or run).

        Returns:
            A JSON-ready dict: rows, versions before/after, fragments before/after, indices made,
            seconds per phase.
        """
        table = self._table()
        rows = table.count_rows()
        before = table.stats()
        versions_before = len(table.list_versions())
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with write_lock(self.uri, TABLE):
            made = self._ensure_scalar_indices(table)
        timings["scalar_index_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        # Not under the write lock: training the ANN index takes minutes at 1M rows, and Lance
        # lets appends and updates commit alongside an index build (new rows are scanned flat).
        if rows >= self.ann_min_rows and self._vector_index(table) is None:
            self._create_vector_index(table, rows)
            made.append(VECTOR_INDEX)
        timings["ann_index_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        # Compaction rewrites fragments that a concurrent upsert may be updating: serialize.
        with write_lock(self.uri, TABLE), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table.checkout_latest()
            table.optimize(cleanup_older_than=cleanup_older_than)
        timings["optimize_s"] = round(time.perf_counter() - started, 3)
        after = table.stats()
        return {
            "rows": rows,
            "versions_before": versions_before,
            "versions_after": len(table.list_versions()),
            "fragments_before": before["fragment_stats"]["num_fragments"],
            "fragments_after": after["fragment_stats"]["num_fragments"],
            "small_fragments_after": after["fragment_stats"]["num_small_fragments"],
            "indices": sorted(i.name for i in table.list_indices()),
            "indices_created": made,
            "vector_index": self.ann_index_type if self._vector_index(table) else None,
            **timings,
        }

    def _create_vector_index(self, table, rows: int) -> None:
        # IVF partitions ~ sqrt(rows) (LanceDB's guidance), with >= 256 rows each to train
        # k-means.
        partitions = max(1, min(int(math.sqrt(rows)), rows // 256))
        if self.ann_index_type == "IVF_HNSW_SQ":
            table.create_index(metric="cosine", index_type="IVF_HNSW_SQ",
                               num_partitions=max(1, partitions // 4), name=VECTOR_INDEX)
        elif self.ann_index_type == "IVF_PQ":  # 48 sub-vectors of 8 dims
            table.create_index(metric="cosine", index_type="IVF_PQ", num_partitions=partitions,
                               num_sub_vectors=EMBEDDING_DIM // 8, name=VECTOR_INDEX)
        else:  # IVF_FLAT, IVF_SQ: partitions only, no codebook to train
            table.create_index(metric="cosine", index_type=self.ann_index_type,
                               num_partitions=partitions, name=VECTOR_INDEX)

    def nearest(self, vector: np.ndarray, *, limit: int = 10, exact: bool = False,
                kind: str | None = None) -> list[tuple[str, float]]:
        """Vector-only nearest rows: ``[(id, cosine distance)]``, closest first.

        ``exact`` bypasses the ANN index (a flat scan), the reference for recall; otherwise the
        query uses the index, if any, with this resource's ``nprobes`` and ``refine_factor``.
        """
        table = self._table()
        q = (table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
             .distance_type("cosine").select(["id", "_distance"]).limit(limit))
        q = q.bypass_vector_index() if exact else q.nprobes(self.nprobes).refine_factor(self.refine_factor)
        if kind:
            q = q.where(f"kind = '{kind}'", prefilter=True)
        return [(r["id"], float(r["_distance"])) for r in q.to_list()]

    def count(self, media_id: str | None = None) -> int:
        table = self._table()
        if media_id is None:
            return table.count_rows()
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        return table.count_rows(f"media_id = '{media_id}'")

    def search(self, query: str, vector: np.ndarray, *, kind: str | None = None,
               limit: int = 10) -> list[SearchHit]:
        table = self._table()
        if kind is not None and not _KIND_NAME.match(kind):  # it goes into a filter expression
            raise ValueError(f"not a kind name: {kind!r}")
        q = (
            table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(np.asarray(vector, dtype=np.float32))
            .text(query)
            .distance_type("cosine")
            .nprobes(self.nprobes)  # both only matter once an ANN index exists
            .refine_factor(self.refine_factor)
        )
        if self.fusion == "linear":
            from lancedb.rerankers import LinearCombinationReranker

            q = q.rerank(LinearCombinationReranker(weight=self.vector_weight), normalize="score")
        if kind:
            q = q.where(f"kind = '{kind}'", prefilter=True)
        hits = []
        # Each side (vector, BM25) returns CANDIDATES rows before fusion, then the
        # fused list is cut to ``limit``: fusing only ``limit`` rows per side let ties at a
        # small limit (3) put a weaker page ahead of the one holding the phrase.
        for row in q.limit(max(limit, CANDIDATES)).to_list()[:limit]:
            words = json.loads(row.get("words") or "[]")
            located = locate_phrase(query, words)
            start, end = located if located else (row["start_s"], row["end_s"])
            hits.append(
                SearchHit(
                    media_id=row["media_id"], kind=row["kind"], source_name=row["source_name"],
                    origin=row.get("origin"), chunk_index=row["chunk_index"], start_s=start,
                    end_s=end, chunk_start_s=row["start_s"], chunk_end_s=row["end_s"],
                    page=row["page"], box=row.get("box"),
                    text=row["text"], score=float(row["_relevance_score"]),
                )
            )
        return hits
