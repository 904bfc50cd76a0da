"""Scale-out on Celery: a separate `dagster-celery worker` process executes the video chain's
steps, with the local Redis as broker and result backend."""

import json
import os
import signal
import subprocess

import dagster as dg
import pytest
import yaml

from tests.support.chains import video_assets

from .conftest import REPO, subprocess_env
from .services import REDIS_URL, require_redis, wait_for


def _ancestors(pid: int) -> list[int]:
    """pid and its parents, from /proc (Linux)."""
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except FileNotFoundError:
            break
    return chain


@pytest.mark.daemon
def test_celery_worker_executes_the_video_chain(home, tmp_path, speech_video):
    client = require_redis()
    # A database of its own on the local Redis, so no other worker takes these tasks.
    broker = REDIS_URL.rsplit("/", 1)[0] + "/9"
    env = {**subprocess_env(home), "NARRA_EXECUTOR": "celery", "NARRA_CELERY_BROKER": broker}
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": {"broker": broker, "backend": broker}}}))

    ingested = subprocess.run(["narra", "ingest", str(speech_video[0]), "--json"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=True)
    key = json.loads(ingested.stdout)[0]["partition_key"]

    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen(
            ["dagster-celery", "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
             "-n", "narra-test",
             "-l", "info", "--", "--pool=solo"],
            env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready():
            assert worker.poll() is None, log.read_text()[-3000:]
            return "ready." in log.read_text()

        wait_for(ready, 120, "the Celery worker to be ready",
                 on_timeout=lambda: log.read_text()[-3000:])
        selection = ",".join(a.key.to_user_string() for a in video_assets)
        done = subprocess.run(
            ["dagster", "asset", "materialize", "-m", "narra_dagster.definitions",
             "--select", selection, "--partition", key],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + log.read_text()[-3000:]

        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
            logs = instance.all_logs(runs[0].run_id)
            run_pid = next(e.dagster_event.pid for e in logs if e.dagster_event
                           and e.dagster_event.event_type == dg.DagsterEventType.RUN_START)
            step_pids = {e.step_key: e.dagster_event.pid for e in logs if e.dagster_event
                         and e.dagster_event.event_type == dg.DagsterEventType.STEP_START}
            assert set(step_pids) == {a.key.to_user_string() for a in video_assets}
            for step, pid in step_pids.items():
                # Every step ran inside the worker's process tree, not in the run's process.
                assert worker.pid in _ancestors(pid), (step, pid, _ancestors(pid))
                assert pid != run_pid
            for asset in video_assets:
                assert instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[key]), limit=1).records
        assert log.read_text().count("succeeded in") >= len(video_assets)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        client.connection_pool.disconnect()
