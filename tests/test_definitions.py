"""Smoke tests: the definitions load, and `dg check defs` accepts the project."""

import subprocess

import dagster as dg

from narra_dagster.definitions import build_defs

from .conftest import REPO, subprocess_env


def test_definitions_load(home):
    defs = build_defs()
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("video_pipeline")
    assert job.partitions_def.name == "videos"
    graph = defs.resolve_asset_graph()
    # Subsets: other kinds' chains (image, document, models) add their own assets and checks.
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "video_source", "video_audio", "video_transcript", "video_chunks",
        "video_chunk_embeddings", "video_index_rows", "search_index_maintenance",
        "transcription_model", "embedding_model", "chunking_settings"}
    assert defs.resolve_job_def("video_batch").name == "video_batch"
    # Upkeep and settings observation run on automation conditions, evaluated by one sensor.
    maintenance = graph.get(dg.AssetKey("search_index_maintenance"))
    assert "30 3 * * *" in str(maintenance.automation_condition)
    assert defs.resolve_sensor_def("narra_automation_sensor")
    assert {c.name for c in graph.asset_check_keys} >= {
        "transcript_confidence", "embeddings_shape_and_norm", "index_rows_match_chunks"}
    assert str(home) in defs.resources["media_store"].root


def test_dg_check_defs(home):
    done = subprocess.run(["dg", "check", "defs"], cwd=REPO, env=subprocess_env(home),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_automation_conditions_request_upkeep_and_observations_on_their_crons(home):
    """What ``narra_automation_sensor`` would launch: nothing at its first evaluation, the three
    settings observations once a 10-minute tick passes, the index upkeep once 03:30 passes."""
    import datetime as dt

    defs = build_defs()
    sensor = defs.resolve_sensor_def("narra_automation_sensor")
    target = sensor.asset_selection
    assert {k.to_user_string() for k in target.resolve(defs.resolve_asset_graph())} == {
        "search_index_maintenance", "transcription_model", "embedding_model", "chunking_settings"}
    assert defs.resolve_job_def("pipeline_settings_observation").graph.node_names()  # not empty

    def requested(result) -> set[str]:
        return {r.key.to_user_string() for r in result.results if r.true_subset.size}

    with dg.instance_for_test() as instance:
        start = dt.datetime(2026, 11, 30, 3, 21, tzinfo=dt.timezone.utc)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                  asset_selection=target, evaluation_time=start)
        assert requested(first) == set()
        at_325 = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=target, cursor=first.cursor,
            evaluation_time=start + dt.timedelta(minutes=4))
        assert requested(at_325) == set()
        at_331 = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=target, cursor=at_325.cursor,
            evaluation_time=start + dt.timedelta(minutes=10))
        assert requested(at_331) == {"search_index_maintenance", "transcription_model",
                                     "embedding_model", "chunking_settings"}
