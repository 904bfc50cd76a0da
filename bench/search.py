"""Section 4: the LanceDB index at 10k / 100k / 1M synthetic 384-d rows.

Rows look like the project's (same schema, ids, FTS on text) with vectors drawn around random
topic centres and L2-normalized, since real embeddings cluster by topic (uniform random vectors
have no near neighbours and are the worst case for any ANN index). Queries are fresh samples
of the same distribution. Per size: p50/p95 latency of exact (flat) vector search, of the ANN
index (the project's defaults: IVF_PQ cosine, nprobes, refine_factor), and of the hybrid query
`narra search` runs; recall@10 of the ANN results against exact search; the time to upsert one
item's rows (40) into the table. Tables are cached under the work folder (``search/<rows>``), so
reruns skip the build.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.common import log, percentile

DIM = 384
WORDS = ("coffee rocket cat garden astronaut horse moon coins train bread harbour brick gravel "
         "field morning kitchen planet trail fire table station sun wall water").split()


def _vectors(rng, centers, n):
    picks = centers[rng.integers(0, len(centers), n)]
    v = picks + rng.normal(scale=0.035, size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _centers(n_rows: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(32, n_rows // 500), DIM)).astype(np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def build_table(folder: Path, rows: int, index_kwargs: dict) -> dict:
    """Fill a fresh table with ``rows`` synthetic rows and run maintain() (indices); cached."""
    import pyarrow as pa

    from narra_dagster.resources.search_index import SCHEMA, LanceSearchIndex

    marker = folder / "built.json"
    if marker.exists():
        return json.loads(marker.read_text())
    index = LanceSearchIndex(uri=str(folder), ann_min_rows=256, **index_kwargs)
    table = index._table()
    rng = np.random.default_rng(2)
    centers = _centers(rows)
    started = time.perf_counter()
    per_item, chunk = 40, 50_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        vectors = _vectors(rng, centers, n)
        ids = np.arange(start, start + n)
        media = [f"{i // per_item:016x}" for i in ids]
        words = rng.integers(0, len(WORDS), size=(n, 6))
        data = pa.table({
            "id": [f"{m}:video_index_rows:{i % per_item:05d}" for m, i in zip(media, ids)],
            "media_id": media, "kind": ["video"] * n, "source_name": [None] * n,
            "chunk_index": pa.array(ids % per_item, pa.int32()),
            "start_s": (ids % per_item).astype(float), "end_s": (ids % per_item + 1).astype(float),
            "page": pa.nulls(n, pa.int32()), "box": pa.nulls(n, pa.list_(pa.float32(), 4)),
            "origin": ["video_index_rows"] * n,
            "text": [" ".join(WORDS[w] for w in row) for row in words],
            "words": ["[]"] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
        }, schema=SCHEMA)
        table.add(data)
        log(f"search table {rows}: {start + n} rows written")
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    report = index.maintain()
    built = {"rows": rows, "write_s": round(write_s, 1), "maintain_s": round(time.perf_counter() - started, 1),
             "maintain": report}
    marker.write_text(json.dumps(built))
    return built


def measure(work: Path, sizes: list[int], *, queries: int = 100, ann_index_type: str | None = None,
            nprobes: int | None = None, refine_factor: int | None = None) -> list[dict]:
    """Defaults: the project's (LanceSearchIndex's) ANN index type, nprobes and refine_factor."""
    from narra_dagster.resources.search_index import IndexRow, LanceSearchIndex

    defaults = LanceSearchIndex(uri=str(work / "search"))
    ann_index_type = ann_index_type or defaults.ann_index_type
    nprobes = nprobes or defaults.nprobes
    refine_factor = refine_factor or defaults.refine_factor
    out = []
    for rows in sizes:
        folder = work / "search" / f"{rows}-{ann_index_type.lower()}"
        kwargs = {"ann_index_type": ann_index_type, "nprobes": nprobes, "refine_factor": refine_factor}
        log(f"search table {rows}: building (cached)")
        built = build_table(folder, rows, kwargs)
        index = LanceSearchIndex(uri=str(folder), **kwargs)
        rng = np.random.default_rng(3)
        qs = _vectors(rng, _centers(rows), queries)
        texts = [" ".join(WORDS[w] for w in rng.integers(0, len(WORDS), 2)) for _ in range(queries)]
        index.nearest(qs[0]), index.nearest(qs[0], exact=True), index.search(texts[0], qs[0])  # warm
        flat, ann, hybrid, recalls = [], [], [], []
        for q, text in zip(qs, texts):
            t = time.perf_counter()
            exact = index.nearest(q, limit=10, exact=True)
            flat.append(time.perf_counter() - t)
            t = time.perf_counter()
            approx = index.nearest(q, limit=10)
            ann.append(time.perf_counter() - t)
            t = time.perf_counter()
            index.search(text, q, limit=10)
            hybrid.append(time.perf_counter() - t)
            recalls.append(len({i for i, _ in exact} & {i for i, _ in approx}) / 10)
        upserts = []
        for k in range(3):
            key = f"{0xbe00000000000000 + k:016x}"
            vectors = _vectors(rng, _centers(rows), 40)
            rows_ = [IndexRow(media_id=key, kind="video", origin="video_index_rows", chunk_index=j,
                              text="bench upsert", vector=v.tolist()) for j, v in enumerate(vectors)]
            t = time.perf_counter()
            index.upsert_partition(key, "video", rows_, origin="video_index_rows")
            upserts.append(time.perf_counter() - t)
            index.upsert_partition(key, "video", [], origin="video_index_rows")
        ms = lambda values, q: round(1000 * percentile(values, q), 2)  # noqa: E731
        out.append({
            "rows": rows, "ann_index": ann_index_type, "nprobes": nprobes,
            "refine_factor": refine_factor, "queries": queries,
            "flat_p50_ms": ms(flat, 50), "flat_p95_ms": ms(flat, 95),
            "ann_p50_ms": ms(ann, 50), "ann_p95_ms": ms(ann, 95),
            "hybrid_p50_ms": ms(hybrid, 50), "hybrid_p95_ms": ms(hybrid, 95),
            "recall_at_10": round(float(np.mean(recalls)), 3),
            "upsert_40_rows_ms": round(1000 * float(np.median(upserts)), 1),
            "build": built,
        })
        log(f"search {rows}: flat p50 {out[-1]['flat_p50_ms']} ms, ann p50 {out[-1]['ann_p50_ms']} ms, "
            f"recall {out[-1]['recall_at_10']}")
    return out
