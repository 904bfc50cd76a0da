"""Batch runs: several videos in ONE run, one materialization per partition and asset, a bad item
failing alone with its classified error, and the UI's partition status counting both right."""

from pathlib import Path

import dagster as dg
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from narra_dagster.defs.video.assets import CHECK_INDEX_ROWS, video_index_rows
from narra_dagster import registry
from narra_dagster.core import dagster_private
from narra_dagster.core.batch import BATCH_TAG, MAX_BATCH_ITEMS, MAX_BATCH_MEDIA_S, plan_batches
from narra_dagster.definitions import build_defs
from narra_dagster.app.processing import process_files
from narra_dagster.app.status import partition_status
from narra_dagster.defs.video.partitions import videos
from tests.support.media import make_talking_video


def _status(instance, asset_key):
    value = get_and_update_asset_status_cache_value(instance, asset_key, videos)
    materialized = set(value.deserialize_materialized_partition_subsets(videos).get_partition_keys())
    failed = set(value.deserialize_failed_partition_subsets(videos).get_partition_keys())
    return materialized, failed


def test_batch_job_exists_for_each_kind_with_stages():
    assert [kind.batch_job.name for kind in registry.KINDS][:1] == ["video_batch"]


def test_many_items_in_one_run_each_recorded_and_a_bad_one_fails_alone(
        resources, instance, silent_clip, tmp_path, embedder):
    clips = []
    for i, (sentence, photo) in enumerate([
        ("A fresh cup of coffee is waiting on the kitchen table.", "coffee"),
        ("A rocket launches from the coast with a bright trail of fire.", "rocket"),
    ]):
        clips.append(tmp_path / f"clip{i}.mp4")
        make_talking_video(clips[-1], [sentence], [photo])
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is a text file, not a video\n" * 20)
    defs = build_defs({k: v for k, v in resources.items()})

    results = process_files([*clips, silent_clip, fake], instance, defs)

    by_name = {r.source_name: r for r in results}
    run_ids = {r.run_id for r in results}
    assert len(run_ids) == 1  # one run for four items
    run = instance.get_run_by_id(run_ids.pop())
    assert run.job_name == "video_batch" and run.tags[BATCH_TAG] == "4"
    assert run.status == dg.DagsterRunStatus.FAILURE  # because one item failed
    good = [by_name[c.name] for c in clips] + [by_name[silent_clip.name]]
    assert all(r.status == "succeeded" for r in good), [(r.source_name, r.error) for r in good]
    # Every stage of the video group: transcript chain, keyframes and frame text, enrichment.
    assert set(good[0].steps) == {stage.name for stage in registry.get("video").stages}
    assert {"video_index_rows", "video_frame_index_rows", "video_enrichment"} <= set(good[0].steps)
    bad, silent = by_name["fake.mp4"], by_name[silent_clip.name]
    assert bad.status == "failed" and bad.error_class == "not_media", bad
    assert "video_source" in bad.error

    # Each item's start and end are marked in the run's event log, for a crashed run's retry.
    marks = dagster_private.item_marks(instance, run.run_id)
    assert [(m["narra/item"], m["narra/item_event"]) for m in marks] == [
        (r.partition_key, event) for r in [*good[:2], silent, bad] for event in ("started", "ended")]
    assert {m["narra/item"]: m["status"] for m in marks if m["narra/item_event"] == "ended"} == {
        **{r.partition_key: "succeeded" for r in good}, bad.partition_key: "failed"}

    good_keys = {r.partition_key for r in good}
    for asset in registry.get("video").stage_set.assets:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=list(good_keys)), limit=50
        ).records
        assert sorted(r.partition_key for r in records) == sorted(good_keys), asset.key
        # recorded with the asset's code version, as a per-item run records it
        assert {r.asset_materialization.tags["dagster/code_version"] for r in records} == {
            asset.code_versions_by_key[asset.key]}
        materialized, failed = _status(instance, asset.key)
        assert materialized == good_keys
        assert failed == {bad.partition_key}  # what the UI shows as failed partitions

    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(video_index_rows.key, CHECK_INDEX_ROWS)])
    assert evaluation  # checks are recorded too
    for r in good[:2]:
        assert resources["search_index"].count(r.partition_key) >= 1
    hits = resources["search_index"].search("rocket launches", embedder.embed(["rocket launches"])[0])
    assert hits[0].media_id == by_name["clip1.mp4"].partition_key

    states = {i["media_id"]: i for i in partition_status(instance, defs)}
    assert states[bad.partition_key]["state"] == "failed"
    assert states[bad.partition_key]["last_run"]["error_class"] == "not_media"
    assert states[good[0].partition_key]["state"] == "searchable"

    # Running them again one per run (the sensor's way) still works and skips nothing needed.
    again = process_files([clips[0]], instance, defs, batch=False, force=True)
    assert again[0].status == "succeeded" and again[0].run_id != run.run_id


