"""The search table's upkeep: the maintenance asset on a real LanceDB table, and search results
that stay right once an ANN index exists (recall against exact search on a synthetic table)."""

import dagster as dg
import numpy as np
import pytest

from narra_dagster.defs.search.maintenance import search_index_maintenance
from narra_dagster.resources.search_index import IndexRow, LanceSearchIndex

ITEMS, ROWS_PER_ITEM, DIM = 60, 40, 384


def _clustered(rng, n, centers):
    """Unit vectors around random centers, as real embeddings cluster by topic."""
    picks = centers[rng.integers(0, len(centers), n)]
    vectors = picks + rng.normal(scale=0.035, size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _key(i: int) -> str:
    return f"{i:016x}"


@pytest.fixture
def filled_index(tmp_path):
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(24, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    index = LanceSearchIndex(uri=str(tmp_path / "index"), ann_min_rows=1024, nprobes=8,
                             refine_factor=10)
    for i in range(ITEMS):  # one commit per item, as the assets write them
        vectors = _clustered(rng, ROWS_PER_ITEM, centers)
        index.upsert_partition(_key(i), "video", [
            IndexRow(media_id=_key(i), kind="video", origin="video_index_rows", chunk_index=j,
                     start_s=float(j), end_s=float(j + 1), text=f"item {i} chunk {j} topic",
                     vector=v.tolist())
            for j, v in enumerate(vectors)], origin="video_index_rows")
    return index, rng, centers


def test_maintenance_asset_compacts_and_indexes_a_real_table(filled_index):
    index, _, _ = filled_index
    with dg.instance_for_test() as instance:
        result = dg.materialize([search_index_maintenance], resources={"search_index": index},
                                instance=instance)
        assert result.success
        metadata = result.asset_materializations_for_node("search_index_maintenance")[0].metadata
    assert metadata["rows"].value == ITEMS * ROWS_PER_ITEM
    assert metadata["fragments_before"].value >= ITEMS  # one fragment per upsert commit
    assert metadata["fragments_after"].value < metadata["fragments_before"].value
    assert metadata["vector_index"].value == index.ann_index_type == "IVF_HNSW_SQ"
    assert {"id_idx", "media_id_idx", "origin_idx", "vector_idx"} <= set(metadata["indices"].value)
    assert index.count() == ITEMS * ROWS_PER_ITEM  # nothing lost or duplicated


def test_search_stays_right_with_an_ann_index(filled_index):
    index, rng, centers = filled_index
    index.maintain()
    queries = _clustered(rng, 40, centers)
    assert "ANNSubIndex" in index._table().search(queries[0]).nprobes(8).explain_plan()
    recalls = []
    for q in queries:
        exact = {i for i, _ in index.nearest(q, limit=10, exact=True)}
        approx = {i for i, _ in index.nearest(q, limit=10)}
        recalls.append(len(exact & approx) / 10)
    assert np.mean(recalls) >= 0.9, np.mean(recalls)

    # Rows written after the index was built are not in it yet, and are still found.
    fresh = _key(ITEMS + 1)
    vector = _clustered(rng, 1, centers)[0]
    index.upsert_partition(fresh, "video", [
        IndexRow(media_id=fresh, kind="video", origin="video_index_rows", chunk_index=0,
                 text="a brand new zeppelin", vector=vector.tolist())], origin="video_index_rows")
    assert index.nearest(vector, limit=1)[0][0].startswith(fresh)
    hits = index.search("zeppelin", vector, limit=3)
    assert hits[0].media_id == fresh
    # Re-upserting an item into the indexed table replaces its rows, never duplicates them.
    again = index.upsert_partition(_key(3), "video", [
        IndexRow(media_id=_key(3), kind="video", origin="video_index_rows", chunk_index=0,
                 text="replaced", vector=vector.tolist())], origin="video_index_rows")
    assert again == 1 and index.count(_key(3)) == 1
    index.maintain()
    assert index.count() == (ITEMS - 1) * ROWS_PER_ITEM + 2


@pytest.mark.parametrize("single_commit_max_rows", [0, 10**9])
def test_upserts_replace_an_items_rows_in_small_and_large_tables(tmp_path, single_commit_max_rows):
    """Large tables upsert by id then delete stale rows (two commits); small ones use one
    merge_insert. Both leave exactly the new rows of the item and touch no other item."""
    index = LanceSearchIndex(uri=str(tmp_path / "index"), single_commit_max_rows=single_commit_max_rows)
    rng = np.random.default_rng(1)

    def rows(key, n, text):
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [IndexRow(media_id=key, kind="video", origin="video_index_rows", chunk_index=j,
                         text=f"{text} {j}", vector=v.tolist()) for j, v in enumerate(vectors)]

    assert index.upsert_partition(_key(1), "video", rows(_key(1), 5, "other"), origin="video_index_rows") == 5
    for n, text in ((8, "first"), (3, "second"), (6, "third")):
        assert index.upsert_partition(_key(2), "video", rows(_key(2), n, text),
                                      origin="video_index_rows") == n
        assert index.count(_key(2)) == n
    table = index._table()
    texts = sorted(r["text"] for r in table.search().where(f"media_id = '{_key(2)}'").limit(100).to_list())
    assert texts == sorted(f"third {j}" for j in range(6))
    assert index.count(_key(1)) == 5 and index.count() == 11
