"""The run worker watchdog: a run whose worker process died is failed, so run retries restart it.

Dagster's run monitoring finds dead run workers only through launchers that can check a
worker's health (Kubernetes, Docker, ECS); the embedded default, ``DefaultRunLauncher``, cannot,
so a run whose worker was killed (SIGKILL, out of memory, a machine restart) stayed STARTED for
good. With that launcher, this sensor looks at every STARTED run each tick:

1. its worker's pid is the one the worker reported itself (the ``Started process for run (pid:
   N)`` engine event every launched run worker writes first);
2. the worker is alive when ``/proc/<pid>`` exists, is not a zombie, and was started before it
   reported itself (so a pid reused later by another process is not taken for the worker);
3. a run whose worker is gone is marked failed as a lost worker
   (:func:`narra_dagster.core.dagster_private.report_lost_run_worker`). Run retries
   (``run_retries`` in ``dagster.yaml``) then start a new run from the failure, which reuses
   what was already materialized; the run's pool slots are freed after
   ``free_slots_after_run_end_seconds``.

Runs executed in a caller's own process (``narra process``) write no such event and are never
touched. Bound: a dead worker is found within one tick (``minimum_interval_seconds``, 30 s) of
the daemon running, across daemon restarts, and its retry starts at the run retry daemon's next
pass: about a minute in all (README, "Recovery").
"""

import os

import dagster as dg

from narra_dagster.core import dagster_private

STARTED_PROCESS = "Started process for run (pid: "


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, when it reported itself, epoch seconds) of a launched run worker, or None (not
    started yet, or the run executes in its caller's process)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        message = record.message or ""
        if message.startswith(STARTED_PROCESS):  # "Started process for run (pid: 1234)."
            digits = message[len(STARTED_PROCESS):].split(")")[0]
            if digits.isdigit():
                return int(digits), record.timestamp
    return None


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as fh:
        return float(next(line.split()[1] for line in fh if line.startswith("btime")))


def worker_alive(pid: int, reported_at: float) -> bool:
    """True when process ``pid`` runs (not a zombie) and started no later than ``reported_at``
    (epoch seconds, plus 2 s of clock slack): a pid reused afterwards is another process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    state, start_ticks = fields[0], int(fields[19])  # stat fields 3 and 22 (proc(5))
    started = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    return state != "Z" and started <= reported_at + 2.0


def dead_runs(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, int]]:
    """(run, pid) of every STARTED run whose launched worker process is gone."""
    out = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        worker = run_worker(instance, run.run_id)
        if worker is not None and not worker_alive(*worker):
            out.append((run, worker[0]))
    return out


@dg.sensor(
    name="run_worker_watchdog",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs whose worker process died (killed, out of memory, a restart) so "
                "run retries restart them; for the embedded default run launcher, which cannot "
                "check a worker's health itself.",
)
def run_worker_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    instance = context.instance
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return dg.SkipReason(f"{type(instance.run_launcher).__name__} checks its workers itself")
    if os.name != "posix" or not os.path.isdir("/proc"):
        return dg.SkipReason("no /proc on this system: cannot see run workers")
    dead = dead_runs(instance)
    for run, pid in dead:
        message = (f"the run worker (pid {pid}) is gone: killed, out of memory, or the machine "
                   "restarted; marked failed so run retries start it again")
        context.log.warning(f"{run.run_id}: {message}")
        dagster_private.report_lost_run_worker(instance, run, message)
    return dg.SkipReason(f"{len(dead)} dead run workers found" if dead else "every run worker alive")
