"""Reprocessing: every asset has a code version, and changing a model or chunking setting marks
the partitions made with the old one stale, through Dagster's own staleness (data versions)."""

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.observe import observe
from dagster._core.loader import LoadingContextForTest

from narra_dagster.defs.video import chunking
from narra_dagster.defs.search.settings import settings_assets
from narra_dagster.definitions import build_defs
from narra_dagster.resources import FasterWhisperTranscriber, OnnxTextEmbedder

from .conftest import ingest_and_materialize

VIDEO = ["video_source", "video_audio", "video_transcript", "video_chunks",
         "video_chunk_embeddings", "video_index_rows"]


def _status(instance, graph, key):
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    out = {}
    for name in VIDEO:
        status = resolver.get_status(dg.AssetKey(name), key)
        causes = [c.reason for c in resolver.get_stale_root_causes(dg.AssetKey(name), key)]
        out[name] = (status, causes)
    return out


def test_every_asset_has_a_code_version(home):
    graph = build_defs().resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        assert graph.get(key).code_version, key


def test_changing_a_model_or_the_chunking_marks_partitions_stale(home, resources, speech_video,
                                                                 instance, monkeypatch):
    defs = build_defs(resources)
    graph = defs.resolve_asset_graph()
    settings_resources = {"transcriber": resources["transcriber"], "embedder": resources["embedder"]}
    assert observe(settings_assets, instance=instance, resources=settings_resources).success
    key, result = ingest_and_materialize(speech_video[0], resources, instance)
    assert result.success
    assert {n: s for n, (s, _) in _status(instance, graph, key).items()} == {
        n: StaleStatus.FRESH for n in VIDEO}

    # Observing the same settings again changes nothing.
    assert observe(settings_assets, instance=instance, resources=settings_resources).success
    assert all(s == StaleStatus.FRESH for s, _ in _status(instance, graph, key).values())

    # Another transcription model (here: another precision) is configured and observed.
    other = FasterWhisperTranscriber(model_path=resources["transcriber"].model_path,
                                     compute_type="float32")
    assert observe(settings_assets, instance=instance,
                   resources={**settings_resources, "transcriber": other}).success
    status = _status(instance, graph, key)
    assert status["video_source"][0] == status["video_audio"][0] == StaleStatus.FRESH
    assert status["video_transcript"][0] == StaleStatus.STALE
    assert status["video_transcript"][1] == ["has a new data version"] or any(
        "data version" in c for c in status["video_transcript"][1]), status["video_transcript"]
    # Dagster marks the asset whose input changed; what follows it becomes stale once that
    # asset is re-materialized with a new data version, so a backfill selects the stage and
    # everything downstream (README, "Reprocessing").
    assert [n for n in VIDEO if status[n][0] == StaleStatus.STALE] == ["video_transcript"]

    # Back to the original model, then a chunking limit changes: only chunks and after.
    assert observe(settings_assets, instance=instance, resources=settings_resources).success
    assert all(s == StaleStatus.FRESH for s, _ in _status(instance, graph, key).values())
    monkeypatch.setattr(chunking, "MAX_CHUNK_WORDS", 25)
    assert observe(settings_assets, instance=instance, resources=settings_resources).success
    status = _status(instance, graph, key)
    assert [n for n in VIDEO if status[n][0] == StaleStatus.STALE] == ["video_chunks"]
    # Another embedding model (a different token limit) marks the embeddings.
    monkeypatch.undo()
    embedder = OnnxTextEmbedder(max_length=128)
    assert observe(settings_assets, instance=instance,
                   resources={**settings_resources, "embedder": embedder}).success
    status = _status(instance, graph, key)
    assert [n for n in VIDEO if status[n][0] == StaleStatus.STALE] == ["video_chunk_embeddings"]
