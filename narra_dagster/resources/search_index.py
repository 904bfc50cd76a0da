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

Search is hybrid: a BM25 full-text query over ``text`` and a vector query (cosine on the
unit-length embeddings) each return ``candidates_per_side`` rows (two threads); every candidate
is then scored by :mod:`narra_dagster.resources.ranking`: BM25 relative to the query's best, the
exact cosine, the share of the query's words the row holds and the longest in-order run of them
(weights in :class:`~narra_dagster.resources.ranking.Weights`). At most one hit is kept per place
(page, image, stretch of a recording), and hits below ``min_relevance`` (a [0, 1] relevance that
means the same for every query) are left out, so a query about nothing indexed answers no hits.
Measured by ``python -m bench --only relevance`` (170 judged queries, 40 absent-topic ones; the
README gives the table): MRR@10 0.94 against 0.86 for BM25 alone, 0.64 for dense alone and 0.77
for their reciprocal-rank fusion; before, LanceDB's hybrid query with its RRF reranker scored 0.79
(it ranked a page holding the exact phrase below pages only the vector side liked) and with its
linear-combination reranker 0.90.

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
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.embedder import EMBEDDING_DIM
from narra_dagster.resources.index_lock import write_lock
from narra_dagster.resources.ranking import (MIN_RELEVANCE, QueryTerms, Weights, locate_phrase,
                                             locate_text, locate_words, same_place,
                                             score_candidates)

