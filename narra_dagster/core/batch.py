"""Batch runs: many partitions of one media kind in ONE run and ONE process.

A run per item costs Dagster about a second of bookkeeping (run record, step events, resource
set-up) before any work happens; for a 2-second photo or clip that is half the wall time. A batch
job ``<kind>_batch`` takes a list of partition keys as run config and, in a single op, calls the
kind's stages (:class:`narra_dagster.core.stage.Stage`, in dependency order) for each key in
turn, with the resources set up once (so each model loads once). It calls ``Stage.run``, the very
function the asset's body calls, so an item fails with the same error class either way.

What a person sees stays per item:

- each stage logs one ``AssetMaterialization(partition=key)`` with the stage's metadata and the
  data-version tags a normal asset run writes (code version, input data versions), plus its
  asset check evaluations (the private Dagster APIs this needs are in
  :mod:`narra_dagster.core.dagster_private`); an item's info lines are written as one log event (every event is a
  database write);
- an item that fails stops only that item: its error is classified (``error_class`` as in
  :func:`narra_dagster.core.errors.classified_failures`) and logged, its failed stage and the stages
  after it are recorded as planned-but-not-materialized for that partition, and the other items
  go on; transient errors are retried per the asset's own ``RetryPolicy``;
- the op's result lists every item (status, seconds per stage, error); when any item failed the
  run ends FAILED with that list in the failure's metadata, and Dagster then counts exactly the
  failed items' unmaterialized stages as failed partitions (the asset status cache marks a
  partition failed when its latest planned materialization belongs to a failed run and was not
  followed by a materialization; see ``dagster._core.storage.partition_status_cache``).

Why not Dagster's own multi-partition runs (``BackfillPolicy.single_run()``): they hand one asset
a range of partitions, and dynamic partitions added one upload at a time are rarely a contiguous
range; and one bad item would fail the step, so every item of the run, at once.

Who launches batch runs: ``narra process`` when it is given several items of one kind, and the
upload sensors (inbox, S3, the HTTP API's run requests) for the new items of one kind a tick
finds, cut by :func:`plan_batches` into runs of at most :data:`MAX_BATCH_ITEMS` items and
:data:`MAX_BATCH_MEDIA_S` seconds of declared media. One new item alone, a renamed or restored
item, a retry, a backfill: per-item runs, as before.

Crashes: a run whose worker dies (killed, out of memory) is failed by run monitoring and started
again by Dagster's run retries with the same run config. Each item's start and end are written
to the run's event log (an engine event with ``narra/item`` metadata), so the new attempt reads
its ancestors' logs (:func:`resume_plan`) and processes only the items no attempt finished; the
items finished before are carried into its results as they ended. An item that was in progress
when two attempts died is not tried a third time among the others: it is handed to the
``run_request_sensor`` to run alone, in its own per-item run, so it cannot hold the others back.
"""


import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from narra_dagster.core import dagster_private
from narra_dagster.core.stage import Stage

if TYPE_CHECKING:
    from narra_dagster.core.kind import MediaKind

BATCH_TAG = "narra/batch_size"

MAX_BATCH_ITEMS = 50
"""Items in one sensor-launched batch run: enough that start-up (process, imports, model loads:
about 8 s) is paid once for many photos, few enough that a crash or a deploy loses little and
the run's tags and config stay small."""

MAX_BATCH_MEDIA_S = 30 * 60.0
"""Seconds of audio/video (as their containers declare) in one batch run: a 2-hour recording
runs alone instead of holding 49 photos behind it for half an hour of transcription."""


def batch_item_tag(key: str) -> str:
    """Run tag naming one item of a run (a batch run's items, a sensor's per-item run), so
    `narra status` finds an item's last run and a sensor that an item has had its first run."""
    return f"narra/item-{key}"


def batch_op_name(kind_name: str) -> str:
    """The op of a kind's batch job, ``<kind>_batch_items``: its run config holds the keys."""
    return f"{kind_name}_batch_items"


@dataclass
class ItemResult:
    """One item of a batch run: ``status`` succeeded | failed, seconds per stage (asset name)."""

    partition_key: str
    status: str = "pending"  # succeeded | failed | isolated (handed to a run of its own)
    stage: str | None = None  # the stage that failed
    error: str | None = None
    error_class: str | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the attempt that finished it, when an earlier one did


