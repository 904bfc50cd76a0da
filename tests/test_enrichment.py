"""Transcript enrichment on the committed sample video: language, keywords, extractive summary."""

import json

import dagster as dg
import numpy as np

from tests.support.chains import video_assets
from narra_dagster.defs.video.enrichment import video_enrichment
from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.core.summarize import extractive_summary, mmr

from .conftest import SAMPLE_VIDEO


def test_mmr_skips_a_near_repeat():
    a, c = np.eye(3, dtype=np.float32)[0], np.eye(3, dtype=np.float32)[2]
    repeat = np.array([0.999, 0.0447, 0.0], np.float32)
    repeat /= np.linalg.norm(repeat)
    vectors = np.stack([a, repeat, c])
    target = (a + 0.5 * c) / np.linalg.norm(a + 0.5 * c)
    relevance = vectors @ target
    assert set(np.argsort(-relevance)[:2]) == {0, 1}  # relevance alone takes a and its repeat
    picks = mmr(vectors, target, 2, lam=0.5)
    assert picks[0].index == 0 and picks[1].index == 2  # MMR takes a, then c
    summary = extractive_summary(["c first", "a", "repeat"], vectors[[2, 0, 1]], 2, lam=0.5)
    # against the centroid: one of a / its repeat, and c; returned in text order
    indices = [p.index for p in summary]
    assert indices == sorted(indices) and indices[0] == 0 and indices[1] in (1, 2)


def test_sample_video_gets_language_keywords_and_a_located_summary(resources, instance):
    timeline = json.loads(SAMPLE_VIDEO.with_suffix(".json").read_text())
    store = resources["media_store"]
    key = store_upload(SAMPLE_VIDEO, store).partition_key
    instance.add_dynamic_partitions("videos", [key])
    result = dg.materialize([*video_assets, video_enrichment], partition_key=key,
                            resources={k: v for k, v in resources.items() if k != "inbox"},
                            instance=instance)
    assert result.success
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key == dg.AssetKey("video_enrichment")]
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["language"] == "en"
    assert "(language: en)" in metadata["summary"]

    enrichment = store.read_json(key, "enrichment.json")
    assert 3 <= len(enrichment["summary"]) <= 5
    for sentence in enrichment["summary"]:
        # each summary sentence is located at the second it is spoken
        words = set(sentence["text"].lower().split())
        spoken = max(timeline, key=lambda s: len(words & set(s["text"].lower().split())))
        assert abs(sentence["locator"] - spoken["start_s"]) < 1.0, (sentence, spoken)
    assert [s["locator"] for s in enrichment["summary"]] == sorted(
        s["locator"] for s in enrichment["summary"])
    phrases = [k["phrase"] for k in enrichment["keywords"]]
    assert len(phrases) == 8 and len(set(phrases)) == 8
    # Keywords are phrases of the transcript, nothing else; tiny.en mishears a word or two of
    # espeak-ng ("wading" for "waiting"), so most, not all, are also in what was synthesized.
    transcript = " ".join(s["text"] for s in store.read_json(key, "transcript.json")["segments"])
    assert all(p in transcript.lower() for p in phrases), (phrases, transcript)
    spoken = " ".join(s["text"].lower() for s in timeline)
    assert sum(p in spoken for p in phrases) >= 6, (phrases, spoken)
    assert store.read_bytes(key, "enrichment.md").decode() == metadata["summary"]
