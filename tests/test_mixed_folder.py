"""A hostile corpus, as people will drop it: 43 files of 24 kinds of trouble (FlateDecode bombs,
long silence, lying WAV headers, a bare ftyp box, truncations at several points, polyglots, a
3,000-frame GIF, PNG and JPEG corruptions, zip and text under media names, empty files, names of
every kind) beside good files, made by ``tests/support/hostile.py``.

One ``narra process --json`` call and the inbox watched by a real daemon must each end every file
as a success or as one classified failure, retry no deterministic error, stay under the memory
budget (the process tree's peak, sampled), succeed with the good files of the same batch, and
leave an index with no duplicate row and no row invented from silence or noise."""

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import dagster as dg
import lancedb
import pytest

from tests.support.hostile import ENV, NO_ROWS, ROWS, Case, make_hostile_corpus
from tests.support.memory import TreePeak, run_tree_measured

from .conftest import REPO, subprocess_env
from .services import daemon, wait_for

# The whole process tree's peak resident memory allowed for the corpus (models included: Whisper,
# MiniLM, EfficientNet-Lite0 and RapidOCR take about 0.9 GB together).
MEMORY_BUDGET_BYTES = 3 * 2**30
# Error classes that are classified, that is, said in words meant for a person; a bare exception
# class name (ValueError...) or "failure" would mean an unclassified error reached the user.
CLASSIFIED = {"empty_file", "not_media", "corrupt_media", "no_streams", "too_large", "timeout",
              "unsupported_type", "type_mismatch", "not_image", "corrupt_image",
              "unsupported_format", "decompression_bomb", "not_pdf", "corrupt_pdf",
              "encrypted_pdf", "too_many_pages"}


def _shown(name: str) -> str:
    """A name as the inbox's reason files write it (control characters escaped)."""
    return name.encode("unicode_escape", "backslashreplace").decode("ascii")


def _index_rows(home: Path) -> list[dict]:
    db = lancedb.connect(str(home / "index"))
    if "chunks" not in db.table_names():
        return []
    return db.open_table("chunks").to_arrow().select(
        ["media_id", "kind", "chunk_index", "start_s", "page", "origin", "text"]).to_pylist()


def _check_index(home: Path, cases: list[Case], media_ids: dict[str, str]) -> None:
    rows = _index_rows(home)
    keys = Counter((r["media_id"], r["origin"], r["chunk_index"], r["start_s"], r["page"], r["text"])
                   for r in rows)
    assert not [k for k, n in keys.items() if n > 1], "duplicate index rows"
    per_item = Counter(r["media_id"] for r in rows)
    for case in cases:
        if case.name not in media_ids:
            continue
        if case.rows == NO_ROWS:
            assert per_item[media_ids[case.name]] == 0, f"{case.name}: rows invented from nothing"
        elif case.rows == ROWS:
            assert per_item[media_ids[case.name]] > 0, f"{case.name}: nothing indexed"


def _no_deterministic_retry(home: Path) -> None:
    """No step of a failed item ran twice and no run was retried (run retries are for crashed
    workers only): a deterministic error is reported once."""
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        assert not [r.run_id for r in runs if r.tags.get("dagster/parent_run_id")], "run retried"
        for run in runs:
            restarts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_RESTARTED)
            up_for_retry = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
            assert not restarts and not up_for_retry, (run.job_name, [e.message for e in up_for_retry])


@pytest.mark.daemon
def test_a_hostile_corpus_ends_well_through_narra_process_and_the_inbox(tmp_path):
    cases = make_hostile_corpus(tmp_path / "drop")
    expected = {c.name: c.outcome for c in cases}
    assert len(cases) >= 40 and len({c.trouble for c in cases}) >= 15

    # 1. One `narra process` call over the folder, its process tree's memory sampled.
    home_a = tmp_path / "a"
    env_a = {**subprocess_env(home_a), **ENV}
    run = run_tree_measured(["narra", "process", "--json", str(tmp_path / "drop")], env=env_a,
                            cwd=REPO, timeout=1200)
    assert run.returncode == 1, run.stderr[-3000:]  # some files are bad, so the command says so
    assert "Traceback" not in run.stderr and "Exceeded max_retries" not in run.stdout
    results = json.loads(run.stdout)
    by_process, media_ids = {}, {}
    for r in results:
        media_ids[r["source_name"]] = r["partition_key"]
        # the second name of the same bytes is the same item, already done in this call
        status = "succeeded" if r["status"] == "skipped" else r["status"]
        by_process[r["source_name"]] = status if status == "succeeded" else r["error_class"]
    assert by_process == expected
    assert {r["error_class"] for r in results if r["status"] == "failed"} <= CLASSIFIED
    assert media_ids["cat.jpg"] == media_ids["cat copy.jpg"]  # one item per content
    assert run.peak_bytes < MEMORY_BUDGET_BYTES, f"peak {run.peak_bytes / 2**30:.2f} GiB"
    _check_index(home_a, cases, media_ids)
    _no_deterministic_retry(home_a)
    print(f"narra process: {len(cases)} files in {run.wall_s:.0f} s, "
          f"peak {run.peak_bytes / 2**20:.0f} MB")

    # 2. The same files dropped into the inbox, with the daemon running.
    home_b = tmp_path / "b"
    env_b = {**subprocess_env(home_b), **ENV}
    (home_b / "dagster").mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home_b / "dagster" / "dagster.yaml")
    inbox = home_b / "inbox"
    inbox.mkdir(parents=True)
    with daemon(env_b, tmp_path / "daemon.log") as proc, TreePeak(proc.pid) as peak:
        for path in sorted((tmp_path / "drop").iterdir()):
            shutil.copyfile(path, inbox / path.name)

        def finished():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            status = subprocess.run(["narra", "status", "--all", "--json"], env=env_b, cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
            items = json.loads(status.stdout or "[]")
            named = sum(len(i["names"]) for i in items)
            rejected = list((inbox / ".rejected").glob("*.reason.txt"))
            if named + len(rejected) < len(cases) or any(
                    i["state"] not in ("searchable", "failed") for i in items):
                return None
            return items

        items = wait_for(finished, 900, "every inbox file ending", interval_s=5,
                         on_timeout=lambda: (tmp_path / "daemon.log").read_text()[-3000:])
    by_inbox = {}
    for item in items:
        outcome = ("succeeded" if item["state"] == "searchable"
                   else (item["last_run"] or {}).get("error_class"))
        for name in item["names"]:
            by_inbox[_shown(name)] = outcome
    for reason in (inbox / ".rejected").glob("*.reason.txt"):
        text = reason.read_text()
        code = text.split("]")[0].lstrip("[")
        shown = text.split("\nfile: ", 1)[1].rstrip("\n")
        by_inbox[shown] = code
    assert by_inbox == {_shown(n): o for n, o in expected.items()}
    assert not list(inbox.iterdir()) or {p.name for p in inbox.iterdir()} <= {".processed", ".rejected"}
    assert peak.peak_bytes < MEMORY_BUDGET_BYTES, f"peak {peak.peak_bytes / 2**30:.2f} GiB"
    inbox_ids = {_shown(n): i["media_id"] for i in items for n in i["names"]}
    _check_index(home_b, [Case(_shown(c.name), c.trouble, c.outcome, c.rows) for c in cases],
                 inbox_ids)
    _no_deterministic_retry(home_b)
    print(f"inbox: peak {peak.peak_bytes / 2**20:.0f} MB for the daemon's process tree")
