"""The `narra` command: process, ingest, search, status and dev."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="narra: turn uploaded media into searchable data with Dagster.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
out = Console()
err = Console(stderr=True)

Paths = Annotated[list[Path], typer.Argument(help="Files, or folders whose files to take.",
                                             exists=True, resolve_path=True)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _instance():
    import dagster as dg

    from narra_dagster import settings

    settings.ensure_dagster_home()
    return dg.DagsterInstance.get()


def _defs():
    from narra_dagster.definitions import build_defs

    return build_defs()


@app.command()
def process(
    paths: Paths,
    as_json: JsonFlag = False,
    force: Annotated[bool, typer.Option(help="Re-run items that are already searchable.")] = False,
) -> None:
    """Ingest each file and materialize its whole chain now, on the instance at DAGSTER_HOME.

    Exit code 0 only if every file succeeded (or was already processed).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from narra_dagster.operations import expand_paths, process_files

    instance = _instance()
    files = expand_paths(paths)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("processing", total=len(files))

        def started(result):
            bar.update(task, description=f"processing {result.source_name}")

        def done(result):
            bar.advance(task)
            if not as_json:
                mark = {"succeeded": "[green]ok[/]", "skipped": "[cyan]already done[/]"}.get(
                    result.status, f"[red]failed[/] {escape(str(result.error))}")
                err.print(f"{escape(result.source_name)} -> {result.kind or '?'} {result.partition_key or '-'}: "
                          f"{mark} ({result.seconds:.1f} s)", markup=True, highlight=False)

        results = process_files(files, instance, _defs(), force=force, on_start=started, on_done=done)
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in results]))
    ok = all(r.status in ("succeeded", "skipped") for r in results)
    raise typer.Exit(0 if ok and results else 1)


@app.command()
def ingest(paths: Paths, as_json: JsonFlag = False) -> None:
    """Store files and register their partitions without running them.

    The registered partitions appear in the UI at once; run them with a backfill of the
    `video_pipeline` job (UI or `dagster job backfill`), or with `narra process`.
    """
    from narra_dagster.operations import expand_paths, register

    instance = _instance()
    store = _defs().resources["media_store"]
    results = [register(p, instance, store) for p in expand_paths(paths)]
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in results]))
    else:
        for r in results:
            out.print(f"{r.source_name}: {r.status} {r.kind or ''} {r.partition_key or ''} {r.error or ''}",
                      highlight=False)
    raise typer.Exit(0 if all(r.status == "registered" for r in results) else 1)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    kind: Annotated[Optional[str], typer.Option(help="video, image or document.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Hybrid (vector + full-text) search over everything indexed."""
    resources = _defs().resources
    embedder, index = resources["embedder"], resources["search_index"]
    hits = index.search(query, embedder.embed([query])[0], kind=kind, limit=limit)
    if as_json:
        out.print_json(json.dumps([h.model_dump() for h in hits]))
        return
    table = Table("score", "kind", "media_id", "source", "at (s)", "text")
    for h in hits:
        where = f"{h.start_s:.1f}-{h.end_s:.1f}" if h.start_s is not None else (f"p. {h.page}" if h.page else "")
        table.add_row(f"{h.score:.3f}", h.kind, h.media_id, escape(h.source_name or ""), where, escape(h.text))
    out.print(table)


@app.command()
def status(
    media_id: Annotated[Optional[str], typer.Argument(help="A partition key or its prefix.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per partition: each asset's last materialization, and the last run's outcome or error."""
    from narra_dagster.operations import partition_status

    items = partition_status(_instance(), _defs().resources["media_store"], media_id)
    if as_json:
        out.print_json(json.dumps(items))
    else:
        table = Table("kind", "source", "state", "assets done", "error")
        table.add_column("media_id", no_wrap=True, min_width=16)
        for item in items:
            done = sum(1 for a in item["assets"].values() if a)
            error = (item["last_run"] or {}).get("error") or ""
            table.add_row(item["kind"], escape(item["source_name"] or ""), item["state"],
                          f"{done}/{len(item['assets'])}", escape(error), item["media_id"])
        out.print(table)
    if media_id and not items:
        err.print(f"no partition matches {media_id!r}")
        raise typer.Exit(1)


@app.command()
def dev(port: Annotated[int, typer.Option(help="Port of the web UI.")] = 3000) -> None:
    """Start the Dagster UI and daemon on this project, with DAGSTER_HOME under NARRA_HOME."""
    from narra_dagster import settings

    home = settings.ensure_dagster_home()
    err.print(f"DAGSTER_HOME={home}  NARRA_HOME={settings.narra_home()}  inbox={settings.inbox_dir()}")
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "narra_dagster.definitions", "-p", str(port)]
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


if __name__ == "__main__":
    app()
