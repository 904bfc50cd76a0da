"""The search index: one LanceDB table of chunks from every media kind.

Each row is one searchable chunk with a locator (seconds for video and audio; a page for PDFs) and
a 384-d embedding. Writes are per partition: :meth:`LanceSearchIndex.upsert_partition` replaces
one item's rows in a single LanceDB commit (``merge_insert`` keyed on ``id`` with
``when_not_matched_by_source_delete`` limited to that item), so re-materializing an item never
duplicates rows, leaves no stale ones, and a failure leaves the previous rows intact.

Search is hybrid: a vector query (cosine distance on the unit-length embeddings) and a BM25
full-text query over ``text``, fused by LanceDB's default reciprocal-rank-fusion reranker
(RRF, Cormack et al. 2009, k = 60).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.media import is_partition_key
from narra_dagster.resources.embedder import EMBEDDING_DIM

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
        pa.field("text", pa.string()),
        # [[word, start_s, end_s], ...] as JSON: lets a hit point at the second a phrase is said.
        pa.field("words", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ]
)


class IndexRow(BaseModel):
    """One chunk as stored in the index; times in seconds, ``page`` 1-based (PDFs)."""

    media_id: str
    kind: str
    source_name: str | None = None
    chunk_index: int
    start_s: float | None = None
    end_s: float | None = None
    page: int | None = None
    text: str
    words: list[tuple[str, float, float]] = Field(default_factory=list)
    vector: list[float]

    @property
    def id(self) -> str:
        return f"{self.media_id}:{self.chunk_index:05d}"


class SearchHit(BaseModel):
    """One search result. ``start_s``/``end_s`` point at the matched words when the query's words
    occur in the chunk, else at the whole chunk (``chunk_start_s``/``chunk_end_s``)."""

    media_id: str
    kind: str
    source_name: str | None
    chunk_index: int
    start_s: float | None
    end_s: float | None
    chunk_start_s: float | None
    chunk_end_s: float | None
    page: int | None
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
    def upsert_partition(self, media_id: str, kind: str, rows: list[IndexRow]) -> int:
        """Make the index hold exactly ``rows`` for ``media_id``; return the row count after.

        Raises:
            ValueError: when a row belongs to another item or has the wrong vector length.
        """

    @abstractmethod
    def count(self, media_id: str | None = None) -> int:
        """Rows in the index, for one item or all."""

    @abstractmethod
    def search(self, query: str, vector: np.ndarray, *, kind: str | None = None,
               limit: int = 10) -> list[SearchHit]:
        """Hybrid search. ``vector`` is the query's float32 [384] unit embedding."""


_locks: dict[str, threading.Lock] = {}


class LanceSearchIndex(SearchIndex):
    """LanceDB at a local path (or any URI LanceDB accepts), one table ``chunks``."""

    uri: str = Field(
        default_factory=lambda: str(settings.index_dir()),
        description="LanceDB database location; default $NARRA_HOME/index.",
    )

    _db = PrivateAttr(default=None)

    def _table(self):
        import lancedb

        if self._db is None:
            self._db = lancedb.connect(self.uri)
        lock = _locks.setdefault(self.uri, threading.Lock())
        with lock:
            table = self._db.create_table(TABLE, schema=SCHEMA, exist_ok=True)
            if not any(i.index_type == "FTS" for i in table.list_indices()):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # New rows stay searchable before they are indexed: Lance scans them flat.
                    table.create_fts_index("text", replace=True)
        return table

    def upsert_partition(self, media_id: str, kind: str, rows: list[IndexRow]) -> int:
        if not is_partition_key(media_id):
            raise ValueError(f"not a partition key: {media_id!r}")
        table = self._table()
        for row in rows:
            if row.media_id != media_id:
                raise ValueError(f"row {row.id} belongs to {row.media_id}, not {media_id}")
            if len(row.vector) != EMBEDDING_DIM:
                raise ValueError(f"row {row.id} has a {len(row.vector)}-d vector, not {EMBEDDING_DIM}")
        where = f"media_id = '{media_id}'"
        if not rows:
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
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(where)
            .execute(data)
        )
        return table.count_rows(where)

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
        if kind is not None and kind not in ("video", "image", "document"):
            raise ValueError(f"unknown kind: {kind!r}")
        q = (
            table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(np.asarray(vector, dtype=np.float32))
            .text(query)
            .distance_type("cosine")
        )
        if kind:
            q = q.where(f"kind = '{kind}'", prefilter=True)
        hits = []
        for row in q.limit(limit).to_list():
            words = json.loads(row.get("words") or "[]")
            located = locate_phrase(query, words)
            start, end = located if located else (row["start_s"], row["end_s"])
            hits.append(
                SearchHit(
                    media_id=row["media_id"], kind=row["kind"], source_name=row["source_name"],
                    chunk_index=row["chunk_index"], start_s=start, end_s=end,
                    chunk_start_s=row["start_s"], chunk_end_s=row["end_s"], page=row["page"],
                    text=row["text"], score=float(row["_relevance_score"]),
                )
            )
        return hits
