"""python -m bench.hostile [--only process,inbox] [--work DIR] [--out FILE]

Each file of the hostile corpus (``tests/support/hostile.py``: 43 files, 24 kinds of trouble)
alone, so that each gets its own time and memory:

- ``process``: ``narra process FILE --json`` per file in one home (models load in every call,
  as a user's command does): outcome, error class, wall seconds, peak memory of the process
  tree (sampled every 0.1 s).
- ``inbox``: one ``dagster-daemon`` on a fresh home; each file is copied into the inbox after
  the previous one ended: outcome, error class, seconds from the copy to the outcome (the
  sensor waits 2 s for a file to be stable, and the run worker starts and loads the models),
  and the peak memory of the daemon's whole process tree (daemon, code server, run worker)
  meanwhile.

Prints the table by kind of trouble (worst time and memory of the kind's files) and writes every
row to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, fresh_home, log


def _row(case, outcome: str | None, seconds: float, peak: int) -> dict:
    ok = outcome == case.outcome
    return {"name": case.name, "trouble": case.trouble, "expected": case.outcome,
            "outcome": outcome, "as_expected": ok, "seconds": round(seconds, 2),
            "peak_mb": round(peak / 2**20)}


def by_process(cases, drop: Path, work: Path, env_extra: dict) -> list[dict]:
    from tests.support.memory import run_tree_measured

    env = {**fresh_home(work, "process-home"), **env_extra}
    rows = []
    for case in cases:
        run = run_tree_measured([sys.executable, "-m", "narra_dagster.cli", "process", "--json",
                                 str(drop / case.name)], env=env, cwd=REPO, timeout=1800)
        try:
            (result,) = json.loads(run.stdout)
            outcome = ("succeeded" if result["status"] in ("succeeded", "skipped")
                       else result["error_class"])
        except (ValueError, KeyError):
            outcome = f"exit {run.returncode}: {run.stderr[-200:]}"
        rows.append(_row(case, outcome, run.wall_s, run.peak_bytes))
        log(f"process {case.name!r}: {outcome} in {run.wall_s:.1f} s, {run.peak_bytes / 2**20:.0f} MB")
    return rows


def by_inbox(cases, drop: Path, work: Path, env_extra: dict) -> list[dict]:
    from tests.services import daemon
    from tests.support.memory import TreePeak

    env = {**fresh_home(work, "inbox-home"), **env_extra}
    home = Path(env["NARRA_HOME"])
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    shown = lambda n: n.encode("unicode_escape", "backslashreplace").decode("ascii")  # noqa: E731
    rows = []

    def outcome_of(name: str) -> str | None:
        for reason in (inbox / ".rejected").glob("*.reason.txt"):
            text = reason.read_text()
            if text.split("\nfile: ", 1)[-1].rstrip("\n") == shown(name):
                return text.split("]")[0].lstrip("[")
        done = subprocess.run([sys.executable, "-m", "narra_dagster.cli", "status", "--all", "--json"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        for item in json.loads(done.stdout or "[]"):
            if name in item["names"]:
                if item["state"] == "searchable":
                    return "succeeded"
                if item["state"] == "failed":
                    return item["last_run"]["error_class"]
        return None

    with daemon(env, work / "daemon.log") as proc:
        time.sleep(10)  # the daemon and its code server up
        for case in cases:
            with TreePeak(proc.pid) as peak:
                started = time.perf_counter()
                shutil.copyfile(drop / case.name, inbox / case.name)
                outcome = None
                while outcome is None and time.perf_counter() - started < 1800:
                    time.sleep(1)
                    outcome = outcome_of(case.name)
                seconds = time.perf_counter() - started
            rows.append(_row(case, outcome, seconds, peak.peak_bytes))
            log(f"inbox {case.name!r}: {outcome} in {seconds:.1f} s, {peak.peak_bytes / 2**20:.0f} MB")
    return rows


def _table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'trouble':<48} {'files':>5} {'outcome (error class)':<32} {'max s':>7} {'max MB':>7}")
    kinds: dict[str, list[dict]] = {}
    for row in rows:
        kinds.setdefault(row["trouble"], []).append(row)
    for trouble, group in kinds.items():
        outcomes = ", ".join(sorted({r["outcome"] or "-" for r in group}))
        mark = "" if all(r["as_expected"] for r in group) else "  UNEXPECTED"
        print(f"{trouble[:48]:<48} {len(group):>5} {outcomes[:32]:<32} "
              f"{max(r['seconds'] for r in group):>7.1f} {max(r['peak_mb'] for r in group):>7}{mark}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="process,inbox")
    p.add_argument("--work", default=os.environ.get("NARRA_BENCH_WORK", str(REPO / ".bench-work")))
    p.add_argument("--out", default="bench-hostile.json")
    args = p.parse_args()
    from tests.support.hostile import ENV, make_hostile_corpus

    work = Path(args.work) / "hostile"
    if work.exists():
        shutil.rmtree(work)
    cases = make_hostile_corpus(work / "drop")
    results: dict = {}
    if "process" in args.only:
        results["process"] = by_process(cases, work / "drop", work, ENV)
        _table("narra process, one file per call", results["process"])
    if "inbox" in args.only:
        results["inbox"] = by_inbox(cases, work / "drop", work, ENV)
        _table("inbox with the daemon, one file at a time", results["inbox"])
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