__all__ = ["IndexRow", "LanceSearchIndex", "SearchHit", "SearchIndex", "locate_phrase"]

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
    """One search result.

    Locators: ``start_s``/``end_s`` (seconds) point at the best-matching span of spoken words when
    the query's words are spoken in the chunk, else at the whole chunk (``chunk_start_s``/
    ``chunk_end_s``); ``page`` is 1-based; ``box`` is ``[x0, y0, x1, y1]`` in pixels of the image
    or frame; ``match`` is ``[char_start, char_end)`` of the best-matching span in ``text`` (None
    when no query word occurs in it, e.g. a paraphrase).

    ``score`` orders the hits of one query (it is relative to the other candidates);
    ``relevance`` in [0, 1] means the same for every query and is what to threshold (see
    :mod:`narra_dagster.resources.ranking`)."""

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
    match: tuple[int, int] | None = None
    score: float
    relevance: float = 0.0


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
               limit: int = 10, min_relevance: float | None = None) -> list[SearchHit]:
        """Hybrid search, best first, at most one hit per place (page, image, stretch of a
        recording). ``vector`` is the query's float32 [384] unit embedding; hits whose relevance
        is below ``min_relevance`` (None: the backend's default, 0 keeps all) are left out, so a
        query about nothing indexed answers ``[]``."""

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
# Per database URI: the table has every column of SCHEMA and its full-text index.
_set_up: set[str] = set()

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
        default=10_000, ge=256,
        description="Rows from which maintain() builds an ANN index; below it exact search is "
                    "fast enough. python -m bench --only search on 2 cores: a flat scan takes "
                    "21 ms (p50) at 10k rows and 126 ms at 100k, the ANN index 11-12 ms at both.")
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
    candidates_per_side: int = Field(
        default=CANDIDATES, ge=1, le=1000,
        description="Rows each side (BM25, vector) returns before they are scored together.")
    bm25_weight: float = Field(default=Weights.bm25, ge=0.0,
                               description="Weight of BM25 (relative to the query's best).")
    vector_weight: float = Field(default=Weights.cosine, ge=0.0,
                                 description="Weight of the cosine similarity.")
    coverage_weight: float = Field(default=Weights.coverage, ge=0.0,
                                   description="Weight of the share of query words in the row.")
    phrase_weight: float = Field(default=Weights.phrase, ge=0.0,
                                 description="Weight of the longest in-order run of query words.")
    collapse: bool = Field(default=True, description="At most one hit per page, image or "
                                                     "stretch of a recording (3 s apart).")
    min_relevance: float = Field(
        default=MIN_RELEVANCE, ge=0.0, le=1.0,
        description="Hits below this relevance are left out; 0 keeps all.")

    _db = PrivateAttr(default=None)

    def _table(self):
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.uri)
        lock = _locks.setdefault(self.uri, threading.Lock())
        with lock:
            try:
                table = self._db.open_table(TABLE)
            except (ValueError, FileNotFoundError):  # no table yet (or it was removed)
                with write_lock(self.uri, TABLE):
                    table = self._db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
                _set_up.discard(self.uri)
                _scalar_ready.discard(self.uri)
            if self.uri not in _set_up:  # checked once per process per table: lists indices
                if _needs_setup(table):
                    with write_lock(self.uri, TABLE):
                        table.checkout_latest()
                        _migrate(table)
                        _ensure_fts(table)
                _set_up.add(self.uri)
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
               limit: int = 10, min_relevance: float | None = None) -> list[SearchHit]:
        """Hybrid search (see the module docstring for the method and its sources).

        Args:
            query: the search text; any characters (the full-text side falls back to its words
                when the query parser refuses it); one without a word answers ``[]``. Its first
                64 words are matched.
            vector: float32 [384] unit embedding of ``query``.
            kind: only rows of this kind.
            limit: at most this many hits.
            min_relevance: leave out hits below this relevance ([0, 1]); None uses
                ``min_relevance`` of this resource, 0 keeps every hit.

        Raises:
            ValueError: when ``kind`` is not a kind name.
        """
        if kind is not None and not _KIND_NAME.match(kind):  # it goes into a filter expression
            raise ValueError(f"not a kind name: {kind!r}")
        terms = QueryTerms(query)
        if not terms.tokens:  # blank or punctuation only: nothing to look for
            return []
        threshold = self.min_relevance if min_relevance is None else min_relevance
        # Deeper than `limit`, so a large limit is not cut at the candidates' count.
        rows = self.candidates(query, vector, kind=kind,
                               depth=max(self.candidates_per_side, 2 * limit))
        hits: list[SearchHit] = []
        kept: list[dict] = []
        for s in score_candidates(terms, rows, self._weights()):
            if s.relevance < threshold:
                continue
            row = s.row
            located = locate_words(terms, json.loads(row.get("words") or "[]"))
            start, end = located if located else (row["start_s"], row["end_s"])
            place = {"media_id": row["media_id"], "page": row["page"], "start_s": start,
                     "end_s": end}
            if self.collapse and any(same_place(place, other) for other in kept):
                continue
            kept.append(place)
            hits.append(SearchHit(
                media_id=row["media_id"], kind=row["kind"], source_name=row["source_name"],
                origin=row.get("origin"), chunk_index=row["chunk_index"], start_s=start,
                end_s=end, chunk_start_s=row["start_s"], chunk_end_s=row["end_s"],
                page=row["page"], box=row.get("box"), text=row["text"],
                match=locate_text(terms, row["text"] or ""),
                score=round(s.score, 6), relevance=s.relevance))
            if len(hits) >= limit:
                break
        return hits

    def _weights(self) -> Weights:
        return Weights(bm25=self.bm25_weight, cosine=self.vector_weight,
                       coverage=self.coverage_weight, phrase=self.phrase_weight)

    def candidates(self, query: str, vector: np.ndarray, *, kind: str | None = None,
                   depth: int | None = None) -> list[dict]:
        """Both sides' candidate rows, merged: the top ``depth`` (default ``candidates``) of a
        BM25 full-text query on ``text`` and of a cosine nearest-neighbour query on ``vector``,
        each row with ``bm25`` (raw score, 0 when only the vector side found it) and ``cosine``
        (exact similarity to ``vector``, computed for every row). The two queries run on two
        threads (LanceDB releases the GIL)."""
        table = self._table()
        depth = depth or self.candidates_per_side
        vector = np.asarray(vector, dtype=np.float32)
        where = f"kind = '{kind}'" if kind else None

        words = QueryTerms(query).tokens

        def text_side():
            if not words:
                return None
            for text in (query, " ".join(words)):
                q = (table.search(text, query_type="fts", fts_columns="text")
                     .select([*_COLUMNS, "_score"]))
                if where:
                    q = q.where(where, prefilter=True)
                try:
                    return q.limit(depth).to_arrow()
                except (ValueError, RuntimeError):  # the query parser refused the text
                    continue
            return None

        def vector_side():
            q = (table.search(vector, vector_column_name="vector").distance_type("cosine")
                 .select([*_COLUMNS, "_distance"]).nprobes(self.nprobes)
                 .refine_factor(self.refine_factor))
            if where:
                q = q.where(where, prefilter=True)
            return q.limit(depth).to_arrow()

        text_future = _pool().submit(text_side)
        by_id: dict[str, dict] = {}
        for row in _rows_with_cosine(vector_side(), vector):
            by_id[row["id"]] = {**row, "bm25": 0.0}
        for row in _rows_with_cosine(text_future.result(), vector):
            by_id.setdefault(row["id"], row)["bm25"] = float(row.get("_score") or 0.0)
        return list(by_id.values())


def _rows_with_cosine(result, vector: np.ndarray) -> list[dict]:
    """Rows of an Arrow query result as dicts without their vector, each with ``cosine`` to
    ``vector`` (the vectors go to numpy in one piece, not as Python lists)."""
    if result is None or result.num_rows == 0:
        return []
    vectors = (result.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
               .reshape(result.num_rows, -1).astype(np.float32, copy=False))
    rows = result.drop_columns(["vector"]).to_pylist()
    for row, cosine in zip(rows, vectors @ vector):
        row["cosine"] = float(cosine)
    return rows


_COLUMNS = ["id", "media_id", "kind", "source_name", "chunk_index", "start_s", "end_s", "page",
            "box", "origin", "text", "words", "vector"]
_executor = None
_executor_lock = threading.Lock()


def _pool():
    """The threads that run the full-text side of searches (the calling thread runs the vector
    side); 8, so concurrent searches of an API server do not queue behind each other here."""
    global _executor
    with _executor_lock:
        if _executor is None:
            from concurrent.futures import ThreadPoolExecutor

            _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="narra-search")
    return _executor
