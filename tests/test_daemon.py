"""A real dagster-daemon: a video dropped into the inbox is materialized end to end."""

import json
import shutil
import subprocess
import time

import dagster as dg
import pytest

from tests.support.chains import video_assets
from tests.support.media import make_talking_video

from .conftest import REPO, subprocess_env
from .services import daemon

DEADLINE_S = 240


@pytest.mark.daemon
def test_daemon_runs_dropped_files_and_backfills(home, speech_video, tmp_path):
    env = subprocess_env(home)
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with daemon(env, tmp_path / "daemon.log") as proc:
        inbox = home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        path, _ = speech_video
        # Written under a partial name and renamed, as a careful uploader does.
        shutil.copyfile(path, inbox / "talk.mp4.part")
        (inbox / "talk.mp4.part").rename(inbox / "talk.mp4")
        deadline = time.monotonic() + DEADLINE_S
        done = moved = False
        while time.monotonic() < deadline and not (done and moved):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(3)
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                keys = instance.get_dynamic_partitions("videos")
                moved = bool(keys) and (inbox / ".processed" / keys[0] / "talk.mp4").exists()
                done = bool(keys) and all(
                    instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=keys), limit=1
                    ).records
                    for asset in video_assets
                )
                failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
                assert not failed, [r.run_id for r in failed]
        assert done, f"not materialized within {DEADLINE_S} s:\n" + (tmp_path / "daemon.log").read_text()[-3000:]
        assert moved and not (inbox / "talk.mp4").exists()  # the original is kept, not lost
        assert len(keys) == 1

        # A partition registered without a run (`narra ingest`) is run by a backfill, which the
        # daemon's backfill loop carries out, as for a backfill launched in the UI.
        second = tmp_path / "second.mp4"
        make_talking_video(second, ["The garden needs water every morning."], ["coffee"])
        ingested = subprocess.run(["narra", "ingest", str(second), "--json"], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=120, check=True)
        key = json.loads(ingested.stdout)[0]["partition_key"]
        subprocess.run(["dagster", "job", "backfill", "-m", "narra_dagster.definitions",
                        "-j", "video_pipeline", "--partitions", key, "--noprompt"],
                       env=env, cwd=REPO, capture_output=True, timeout=120, check=True)
        last = video_assets[-1].key
        while time.monotonic() < deadline:
            time.sleep(2)
            with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
                if instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=last, asset_partitions=[key]), limit=1).records:
                    break
        else:
            pytest.fail("the backfill did not finish:\n" + (tmp_path / "daemon.log").read_text()[-3000:])
