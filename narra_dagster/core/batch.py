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

The sensor keeps one run per upload (isolation: one bad file never shares a process with another);
``narra process`` uses a batch run when it is given several items of one kind.
"""


import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from narra_dagster.core import dagster_private
from narra_dagster.core.stage import Stage

if TYPE_CHECKING:
    from narra_dagster.core.kind import MediaKind

BATCH_TAG = "narra/batch_size"


def batch_item_tag(key: str) -> str:
    """Run tag naming one item of a batch run, so `narra status` finds an item's last run."""
    return f"narra/item-{key}"


def batch_op_name(kind_name: str) -> str:
    """The op of a kind's batch job, ``<kind>_batch_items``: its run config holds the keys."""
    return f"{kind_name}_batch_items"


@dataclass
class ItemResult:
    """One item of a batch run: ``status`` succeeded | failed, seconds per stage (asset name)."""

    partition_key: str
    status: str = "pending"
    stage: str | None = None  # the stage that failed
    error: str | None = None
    error_class: str | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


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


def run_items(context: dg.OpExecutionContext, kind: "MediaKind", keys: Iterable[str],
              results: list[ItemResult]):
    """Generator behind a batch op: process ``keys`` through the kind's stages and yield the
    events (materializations and check evaluations, one per item and stage).

    Appends one :class:`ItemResult` per key to ``results``. Never raises for an item's failure.
    """
    stages = kind.stages
    instance = context.instance
    for key in keys:
        item = ItemResult(partition_key=key)
        results.append(item)
        started = time.perf_counter()
        if not instance.has_dynamic_partition(kind.partitions.name, key):
            item.status, item.error_class = "failed", "unknown_partition"
            item.error = f"{key} is not a registered {kind.partitions.name} partition"
            context.log.error(f"[{item.error_class}] {item.error}")
            continue
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


def _items_metadata(results: list[ItemResult]) -> dict[str, Any]:
    failed = [r for r in results if r.status != "succeeded"]
    return {
        "items": dg.MetadataValue.int(len(results)),
        "succeeded": dg.MetadataValue.int(len(results) - len(failed)),
        "failed": dg.MetadataValue.int(len(failed)),
        "seconds": dg.MetadataValue.float(round(sum(r.seconds for r in results), 3)),
        "results": dg.MetadataValue.json([asdict(r) for r in results]),
    }


def build_batch_job(kind: "MediaKind") -> dg.JobDefinition:
    """The op job ``<kind>_batch``: run config ``{"ops": {"<kind>_batch_items": {"config":
    {"partition_keys": [...]}}}}`` (:func:`batch_run_config`)."""
    required = set().union(*(set(s.resource_keys) for s in kind.stages))

    @dg.op(name=batch_op_name(kind.name), required_resource_keys=required,
           out=dg.Out(dict, description="One entry per item: status, seconds per stage, error."),
           tags={"kind": kind.name})
    def batch_items(context: dg.OpExecutionContext, config: BatchConfig):
        results: list[ItemResult] = []
        yield from run_items(context, kind, config.partition_keys, results)
        metadata = _items_metadata(results)
        failed = [r for r in results if r.status != "succeeded"]
        context.log.info(f"{len(results) - len(failed)} of {len(results)} {kind.name} items succeeded")
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
