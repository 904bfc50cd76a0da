"""Batch runs: many partitions of one media kind in ONE run and ONE process.

A run per item costs Dagster about a second of bookkeeping (run record, step events, resource
set-up) before any work happens; for a 2-second photo or clip that is half the wall time. A batch
job ``<kind>_batch`` takes a list of partition keys as run config and, in a single op, calls the
kind's stage functions (the module's ``STAGES``: ``[(asset_def, build_fn), ...]`` in dependency
order) for each key in turn, with the resources set up once (so each model loads once).

What a person sees stays per item:

- each stage logs one ``AssetMaterialization(partition=key)`` with the stage's metadata and the
  data-version tags a normal asset run writes (code version, input data versions), plus its
  asset check evaluations; an item's info lines are written as one log event (every event is a
  database write);
- an item that fails stops only that item: its error is classified (``error_class`` as in
  :func:`narra_dagster.errors.classified_failures`) and logged, its failed stage and the stages
  after it are recorded as planned-but-not-materialized for that partition, and the other items
  go on; transient errors are retried per the asset's own ``RetryPolicy``;
- the op's result lists every item (status, seconds per stage, error); when any item failed the
  run ends FAILED with that list in the failure's metadata, and Dagster then counts exactly the
  failed items' unmaterialized stages as failed partitions (the asset status cache marks a
  partition failed when its latest planned materialization belongs to a failed run and was not
  followed by a materialization; see ``dagster._core.storage.partition_status_cache``).

The sensor keeps one run per upload (isolation: one bad file never shares a process with another);
``narra process`` uses a batch run when it is given several items of one kind.
"""

import importlib
import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    DataVersion,
    compute_logical_data_version,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

from narra_dagster.media import MediaKind
from narra_dagster.partitions import PARTITIONS_BY_KIND

# Media kind -> the modules whose STAGES a batch run calls: together, every asset of the kind's
# group, so a batch run leaves an item exactly as materialized as its per-item run would.
STAGE_MODULES: dict[MediaKind, tuple[str, ...]] = {
    "video": ("narra_dagster.assets.video", "narra_dagster.assets.frames",
              "narra_dagster.assets.video_enrichment"),
    "image": ("narra_dagster.assets.image",),
    "document": ("narra_dagster.assets.document",),
}

BATCH_TAG = "narra/batch_size"

Stage = tuple[dg.AssetsDefinition, Callable[..., dg.MaterializeResult]]


def stages_for_kind(kind: MediaKind) -> list[Stage] | None:
    """The ``STAGES`` (asset, build function) of a kind's modules, in dependency order (each
    stage after every stage it depends on), or None when they export none.

    Raises:
        ValueError: when the stages' dependencies form a cycle.
    """
    stages: list[Stage] = []
    for name in STAGE_MODULES[kind]:
        stages += list(getattr(importlib.import_module(name), "STAGES", None) or [])
    if not stages:
        return None
    by_key = {asset.key: (asset, build) for asset, build in stages}
    ordered: list[Stage] = []
    done: set[dg.AssetKey] = set()
    pending = list(by_key)
    while pending:
        ready = [key for key in pending
                 if all(dep in done or dep not in by_key
                        for dep in by_key[key][0].asset_deps.get(key, ()))]
        if not ready:
            raise ValueError(f"the {kind} stages depend on each other in a cycle: {pending}")
        for key in ready:  # keeps the modules' own order among stages ready together
            ordered.append(by_key[key])
            done.add(key)
        pending = [key for key in pending if key not in done]
    return ordered


def batch_item_tag(key: str) -> str:
    """Run tag naming one item of a batch run, so `narra status` finds an item's last run."""
    return f"narra/item-{key}"


def batch_job_name(kind: MediaKind) -> str:
    return f"{kind}_batch"


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


def _stage_kwargs(fn: Callable, resources: Any, log) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    kwargs = {name: getattr(resources, name) for name, p in params.items()
              if p.kind == p.KEYWORD_ONLY and name != "log"}
    if "log" in params:
        kwargs["log"] = log
    return kwargs


def _classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """(message, error class) of a stage failure, as ``narra status`` reports a run's."""
    if isinstance(exc, dg.Failure):
        error_class = exc.metadata.get("error_class")
        return (exc.description or str(exc),
                getattr(error_class, "value", None) or (str(error_class) if error_class else "failure"))
    return f"{stage}: {type(exc).__name__}: {exc}", type(exc).__name__


def _call_with_retries(asset: dg.AssetsDefinition, fn: Callable, key: str, kwargs: dict, log):
    """Call a stage function, retrying non-classified errors per the asset's RetryPolicy."""
    policy: dg.RetryPolicy | None = asset.op.retry_policy
    attempt = 0
    while True:
        try:
            return fn(key, **kwargs)
        except dg.Failure as exc:
            if not exc.allow_retries or policy is None or attempt >= policy.max_retries:
                raise
        except Exception:
            if policy is None or attempt >= policy.max_retries:
                raise
        attempt += 1
        delay = policy.calculate_delay(attempt)
        log.warning(f"{key}: {asset.key.to_user_string()} failed, retry {attempt}/"
                    f"{policy.max_retries} in {delay:.1f} s")
        time.sleep(delay)


