"""Reading what a run recorded: its classified failure."""

from __future__ import annotations

import dagster as dg


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
