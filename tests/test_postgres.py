"""The production instance on the real PostgreSQL: the video chain's runs, event log and sensor
ticks stored there, and several uploads run at once by a real daemon under the queued run
coordinator, with the transcription pool keeping Whisper steps one at a time."""

import time

import dagster as dg
import psycopg2
import pytest

from tests.support.chains import video_assets
from narra_dagster.production import apply_pool_limits
from narra_dagster.core import pools
from tests.support.media import make_talking_video
from narra_dagster.defs.intake.requests import request_run
from narra_dagster.defs.intake.uploads import store_upload
from narra_dagster.resources import LocalMediaStore

from .conftest import ingest_and_materialize, subprocess_env
from .services import daemon, pg_database, pg_env, production_dagster_home, wait_for, PG_HOST, PG_PORT, PG_USER, PG_PASSWORD


@pytest.fixture
def pg_home(home, tmp_path, monkeypatch):
    """DAGSTER_HOME with dagster.production.yaml, on a fresh Postgres database."""
    with pg_database() as db:
        for key, value in pg_env(db).items():
            monkeypatch.setenv(key, value)
        yield production_dagster_home(home / "dagster"), db


def test_video_chain_on_postgres(pg_home, resources, speech_video):
    dagster_home, db = pg_home
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        key, result = ingest_and_materialize(speech_video[0], resources, instance)
        assert result.success
        for asset in video_assets:
            assert instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[key]), limit=1).records
        assert instance.get_dynamic_partitions("videos") == [key]
    # The records really are in that database, read back without Dagster.
    with psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD,
                          dbname=db, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                    "AND partition = %s", (key,))
        assert cur.fetchone()[0] == len(video_assets)


def _step_spans(instance, run_id, step_key):
    starts = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
              if e.step_key == step_key]
    ends = [e.timestamp for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            if e.step_key == step_key]
    return starts[0], ends[0]


@pytest.mark.daemon
def test_daemon_on_postgres_runs_several_uploads_at_once(pg_home, home, tmp_path, monkeypatch):
    dagster_home, _db = pg_home
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        # One transcription at a time across runs; index writes serialized (default limit 1).
        apply_pool_limits(instance, {pools.TRANSCRIPTION: 1, pools.SEARCH_INDEX: 1})
    clips = []
    for i, (sentence, photo) in enumerate([("The garden needs water every morning.", "coffee"),
                                           ("A rocket launches from the coast.", "rocket"),
                                           ("The cat sleeps on a warm chair.", "chelsea")]):
        clip = tmp_path / f"clip{i}.mp4"
        make_talking_video(clip, [sentence], [photo])
        clips.append(clip)
    env = subprocess_env(home)
    log = tmp_path / "daemon.log"
    with daemon(env, log) as proc:
        # Uploads found in one tick share a batch run; to run them side by side, each is asked
        # for as a per-item run (a run request with a reason, as a retry is), all at once.
        store = LocalMediaStore(root=str(home / "media"))
        for clip in clips:
            upload = store_upload(clip, store)
            request_run(upload.partition_key, "video", clip.name, reason="side-by-side")

        def all_done():
            assert proc.poll() is None, log.read_text()[-3000:]
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                runs = instance.get_runs(dg.RunsFilter(job_name="video_pipeline"))
                failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
                assert not failed, [(r.run_id, r.status) for r in failed]
                done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
                return len(done) == 3 and done

        runs = wait_for(all_done, 420, "three successful runs", interval_s=3,
                        on_timeout=lambda: log.read_text()[-3000:])
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            keys = sorted(instance.get_dynamic_partitions("videos"))
            assert len(keys) == 3 and sorted(r.tags["dagster/partition"] for r in runs) == keys
            assert len({r.tags["dagster/run_key"] for r in runs}) == 3
            records = {r.dagster_run.run_id: r for r in instance.get_run_records(
                dg.RunsFilter(run_ids=[r.run_id for r in runs]))}
            spans = sorted((records[r.run_id].start_time, records[r.run_id].end_time) for r in runs)
            # The queued coordinator ran them side by side (8 allowed), not one after another...
            assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), spans
            # ...while the transcription pool (1 slot) kept their Whisper steps one at a time.
            transcribing = sorted(_step_spans(instance, r.run_id, "video_transcript") for r in runs)
            assert all(transcribing[i][1] <= transcribing[i + 1][0]
                       for i in range(len(transcribing) - 1)), transcribing
            # The sensor's ticks are in the Postgres schedule storage too.
            sensor = next(s for s in instance.all_instigator_state() if s.name == "upload_sensor")
            assert instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id)
