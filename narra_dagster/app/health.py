"""Health of a narra deployment: healthy, degraded or unhealthy, from five checks.

=============  ==================================================  ======================
check          what is tried                                        when it fails
=============  ==================================================  ======================
instance       read the run storage (a one-row query)               unhealthy
storage        write and delete a probe in the media store's root   unhealthy
               and in the events folder
models         load the transcriber and embedder and run each on    unhealthy
               a tiny input (0.5 s of silence, one word)
daemon         every daemon the instance requires has a heartbeat   degraded
               younger than ``heartbeat_tolerance_s`` without errors
sensors        no sensor of the definitions is stopped, and none    degraded
               whose last tick failed
=============  ==================================================  ======================

Unhealthy: the platform cannot process anything. Degraded: what is running works, but uploads
are not picked up or events not published until the daemon or sensor is back. Exit codes of
``narra health``: 0 healthy, 1 degraded, 2 unhealthy (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import dagster as dg
import numpy as np

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
_SEVERITY = {"instance": UNHEALTHY, "storage": UNHEALTHY, "models": UNHEALTHY,
             "daemon": DEGRADED, "sensors": DEGRADED}


@dataclass
class Check:
    """One check: ``ok``, a sentence saying what was found, and how long it took (seconds)."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class HealthReport:
    status: str
    checks: list[Check]
    checked_at: float

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "exit_code": self.exit_code, "checked_at": self.checked_at,
                "checks": [asdict(c) for c in self.checks]}


def _timed(name: str, fn) -> Check:
    started = time.perf_counter()
    try:
        ok, detail, data = fn()
    except Exception as exc:  # noqa: BLE001 - any error is the finding
        ok, detail, data = False, f"{type(exc).__name__}: {exc}", {}
    return Check(name, ok, detail, round(time.perf_counter() - started, 4), data)


def check_instance(instance: dg.DagsterInstance):
    instance.get_run_records(limit=1)
    return True, f"{type(instance.run_storage).__name__} answers", {}


def check_storage(resources: dict):
    """Each storage resource's own ``probe()``: media store, event sink, search index."""
    probed = [resources["media_store"].probe()]
    sink = resources.get("event_sink")
    if sink is not None:
        probed.append(sink.probe())
    index = resources.get("search_index")
    if index is not None:
        index.count()
        probed.append(f"index at {index.uri}")
    return True, "writable: " + ", ".join(probed), {"probed": probed}


def check_models(resources: dict):
    transcriber, embedder = resources["transcriber"], resources["embedder"]
    transcriber.transcribe(np.zeros(8000, dtype=np.float32))
    vectors = embedder.embed(["health"])
    if vectors.shape != (1, embedder.dimension):
        return False, f"embedder returned {vectors.shape}", {}
    return True, f"{transcriber.model_name}; {embedder.model_name}", {
        "transcriber": transcriber.model_name, "embedder": embedder.model_name}


def check_daemon(instance: dg.DagsterInstance, tolerance_s: float):
    now = time.time()
    heartbeats = instance.get_daemon_heartbeats()
    ages, problems = {}, []
    for daemon_type in instance.get_required_daemon_types():
        beat = heartbeats.get(daemon_type)
        if beat is None:
            problems.append(f"{daemon_type}: no heartbeat")
            continue
        ages[daemon_type] = round(now - beat.timestamp, 1)
        if ages[daemon_type] > tolerance_s:
            problems.append(f"{daemon_type}: last heartbeat {ages[daemon_type]:.0f} s ago")
        elif beat.errors:
            problems.append(f"{daemon_type}: {beat.errors[0].message.strip()[:200]}")
    if problems:
        return False, "; ".join(problems), {"heartbeat_age_s": ages}
    return True, f"{len(ages)} daemons beating (oldest {max(ages.values(), default=0):.0f} s)", {
        "heartbeat_age_s": ages}


def check_sensors(instance: dg.DagsterInstance, sensor_names: list[str]):
    from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType, TickStatus

    states = {s.name: s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)}
    problems, seen = [], {}
    for name in sensor_names:
        state = states.get(name)
        if state is None:
            seen[name] = "not evaluated yet"
            continue
        if state.status == InstigatorStatus.STOPPED:
            problems.append(f"{name} is stopped")
            seen[name] = "stopped"
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        last = ticks[0] if ticks else None
        seen[name] = last.status.value if last else "running, no tick yet"
        if last is not None and last.status == TickStatus.FAILURE:
            problems.append(f"{name}: last tick failed: {(last.error.message if last.error else '').strip()[:200]}")
    if problems:
        return False, "; ".join(problems), {"sensors": seen}
    return True, ", ".join(f"{k}: {v}" for k, v in seen.items()), {"sensors": seen}


def check_health(instance: dg.DagsterInstance, defs: dg.Definitions, *, models: bool = True,
                 heartbeat_tolerance_s: float = 90.0) -> HealthReport:
    """Run the checks on ``instance`` with the resources and sensors of ``defs``.

    Args:
        models: load and try the models (about a second once loaded; the first call loads them).
        heartbeat_tolerance_s: oldest acceptable daemon heartbeat (Dagster beats every 30 s).
    """
    resources = defs.resources
    sensor_names = [s.name for s in defs.sensors or []]
    checks = [_timed("instance", lambda: check_instance(instance)),
              _timed("storage", lambda: check_storage(resources))]
    if models:
        checks.append(_timed("models", lambda: check_models(resources)))
    if checks[0].ok:
        checks.append(_timed("daemon", lambda: check_daemon(instance, heartbeat_tolerance_s)))
        checks.append(_timed("sensors", lambda: check_sensors(instance, sensor_names)))
    failed = {_SEVERITY[c.name] for c in checks if not c.ok}
    status = UNHEALTHY if UNHEALTHY in failed else (DEGRADED if failed else HEALTHY)
    return HealthReport(status, checks, time.time())


def unreachable_report(exc: BaseException) -> HealthReport:
    """The report when the instance cannot even be opened (bad DAGSTER_HOME, database down,
    storage being created by another process at that moment): unhealthy."""
    return HealthReport(UNHEALTHY, [Check("instance", False, f"{type(exc).__name__}: {exc}")],
                        time.time())


def run_metrics(instance: dg.DagsterInstance) -> dict[str, int]:
    """Runs by status (one count query per status)."""
    return {status.value: instance.get_runs_count(dg.RunsFilter(statuses=[status]))
            for status in dg.DagsterRunStatus}


def prometheus_text(report: HealthReport, runs: dict[str, int] | None) -> bytes:
    """The report (and run counts) in Prometheus' text exposition format."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    Gauge("narra_health_status", "0 healthy, 1 degraded, 2 unhealthy", registry=registry).set(
        report.exit_code)
    ok = Gauge("narra_health_check_ok", "1 when the check passed", ["check"], registry=registry)
    took = Gauge("narra_health_check_seconds", "Duration of the check", ["check"], registry=registry)
    age = Gauge("narra_daemon_heartbeat_age_seconds", "Age of the newest heartbeat",
                ["daemon"], registry=registry)
    for check in report.checks:
        ok.labels(check.name).set(1 if check.ok else 0)
        took.labels(check.name).set(check.seconds)
        for daemon, seconds in check.data.get("heartbeat_age_s", {}).items():
            age.labels(daemon).set(seconds)
    if runs is not None:
        gauge = Gauge("narra_runs", "Dagster runs by status", ["status"], registry=registry)
        for status, count in runs.items():
            gauge.labels(status.lower()).set(count)
    return generate_latest(registry)