def plan_batches(items: Sequence[tuple[str, float | None]], *, max_items: int = MAX_BATCH_ITEMS,
                 max_media_s: float = MAX_BATCH_MEDIA_S) -> list[list[str]]:
    """Cut new items, in arrival order, into batch runs.

    Args:
        items: ``(partition key, declared media seconds or None)``; None (an image, a PDF, a
            file whose container declares nothing) counts as 0 s.
        max_items: at most this many items per batch.
        max_media_s: a batch closes before an item that would take it past this many seconds
            of media; an item longer than that on its own is a batch of one.

    Returns:
        Lists of partition keys, every key once, in the order given.
    """
    batches: list[list[str]] = []
    current: list[str] = []
    seconds = 0.0
    for key, media_s in items:
        media_s = max(0.0, media_s or 0.0)
        if current and (len(current) >= max_items or seconds + media_s > max_media_s):
            batches.append(current)
            current, seconds = [], 0.0
        current.append(key)
        seconds += media_s
    if current:
        batches.append(current)
    return batches


def batch_run_request(kind: "MediaKind", keys: Sequence[str], launched_by: str) -> dg.RunRequest:
    """The ``RunRequest`` of a sensor-launched batch run of ``keys`` (two or more).

    Its run key, ``<kind>:batch:<hash of the keys>:v<pipeline version>``, is the same whenever
    the same items are asked for, so a tick evaluated twice starts one run; the sensors ask only
    for items whose partitions are new, so an item is in one first run. Each item is tagged
    (:func:`batch_item_tag`) so ``narra status`` and the API find its run.
    """
    from narra_dagster import PIPELINE_VERSION

    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{kind.name}:batch:{digest}:v{PIPELINE_VERSION}", job_name=kind.batch_job_name,
        run_config=batch_run_config(kind.name, list(keys)),
        tags={BATCH_TAG: str(len(keys)), "narra/kind": kind.name, "narra/launched_by": launched_by,
              **{batch_item_tag(k): "1" for k in keys}})


class BatchConfig(dg.Config):
    """Which partitions a batch run processes, in this order."""

    partition_keys: list[str]


def classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """(message, error class) of a stage failure, as ``narra status`` reports a run's."""
    if isinstance(exc, dg.Failure):
        error_class = exc.metadata.get("error_class")
        return (exc.description or str(exc),
                getattr(error_class, "value", None) or (str(error_class) if error_class else "failure"))
    return f"{stage}: {type(exc).__name__}: {exc}", type(exc).__name__


def run_with_retries(stage: Stage, key: str, resources: Any, log) -> dg.MaterializeResult:
    """Run a stage for one item, retrying errors that are not classified bad input per the
    stage's own ``RetryPolicy`` (the same delays an asset run would wait).

    Raises:
        dagster.Failure: classified bad input, at once.
        Exception: the last error once the retries are spent.
    """
    policy = stage.retry_policy
    attempt = 0
    while True:
        try:
            return stage.run(key, resources, log)
        except dg.Failure as exc:
            if not exc.allow_retries or policy is None or attempt >= policy.max_retries:
                raise
        except Exception:
            if policy is None or attempt >= policy.max_retries:
                raise
        attempt += 1
        delay = policy.calculate_delay(attempt)
        log.warning(f"{key}: {stage.name} failed, retry {attempt}/{policy.max_retries} "
                    f"in {delay:.1f} s")
        time.sleep(delay)


class _ItemLog:
    """The logger a batch passes to stage functions: info and debug lines of one item are kept
    and written as ONE log event when the item ends (each event is a database write, tens of
    milliseconds on SQLite); warnings and errors are written at once."""

    def __init__(self, log, key: str):
        self._log, self._key, self._lines = log, key, []

    def debug(self, message, *args, **kwargs) -> None:
        self._lines.append(str(message) % args if args else str(message))

    info = debug

    def warning(self, message, *args, **kwargs) -> None:
        self._log.warning(str(message) % args if args else str(message))

    warn = warning

    def error(self, message, *args, **kwargs) -> None:
        self._log.error(str(message) % args if args else str(message))

    exception = error

    def flush(self) -> None:
        if self._lines:
            self._log.info("\n".join(self._lines))
            self._lines = []


@dataclass
class ResumePlan:
    """What a batch run does with its keys, given the attempts of the same run that crashed
    before it (its parent runs, which Dagster's run retries record)."""

    run: list[str]
    """Keys to process now, in the configured order."""
    carried: list[ItemResult]
    """Items an earlier attempt finished (succeeded or failed), as they ended there."""
    alone: list[str]
    """Keys in progress when two or more attempts died: each gets a run of its own."""
    crashed_attempts: list[str]
    """Run ids of the earlier attempts, newest first."""


