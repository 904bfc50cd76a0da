"""Killing the process that is transcribing (SIGKILL) ends, after a run retry, in a materialized
partition with exactly the rows it should have: no duplicate, no orphaned temporary file.

A real ``dagster-daemon`` on the production instance (PostgreSQL) with short monitoring
intervals: the sensor starts the run; when its ``video_transcript`` step has started, the test
kills the run worker (the pid Dagster records on the step's events) with SIGKILL. The code
server notices the dead worker and fails the run; run retries start a new run from the failure
(``video_transcript`` onwards); ``free_slots_after_run_end_seconds`` frees the transcription
slot the dead run still held, so the retry is not blocked by it.
"""

import contextlib
import json
import os
import shutil
import signal

import dagster as dg
import lancedb
import pytest

from narra_dagster.core import pools
from tests.support.chains import video_assets
from narra_dagster.definitions import build_defs
from narra_dagster.resources.events import JsonlEventSink
from tests.support.chains import chain_for_kind
from narra_dagster.production import apply_pool_limits
from tests.support.media import make_talking_video

from .conftest import SPEECH_PHOTOS, SPEECH_SENTENCES, subprocess_env
from .services import daemon, pg_database, pg_env, production_dagster_home, wait_for

DEADLINE_S = 420


def _events(instance, run_id, event_type, step_key):
    return [e for e in instance.all_logs(run_id, of_type=event_type) if e.step_key == step_key]


def _wait_for_transcription(instance, proc, log):
    """(run, pid of its worker) once a video_pipeline run has started video_transcript."""
    def transcribing():
        assert proc.poll() is None, log.read_text()[-3000:]
        for run in instance.get_runs(dg.RunsFilter(job_name="video_pipeline")):
            started = _events(instance, run.run_id, dg.DagsterEventType.STEP_START,
                              "video_transcript")
            if started:
                return run, started[0].dagster_event.pid

    return wait_for(transcribing, DEADLINE_S, "the transcription step to start", interval_s=0.1,
                    on_timeout=lambda: log.read_text()[-3000:])


