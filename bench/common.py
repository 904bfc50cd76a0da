"""Helpers shared by the benchmark sections: measured subprocesses, fresh homes, statistics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    """A finished subprocess: wall seconds, peak RSS (bytes), exit code, output."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict[str, str], timeout: float = 3600) -> Measured:
    """Run ``cmd`` and return its wall time and its own peak RSS (``wait4``'s ``ru_maxrss``)."""
    out_path = Path(env["NARRA_HOME"]) / f".out-{time.monotonic_ns()}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w") as out, open(str(out_path) + ".err", "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(" ".join(cmd))
            time.sleep(0.02)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(wall, usage.ru_maxrss * 1024, proc.returncode, out_path.read_text(),
                    Path(str(out_path) + ".err").read_text())


def fresh_home(root: Path, name: str, models: Path | None = None) -> dict[str, str]:
    """An environment with an empty NARRA_HOME (and DAGSTER_HOME with the project's
    dagster.yaml), and PYTHONPATH pointing at this checkout. ``models``: a ``models`` folder
    (exported ONNX models) to copy in, as a deployment has it after its first run."""
    home = root / name
    if home.exists():
        shutil.rmtree(home)
    (home / "dagster").mkdir(parents=True)
    if models is not None and models.is_dir():
        shutil.copytree(models, home / "models")
    shutil.copyfile(REPO / "narra_dagster" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    import dagster as dg

    # A deployment's instance exists before its first upload: create the SQLite storages now so
    # their one-time schema set-up is not counted as per-run overhead.
    with dg.DagsterInstance.from_config(str(home / "dagster")):
        pass
    env = dict(os.environ)
    env.update(NARRA_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def narra_cmd() -> list[str]:
    return [sys.executable, "-m", "narra_dagster.cli"]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load_json_output(measured: Measured):
    if measured.returncode not in (0, 1):
        raise RuntimeError(f"exit {measured.returncode}: {measured.stderr[-3000:]}")
    return json.loads(measured.stdout)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
