"""The `narra` command: process, ingest, search, catalog, status, retry, delete, health, serve,
serve-health and dev."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.table import Table

from narra_dagster.core.display import visible


def escape(text: str) -> str:
    """Outside text (a file name, an S3 key, OCR, a transcript, an error quoting either) made
    safe for the terminal: control and bidirectional characters shown as escapes
    (:func:`narra_dagster.core.display.visible`), then Rich markup escaped."""
    return _markup_escape(visible(text))

app = typer.Typer(help="narra: turn uploaded media into searchable data with Dagster.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)
out = Console()
err = Console(stderr=True)

Paths = Annotated[list[Path], typer.Argument(help="Files, or folders whose files to take.",
                                             exists=True, resolve_path=True)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _check_settings() -> None:
    """narra: turn uploaded media into searchable data with Dagster."""
    from narra_dagster.core.limits import Limits

    try:
        Limits.from_env()
        if os.environ.get("NARRA_WHISPER_MODEL") or os.environ.get("NARRA_WHISPER_LANGUAGE"):
            from narra_dagster.resources.transcriber import whisper_settings_from_env

            whisper_settings_from_env()
    except ValueError as exc:
        err.print(f"narra: {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _kind_option(value: str | None) -> str | None:
    """--kind: any name people type for a kind (pdf, audio, photo...), checked before work."""
    if value is None:
        return None
    from narra_dagster.registry import UnknownKindError, get

    try:
        return get(value).name
    except UnknownKindError as exc:
        raise typer.BadParameter(str(exc)) from None


def _category_option(value: str | None) -> str | None:
    if value is None:
        return None
    from narra_dagster.app.queries import CATALOG_CATEGORIES

    if value.lower() not in CATALOG_CATEGORIES:
        raise typer.BadParameter(f"unknown category {value!r}; the categories are "
                                 f"{', '.join(CATALOG_CATEGORIES)}")
    return value.lower()


def _instance():
    from narra_dagster.app.runtime import open_instance

    return open_instance()


def _defs():
    from narra_dagster.app.runtime import load_definitions

    return load_definitions()


@app.command()
def process(
    paths: Paths,
    as_json: JsonFlag = False,
    force: Annotated[bool, typer.Option(help="Re-run items that are already searchable.")] = False,
    batch: Annotated[Optional[bool], typer.Option(
        "--batch/--no-batch",
        help="One run (one process, one model load) for all items of a kind, still one "
             "materialization per item; default: batch when a kind has more than one item.")] = None,
) -> None:
    """Ingest each file and materialize its whole chain now, on the instance at DAGSTER_HOME.

    Exit code 0 only if every file succeeded (or was already processed).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from narra_dagster.app.processing import expand_paths, process_files

    instance = _instance()
    files = expand_paths(paths)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("processing", total=len(files))

        def started(result):
            bar.update(task, description=f"processing {escape(result.source_name)}")

        def done(result):
            bar.advance(task)
            if not as_json:
                tag = f"[{result.error_class}] " if result.error_class else ""
                mark = {"succeeded": "[green]ok[/]", "skipped": "[cyan]already done[/]"}.get(
                    result.status, f"[red]failed[/] {escape(tag + str(result.error))}")
                # One line per file on stdout, the progress bar on stderr.
                where = " ".join(x for x in (result.kind, result.partition_key) if x) or "refused"
                out.print(f"{escape(result.source_name)} -> {where}: {mark} "
                          f"({result.seconds:.1f} s)", markup=True, highlight=False)

        results = process_files(files, instance, _defs(), force=force, batch=batch,
                                on_start=started, on_done=done)
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
    from narra_dagster.app.processing import expand_paths, register

    instance = _instance()
    store = _defs().resources["media_store"]
    results = [register(p, instance, store) for p in expand_paths(paths)]
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in results]))
    else:
        for r in results:
            out.print(f"{escape(r.source_name)}: {r.status} {r.kind or ''} {r.partition_key or ''} "
                      f"{escape(r.error or '')}",
                      highlight=False)
    raise typer.Exit(0 if all(r.status == "registered" for r in results) else 1)


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="What to look for, in words.")] = None,
    kind: Annotated[Optional[str], typer.Option(
        callback=_kind_option,
        help="Only hits of this media kind: video, image, document, or a name people use "
             "(pdf, audio, photo...).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    min_relevance: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0,
        help="Leave out hits below this relevance (0-1); 0 shows every hit. Default 0.3.")] = None,
    image: Annotated[Optional[Path], typer.Option(
        "--image", help="Find the stored images most similar to this picture (not ingested).",
        exists=True, dir_okay=False, resolve_path=True)] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Search in this process even when `narra serve` is running.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Hybrid (vector + full-text) search over everything indexed: videos (seconds), PDFs (page),
    text on frames and images (box); with --image PATH, the images most similar to a picture.
    --json gives kind, media_id, source_name, start_s, end_s, page, box, match, text, score and
    relevance per hit; `[]` (and "no good match" in the table) when nothing is relevant enough.
    When `narra serve` runs for this NARRA_HOME, it answers (no model load here)."""
    if image is not None:
        _search_image(image, limit, as_json)
        return
    if not query or not query.strip():
        err.print("give a query, or --image PATH")
        raise typer.Exit(2)
    if not any(c.isalnum() for c in query):
        err.print(f"give a query with at least one word: {escape(repr(query))} has none")
        raise typer.Exit(2)
    answer = None if local else _ask_server(query, kind, limit, min_relevance)
    if answer is not None:
        hits = answer
    else:
        from narra_dagster.app.queries import search_text
        from narra_dagster.registry import UnknownKindError
        from narra_dagster.resources import default_resources

        # The resources the definitions get (build_defs), without loading every asset module.
        resources = default_resources()
        try:
            hits = [h.model_dump() for h in search_text(
                query, embedder=resources["embedder"], search_index=resources["search_index"],
                kind=kind, limit=limit, min_relevance=min_relevance)]
        except UnknownKindError as exc:
            err.print(escape(str(exc)))
            raise typer.Exit(2) from None
    if as_json:
        out.print_json(json.dumps(hits))
        return
    if not hits:
        out.print(f"no good match for {escape(repr(query))}: nothing indexed is relevant enough "
                  "(--min-relevance 0 shows the closest anyway)", highlight=False)
        return
    _print_hits(hits)


def _ask_server(query: str, kind: str | None, limit: int,
                min_relevance: float | None) -> list[dict] | None:
    """The hits from the running `narra serve` of this NARRA_HOME, or None when none answers:
    no serve.json, its process gone, or another program on its port (checked by the server's id
    before any token is sent). The caller then searches itself; when the server answered with
    an error, one line on stderr says so."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from narra_dagster.app.api import api_token
    from narra_dagster.settings import server_file

    try:
        found = json.loads(server_file().read_text())
        url, pid, server_id = found["url"], int(found["pid"]), found["server_id"]
        os.kill(pid, 0)  # still running?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            if response.headers.get("X-Narra-Server") != server_id:
                return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    params = {"q": query, "limit": limit}
    if kind:
        params["kind"] = kind
    if min_relevance is not None:
        params["min_relevance"] = min_relevance
    request = urllib.request.Request(f"{url}/api/v1/search?{urllib.parse.urlencode(params)}")
    try:
        token = api_token()  # NARRA_API_TOKEN or NARRA_API_TOKEN_FILE, as the server reads it
    except ValueError:
        token = None
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["hits"]
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        err.print(f"narra serve at {url} answered {exc.code} ({escape(str(message))}); "
                  "searching here instead", highlight=False)
        return None
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def format_locator(hit) -> str:
    """Where in its item a hit is, for people: ``0:03.0`` (a video frame), ``0:09.8-0:11.2`` (a
    stretch of speech), ``p. 14`` (a PDF page), plus ``box x0,y0-x1,y1`` (pixels) for text read
    from a picture or frame."""
    parts = []
    if hit.page is not None:
        parts.append(f"p. {hit.page}")
    if hit.start_s is not None:
        same = hit.end_s is None or abs(hit.end_s - hit.start_s) < 0.05
        parts.append(_clock(hit.start_s) if same else f"{_clock(hit.start_s)}-{_clock(hit.end_s)}")
    if hit.box is not None:
        x0, y0, x1, y1 = (round(v) for v in hit.box)
        parts.append(f"box {x0},{y0}-{x1},{y1}")
    return " ".join(parts)


