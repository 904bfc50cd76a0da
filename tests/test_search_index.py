"""The LanceDB index on disk: per-partition upserts, stale rows, hybrid search, locators."""

import numpy as np
import pytest

from narra_dagster.resources import LanceSearchIndex
from narra_dagster.resources.search_index import IndexRow, locate_phrase

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
ORIGIN = "video_index_rows"


def _rows(media_id, texts, embedder, kind="video", origin="video_index_rows"):
    vectors = embedder.embed(texts)
    return [IndexRow(media_id=media_id, kind=kind, origin=origin, source_name=f"{media_id}.mp4",
                     chunk_index=i,
                     start_s=10.0 * i, end_s=10.0 * i + 9, text=t,
                     words=[(w, 10.0 * i + k, 10.0 * i + k + 0.5) for k, w in enumerate(t.split())],
                     vector=v.tolist())
            for i, (t, v) in enumerate(zip(texts, vectors))]


def test_upsert_replaces_a_partition_and_leaves_others(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    a = _rows(A, ["the red fox runs", "the blue whale sings", "a green frog jumps"], embedder)
    b = _rows(B, ["coffee in the morning"], embedder)
    assert index.upsert_partition(A, "video", a, origin=ORIGIN) == 3
    assert index.upsert_partition(B, "video", b, origin=ORIGIN) == 1
    assert index.upsert_partition(A, "video", a, origin=ORIGIN) == 3  # idempotent: no duplicates
    assert index.upsert_partition(A, "video", a[:2], origin=ORIGIN) == 2  # stale third row removed
    assert index.count() == 3 and index.count(B) == 1
    assert index.upsert_partition(A, "video", [], origin=ORIGIN) == 0
    assert index.count() == 1
    with pytest.raises(ValueError):
        index.upsert_partition(A, "video", b, origin=ORIGIN)
    with pytest.raises(ValueError):
        index.count("x' OR '1'='1")


def test_hybrid_search_ranks_the_right_chunk_and_filters_kind(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    index.upsert_partition(A, "video", _rows(A, ["an astronaut floats above the planet",
                                                 "a rocket launches with a trail of fire"], embedder),
                           origin=ORIGIN)
    index.upsert_partition(B, "document", _rows(B, ["a rocket engine manual"], embedder, "document",
                                                "document_index_rows"), origin="document_index_rows")
    query = "rocket launch"
    hits = index.search(query, embedder.embed([query])[0], limit=5)
    assert hits[0].media_id in (A, B) and "rocket" in hits[0].text
    video_hits = index.search(query, embedder.embed([query])[0], kind="video", limit=5)
    assert {h.kind for h in video_hits} == {"video"}
    assert video_hits[0].chunk_index == 1
    assert video_hits[0].start_s == 11.0  # "rocket" is the second word of the chunk at 10 s
    # Kinds are the registry's to know: the application layer rejects an unknown one, the
    # index only refuses what is not a kind name at all (it goes into a filter expression).
    from narra_dagster.app.queries import search_text
    from narra_dagster.registry import UnknownKindError

    with pytest.raises(UnknownKindError, match="video"):
        search_text(query, embedder=embedder, search_index=index, kind="spreadsheet")
    with pytest.raises(ValueError):
        index.search(query, np.zeros(384, np.float32), kind="x' OR '1'='1")


def test_each_origin_of_an_item_owns_its_rows(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    index.upsert_partition(A, "video", _rows(A, ["spoken words", "more words"], embedder), origin=ORIGIN)
    frames = _rows(A, ["text on screen"], embedder, origin="video_frame_index_rows")
    frames[0].box = (1.0, 2.0, 30.0, 12.0)
    assert index.upsert_partition(A, "video", frames, origin="video_frame_index_rows") == 1
    assert index.count(A) == 3
    assert index.upsert_partition(A, "video", [], origin=ORIGIN) == 0  # frame rows stay
    assert index.count(A) == 1
    hit = index.search("text on screen", embedder.embed(["text on screen"])[0])[0]
    assert (hit.origin, hit.box) == ("video_frame_index_rows", [1.0, 2.0, 30.0, 12.0])
    with pytest.raises(ValueError):
        index.upsert_partition(A, "video", frames, origin=ORIGIN)  # rows of another origin
    with pytest.raises(ValueError):
        index.upsert_partition(A, "video", [], origin="x' OR '1'='1")


def test_a_table_from_before_origins_is_migrated(tmp_path, embedder):
    import lancedb
    import pyarrow as pa

    from narra_dagster.resources.search_index import SCHEMA, TABLE

    old_schema = pa.schema([f for f in SCHEMA if f.name not in ("box", "origin")])
    old = lancedb.connect(str(tmp_path / "index")).create_table(TABLE, schema=old_schema)
    row = _rows(A, ["an old transcript chunk"], embedder)[0]
    old.add([{**row.model_dump(exclude={"words", "box", "origin"}), "id": f"{A}:00000", "words": "[]"}])
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    hit = index.search("old transcript", embedder.embed(["old transcript"])[0])[0]
    assert hit.origin == ORIGIN and hit.box is None
    # Re-materializing the video replaces the old-id row instead of adding a second one.
    assert index.upsert_partition(A, "video", [row], origin=ORIGIN) == 1
    assert index.count() == 1


def test_locate_phrase_ignores_stop_words_and_matches_word_forms():
    words = [(w, float(i), i + 0.5) for i, w in
             enumerate("The orange cat sleeps all afternoon in the warm sun.".split())]
    assert locate_phrase("cat sleeping", words) == (2.0, 3.5)
    assert locate_phrase("the warm sun", words) == (8.0, 9.5)
    assert locate_phrase("quantum physics", words) is None
    assert locate_phrase("", words) is None


def test_nothing_relevant_answers_no_hits_and_each_hit_says_how_relevant(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    texts = ["the lighthouse keeper counts seagulls every morning",
             "a recipe for bread with sourdough and rye flour",
             "the rocket engine burns liquid oxygen and kerosene"]
    index.upsert_partition(A, "video", _rows(A, texts, embedder), origin=ORIGIN)
    pages = [IndexRow(media_id=B, kind="document", origin="document_index_rows", chunk_index=i,
                      page=7, text=t, vector=v.tolist())
             for i, (t, v) in enumerate(zip(["the seagulls of the harbour", "seagulls at the pier"],
                                            embedder.embed(["the seagulls of the harbour",
                                                            "seagulls at the pier"])))]
    index.upsert_partition(B, "document", pages, origin="document_index_rows")

    def search(query, **kw):
        return index.search(query, embedder.embed([query])[0], **kw)

    for absent in ("quarterly tax return deadline", "how do I tune a violin"):
        assert search(absent) == []  # "no good match"
        closest = search(absent, min_relevance=0)
        assert closest and all(0 <= h.relevance < index.min_relevance for h in closest)
    hits = search("keeper counts seagulls")
    assert hits[0].media_id == A and hits[0].relevance == 1.0
    assert hits[0].text[slice(*hits[0].match)] == "keeper counts seagulls"
    assert (hits[0].start_s, hits[0].end_s) == (2.0, 4.5)  # the three words, not the chunk
    # Both rows of page 7 match; one hit per page.
    assert [(h.media_id, h.page) for h in search("seagulls")].count((B, 7)) == 1
    assert len(search("seagulls", min_relevance=0)) >= 2
    # A paraphrase with no shared content word is found by meaning.
    para = search("birds counted by the man who tends the light at the coast", min_relevance=0)
    assert para[0].chunk_index == 0 and para[0].media_id == A


def test_queries_without_words_or_content_and_word_forms(tmp_path, embedder):
    index = LanceSearchIndex(uri=str(tmp_path / "index"))
    texts = ["international trade agreements were signed", "OK", "the person who called",
             "the rocket launches at dawn"]
    index.upsert_partition(A, "video", _rows(A, texts, embedder), origin=ORIGIN)

    def search(query, **kw):
        return index.search(query, embedder.embed([query])[0], **kw)

    for nothing in ("", "   ", "?", "--", "'"):
        assert search(nothing, min_relevance=0) == [], nothing
    # Stop words alone say nothing of relevance: no lexical match counts.
    assert all(h.relevance < 0.5 for h in search("the", min_relevance=0))
    assert search("the") == []
    # Word forms match by stem; a shared prefix of another word does not.
    assert search("launch")[0].chunk_index == 3
    assert not [h for h in search("internet", min_relevance=0) if h.chunk_index == 0
                and h.relevance >= 0.5]
    assert search("fox " * 300, min_relevance=0) is not None  # a long query is cut, not slow
