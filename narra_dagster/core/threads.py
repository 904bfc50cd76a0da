"""How many threads a model may use, so parallel runs do not oversubscribe the cores.

The models (CTranslate2 for Whisper, onnxruntime for MiniLM and the image models) each start a
pool of intra-op threads. On a 2-core machine, two runs at once with 2 threads per model run 4
busy threads on 2 cores; onnxruntime's threads also spin while waiting, which then burns the
other run's CPU. So:

- ``NARRA_THREADS``: threads per model, if set (an integer >= 1);
- else ``cores // NARRA_PARALLEL_RUNS`` (at least 1), where ``NARRA_PARALLEL_RUNS`` (default 1) is
  how many runs or steps may compute at once (set it to the run queue's ``max_concurrent_runs``,
  2 in the project's dagster.yaml, for the daemon; `narra process` alone uses every core);
- onnxruntime's spin-waiting is on only when one run has the cores to itself.

``cores`` is the CPUs this process may run on (``os.sched_getaffinity``, so a container's or
taskset's limit counts), not the machine's.
"""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be a positive integer, not {value!r}") from exc
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return number


def parallel_runs() -> int:
    """``NARRA_PARALLEL_RUNS`` (default 1): runs or steps that compute at the same time."""
    return _positive_int("NARRA_PARALLEL_RUNS") or 1


def model_threads() -> int:
    """Intra-op threads per model: ``NARRA_THREADS``, else ``cores // NARRA_PARALLEL_RUNS``.

    Raises:
        ValueError: when one of the variables is set to something other than a positive integer.
    """
    return _positive_int("NARRA_THREADS") or max(1, cpu_cores() // parallel_runs())


def allow_spinning(threads: int) -> bool:
    """Whether onnxruntime's idle threads may spin: only when this run's threads fit the cores
    alongside the other runs' (spinning cuts latency when alone, steals CPU when not)."""
    return threads * parallel_runs() <= cpu_cores()