def _provenance_tags(instance: dg.DagsterInstance, asset: dg.AssetsDefinition,
                     asset_key: dg.AssetKey, key: str) -> dict[str, str]:
    """The data-version tags Dagster writes on an asset materialization (code version, each
    parent partition's data version and event pointer, the logical data version), so the UI's
    staleness and lineage read batch materializations like those of ordinary runs."""
    code_version = asset.code_versions_by_key.get(asset_key) or "1"
    inputs: dict[dg.AssetKey, DataVersion] = {}
    tags: dict[str, str] = {CODE_VERSION_TAG: code_version}
    for parent in asset.asset_deps.get(asset_key, ()):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=parent, asset_partitions=[key]), limit=1).records
        if records:
            materialization = records[0].asset_materialization
            version = DataVersion((materialization.tags or {}).get(DATA_VERSION_TAG)
                                  or DEFAULT_DATA_VERSION.value)
            pointer = str(records[0].storage_id)
        else:
            version, pointer = DEFAULT_DATA_VERSION, NULL_EVENT_POINTER
        inputs[parent] = version
        tags[get_input_data_version_tag(parent)] = version.value
        tags[get_input_event_pointer_tag(parent)] = pointer
    tags[DATA_VERSION_TAG] = compute_logical_data_version(code_version, inputs).value
    return tags


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


def _mark_not_materialized(context: dg.OpExecutionContext, key: str, stages: list[Stage]) -> None:
    """Record that this run meant to materialize ``stages`` of ``key`` and did not: Dagster's
    asset status cache counts a partition as failed when its latest planned materialization
    belongs to a failed run and no materialization followed (what a per-item run records for
    its failed step and the steps after it)."""
    for asset, _ in stages:
        for asset_key in asset.keys:
            context.instance.report_dagster_event(
                DagsterEvent.build_asset_materialization_planned_event(
                    context.job_name, context.op_handle.name,
                    AssetMaterializationPlannedData(asset_key, partition=key)),
                run_id=context.run_id)


def run_items(context: dg.OpExecutionContext, kind: MediaKind, stages: list[Stage],
              keys: Iterable[str], results: list[ItemResult]):
    """Generator behind a batch op: process ``keys`` through ``stages`` and yield the events.

    Appends one :class:`ItemResult` per key to ``results``. Never raises for an item's failure.
    """
    partitions = PARTITIONS_BY_KIND[kind]
    instance = context.instance
    for key in keys:
        item = ItemResult(partition_key=key)
        results.append(item)
        started = time.perf_counter()
        if not instance.has_dynamic_partition(partitions.name, key):
            item.status, item.error_class = "failed", "unknown_partition"
            item.error = f"{key} is not a registered {partitions.name} partition"
            context.log.error(f"[{item.error_class}] {item.error}")
            continue
        item_log = _ItemLog(context.log, key)
        for position, (asset, fn) in enumerate(stages):
            name = asset.key.to_user_string()
            stage_started = time.perf_counter()
            try:
                result = _call_with_retries(asset, fn, key, _stage_kwargs(fn, context.resources, item_log),
                                            item_log)
            except Exception as exc:  # one item's failure must not stop the others
                item.status, item.stage = "failed", name
                item.error, item.error_class = _classify(exc, name)
                item_log.flush()
                context.log.error(f"{key}: [{item.error_class}] {item.error}")
                _mark_not_materialized(context, key, stages[position:])
                break
            item.steps[name] = round(time.perf_counter() - stage_started, 3)
            asset_key = result.asset_key or asset.key
            yield dg.AssetMaterialization(
                asset_key=asset_key, partition=key, metadata=result.metadata or {},
                tags={**_provenance_tags(instance, asset, asset_key, key), BATCH_TAG: "true"})
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


def build_batch_job(kind: MediaKind, stages: list[Stage]) -> dg.JobDefinition:
    """The op job ``<kind>_batch``: run config ``{"ops": {"<kind>_batch_items": {"config":
    {"partition_keys": [...]}}}}``."""
    required = set().union(*(asset.required_resource_keys for asset, _ in stages)) - {"io_manager"}

    @dg.op(name=f"{kind}_batch_items", required_resource_keys=required,
           out=dg.Out(dict, description="One entry per item: status, seconds per stage, error."),
           tags={"kind": kind})
    def batch_items(context: dg.OpExecutionContext, config: BatchConfig):
        results: list[ItemResult] = []
        yield from run_items(context, kind, stages, config.partition_keys, results)
        metadata = _items_metadata(results)
        failed = [r for r in results if r.status != "succeeded"]
        context.log.info(f"{len(results) - len(failed)} of {len(results)} {kind} items succeeded")
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(results)} items failed: " + "; ".join(
                    f"{r.partition_key} [{r.error_class}] {r.error}" for r in failed[:5]),
                metadata={**metadata, "error_class": "batch_items_failed"},
                allow_retries=False,
            )
        yield dg.Output({"items": [asdict(r) for r in results]}, metadata=metadata)

    @dg.job(name=batch_job_name(kind), tags={"kind": kind},
            description=f"Many {kind} partitions in one run and one process (one model load), "
                        "one materialization per partition and asset.")
    def batch_job():
        batch_items()

    return batch_job


def batch_jobs() -> list[dg.JobDefinition]:
    """A batch job for every kind whose stage module exists and exports ``STAGES``."""
    jobs = []
    for kind in STAGE_MODULES:
        stages = stages_for_kind(kind)
        if stages:
            jobs.append(build_batch_job(kind, stages))
    return jobs


def batch_run_config(kind: MediaKind, keys: list[str], extra: dict | None = None) -> dict:
    return {**(extra or {}), "ops": {f"{kind}_batch_items": {"config": {"partition_keys": list(keys)}}}}


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
