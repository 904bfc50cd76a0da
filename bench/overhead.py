"""Section 1 (orchestration overhead) and the end-to-end parts of section 5.

Each path runs in a fresh process and a fresh NARRA_HOME on the same files:

- ``narra process`` (one run per item, or one batch run for several items);
- the plain Python loop (bench.plain): the same stage functions, no Dagster run;
- the sensor + daemon: files dropped into the inbox of a running ``dagster-daemon``, one run per
  item launched in its own process, as in production;
- the executors: one clip through the chain with the in-process executor against the
  multiprocess executor (spawn, and forkserver with preloaded modules).

Overhead = Dagster's wall - the plain loop's wall, per item and as a share of Dagster's wall;
per step = Dagster's step duration - the plain call's duration.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

from bench.common import fresh_home, log, narra_cmd, run_measured


def _step_means(items: list[dict]) -> dict[str, float]:
    names: dict[str, list[float]] = {}
    for item in items:
        for step, seconds in (item.get("steps") or {}).items():
            names.setdefault(step, []).append(seconds)
    return {k: round(mean(v), 4) for k, v in names.items()}


def process_vs_plain(label: str, kind: str, files: list[str], work: Path, *,
                     batch: bool | None = None, media_seconds: float = 0.0) -> dict:
    """`narra process FILES` against the plain loop on the same files, each in a fresh process."""
    flag = [] if batch is None else (["--batch"] if batch else ["--no-batch"])
    models = warm_up(kind, files[0], work)
    env = fresh_home(work / "homes", f"{label}-narra", models)
    log(f"{label}: narra process {len(files)} {kind} file(s) {' '.join(flag)}")
    narra = run_measured([*narra_cmd(), "process", "--json", *flag, *files], env)
    results = json.loads(narra.stdout) if narra.stdout.strip() else []
    env = fresh_home(work / "homes", f"{label}-plain", models)
    log(f"{label}: plain loop")
    plain = run_measured([sys.executable, "-m", "bench.plain", kind, *files], env)
    if plain.returncode:
        raise RuntimeError(plain.stderr[-3000:])
    plain_out = json.loads(plain.stdout)
    n = len(files)
    overhead = narra.wall_s - plain.wall_s
    dagster_steps, plain_steps = _step_means(results), _step_means(plain_out["items"])
    return {
        "items": n,
        "succeeded": sum(r["status"] in ("succeeded", "skipped") for r in results),
        "errors": sorted({r["error_class"] for r in results if r.get("error_class")}),
        "runs": len({r["run_id"] for r in results if r.get("run_id")}),
        "dagster_wall_s": round(narra.wall_s, 3),
        "plain_wall_s": round(plain.wall_s, 3),
        "ratio": round(narra.wall_s / plain.wall_s, 3),
        "overhead_s": round(overhead, 3),
        "overhead_pct_of_wall": round(100 * overhead / narra.wall_s, 1),
        "overhead_per_item_s": round(overhead / n, 3),
        "plain_imports_s": plain_out["imports_s"],
        "plain_setup_s": plain_out["setup_s"],
        "steps_dagster_s": dagster_steps,
        "steps_plain_s": plain_steps,
        "overhead_per_step_s": {k: round(dagster_steps[k] - plain_steps.get(k, 0.0), 4)
                                for k in dagster_steps},
        "peak_rss_mb_dagster": round(narra.peak_rss_bytes / 2**20),
        "peak_rss_mb_plain": round(plain.peak_rss_bytes / 2**20),
        "media_seconds": media_seconds,
        "media_min_per_wall_min": round(media_seconds / narra.wall_s, 2) if media_seconds else None,
    }


_warm: dict[str, Path] = {}


def warm_up(kind: str, file: str, work: Path) -> Path:
    """Run the plain loop once on one file (untimed), so both measured paths find the one-time
    work done, as a running deployment has it: models exported to ``$NARRA_HOME/models`` (copied
    into each measured home), files and libraries in the page cache. Returns that models folder."""
    if kind not in _warm:
        env = fresh_home(work / "homes", f"warm-{kind}")
        log(f"warm-up for {kind}")
        run_measured([sys.executable, "-m", "bench.plain", kind, file], env)
        _warm[kind] = Path(env["NARRA_HOME"]) / "models"
    return _warm[kind]


def executors(clip: str, work: Path, modes=("in_process", "multiprocess", "forkserver")) -> dict:
    out = {}
    for mode in modes:
        env = fresh_home(work / "homes", f"exec-{mode}")
        env["NARRA_BENCH_EXECUTOR"] = mode
        log(f"executor {mode}")
        measured = run_measured([sys.executable, "-m", "bench.executor_job", clip], env)
        if measured.returncode:
            out[mode] = {"error": measured.stderr[-500:]}
            continue
        result = json.loads(measured.stdout.strip().splitlines()[-1])
        result["process_wall_s"] = round(measured.wall_s, 3)
        result["peak_rss_mb"] = round(measured.peak_rss_bytes / 2**20)
        out[mode] = result
    return out


def _drop(path: Path, inbox: Path) -> float:
    """Copy a file into the inbox as a careful uploader does (partial name, then rename)."""
    part = inbox / (path.name + ".part")
    shutil.copyfile(path, part)
    part.rename(inbox / path.name)
    return time.time()


def daemon_pipeline(kind: str, latency_file: str, files: list[str], work: Path,
                    timeout_s: float = 1800) -> dict:
    """Start `dagster-daemon run`, drop one file and time it to searchable, then drop ``files``
    at once and time them all; stop the daemon."""
    import dagster as dg

    from narra_dagster import registry
    from narra_dagster.core.media import partition_key_for

    media_kind = registry.get(kind)

    env = fresh_home(work / "homes", f"daemon-{kind}")
    home = Path(env["NARRA_HOME"])
    inbox = home / "inbox"
    inbox.mkdir(parents=True)
    daemon_log = open(home / "daemon.log", "w")
    started = time.time()
    daemon = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-m",
                               "narra_dagster.definitions"], env=env, stdout=daemon_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    last = media_kind.stages[-1].key  # searchable once the last stage is materialized
    out: dict = {"kind": kind}
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            while not any(h.daemon_type == "SENSOR" for h in instance.get_daemon_heartbeats().values()):
                if daemon.poll() is not None or time.time() - started > 300:
                    raise RuntimeError((home / "daemon.log").read_text()[-3000:])
                time.sleep(0.2)
            out["daemon_ready_s"] = round(time.time() - started, 2)

            def wait_for(keys: set[str], since: float) -> dict[str, float]:
                done: dict[str, float] = {}
                while len(done) < len(keys) and time.time() - since < timeout_s:
                    for key in keys - done.keys():
                        records = instance.fetch_materializations(
                            dg.AssetRecordsFilter(asset_key=last, asset_partitions=[key]), limit=1).records
                        if records:
                            done[key] = records[0].timestamp
                        elif instance.get_runs(dg.RunsFilter(
                                tags={"dagster/partition": key},
                                statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED])):
                            done[key] = float("nan")
                    time.sleep(0.25)
                return done

            key = partition_key_for(Path(latency_file))
            dropped = _drop(Path(latency_file), inbox)
            done = wait_for({key}, dropped)
            record = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}), limit=1)[0]
            steps = {}
            for event in instance.all_logs(record.dagster_run.run_id,
                                           of_type=dg.DagsterEventType.STEP_SUCCESS):
                steps[event.step_key] = event.dagster_event.event_specific_data.duration_ms / 1000
            out["latency"] = {
                "upload_to_searchable_s": round(done[key] - dropped, 2),
                "upload_to_run_created_s": round(record.create_timestamp.timestamp() - dropped, 2),
                "run_created_to_started_s": round(record.start_time - record.create_timestamp.timestamp(), 2),
                "run_wall_s": round(record.end_time - record.start_time, 2),
                "steps_total_s": round(sum(steps.values()), 2),
                "processing_s": round(sum(steps.values()), 2),
            }
            out["latency"]["latency_minus_processing_s"] = round(
                out["latency"]["upload_to_searchable_s"] - out["latency"]["processing_s"], 2)

            if files:
                keys = {partition_key_for(Path(f)) for f in files}
                t0 = time.time()
                for f in files:
                    _drop(Path(f), inbox)
                done = wait_for(keys, t0)
                finished = [t for t in done.values() if t == t]
                out["burst"] = {
                    "items": len(keys), "succeeded": len(finished),
                    "wall_s": round(max(finished) - t0, 2) if finished else None,
                    "runs": len(instance.get_run_ids(dg.RunsFilter(job_name=media_kind.job_name))) - 1,
                }
    finally:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        daemon_log.close()
    return out