def marked_items(instance: dg.DagsterInstance, run_id: str,
                 ) -> tuple[set[str], dict[str, ItemResult]]:
    """(keys a batch run started, key -> how it ended for those it finished), from the run's
    item marks: what a run that died before writing its results had done."""
    marks = dagster_private.item_marks(instance, run_id)
    started = {m["narra/item"] for m in marks if m.get("narra/item_event") == "started"}
    ended = {m["narra/item"]: ItemResult(
        partition_key=m["narra/item"], status=m.get("status", "failed"),
        stage=m.get("stage") or None, error=m.get("error") or None,
        error_class=m.get("error_class") or None, seconds=float(m.get("seconds") or 0.0),
        run_id=run_id) for m in marks if m.get("narra/item_event") == "ended"}
    return started, ended


def resume_plan(instance: dg.DagsterInstance, run: dg.DagsterRun, keys: Sequence[str],
                *, crashes_before_alone: int = 2) -> ResumePlan:
    """Read the item marks of ``run``'s earlier attempts and split ``keys`` into the items to
    process now, those already finished, and those to run alone.

    An item counts as a crash of an attempt when that attempt marked its start and not its end.

    Args:
        run: the batch run now starting; ``run.parent_run_id`` is set on a retry.
        crashes_before_alone: attempts an item may take down before it is run alone.
    """
    attempts: list[str] = []
    parent_id = run.parent_run_id
    while parent_id and parent_id not in attempts:
        attempts.append(parent_id)
        parent = instance.get_run_by_id(parent_id)
        parent_id = parent.parent_run_id if parent else None
    finished: dict[str, ItemResult] = {}
    crashes: Counter[str] = Counter()
    for attempt in reversed(attempts):  # oldest first: a later end wins
        started, ended = marked_items(instance, attempt)
        finished.update(ended)
        crashes.update(started - set(ended))
    todo = [k for k in keys if k not in finished]
    alone = [k for k in todo if crashes[k] >= crashes_before_alone]
    return ResumePlan(run=[k for k in todo if k not in alone],
                      carried=[finished[k] for k in keys if k in finished], alone=alone,
                      crashed_attempts=attempts)


def _run_alone(context: dg.OpExecutionContext, kind: "MediaKind", key: str,
               plan: ResumePlan) -> ItemResult:
    """Hand ``key`` to the run request sensor for a per-item run of its own."""
    # A call-time import (core never imports defs at top level): the run request file is the
    # one way a run worker can ask for a new run (see narra_dagster.defs.intake.requests).
    from narra_dagster.defs.intake.requests import request_run

    root = context.dagster_run.root_run_id or context.run_id
    try:
        name = context.resources.media_store.manifest(key).get("source_name") or key
    except Exception:  # noqa: BLE001 - the name is only a tag
        name = key
    request_run(key, kind.name, name, reason=f"alone-after-{root[:8]}")
    runs = ", ".join(r[:8] for r in plan.crashed_attempts)
    message = (f"{key} was being processed each time runs {runs} died: it now runs alone, in a "
               "run of its own, so it cannot hold the other items back")
    context.log.warning(message)
    return ItemResult(partition_key=key, status="isolated", error=message,
                      error_class="crashed_runs")


def _mark(context: dg.OpExecutionContext, key: str, event: str, item: ItemResult | None = None):
    fields = {"narra/item": key, "narra/item_event": event}
    if item is not None:
        fields.update({"status": item.status, "stage": item.stage or "",
                       "error": (item.error or "")[:2000], "error_class": item.error_class or "",
                       "seconds": str(item.seconds)})
    dagster_private.report_item_mark(context, f"{event} {key}", fields)


def run_items(context: dg.OpExecutionContext, kind: "MediaKind", keys: Iterable[str],
              results: list[ItemResult]):
    """Generator behind a batch op: process ``keys`` through the kind's stages and yield the
    events (materializations and check evaluations, one per item and stage).

    Appends one :class:`ItemResult` per key to ``results``: on a retry of a crashed run, the
    items an earlier attempt finished as they ended there, and the items run alone as
    ``isolated`` (see :func:`resume_plan`). Never raises for an item's failure.
    """
    stages = kind.stages
    instance = context.instance
    keys = list(keys)
    plan = resume_plan(instance, context.dagster_run, keys)
    if plan.crashed_attempts:
        context.log.info(
            f"attempt {len(plan.crashed_attempts) + 1} of this batch: {len(plan.carried)} items "
            f"finished before are kept, {len(plan.run)} to process, {len(plan.alone)} to run alone")
    results.extend(plan.carried)
    for key in plan.alone:
        results.append(_run_alone(context, kind, key, plan))
    for key in plan.run:
        item = ItemResult(partition_key=key)
        results.append(item)
        started = time.perf_counter()
        if not instance.has_dynamic_partition(kind.partitions.name, key):
            item.status, item.error_class = "failed", "unknown_partition"
            item.error = f"{key} is not a registered {kind.partitions.name} partition"
            context.log.error(f"[{item.error_class}] {item.error}")
            _mark(context, key, "ended", item)
            continue
        _mark(context, key, "started")
        item_log = _ItemLog(context.log, key)
        for position, stage in enumerate(stages):
            stage_started = time.perf_counter()
            try:
                result = run_with_retries(stage, key, context.resources, item_log)
            except Exception as exc:  # one item's failure must not stop the others
                item.status, item.stage = "failed", stage.name
                item.error, item.error_class = classify(exc, stage.name)
                item_log.flush()
                context.log.error(f"{key}: [{item.error_class}] {item.error}")
                dagster_private.report_planned(
                    context, [k for s in stages[position:] for k in s.asset.keys], key)
                break
            item.steps[stage.name] = round(time.perf_counter() - stage_started, 3)
            asset_key = result.asset_key or stage.key
            yield dg.AssetMaterialization(
                asset_key=asset_key, partition=key, metadata=result.metadata or {},
                tags={**dagster_private.provenance_tags(instance, stage.asset, asset_key, key),
                      BATCH_TAG: "true"})
            for check in result.check_results or []:
                yield dg.AssetCheckEvaluation(
                    asset_key=check.asset_key or asset_key, check_name=check.check_name,
                    passed=check.passed, severity=check.severity, metadata=check.metadata or {},
                    description=check.description, partition=key)
        else:
            item.status = "succeeded"
            item_log.flush()
        item.seconds = round(time.perf_counter() - started, 3)
        _mark(context, key, "ended", item)


