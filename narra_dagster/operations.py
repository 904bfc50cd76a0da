"""What the `narra` command does, as plain functions on a Dagster instance (used by the CLI and tests)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from narra_dagster.errors import BadInputError
from narra_dagster.ingest import store_upload
from narra_dagster.partitions import PARTITIONS_BY_KIND
from narra_dagster.resources.media_store import MediaStore

# The asset chain of each kind, in order; the last one makes the item searchable.
CHAINS: dict[str, list[str]] = {
    "video": ["video_source", "video_audio", "video_transcript", "video_chunks",
              "video_chunk_embeddings", "video_index_rows"],
}
JOB_BY_KIND = {"video": "video_pipeline"}
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class ProcessResult:
    """The outcome of one file given to `narra process` or `narra ingest`."""

    path: str
    source_name: str
    partition_key: str | None = None
    kind: str | None = None
    status: str = "pending"  # succeeded | failed | skipped | registered
    error: str | None = None
    error_class: str | None = None
    run_id: str | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files given directly, plus the non-hidden files directly inside given folders, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            out.append(path)
    return out


def register(path: Path, instance: dg.DagsterInstance, media_store: MediaStore) -> ProcessResult:
    """Store a file and add its partition (no run). Errors are returned, not raised."""
    result = ProcessResult(path=str(path), source_name=path.name)
    try:
        upload = store_upload(path, media_store)
    except BadInputError as exc:
        result.status, result.error, result.error_class = "failed", str(exc), exc.code
        return result
    except OSError as exc:
        result.status, result.error, result.error_class = "failed", f"cannot read the file: {exc}", "unreadable"
        return result
    result.partition_key, result.kind = upload.partition_key, upload.kind
    name = PARTITIONS_BY_KIND[upload.kind].name
    if not instance.has_dynamic_partition(name, upload.partition_key):
        instance.add_dynamic_partitions(name, [upload.partition_key])
    result.status = "registered"
    return result


def last_materialization(instance: dg.DagsterInstance, asset: str, key: str):
    """The newest materialization record of one asset partition, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    return records[0] if records else None


def run_failure(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, str | None]:
    """(message, error class) of a run's first step failure, or (None, None)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.description:
            error_class = user.metadata.get("error_class")
            return user.description, error_class.value if error_class is not None else "failure"
        message = data.error.message.strip() if data.error else "step failed"
        return f"{record.step_key}: {message}", (data.error.cls_name if data.error else "error")
    return None, None


def process_files(
    paths: Iterable[Path],
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    *,
    force: bool = False,
    on_start: Callable[[ProcessResult], None] | None = None,
    on_done: Callable[[ProcessResult], None] | None = None,
) -> list[ProcessResult]:
    """Store each file, add its partition, and materialize its whole chain in this process.

    Runs are recorded on ``instance`` (so the UI shows them). One failing file does not stop the
    others. A file whose last asset is already materialized is skipped unless ``force``.
    """
    media_store: MediaStore = defs.resources["media_store"]  # type: ignore[assignment]
    results = []
    for path in expand_paths(paths):
        started = time.perf_counter()
        result = register(path, instance, media_store)
        if on_start:
            on_start(result)
        if result.status == "registered":
            chain = CHAINS[result.kind]
            if not force and last_materialization(instance, chain[-1], result.partition_key):
                result.status = "skipped"
            else:
                _execute(result, instance, defs)
        result.seconds = round(time.perf_counter() - started, 3)
        results.append(result)
        if on_done:
            on_done(result)
    return results


def _execute(result: ProcessResult, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
    job = defs.resolve_job_def(JOB_BY_KIND[result.kind])
    run = job.execute_in_process(
        partition_key=result.partition_key, instance=instance, raise_on_error=False,
        run_config=QUIET_LOGS, tags={"narra/source_name": result.source_name[:63] or "-",
                                     "narra/launched_by": "narra process"},
    )
    result.run_id = run.run_id
    starts: dict[str, float] = {}
    for event in instance.all_logs(run.run_id):
        if event.dagster_event is None or event.step_key is None:
            continue
        if event.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = event.timestamp
        elif event.dagster_event.event_type in (dg.DagsterEventType.STEP_SUCCESS,
                                                 dg.DagsterEventType.STEP_FAILURE):
            if event.step_key in starts:
                result.steps[event.step_key] = round(event.timestamp - starts[event.step_key], 3)
    if run.success:
        result.status = "succeeded"
    else:
        result.status = "failed"
        result.error, result.error_class = run_failure(instance, run.run_id)


def partition_status(instance: dg.DagsterInstance, media_store: MediaStore,
                     media_id: str | None = None) -> list[dict[str, Any]]:
    """Per partition: source name, each asset's last materialization, and the last run's outcome.

    ``media_id`` may be a prefix of a partition key.
    """
    items = []
    for kind, chain in CHAINS.items():
        name = PARTITIONS_BY_KIND[kind].name  # type: ignore[index]
        for key in instance.get_dynamic_partitions(name):
            if media_id and not key.startswith(media_id):
                continue
            try:
                source_name = media_store.manifest(key).get("source_name")
            except (FileNotFoundError, ValueError):
                source_name = None
            assets = {}
            for asset in chain:
                record = last_materialization(instance, asset, key)
                assets[asset] = None if record is None else {
                    "materialized_at": _iso(record.timestamp), "run_id": record.run_id}
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
            last_run = None
            if runs:
                run = runs[0]
                error, error_class = (run_failure(instance, run.run_id)
                                      if run.status == dg.DagsterRunStatus.FAILURE else (None, None))
                last_run = {"run_id": run.run_id, "job": run.job_name, "status": run.status.value,
                            "error": error, "error_class": error_class}
            done = all(assets.values())
            items.append({
                "media_id": key, "kind": kind, "source_name": source_name,
                "state": "failed" if last_run and last_run["status"] == "FAILURE"
                else ("searchable" if done else (last_run["status"].lower() if last_run else "registered")),
                "last_run": last_run, "assets": assets,
            })
    return items


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")
