"""The LanceDB index on disk: per-partition upserts, stale rows, hybrid search, locators."""

import numpy as np
import pytest

from narra_dagster.resources import LanceSearchIndex
from narra_dagster.resources.search_index import IndexRow, locate_phrase

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def _rows(media_id, texts, embedder, kind="video"):
    vectors = embedder.embed(texts)
    return [IndexRow(media_id=media_id, kind=kind, source_name=f"{media_id}.mp4", chunk_index=i,
                     start_s=10.0 * i, end_s=10.0 * i + 9, text=t,
                     words=[(w, 10.0 * i + k, 10.0 * i + k + 0.5) for k, w in enumerate(t.split())],
                     vector=v.tolist())
            for i, (t, v) in enumerate(zip(texts, vectors))]


def test_upsert_replaces_a_partition_and_leaves_others(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    a = _rows(A, ["the red fox runs", "the blue whale sings", "a green frog jumps"], embedder)
    b = _rows(B, ["coffee in the morning"], embedder)
    assert index.upsert_partition(A, "video", a) == 3
    assert index.upsert_partition(B, "video", b) == 1
    assert index.upsert_partition(A, "video", a) == 3  # idempotent: no duplicates
    assert index.upsert_partition(A, "video", a[:2]) == 2  # stale third row removed
    assert index.count() == 3 and index.count(B) == 1
    assert index.upsert_partition(A, "video", []) == 0
    assert index.count() == 1
    with pytest.raises(ValueError):
        index.upsert_partition(A, "video", b)
    with pytest.raises(ValueError):
        index.count("x' OR '1'='1")


def test_hybrid_search_ranks_the_right_chunk_and_filters_kind(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    index.upsert_partition(A, "video", _rows(A, ["an astronaut floats above the planet",
                                                 "a rocket launches with a trail of fire"], embedder))
    index.upsert_partition(B, "document", _rows(B, ["a rocket engine manual"], embedder, "document"))
    query = "rocket launch"
    hits = index.search(query, embedder.embed([query])[0], limit=5)
    assert hits[0].media_id in (A, B) and "rocket" in hits[0].text
    video_hits = index.search(query, embedder.embed([query])[0], kind="video", limit=5)
    assert {h.kind for h in video_hits} == {"video"}
    assert video_hits[0].chunk_index == 1
    assert video_hits[0].start_s == 11.0  # "rocket" is the second word of the chunk at 10 s
    with pytest.raises(ValueError):
        index.search(query, np.zeros(384, np.float32), kind="spreadsheet")


def test_locate_phrase_ignores_stop_words_and_matches_word_forms():
    words = [(w, float(i), i + 0.5) for i, w in
             enumerate("The orange cat sleeps all afternoon in the warm sun.".split())]
    assert locate_phrase("cat sleeping", words) == (2.0, 3.5)
    assert locate_phrase("the warm sun", words) == (8.0, 9.5)
    assert locate_phrase("quantum physics", words) is None
    assert locate_phrase("", words) is None