@contextlib.contextmanager
def _daemon_on_postgres(home, tmp_path, monkeypatch):
    """A real daemon on a fresh PostgreSQL instance with short run-monitoring intervals and run
    retries: yields (daemon process, instance, inbox, daemon log)."""
    with pg_database() as db:
        for k, v in pg_env(db).items():
            monkeypatch.setenv(k, v)
        dagster_home = production_dagster_home(
            home / "dagster",
            run_monitoring={"poll_interval_seconds": 5, "free_slots_after_run_end_seconds": 5},
            run_retries={"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False},
        )
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            apply_pool_limits(instance, {pools.TRANSCRIPTION: 1, pools.SEARCH_INDEX: 1})
        inbox = home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        log = tmp_path / "daemon.log"
        with daemon(subprocess_env(home), log) as proc, \
                dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            yield proc, instance, inbox, log


@pytest.mark.daemon
def test_sigkill_during_transcription_recovers_cleanly(home, tmp_path, monkeypatch):
    # About a minute of speech, so that transcription lasts long enough to be interrupted.
    video = tmp_path / "long_talk.mp4"
    make_talking_video(video, SPEECH_SENTENCES * 3, SPEECH_PHOTOS * 3)
    with _daemon_on_postgres(home, tmp_path, monkeypatch) as (proc, instance, inbox, log):
        shutil.copyfile(video, inbox / "long_talk.mp4.part")
        (inbox / "long_talk.mp4.part").rename(inbox / "long_talk.mp4")

        first, pid = _wait_for_transcription(instance, proc, log)
        os.kill(pid, signal.SIGKILL)

        def retried_and_done():
            assert proc.poll() is None, log.read_text()[-3000:]
            runs = instance.get_runs(dg.RunsFilter(job_name="video_pipeline"))
            done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            return done and (runs, done[0])

        runs, final = wait_for(retried_and_done, DEADLINE_S, "a successful retry", interval_s=2,
                               on_timeout=lambda: log.read_text()[-4000:])
        first = instance.get_run_by_id(first.run_id)
        # The killed run: failed, with the transcription step started and never finished.
        assert first.status == dg.DagsterRunStatus.FAILURE
        assert not _events(instance, first.run_id, dg.DagsterEventType.STEP_SUCCESS,
                           "video_transcript")
        assert not _events(instance, first.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION,
                           "video_transcript")
        # The retry: a new run of the same partition, started from the failure.
        assert final.run_id != first.run_id
        assert final.tags["dagster/partition"] == first.tags["dagster/partition"]
        assert final.tags.get("dagster/root_run_id") == first.run_id
        assert len(runs) <= 3
        key = first.tags["dagster/partition"]
        for asset in video_assets:
            assert instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[key]), limit=1).records

        # The domain events the daemon's sensor published: the crashed attempt is not final
        # (run retries will retry it), so no analysis.failed; the retry completes the item.
        sink = JsonlEventSink(path=str(home / "events" / "events.jsonl"))

        def completed():
            return [e["type"] for e in sink.read() if e["media_id"] == key
                    and e["type"] == "analysis.completed"]

        wait_for(completed, 60, "analysis.completed to be published")
        types = [e["type"] for e in sink.read() if e["media_id"] == key]
        stages = [a.key.to_user_string() for a in video_assets]
        # The transcript chain: source and audio before the crash, the rest after the
        # retry; every stage of the video group (frames, enrichment too) completed once.
        chain = [k.to_user_string() for k in chain_for_kind(build_defs(), "video")]
        core = [t for t in types if t.removesuffix(".completed") in stages or
                t.startswith("analysis.")]
        assert core == (["analysis.started"] + [f"{s}.completed" for s in stages[:2]]
                        + ["analysis.retrying"] + [f"{s}.completed" for s in stages[2:]]
                        + ["analysis.completed"]), types
        done = [t for t in types if t.endswith(".completed") and not t.startswith("analysis.")]
        assert sorted(done) == sorted(f"{s}.completed" for s in chain), types

        # Exactly the rows it should have: one per chunk, no duplicate id, and no temp file.
        media = home / "media" / key
        chunks = (media / "chunks.json").read_text()
        n_chunks = len(json.loads(chunks))
        ids = lancedb.connect(str(home / "index")).open_table("chunks").to_arrow()["id"].to_pylist()
        transcript_ids = [i for i in ids if ":video_index_rows:" in i]
        assert len(ids) == len(set(ids)) and len(transcript_ids) == n_chunks > 0
        assert sorted(p.name for p in media.iterdir() if p.name.endswith(".tmp")) == []
        frames = [p.name for p in media.iterdir() if p.name.endswith(".webp")]
        assert frames and all(n.startswith(("frame_", "thumb_")) for n in frames)
        assert sorted(p.name for p in media.iterdir() if not p.name.endswith(".webp")) == sorted(
            ["source", "manifest.json", "probe.json", "audio.wav", "transcript.json", "chunks.json",
             "embeddings.npy", "keyframes.json", "frame_text.json", "frame_labels.json",
             "enrichment.json", "enrichment.md"])