def test_thread_settings_follow_the_environment(monkeypatch):
    from narra_dagster.resources import Ct2TextEmbedder, FasterWhisperTranscriber, OnnxTextEmbedder
    from narra_dagster.core.threads import allow_spinning, cpu_cores, model_threads

    monkeypatch.delenv("NARRA_THREADS", raising=False)
    monkeypatch.setenv("NARRA_PARALLEL_RUNS", "2")
    assert model_threads() == max(1, cpu_cores() // 2)
    assert not allow_spinning(cpu_cores())
    monkeypatch.setenv("NARRA_THREADS", "1")
    assert OnnxTextEmbedder().threads == 1 and FasterWhisperTranscriber().threads == 1
    assert Ct2TextEmbedder().threads == 1
    monkeypatch.setenv("NARRA_THREADS", "zero")
    try:
        model_threads()
    except ValueError as exc:
        assert "NARRA_THREADS" in str(exc)
    else:
        raise AssertionError("a bad NARRA_THREADS must be refused")


def test_a_resource_that_cannot_be_set_up_is_the_reported_cause(resources, instance, tmp_path):
    """A run that fails before any step (a resource whose setup raises) reports the root cause,
    not an empty error: in the result, the JSON output and `narra status`."""
    import numpy as np
    from PIL import Image

    from narra_dagster.resources import OnnxImageClassifier

    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    missing = tmp_path / "nowhere" / "classifier.onnx"
    broken = OnnxImageClassifier(model_path=str(missing), labels_path=str(tmp_path / "labels.txt"))
    defs = build_defs({**resources, "image_classifier": broken})
    (result,) = process_files([photo], instance, defs)
    assert result.status == "failed"
    assert result.error_class == "resource_init"
    assert "could not be set up" in result.error and "classifier.onnx" in result.error
    (item,) = partition_status(instance, defs, result.partition_key)
    assert "classifier.onnx" in item["last_run"]["error"]


def test_new_items_are_cut_into_batches_by_count_and_declared_media_seconds(silent_clip):
    photos = [(f"p{i:02d}", None) for i in range(120)]
    assert [len(b) for b in plan_batches(photos)] == [MAX_BATCH_ITEMS, MAX_BATCH_ITEMS, 20]
    # A two-hour recording runs alone; the clips around it share runs up to 30 minutes.
    items = [("a", 600.0), ("b", 600.0), ("long", 7200.0), ("c", 300.0), ("d", 1500.0), ("e", 1.0)]
    assert plan_batches(items, max_media_s=MAX_BATCH_MEDIA_S) == [
        ["a", "b"], ["long"], ["c", "d"], ["e"]]
    assert sum(plan_batches(photos + items), []) == [k for k, _ in photos + items]
    # the duration a real file declares, read from its container header
    assert abs(registry.get("video").media_seconds(silent_clip) - 10.0) < 0.5
    assert registry.get("video").media_seconds(Path(__file__)) is None
