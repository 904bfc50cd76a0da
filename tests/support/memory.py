"""Peak memory of a whole process tree, sampled while it runs (for tests and bench/).

``wait4``'s ``ru_maxrss`` gives one process's peak, the largest of a tree at best; a command that
starts workers (run workers, step processes, code servers) needs the sum of the tree at each
moment (psutil, from the dev extra).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of process ``pid`` and all its descendants now; 0 once gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class TreePeak:
    """Sample the RSS of a process tree every ``interval_s`` seconds in a thread; ``peak_bytes``
    is the largest sum seen. Use as a context manager around the wait for the process."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.pid, self.interval_s, self.peak_bytes = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class TreeRun:
    """A finished command: exit code, output, wall seconds and the tree's peak RSS (bytes)."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_bytes: int


def run_tree_measured(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None,
                      timeout: float = 3600) -> TreeRun:
    """Run ``cmd`` to the end, sampling its process tree's memory.

    Raises:
        subprocess.TimeoutExpired: past ``timeout`` seconds (the tree is killed first).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    with TreePeak(proc.pid) as peak:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.communicate()
            raise
    return TreeRun(proc.returncode, out, err, time.perf_counter() - started, peak.peak_bytes)
