"""The private Dagster APIs narra relies on, all in one place.

A batch run (:mod:`narra_dagster.core.batch`) materializes many partitions inside one op. To
leave each item exactly as an ordinary asset run would, it needs two things Dagster's public API
does not offer (checked against Dagster 1.13):

1. **Data-version tags** on each ``AssetMaterialization`` (code version, each parent partition's
   data version and event pointer, the logical data version), so the UI's staleness and lineage
   read batch materializations like those of asset runs. The tag names and the hashing live in
   ``dagster._core.definitions.data_version``.
2. **Planned-materialization events** for the stages an item did not reach, so Dagster's asset
   status cache counts that item's partition as failed (a partition is failed when its latest
   planned materialization belongs to a failed run and no materialization followed; see
   ``dagster._core.storage.partition_status_cache``). Built with
   ``dagster._core.events.DagsterEvent`` and ``AssetMaterializationPlannedData``.

3. **A run failure that run retries retry**: the run worker watchdog
   (:mod:`narra_dagster.defs.watchdog.sensor`) marks a run whose worker died as failed with
   ``RunFailureReason.UNEXPECTED_TERMINATION`` (``dagster._core.events.JobFailureData``), what
   run monitoring records for a lost worker, so that ``run_retries`` retries it (a run failed by
   a step is not retried with ``retry_on_asset_or_op_failure: false``).
4. **Item marks in a batch run's event log**: engine events with metadata
   (``dagster._core.events.EngineEventData``) at each item's start and end, which a retry of a
   crashed batch run reads to resume after the items already finished.

``tests/test_dagster_private.py`` exercises all four against the installed Dagster and fails loudly
when an upgrade changes them; that is why ``pyproject.toml`` pins ``dagster<1.14``.
"""

from __future__ import annotations

import hashlib

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    extract_data_version_from_entry,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    DataVersion,
    compute_logical_data_version,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

__all__ = ["CODE_VERSION_TAG", "DATA_VERSION_TAG", "provenance_tags", "report_planned",
           "report_lost_run_worker", "report_item_mark", "item_marks"]


def provenance_tags(instance: dg.DagsterInstance, asset: dg.AssetsDefinition,
                    asset_key: dg.AssetKey, partition: str) -> dict[str, str]:
    """The data-version tags Dagster writes on a materialization of ``asset_key`` for
    ``partition``, computed as an asset run computes them (Dagster 1.13,
    ``dagster._core.execution.context.data_version_cache``): for each parent, the event pointer
    is the parent's latest materialization (or, for a source, observation), and its data version
    is that event's, except for a partitioned parent, whose version is the SHA-256 of the data
    version of the same partition; then the logical data version of the code version and inputs.

    Returns:
        Tag name -> value, e.g. ``{"dagster/code_version": "1", "dagster/data_version": ...}``.
    """
    code_version = asset.code_versions_by_key.get(asset_key) or "1"
    parents = list(asset.asset_deps.get(asset_key, ()))
    records = {r.asset_entry.asset_key: r for r in instance.get_asset_records(parents)}
    inputs: dict[dg.AssetKey, DataVersion] = {}
    tags: dict[str, str] = {CODE_VERSION_TAG: code_version}
    for parent in parents:
        entry = records[parent].asset_entry if parent in records else None
        event = entry and (entry.last_materialization_record or entry.last_observation_record)
        if event is None:  # storages that keep no last observation in the asset record
            event = next(iter(instance.fetch_observations(parent, limit=1).records), None)
        if event is None:
            version, pointer = DEFAULT_DATA_VERSION, NULL_EVENT_POINTER
        else:
            pointer = str(event.storage_id)
            version = extract_data_version_from_entry(event.event_log_entry) or DEFAULT_DATA_VERSION
            if entry is not None and entry.last_materialization_record is not None \
                    and _is_partitioned(event):
                own = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=parent, asset_partitions=[partition]),
                    limit=1).records
                value = (own[0].asset_materialization.tags or {}).get(DATA_VERSION_TAG, "") if own else ""
                version = DataVersion(hashlib.sha256(value.encode()).hexdigest())
        inputs[parent] = version
        tags[get_input_data_version_tag(parent)] = version.value
        tags[get_input_event_pointer_tag(parent)] = pointer
    tags[DATA_VERSION_TAG] = compute_logical_data_version(code_version, inputs).value
    return tags


def _is_partitioned(record) -> bool:
    event = record.event_log_entry.dagster_event
    return bool(event and event.partition)


def report_planned(context: dg.OpExecutionContext, asset_keys: list[dg.AssetKey],
                   partition: str) -> None:
    """Record in the event log that this op's run planned to materialize ``asset_keys`` for
    ``partition`` (what an asset run records for each step before it runs)."""
    for asset_key in asset_keys:
        context.instance.report_dagster_event(
            DagsterEvent.build_asset_materialization_planned_event(
                context.job_name, context.op_handle.name,
                AssetMaterializationPlannedData(asset_key, partition=partition)),
            run_id=context.run_id)


def report_lost_run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str) -> None:
    """Mark ``run`` failed because its worker process is gone, as run monitoring does for a lost
    worker (``RunFailureReason.UNEXPECTED_TERMINATION``), so run retries start it again."""
    from dagster._core.events import JobFailureData, RunFailureReason

    instance.report_run_failed(run, message=message, job_failure_data=JobFailureData(
        error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))


def report_item_mark(context: dg.OpExecutionContext, message: str,
                     metadata: dict[str, str]) -> None:
    """Write an engine event carrying ``metadata`` (strings) into this op's run's event log: a
    batch run marks each item's start and end so a retry of a crashed run knows where it died
    (:func:`narra_dagster.core.batch.resume_plan`). Engine events are the only event a step can
    add to its run's log with structured metadata and no asset attached."""
    from dagster._core.events import EngineEventData

    context.instance.report_engine_event(
        message, context.dagster_run,
        EngineEventData(metadata={k: dg.MetadataValue.text(v) for k, v in metadata.items()}),
        step_key=context.get_step_execution_context().step.key)


def item_marks(instance: dg.DagsterInstance, run_id: str) -> list[dict[str, str]]:
    """The item marks (see :func:`report_item_mark`) of one run, in the order written."""
    marks = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.event_specific_data
        metadata = getattr(data, "metadata", None) or {}
        if "narra/item" in metadata:
            marks.append({k: getattr(v, "value", v) for k, v in metadata.items()})
    return marks