def _items_metadata(results: list[ItemResult]) -> dict[str, Any]:
    failed = [r for r in results if r.status == "failed"]
    return {
        "items": dg.MetadataValue.int(len(results)),
        "succeeded": dg.MetadataValue.int(sum(r.status == "succeeded" for r in results)),
        "failed": dg.MetadataValue.int(len(failed)),
        "run_alone": dg.MetadataValue.int(sum(r.status == "isolated" for r in results)),
        "seconds": dg.MetadataValue.float(round(sum(r.seconds for r in results), 3)),
        "results": dg.MetadataValue.json([asdict(r) for r in results]),
    }


def build_batch_job(kind: "MediaKind") -> dg.JobDefinition:
    """The op job ``<kind>_batch``: run config ``{"ops": {"<kind>_batch_items": {"config":
    {"partition_keys": [...]}}}}`` (:func:`batch_run_config`)."""
    required = set().union(*(set(s.resource_keys) for s in kind.stages))

    @dg.op(name=batch_op_name(kind.name), required_resource_keys=required,
           out=dg.Out(dict, description="One entry per item: status, seconds per stage, error."),
           tags={"kind": kind.name}, pool=kind.batch_pool)
    def batch_items(context: dg.OpExecutionContext, config: BatchConfig):
        results: list[ItemResult] = []
        yield from run_items(context, kind, config.partition_keys, results)
        metadata = _items_metadata(results)
        failed = [r for r in results if r.status == "failed"]
        succeeded = sum(r.status == "succeeded" for r in results)
        context.log.info(f"{succeeded} of {len(results)} {kind.name} items succeeded")
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(results)} items failed: " + "; ".join(
                    f"{r.partition_key} [{r.error_class}] {r.error}" for r in failed[:5]),
                metadata={**metadata, "error_class": "batch_items_failed"},
                allow_retries=False,
            )
        yield dg.Output({"items": [asdict(r) for r in results]}, metadata=metadata)

    @dg.job(name=kind.batch_job_name, tags={"kind": kind.name, "narra/kind": kind.name},
            description=f"Many {kind.name} partitions in one run and one process (one model "
                        "load), one materialization per partition and asset.")
    def batch_job():
        batch_items()

    return batch_job


def batch_run_config(kind_name: str, keys: list[str], extra: dict | None = None) -> dict:
    """The run config of a batch run of ``keys`` (merged over ``extra``, e.g. logger config)."""
    return {**(extra or {}), "ops": {batch_op_name(kind_name): {"config": {"partition_keys": list(keys)}}}}


def batch_keys(run: dg.DagsterRun) -> list[str]:
    """The partition keys a batch run was given, from its run config."""
    ops = (run.run_config or {}).get("ops", {})
    for name, op in ops.items():
        if name.endswith("_batch_items"):
            return list(op.get("config", {}).get("partition_keys", []))
    return []


def item_results(instance: dg.DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """The per-item list a batch run recorded (from its output or its failure metadata)."""
    for record in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_OUTPUT,
                                                     dg.DagsterEventType.STEP_FAILURE}):
        event = record.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT:
            metadata = event.step_output_data.metadata
        else:
            user = event.step_failure_data.user_failure_data
            metadata = user.metadata if user else {}
        if "results" in metadata:
            return metadata["results"].value
    return []
