"""Reading what a run recorded: its classified failure."""

from __future__ import annotations

import dagster as dg


def _root(error):
    """The innermost cause of a serialized error (what actually went wrong)."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error


def run_failure(instance: dg.DagsterInstance, run_id: str) -> tuple[str | None, str | None]:
    """(message, error class) of why a run failed, or (None, None) when nothing failed.

    In order: the first step failure (a classified failure gives its own ``error_class``; any
    other error its exception class); else a resource that could not be set up (class
    ``resource_init``, message naming the root cause, e.g. a missing model file or package);
    else the run's own failure (class ``run_failure``), e.g. a worker that died.
    """
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.description:
            error_class = user.metadata.get("error_class")
            return user.description, error_class.value if error_class is not None else "failure"
        message = data.error.message.strip() if data.error else "step failed"
        return f"{record.step_key}: {message}", (data.error.cls_name if data.error else "error")
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RESOURCE_INIT_FAILURE):
        root = _root(record.dagster_event.event_specific_data.error)
        detail = root.message.strip() if root else "unknown error"
        return f"[resource_init] the run's resources could not be set up: {detail}", "resource_init"
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        data = record.dagster_event.event_specific_data
        root = _root(getattr(data, "error", None))
        detail = root.message.strip() if root else (record.message or "the run failed")
        return f"[run_failure] {detail}", "run_failure"
    return None, None
