"""The domain events sensor: Dagster's runs and their event logs turned into domain events.

Why one sensor reading runs' event logs, and not a run-status sensor plus asset sensors: each of
those keeps its own cursor and ticks on its own, so ``analysis.started`` (run status) could be
published after ``video_source.completed`` (asset sensor) and a client would see them out of
order. One sensor reading each run's events in the order Dagster recorded them gives one
ordered stream per item.

Why a cursor on run update times and not on event storage ids: the embedded instance keeps its
event log in one SQLite file per run, where storage ids are per run and Dagster rejects a
global storage-id cursor; run records, though, have an update time on every storage. Each tick:

1. Picks the runs of the per-kind jobs that are in progress, plus those updated since the
   cursor minus ``OVERLAP_S`` (at most ``BATCH``, oldest update first).
2. Reads each run's ``RUN_START``, ``ASSET_MATERIALIZATION``, ``STEP_FAILURE``, ``RUN_SUCCESS``,
   ``RUN_FAILURE`` and ``RUN_CANCELED`` events (``instance.all_logs``), in order, and maps them
   to domain events (``narra_dagster/resources/events.py``).
3. Publishes them through the ``event_sink`` resource. In-progress runs are read again every
   tick and finished runs for ``OVERLAP_S`` after their last update, so an event is published as
   soon as a tick sees it and never missed; events have deterministic ids and sinks drop the ids
   they hold, so reading a run again only ever adds what is new.

A ``RUN_FAILURE`` is final only when run retries will not retry it; Dagster tags the run
``dagster/will_retry`` just after storing the failure. A failure whose tag is not there yet is
left for the next tick (the cursor stays before that run's update time).
"""

import datetime as dt
import json
from dataclasses import asdict

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.batch import batch_keys, item_results, marked_items, resume_plan
from narra_dagster.core.runs import run_failure
from narra_dagster.resources import events as ev

BATCH = 500
OVERLAP_S = 60.0
EVENT_TYPES = {
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
}
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
               dg.DagsterRunStatus.CANCELING]
_SIMPLE = (dg.IntMetadataValue, dg.FloatMetadataValue, dg.TextMetadataValue,
           dg.PathMetadataValue, dg.BoolMetadataValue)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")


