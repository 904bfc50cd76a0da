"""Processing: files stored, registered as partitions, and their chains run (per item or as one
batch run per kind) on a Dagster instance, with per-item outcomes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import BATCH_TAG, batch_item_tag, batch_run_config, item_results
from narra_dagster.core.errors import BadInputError
from narra_dagster.core.media import KEY_LENGTH, file_sha256
from narra_dagster.defs.intake.uploads import classify_upload, store_upload
from narra_dagster.resources.item_lock import ItemBusy, item_lock
from narra_dagster.core.runs import run_failure
from narra_dagster.app.status import last_materialization
from narra_dagster.resources.media_store import MediaStore

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
    restored: bool = False  # the item had been deleted and its bytes came back

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
    """Store a file and add its partition (no run). Errors are returned, not raised: bad input
    by its code, an unreadable file as ``unreadable``, an item held by a deletion for 30 s as
    ``item_busy``.

    The store and the partition happen under the item's lock
    (:func:`narra_dagster.resources.item_lock.item_lock`), as in every other door: bytes that
    meet a deletion of the same item wait for it and come back as its new version
    (``restored``)."""
    result = ProcessResult(path=str(path), source_name=path.name)
    try:
        classify_upload(path)  # refuse what is not media before hashing it whole
        digest = file_sha256(path)
        with item_lock(digest[:KEY_LENGTH]):
            upload = store_upload(path, media_store, sha256=digest)
            name = registry.get(upload.kind).partitions.name
            if not instance.has_dynamic_partition(name, upload.partition_key):
                instance.add_dynamic_partitions(name, [upload.partition_key])
    except BadInputError as exc:
        result.status, result.error, result.error_class = "failed", str(exc), exc.code
        return result
    except ItemBusy as exc:
        result.status, result.error, result.error_class = "failed", str(exc), exc.code
        return result
    except OSError as exc:
        result.status, result.error, result.error_class = "failed", f"cannot read the file: {exc}", "unreadable"
        return result
    result.partition_key, result.kind = upload.partition_key, upload.kind
    result.restored = upload.restored_after is not None
    result.status = "registered"
    return result


def process_files(
    paths: Iterable[Path],
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    *,
    force: bool = False,
    batch: bool | None = None,
    on_start: Callable[[ProcessResult], None] | None = None,
    on_done: Callable[[ProcessResult], None] | None = None,
) -> list[ProcessResult]:
    """Store each file, add its partition, and materialize its whole chain in this process.

    Runs are recorded on ``instance`` (so the UI shows them). One failing file does not stop the
    others. A file whose last asset is already materialized is skipped unless ``force``.

    ``batch``: True runs all items of one kind in one batch run (``<kind>_batch``: one process,
    one model load, still one materialization per item and asset); False runs one run per item;
    None (default) batches when there is more than one item of a kind. Per-item results (status, error, seconds per step) are the same either way.
    """
    media_store: MediaStore = defs.resources["media_store"]  # type: ignore[assignment]
    results: list[ProcessResult] = []
    pending: list[tuple[ProcessResult, float]] = []
    for path in expand_paths(paths):
        started = time.perf_counter()
        result = register(path, instance, media_store)
        results.append(result)
        if on_start:
            on_start(result)
        if result.status == "registered":
            chain = registry.get(result.kind).stages
            # a deleted item's bytes uploaded again: its old materializations describe nothing
            if not force and not result.restored and all(
                    last_materialization(instance, stage.key, result.partition_key)
                                 for stage in chain):
                result.status = "skipped"
        if result.status == "registered":
            pending.append((result, started))
        else:
            result.seconds = round(time.perf_counter() - started, 3)
            if on_done:
                on_done(result)

    by_kind: dict[str, list[tuple[ProcessResult, float]]] = {}
    for item in pending:
        by_kind.setdefault(item[0].kind, []).append(item)
    for kind, items in by_kind.items():
        keys = list(dict.fromkeys(r.partition_key for r, _ in items))
        use_batch = batch if batch is not None else len(keys) > 1
        if use_batch:
            _execute_batch(kind, keys, items, instance, defs, on_done)
            continue
        done_keys: set[str] = set()
        for result, started in items:
            if result.partition_key in done_keys and not force:
                result.status = "skipped"  # the same bytes under another name, run just now
            else:
                execute_item(result, instance, defs)
                if result.status == "succeeded":
                    done_keys.add(result.partition_key)
            result.seconds = round(time.perf_counter() - started, 3)
            if on_done:
                on_done(result)
    return results


def _execute_batch(kind: str, keys: list[str], items: list[tuple[ProcessResult, float]],
                   instance: dg.DagsterInstance, defs: dg.Definitions,
                   on_done: Callable[[ProcessResult], None] | None) -> None:
    job = defs.resolve_job_def(registry.get(kind).batch_job_name)
    run = job.execute_in_process(
        run_config=batch_run_config(kind, keys, QUIET_LOGS), instance=instance,
        raise_on_error=False,
        tags={BATCH_TAG: str(len(keys)), "narra/launched_by": "narra process",
              **{batch_item_tag(k): "1" for k in keys}},
    )
    recorded = {r["partition_key"]: r for r in item_results(instance, run.run_id)}
    run_error, run_error_class = (None, None) if run.success else run_failure(instance, run.run_id)
    first: set[str] = set()
    for result, _ in items:
        result.run_id = run.run_id
        item = recorded.get(result.partition_key)
        duplicate = result.partition_key in first
        first.add(result.partition_key)
        if duplicate and item is not None and item["status"] == "succeeded":
            result.status = "skipped"  # the same bytes under another name, processed above
        elif item is None:  # the run died before it reached this item
            result.status, result.error = "failed", run_error or "the batch run failed"
            result.error_class = run_error_class or "batch_failed"
        else:
            result.status = item["status"]
            result.error, result.error_class = item["error"], item["error_class"]
            result.steps = dict(item["steps"])
            result.seconds = item["seconds"]
        if on_done:
            on_done(result)


def execute_item(result: ProcessResult, instance: dg.DagsterInstance, defs: dg.Definitions, *,
                 launched_by: str = "narra process") -> None:
    """Run one item's per-item job now, in this process, and fill ``result`` with its outcome
    (status, error and error class, run id, seconds per step)."""
    job = defs.resolve_job_def(registry.get(result.kind).job_name)
    run = job.execute_in_process(
        partition_key=result.partition_key, instance=instance, raise_on_error=False,
        run_config=QUIET_LOGS, tags={"narra/source_name": result.source_name[:63] or "-",
                                     "narra/launched_by": launched_by},
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