def test_an_interrupted_write_leaves_the_old_artifact_and_rows(home, resources, speech_video, instance):
    from narra_dagster.defs.intake.uploads import store_upload
    from narra_dagster.resources import LanceSearchIndex

    from .conftest import ingest_and_materialize

    key, result = ingest_and_materialize(speech_video[0], resources, instance)
    assert result.success
    index: LanceSearchIndex = resources["search_index"]
    rows_before = index.count(key)
    media = home / "media" / key
    before = {p.name: p.stat().st_mtime_ns for p in media.iterdir()}

    # The embedding step fails in the middle of writing its artifact (a disk full, say): the
    # writer removes its temporary file, the old artifact stays, the index keeps its rows.
    store = resources["media_store"]
    with pytest.raises(OSError):
        with store.writer(key, "embeddings.npy") as tmp:
            tmp.write_bytes(b"\x93NUMPY half an array")
            raise OSError(28, "No space left on device")
    assert {p.name: p.stat().st_mtime_ns for p in media.iterdir()} == before
    assert index.count(key) == rows_before
    assert store_upload(speech_video[0], store).partition_key == key
    assert not [p for p in media.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.daemon
def test_a_run_whose_worker_died_with_the_daemon_is_recovered_on_the_embedded_instance(
        home, tmp_path):
    """The issue's case: on the embedded default instance (SQLite, DefaultRunLauncher), the
    machine loses the daemon, its code server and the run worker at once (SIGKILL to the whole
    process group) while a video is being transcribed. After the daemon starts again, the run
    worker watchdog fails the orphaned STARTED run, run retries restart it from the failure,
    and the item ends materialized with no run left STARTED."""
    import time

    from narra_dagster.defs.watchdog.sensor import run_worker, worker_alive

    from .conftest import REPO

    video = tmp_path / "long_talk.mp4"
    make_talking_video(video, SPEECH_SENTENCES * 3, SPEECH_PHOTOS * 3)
    env = subprocess_env(home)
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "daemon.log"
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        with daemon(env, log) as proc:
            shutil.copyfile(video, inbox / "long_talk.mp4")

            first, pid = _wait_for_transcription(instance, proc, log)
            worker = run_worker(instance, first.run_id)
            assert worker and worker[0] == pid and worker_alive(*worker)  # seen as alive
            os.killpg(proc.pid, signal.SIGKILL)  # daemon, code server and run worker at once
            if worker_alive(*worker):  # in a process group of its own
                os.kill(pid, signal.SIGKILL)
        assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.STARTED
        killed_at = time.monotonic()
        with daemon(env, tmp_path / "daemon2.log") as proc:
            def recovered():
                assert proc.poll() is None, (tmp_path / "daemon2.log").read_text()[-3000:]
                runs = instance.get_runs(dg.RunsFilter(job_name="video_pipeline"))
                done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
                return done and (runs, done[0])

            runs, final = wait_for(recovered, DEADLINE_S, "the orphaned run's retry to succeed",
                                   interval_s=2,
                                   on_timeout=lambda: (tmp_path / "daemon2.log").read_text()[-4000:])
            elapsed = time.monotonic() - killed_at
        assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE
        assert final.tags.get("dagster/root_run_id") == first.run_id
        assert not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        key = first.tags["dagster/partition"]
        for asset in video_assets:
            assert instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[key]), limit=1).records
        print(f"recovered {elapsed:.0f} s after the crash")


def _marks(instance, run_id):
    from narra_dagster.core.dagster_private import item_marks

    return [(m["narra/item"], m["narra/item_event"]) for m in item_marks(instance, run_id)]


def _batch_pid(instance, run_id):
    started = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return started[0].dagster_event.pid if started else None