def run_domain_events(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[list[dict], bool]:
    """The domain events of one run of a per-kind job, in order.

    Returns:
        (events, complete): ``complete`` is False when the run failed and Dagster has not yet
        tagged whether run retries will retry it (its failure event is then left out).
    """
    media_kind = registry.for_job(run.job_name)
    if media_kind is None:
        return [], True
    if run.job_name == media_kind.batch_job_name:
        return batch_domain_events(instance, run)
    kind = media_kind.name
    media_id = run.tags.get("dagster/partition")
    if media_id is None:
        return [], True
    out: list[dict] = []
    for entry in instance.all_logs(run.run_id, of_type=EVENT_TYPES):
        event = entry.dagster_event
        common = {"run_id": run.run_id, "media_id": media_id, "kind": kind,
                  "occurred_at": _iso(entry.timestamp),
                  "source_name": run.tags.get("narra/source_name")}
        etype = event.event_type
        if etype == dg.DagsterEventType.RUN_START:
            retry = "dagster/parent_run_id" in run.tags
            out.append(ev.make_event(
                ev.RETRYING if retry else ev.STARTED, **common,
                metadata={"attempt": int(run.tags.get("dagster/retry_number", 0)) + 1} if retry else {}))
        elif etype == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            stage = mat.asset_key.to_user_string()
            metadata = {k: v.value for k, v in mat.metadata.items() if isinstance(v, _SIMPLE)}
            out.append(ev.make_event(f"{stage}.completed", stage=stage, metadata=metadata, **common))
        elif etype == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            user = data.user_failure_data
            if user is not None and user.description:
                error = user.description
                error_class = user.metadata.get("error_class")
                error_class = error_class.value if error_class is not None else "failure"
            else:
                error = data.error.message.strip() if data.error else "step failed"
                error_class = data.error.cls_name if data.error else "error"
            out.append(ev.make_event(f"{entry.step_key}.failed", stage=entry.step_key,
                                     error=error, error_class=error_class, **common))
        elif etype == dg.DagsterEventType.RUN_SUCCESS:
            out.append(ev.make_event(ev.COMPLETED, **common))
        elif etype == dg.DagsterEventType.RUN_FAILURE:
            will_retry = (instance.get_run_by_id(run.run_id) or run).tags.get("dagster/will_retry")
            if will_retry is None and instance.run_retries_enabled:
                return out, False
            if will_retry != "true":
                error, error_class = run_failure(instance, run.run_id)
                out.append(ev.make_event(
                    ev.FAILED, error=error or (event.message or "the run failed"),
                    error_class=error_class or "run_failure", **common))
        elif etype == dg.DagsterEventType.RUN_CANCELED:
            out.append(ev.make_event(ev.FAILED, error="the run was cancelled",
                                     error_class="cancelled", **common))
    return out, True


def batch_domain_events(instance: dg.DagsterInstance, run: dg.DagsterRun,
                        ) -> tuple[list[dict], bool]:
    """The domain events of a batch run (``<kind>_batch``, many partitions in one run), per item
    in the order the run processed them: ``analysis.started`` when the run starts, one
    ``<stage>.completed`` per ``AssetMaterialization(partition=item)`` the run logged, then, once
    the run has ended, ``analysis.completed`` or the failed stage and ``analysis.failed`` with its
    classified error from the run's per-item results. Ids also name the item, so redelivery stays
    harmless. A retry of a crashed batch run speaks only for the items it processes: those an
    earlier attempt finished, or handed to a run of their own, are told by that run.

    Returns:
        (events, complete): ``complete`` is False while the run has not ended (its items' final
        events are still to come).
    """
    kind = registry.for_job(run.job_name).name
    keys = batch_keys(run)
    if run.parent_run_id:  # a retry of a crashed batch: only the items it takes on are its own
        plan = resume_plan(instance, run, keys)
        keys = plan.run
    if not keys:
        return [], True
    logs = instance.all_logs(run.run_id, of_type=EVENT_TYPES)
    started_at = next((e.timestamp for e in logs if e.dagster_event.event_type
                       == dg.DagsterEventType.RUN_START), None)
    ended = next((e for e in logs if e.dagster_event.event_type in (
        dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
        dg.DagsterEventType.RUN_CANCELED)), None)
    per_item: dict[str, list[dict]] = {key: [] for key in keys}

    def item_event(event_type: str, key: str, timestamp: float, **fields) -> dict:
        event = ev.make_event(event_type, run_id=run.run_id, media_id=key, kind=kind,
                              occurred_at=_iso(timestamp), **fields)
        # One run holds many items: the item is part of the id, or their events would collide.
        event["id"] = ev.event_id(run.run_id, f"{key}/{fields.get('stage') or ''}", event_type)
        return event

    if started_at is not None:
        attempt = ({"metadata": {"attempt": int(run.tags.get("dagster/retry_number", 0)) + 1}}
                   if run.parent_run_id else {})
        for key in keys:
            per_item[key].append(item_event(ev.RETRYING if run.parent_run_id else ev.STARTED,
                                            key, started_at, **attempt))
    for entry in logs:
        if entry.dagster_event.event_type != dg.DagsterEventType.ASSET_MATERIALIZATION:
            continue
        mat = entry.dagster_event.step_materialization_data.materialization
        if mat.partition not in per_item:
            continue
        stage = mat.asset_key.to_user_string()
        metadata = {k: v.value for k, v in mat.metadata.items() if isinstance(v, _SIMPLE)}
        per_item[mat.partition].append(item_event(
            f"{stage}.completed", mat.partition, entry.timestamp, stage=stage, metadata=metadata))
    if ended is None:
        return [e for key in keys for e in per_item[key]], False
    # What each item ended as: the run's results, or, for a run that died before writing
    # them, its item marks.
    results = {key: asdict(item) for key, item in marked_items(instance, run.run_id)[1].items()}
    results.update({r["partition_key"]: r for r in item_results(instance, run.run_id)})
    retried = False
    if ended.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE:
        will_retry = (instance.get_run_by_id(run.run_id) or run).tags.get("dagster/will_retry")
        if will_retry is None and instance.run_retries_enabled:
            return [e for key in keys for e in per_item[key]], False
        retried = will_retry == "true"
    for key in keys:
        result = results.get(key)
        at = ended.timestamp
        if result is None and retried:
            continue  # not finished: the retry takes it on and tells how it ends
        if result and result.get("status") == "succeeded":
            per_item[key].append(item_event(ev.COMPLETED, key, at))
            continue
        error = (result or {}).get("error") or "the batch run ended before this item finished"
        error_class = (result or {}).get("error_class") or "run_failure"
        if result and result.get("stage"):
            stage = result["stage"]
            per_item[key].append(item_event(f"{stage}.failed", key, at, stage=stage, error=error,
                                            error_class=error_class))
        per_item[key].append(item_event(ev.FAILED, key, at, error=error, error_class=error_class))
    return [e for key in keys for e in per_item[key]], True


def domain_events_since(instance: dg.DagsterInstance, updated_after: float,
                        ) -> tuple[list[dict], float]:
    """Domain events of the runs in progress or updated after ``updated_after - OVERLAP_S``
    (epoch seconds), runs in creation order.

    Returns:
        (events, the cursor for the next call).
    """
    since = dt.datetime.fromtimestamp(max(0.0, updated_after - OVERLAP_S), dt.timezone.utc)
    recent = instance.get_run_records(dg.RunsFilter(updated_after=since),
                                      order_by="update_timestamp", ascending=True, limit=BATCH)
    running = instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS))
    records = {r.dagster_run.run_id: r for r in [*recent, *running]}
    cursor = max([updated_after] + [r.update_timestamp.timestamp() for r in recent])
    out: list[dict] = []
    for record in sorted(records.values(), key=lambda r: r.create_timestamp):
        events, complete = run_domain_events(instance, record.dagster_run)
        out += events
        if not complete:
            cursor = min(cursor, record.update_timestamp.timestamp() - 1e-3)
    return out, cursor


@dg.sensor(
    name="domain_events_sensor",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Publishes analysis.started, <stage>.completed/failed and analysis.completed/failed "
                "for every item to the event sink (JSON lines or a Redis stream).",
)
def domain_events_sensor(context: dg.SensorEvaluationContext, event_sink: ev.EventSink):
    cursor = json.loads(context.cursor) if context.cursor else {}
    events, updated_after = domain_events_since(
        context.instance, float(cursor.get("updated_after", 0.0)))
    new = event_sink.publish(events) if events else 0
    context.update_cursor(json.dumps({"updated_after": updated_after}))
    summary = f"published {new} new domain events of {len(events)} read"
    if new:
        context.log.info(summary)
    return dg.SkipReason(summary)