def _snippet(text: str, match, width: int = 200) -> str:
    """Rich markup of ``text`` cut to about ``width`` characters around ``match`` (``[start,
    end)`` characters, shown in bold), with ``...`` where it was cut."""
    if not match:
        return escape(text[:width]) + ("..." if len(text) > width else "")
    a, b = match
    start = max(0, a - width // 3)
    end = min(len(text), max(b, start + width))
    return (("..." if start else "") + escape(text[start:a]) + "[bold]" + escape(text[a:b])
            + "[/bold]" + escape(text[b:end]) + ("..." if end < len(text) else ""))


def _print_hits(hits: list[dict]) -> None:
    """Hits of every kind, best first, as a table: rank, relevance, kind, where (the locator),
    source, text (the matched words in bold) and media_id."""
    from types import SimpleNamespace

    # Rank order is the ranking's; relevance is how sure each hit is, for thresholds, and need
    # not fall monotonically down the list.
    table = Table()
    table.add_column("#", no_wrap=True)
    table.add_column("relevance", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("where", no_wrap=True)  # never cut: it is what the hit is for
    table.add_column("source", max_width=24)
    table.add_column("text", ratio=1)
    table.add_column("media_id", no_wrap=True, min_width=16)
    for rank, h in enumerate(hits, 1):
        shown = _snippet(h["text"], h.get("match"))
        table.add_row(str(rank), f"{h.get('relevance', 0.0):.2f}", h["kind"],
                      format_locator(SimpleNamespace(**h)), escape(h.get("source_name") or ""),
                      shown, h["media_id"])
    out.print(table)


def _search_image(path: Path, limit: int, as_json: bool) -> None:
    from narra_dagster.app.queries import find_similar_images
    from narra_dagster.core.errors import BadInputError

    resources = _defs().resources
    try:
        hits = find_similar_images(path, image_classifier=resources["image_classifier"],
                                   image_index=resources["image_index"], limit=limit)
    except BadInputError as exc:
        err.print(f"[{exc.code}] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps(hits))
        return
    table = Table("cosine", "pHash bits", "duplicate", "source", "media_id")
    for h in hits:
        table.add_row(f"{h['cosine_distance']:.3f}", str(h["phash_distance"]), h["duplicate"] or "",
                      escape(h["source_name"] or ""), h["media_id"])
    out.print(table)


@app.command()
def catalog(
    category: Annotated[Optional[str], typer.Option(
        callback=_category_option,
        help="Only this category: animal, food, landscape, person, plant, vehicle, object, other.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The image catalog: every image filed by category, capture date and camera."""
    from narra_dagster.app.queries import image_catalog

    rows = image_catalog(image_index=_defs().resources["image_index"], category=category)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("category", "date", "camera", "label", "size", "source", "duplicate of")
    table.add_column("media_id", no_wrap=True, min_width=16)
    for r in rows:
        table.add_row(r["category"], r["capture_date"] or "", escape(r["camera"] or ""),
                      escape(r["label"] or ""), f"{r['width']}x{r['height']}",
                      escape(r["source_name"] or ""), r["duplicate_of"] or "", r["media_id"])
    out.print(table)


@app.command()
def status(
    media_id: Annotated[Optional[str], typer.Argument(help="A partition key or its prefix.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Items per page, newest first.")] = 20,
    cursor: Annotated[Optional[str], typer.Option(
        "--cursor", help="Show the page after the one that printed this cursor.")] = None,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Every item at once (reads every item: slow past ~10,000).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Per item, newest first: each asset's last materialization, and the last run's outcome or
    error. One page of --limit items (the same cost at 100 or 100,000 items); --all or a media
    id prefix for more."""
    from narra_dagster.app.status import partition_status, status_page

    next_cursor = None
    if media_id or show_all:
        items = partition_status(_instance(), _defs(), media_id)
    else:
        try:
            items, next_cursor = status_page(_instance(), _defs(), cursor=cursor, limit=limit)
        except ValueError as exc:
            err.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2)
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
    if next_cursor:  # on stderr: --json stays one list
        err.print(f"newest {len(items)} shown; next page: narra status --cursor {next_cursor}"
                  f"{'' if limit == 20 else f' --limit {limit}'}", highlight=False)
    if media_id and not items:
        err.print(f"no partition matches {media_id!r}")
        raise typer.Exit(1)


MediaIds = Annotated[list[str], typer.Argument(help="Media ids (partition keys) or unique prefixes.")]


def _print_lifecycle(results, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in results]))
        return
    for r in results:
        detail = f": {escape(r.detail)}" if r.detail else ""
        out.print(f"{r.media_id}: {r.status}{detail}", highlight=False)


@app.command()
def retry(media_ids: MediaIds, as_json: JsonFlag = False) -> None:
    """Run each failed item's whole chain again, now. Items that are not failed are left alone.

    Exit code 0 when every item given ends searchable (or was not failed), 1 otherwise.
    """
    from narra_dagster.app.lifecycle import retry_items

    results = retry_items(media_ids, _instance(), _defs())
    _print_lifecycle(results, as_json)
    raise typer.Exit(0 if all(r.status in ("succeeded", "skipped") for r in results) else 1)


@app.command()
def delete(media_ids: MediaIds, as_json: JsonFlag = False) -> None:
    """Remove items completely: stored upload and artifacts, search and image index rows,
    catalog entry, materializations and partition; publishes analysis.deleted. Deleting an item
    already deleted changes nothing. Exit code 1 when an id matches no item."""
    from narra_dagster.app.lifecycle import delete_items

    results = delete_items(media_ids, _instance(), _defs())
    _print_lifecycle(results, as_json)
    raise typer.Exit(0 if all(r.status in ("deleted", "skipped") for r in results) else 1)


@app.command()
def health(
    as_json: JsonFlag = False,
    models: Annotated[bool, typer.Option(help="Load and try the models (slower, thorough).")] = True,
    heartbeat_tolerance: Annotated[float, typer.Option(min=1, help="Oldest acceptable daemon heartbeat (s).")] = 90.0,
) -> None:
    """Check the instance, storage, models, daemon and sensors.

    Exit code 0 healthy, 1 degraded (daemon or a sensor down: nothing new is picked up),
    2 unhealthy (instance, storage or models unusable).
    """
    from narra_dagster.app.health import check_health, unreachable_report

    try:
        instance = _instance()
    except Exception as exc:  # noqa: BLE001 - an instance that cannot be opened is the finding
        report = unreachable_report(exc)
    else:
        report = check_health(instance, _defs(), models=models, heartbeat_tolerance_s=heartbeat_tolerance)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        color = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}[report.status]
        out.print(f"[{color}]{report.status}[/]")
        for check in report.checks:
            mark = "[green]ok[/]" if check.ok else "[red]FAIL[/]"
            out.print(f"  {mark} {check.name}: {escape(check.detail)} ({check.seconds:.2f} s)")
    raise typer.Exit(report.exit_code)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs "
                                           "NARRA_API_TOKEN (or --insecure).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Serve a non-loopback address without a token.")] = False,
) -> None:
    """The HTTP API (docs at /api/docs): search over HTTP, with the model loaded once; `narra
    search` asks it while it runs. Ctrl-C stops it."""
    from narra_dagster.app.api import api_token, check_bind, serve as run_server

    try:
        check_bind(host, api_token(), insecure)
    except ValueError as exc:
        err.print(f"narra serve: {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    run_server(host, port, insecure=insecure)


@app.command("serve-health")
def serve_health(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8077,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for a container.")] = "127.0.0.1",
    cache: Annotated[float, typer.Option(min=0, help="Seconds a report is reused between probes.")] = 10.0,
    models: Annotated[bool, typer.Option(help="Include the model check.")] = True,
    heartbeat_tolerance: Annotated[float, typer.Option(min=1, help="Oldest acceptable daemon heartbeat (s).")] = 90.0,
) -> None:
    """Serve /health, /readiness and /metrics (Prometheus) over HTTP until interrupted."""
    from narra_dagster.app.health_server import HealthService, make_server

    server = make_server(HealthService(_instance(), _defs(), cache_s=cache, models=models,
                                         heartbeat_tolerance_s=heartbeat_tolerance), host, port)
    err.print(f"serving http://{host}:{server.server_address[1]}/health, /readiness, /metrics")
    import signal

    def stop(signum, _frame):
        raise KeyboardInterrupt

    # Stop on SIGTERM and SIGINT even when started with them ignored (a parent that ignores
    # them passes that on: a CI job launched in the background did, and the probe server then
    # outlived its test).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def dev(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the web UI.")] = 3000,
    api_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Port of the HTTP API (`narra serve`, on 127.0.0.1); 0: none.")] = 8080,
) -> None:
    """Start the Dagster UI and daemon on this project, with DAGSTER_HOME under NARRA_HOME, and
    the HTTP API (which `narra search` then asks, with its model already loaded). Both listen on
    127.0.0.1 only. The Dagster UI has no login of its own: with NARRA_API_TOKEN set, this says
    so, since the token then guards the web app and the API but not the UI (README, Security:
    a reverse proxy with its own authentication exposes either safely)."""
    from narra_dagster import settings
    from narra_dagster.app.api import api_token

    home = settings.ensure_dagster_home()
    err.print(f"DAGSTER_HOME={home}  NARRA_HOME={settings.narra_home()}  inbox={settings.inbox_dir()}")
    try:
        token = api_token()
    except ValueError as exc:
        err.print(f"narra dev: {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if token:
        err.print(f"[bold yellow]WARNING: the Dagster UI on http://127.0.0.1:{port} has no "
                  "login: NARRA_API_TOKEN protects the web app and the API, not the UI. It is "
                  "bound to 127.0.0.1, so only this machine reaches it; expose it only behind "
                  "a reverse proxy with authentication (README, Security).[/]", highlight=False)
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "narra_dagster.definitions", "-h",
           "127.0.0.1", "-p", str(port)]
    extra = []
    if api_port:
        err.print(f"Web app: http://127.0.0.1:{api_port}/   HTTP API: "
                  f"http://127.0.0.1:{api_port}/api/docs")
        os.environ.setdefault("NARRA_DAGSTER_UI_URL", f"http://127.0.0.1:{port}")  # its run links
        extra.append([sys.executable, "-m", "narra_dagster.cli", "serve", "--port", str(api_port)])
    raise typer.Exit(run_process_tree(cmd, also=extra))


def run_process_tree(cmd: list[str], grace_s: float = 20.0, *,
                     also: Sequence[list[str]] = ()) -> int:
    """Run ``cmd`` in a process group of its own and wait for it; SIGTERM or SIGINT to this
    process is passed to the whole group (``dagster dev`` and the web server, daemon and code
    servers it starts), which gets ``grace_s`` seconds to stop before SIGKILL. Each command in
    ``also`` runs in a group of its own beside it and is stopped with it; its exit does not end
    the wait.

    Returns:
        The command's exit code (128 + the signal's number when stopped by a signal).
    """
    import signal
    import time

    groups: list[int] = []
    procs: list[subprocess.Popen] = []
    received: list[int] = []

    def stop_all(signum: int) -> None:
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)

    def forward(signum, _frame):
        received.append(signum)
        stop_all(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for command in (cmd, *also):
            procs.append(subprocess.Popen(command, env=os.environ.copy(), start_new_session=True))
            groups.append(procs[-1].pid)
        child = procs[0]
        while child.poll() is None:
            if received:
                deadline = time.monotonic() + grace_s
                while child.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                break
            time.sleep(0.2)
    finally:
        # The rest (the API) gets SIGTERM and a moment to clean up (serve.json), then SIGKILL
        # for anything left: nothing of the tree outlives narra dev.
        stop_all(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        stop_all(signal.SIGKILL)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = child.wait()
    return 128 + received[0] if received else code


if __name__ == "__main__":
    app()