@pytest.mark.daemon
def test_a_batch_run_killed_twice_resumes_and_runs_the_crasher_alone(home, tmp_path,
                                                                      monkeypatch):
    """Three recordings dropped together are one batch run. Its worker is killed (SIGKILL)
    while the second is processed; run retries start the batch again, which keeps the first
    item as finished and resumes at the second; killed there again, the third attempt hands the
    second item to a per-item run of its own and processes the third. Every item ends
    searchable, the first processed exactly once."""
    from narra_dagster.core.batch import batch_keys, item_results
    from tests.support.media import speak, write_audio

    clips = {}
    for name, sentence in zip(["one.wav", "two.wav", "three.wav"], SPEECH_SENTENCES):
        audio, _ = speak([sentence] * 3)
        clips[name] = write_audio(audio, tmp_path / name, "wav")
    with _daemon_on_postgres(home, tmp_path, monkeypatch) as (proc, instance, inbox, log):
        for name, path in clips.items():
            shutil.copyfile(path, inbox / f"{name}.part")
        for name in clips:
            (inbox / f"{name}.part").rename(inbox / name)

        def batch_runs():
            assert proc.poll() is None, log.read_text()[-3000:]
            return sorted(instance.get_runs(dg.RunsFilter(job_name="video_batch")),
                          key=lambda r: r.tags.get("dagster/retry_number", "0"))

        def in_progress(attempt, ended_before):
            """(run, the item it is processing, its worker's pid) once the ``attempt``-th
            run has ended ``ended_before`` items and started the next."""
            def check():
                runs = batch_runs()
                if len(runs) <= attempt:
                    return None
                marks = _marks(instance, runs[attempt].run_id)
                if marks and marks[-1][1] == "started" and sum(
                        e == "ended" for _, e in marks) == ended_before:
                    return runs[attempt], marks[-1][0], _batch_pid(instance, runs[attempt].run_id)
            return check

        # Attempt 1: killed once the first item has ended and the second has started.
        first, victim, pid = wait_for(in_progress(0, 1), DEADLINE_S,
                                      "the batch run to start its second item", interval_s=0.1,
                                      on_timeout=lambda: log.read_text()[-3000:])
        keys = batch_keys(first)
        assert len(keys) == 3 and victim == keys[1]
        os.kill(pid, signal.SIGKILL)
        # Attempt 2 (a run retry, same run config): resumes at the second item; killed again.
        second, again, pid = wait_for(in_progress(1, 0), DEADLINE_S,
                                      "the retry to start the second item", interval_s=0.1,
                                      on_timeout=lambda: log.read_text()[-3000:])
        assert again == victim and second.parent_run_id == first.run_id
        assert [k for k, e in _marks(instance, second.run_id) if e == "started"] == [victim]
        os.kill(pid, signal.SIGKILL)

        def all_searchable():
            assert proc.poll() is None, log.read_text()[-3000:]
            last = [a.key for a in video_assets][-1]
            return all(instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=last, asset_partitions=[k]), limit=1).records
                for k in keys)

        wait_for(all_searchable, DEADLINE_S, "every item to be searchable", interval_s=2,
                 on_timeout=lambda: log.read_text()[-4000:])
        runs = batch_runs()
        assert len(runs) == 3
        third = runs[2]
        wait_for(lambda: instance.get_run_by_id(third.run_id).is_finished, 60,
                 "the third attempt to end")
        results = {r["partition_key"]: r for r in item_results(instance, third.run_id)}
        assert results[keys[0]]["status"] == "succeeded"
        assert results[keys[0]]["run_id"] == first.run_id  # carried, not processed again
        assert results[victim]["status"] == "isolated"
        assert results[keys[2]]["status"] == "succeeded" and results[keys[2]]["run_id"] is None
        assert instance.get_run_by_id(third.run_id).status == dg.DagsterRunStatus.SUCCESS
        alone = instance.get_runs(dg.RunsFilter(job_name="video_pipeline"))
        assert [r.tags["dagster/partition"] for r in alone] == [victim]
        assert "alone-after-" in alone[0].tags["dagster/run_key"]
        # The first item's stages materialized once: only by the first attempt.
        for asset in video_assets:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[keys[0]]),
                limit=10).records
            assert [r.run_id for r in records] == [first.run_id], asset.key

        # The domain events: no item is ever told it failed (each crash was retried), and
        # each is completed exactly once, by the run that finished it.
        sink = JsonlEventSink(path=str(home / "events" / "events.jsonl"))

        def outcomes():
            seen = {k: [e["type"] for e in sink.read() if e["media_id"] == k
                        and e["type"].startswith("analysis.")] for k in keys}
            return all("analysis.completed" in t for t in seen.values()) and seen

        seen = wait_for(outcomes, 60, "every item's analysis.completed")
        assert seen[keys[0]] == ["analysis.started", "analysis.completed"], seen
        assert seen[victim] == ["analysis.started", "analysis.retrying", "analysis.started",
                                "analysis.completed"], seen
        assert seen[keys[2]] == ["analysis.started", "analysis.retrying", "analysis.retrying",
                                 "analysis.completed"], seen
