"""One video through the video chain with a chosen executor, in this process's own run.

    NARRA_BENCH_EXECUTOR=in_process|multiprocess|forkserver python -m bench.executor_job FILE

Prints JSON: process wall, run wall (Dagster's start to end), each step's duration and the gap
between steps. ``forkserver`` is ``multiprocess_executor`` with the forkserver start method and
the heavy modules preloaded in the server, so each step process forks from a warm parent.
"""

import json
import os
import sys
import time

started = time.perf_counter()

import dagster as dg  # noqa: E402

PRELOAD = ["narra_dagster.definitions", "narra_dagster.defs.video.assets", "lancedb", "faster_whisper",
           "onnxruntime", "tokenizers", "av"]


def _executor():
    mode = os.environ.get("NARRA_BENCH_EXECUTOR", "in_process")
    if mode == "in_process":
        return dg.in_process_executor
    if mode == "multiprocess":  # Dagster's default: spawn a fresh interpreter per step
        return dg.multiprocess_executor.configured({"max_concurrent": 2})
    if mode == "forkserver":
        return dg.multiprocess_executor.configured({
            "max_concurrent": 2,
            "start_method": {"forkserver": {"preload_modules": PRELOAD}}})
    raise ValueError(mode)


def video_job() -> dg.JobDefinition:
    from narra_dagster import registry
    from narra_dagster.resources import default_resources

    video = registry.get("video")
    job = dg.define_asset_job(video.job_name, selection=dg.AssetSelection.groups(video.group),
                              executor_def=_executor())
    defs = dg.Definitions(assets=video.stage_set.assets, jobs=[job], resources=default_resources())
    return defs.resolve_job_def(video.job_name)


def main(path: str) -> dict:
    from pathlib import Path

    from narra_dagster import registry
    from narra_dagster.defs.intake.uploads import store_upload
    from narra_dagster.resources import LocalMediaStore

    instance = dg.DagsterInstance.get()
    upload = store_upload(Path(path), LocalMediaStore())
    instance.add_dynamic_partitions(registry.get("video").partitions.name, [upload.partition_key])
    result = dg.execute_job(dg.reconstructable(video_job), instance=instance,
                            tags={"dagster/partition": upload.partition_key})
    record = instance.get_run_record_by_id(result.run_id)
    steps, starts, ends = {}, {}, {}
    for event in instance.all_logs(result.run_id):
        if event.dagster_event is None or event.step_key is None:
            continue
        kind = event.dagster_event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = event.timestamp
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = event.timestamp
            steps[event.step_key] = round(event.timestamp - starts.get(event.step_key, event.timestamp), 3)
    order = sorted(starts, key=starts.get)
    gaps = [starts[b] - ends[a] for a, b in zip(order, order[1:]) if a in ends]
    instance.dispose()
    return {
        "executor": os.environ.get("NARRA_BENCH_EXECUTOR", "in_process"),
        "success": result.success,
        "run_wall_s": round(record.end_time - record.start_time, 3),
        "steps": steps,
        "steps_total_s": round(sum(steps.values()), 3),
        "mean_gap_between_steps_s": round(sum(gaps) / len(gaps), 3) if gaps else 0.0,
        "process_wall_s": round(time.perf_counter() - started, 3),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
