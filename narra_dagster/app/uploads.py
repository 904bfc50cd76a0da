"""Uploads through the HTTP API: streamed to disk, taken in by the intake the inbox uses, run
by Dagster; and retries of failed items.

Nothing here processes media. :func:`receive_file` streams a ``multipart/form-data`` body to a
file under ``$NARRA_HOME/uploads/`` chunk by chunk (python-multipart's push parser; memory does
not grow with the file), stopping at the size limit. :func:`accept_upload` hands the file to
:func:`narra_dagster.defs.intake.uploads.store_upload` (type sniffed from the bytes, content
hashed into the media id, copied into the media store, names recorded), adds the item's
partition and asks for its run (:func:`narra_dagster.defs.intake.requests.request_run`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from narra_dagster import registry, settings
from narra_dagster.defs.intake.requests import (has_first_run, pending_request, request_run,
                                                run_request_for)
from narra_dagster.core.media import KEY_LENGTH, file_sha256
from narra_dagster.defs.intake.uploads import MAX_UPLOAD_BYTES, Upload, store_upload
from narra_dagster.resources.events import make_event
from narra_dagster.resources.item_lock import item_lock
from narra_dagster.resources.media_store import MediaStore

DEFAULT_MAX_BYTES = 5 * 1024**3
"""Default upload limit of the API (5 GiB): a two-hour 1080p recording fits; set
``NARRA_MAX_UPLOAD_BYTES`` for another (at most the intake's own 20 GiB)."""

WRITE_BYTES = 1024 * 1024
"""An upload is written to disk in pieces of about this many bytes, each by a worker thread."""
STALE_PART_S = 3600.0
"""A partial upload older than this (seconds) belongs to a server that died: removed at start."""
IDLE_TIMEOUT_S = 60.0
"""Default of ``NARRA_UPLOAD_IDLE_TIMEOUT_S``: an upload whose body brings no byte for this many
seconds is refused with 408 and its partial file removed. Neither uvicorn (its
``timeout_keep_alive`` covers the wait between requests, not a stalled body) nor Starlette
bounds the reading of a body, so :func:`receive_file` bounds each read itself."""

RECEIVED = "upload.received"
RETRY_REQUESTED = "analysis.retry_requested"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
log = logging.getLogger("narra.api")


class UploadError(Exception):
    """An upload refused before it became an item: ``status`` is the HTTP status (400, 408,
    413, 415; 499 when the client went away), ``code`` the error class shown to the client."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def max_upload_bytes() -> int:
    """The API's upload limit in bytes: ``$NARRA_MAX_UPLOAD_BYTES`` or :data:`DEFAULT_MAX_BYTES`.

    Raises:
        ValueError: when the variable is not a positive integer or exceeds the intake's 20 GiB.
    """
    raw = os.environ.get("NARRA_MAX_UPLOAD_BYTES")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"NARRA_MAX_UPLOAD_BYTES={raw!r} is not a whole number of bytes") from None
    if not 0 < value <= MAX_UPLOAD_BYTES:
        raise ValueError(f"NARRA_MAX_UPLOAD_BYTES={raw} must be between 1 and {MAX_UPLOAD_BYTES}")
    return value


def upload_idle_timeout_s() -> float:
    """Seconds an upload's body may bring no byte before it is refused (408):
    ``$NARRA_UPLOAD_IDLE_TIMEOUT_S`` or :data:`IDLE_TIMEOUT_S`.

    Raises:
        ValueError: when the variable is not a positive number.
    """
    return settings.positive_number("NARRA_UPLOAD_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S, "seconds")


def clean_name(raw: bytes | str | None) -> str:
    """An upload's file name as metadata: decoded (UTF-8, else Latin-1), only its last path
    component (a browser may send ``C:\\fakepath\\x.mp4``), control characters removed, at most
    255 characters; ``upload`` when nothing is left. Never used as a path."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = raw.decode("latin-1")
    name = re.split(r"[/\\]", raw or "")[-1]
    name = _CONTROL.sub("", name).strip()[:255]
    return name if name not in ("", ".", "..") else "upload"


async def receive_file(request, limit: int, folder: Path | None = None,
                       ) -> tuple[Path, str, int, str]:
    """Stream the one file of a ``multipart/form-data`` request (field ``file``) to a new file.

    Args:
        request: a Starlette ``Request``.
        limit: the most bytes the file may have.
        folder: where to write it; default ``$NARRA_HOME/uploads``.

    Returns:
        (the written file, its name as sent, cleaned by :func:`clean_name`, its size in bytes,
        its SHA-256 in hex, computed as the bytes arrive). The caller removes the file.

    Raises:
        UploadError: (on each, nothing is kept: the partial file is removed)
            415 ``not_multipart`` for another content type;
            413 ``too_large`` when the declared length or the bytes received pass ``limit``;
            400 ``no_file`` when there is no ``file`` field;
            400 ``one_file_per_request`` when a second file comes (a second ``file`` field,
            or any other part with a file name): one request stores one file, so a file is
            never silently dropped;
            400 ``bad_multipart`` for a body that is not well-formed multipart (a wrong
            boundary, a part header over python-multipart's 4,224 bytes, e.g. a 10,000
            character file name, more than 8 headers in a part, a body that ends inside a part);
            408 ``body_timeout`` when no byte came for :func:`upload_idle_timeout_s` seconds;
            499 ``client_disconnected`` when the client went away (logged in one line).
        ValueError: from :func:`upload_idle_timeout_s`.
    """
    import asyncio

    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    mime, params = parse_options_header(request.headers.get("content-type", ""))
    if mime != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, "not_multipart",
                          "send the file as multipart/form-data in a field named 'file'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise UploadError(413, "too_large", f"the upload is {int(declared)} bytes, over the "
                                            f"limit of {limit} bytes (NARRA_MAX_UPLOAD_BYTES)")
    idle_s = upload_idle_timeout_s()
    folder = folder or settings.uploads_dir()
    settings.private_dir(folder)
    path = folder / f"{secrets.token_hex(8)}.part"
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "fh": None,
                             "name": None, "size": 0, "done": False, "files": 0}

    def on_part_begin():
        state["headers"] = {}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = state["value"] = b""

    def on_headers_finished():
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        named_file = disposition.get(b"name") == b"file"
        if not named_file and b"filename" not in disposition:
            return  # a plain form field: not a file, nothing is lost by skipping it
        state["files"] += 1
        if state["files"] > 1:
            raise UploadError(400, "one_file_per_request",
                              "the request holds more than one file; nothing was stored: send "
                              "one request per file, each in the multipart field 'file'")
        if named_file:
            state["name"] = clean_name(disposition.get(b"filename"))
            state["fh"] = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                            settings.PRIVATE_FILE_MODE), "wb")

    pending = bytearray()  # written to disk by a worker thread once it holds WRITE_BYTES
    digest = hashlib.sha256()

    def write(fh, data: bytes) -> None:
        fh.write(data)
        digest.update(data)

    def on_part_data(data, start, end):
        if state["fh"] is None:
            return
        state["size"] += end - start
        if state["size"] > limit:
            raise UploadError(413, "too_large", f"the file passed the limit of {limit} bytes "
                                                "(NARRA_MAX_UPLOAD_BYTES)")
        pending.extend(data[start:end])

    def on_part_end():
        if state["fh"] is not None:
            state["closing"] = True

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})

    async def flush(final: bool = False) -> None:
        fh = state["fh"]
        if fh is not None and (len(pending) >= WRITE_BYTES or final or state.get("closing")):
            data = bytes(pending)
            pending.clear()
            await run_in_threadpool(write, fh, data)  # the event loop keeps serving meanwhile
            if state.pop("closing", False):
                fh.close()
                state["fh"], state["done"] = None, True

    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    kept = False
    try:
        async with contextlib.aclosing(request.stream()) as stream:
            while True:
                try:
                    async with asyncio.timeout(idle_s):  # each read: a stalled body ends here
                        chunk = await anext(stream, None)
                except TimeoutError:
                    log.warning("upload from %s sent no byte for %g s after %d bytes of its "
                                "file: refused (408), partial file removed", client, idle_s,
                                state["size"])
                    raise UploadError(408, "body_timeout",
                                      f"no byte of the body came for {idle_s:g} s "
                                      "(NARRA_UPLOAD_IDLE_TIMEOUT_S); nothing was stored") from None
                if chunk is None:
                    break
                parser.write(chunk)
                await flush()
        parser.finalize()
        await flush(final=True)
        kept = state["done"]
    except ClientDisconnect:
        # a warning, so the default log shows it: the one line a disconnect is worth
        log.warning("upload from %s: the client disconnected after %d bytes of its file; partial "
                 "file removed", client, state["size"])
        raise UploadError(499, "client_disconnected", "the client went away mid-upload") from None
    except FormParserError as exc:
        raise UploadError(400, "bad_multipart", f"the body is not well-formed multipart/form-data:"
                                                f" {exc}") from None
    finally:
        if state["fh"] is not None:
            state["fh"].close()
        if not kept:
            path.unlink(missing_ok=True)
    if state["name"] is not None and not kept:
        raise UploadError(400, "bad_multipart", "the body ended inside the file's part (a "
                                                "truncated upload?); nothing was stored")
    if not kept:
        raise UploadError(400, "no_file", "the request has no complete multipart field 'file'")
    return path, state["name"], state["size"], digest.hexdigest()


def remove_stale_parts(folder: Path | None = None, older_than_s: float = STALE_PART_S) -> int:
    """Remove the partial uploads (``*.part``) a server left when it died mid-upload; return how
    many. Called when ``narra serve`` starts."""
    import time

    folder = folder or settings.uploads_dir()
    removed = 0
    for part in folder.glob("*.part"):
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > older_than_s:
                part.unlink()
                removed += 1
    return removed


class ItemGone(LookupError):
    """The item a request names was deleted (``code`` ``deleted``)."""

    code = "deleted"


@dataclass(frozen=True)
class Accepted:
    """An upload taken in: ``new`` when its bytes were not an item yet (or had been deleted);
    ``run_requested`` when a run was asked for (new, or a name that now fits its bytes)."""

    upload: Upload
    new: bool
    run_requested: bool


def accept_upload(path: Path, source_name: str, instance: dg.DagsterInstance,
                  resources: dict[str, Any], sha256: str | None = None) -> Accepted:
    """Take one received file in, as the inbox sensor would, and ask for its run.

    The same bytes again are the same item: no copy, no partition, no run (only their new name
    is recorded), except when the item failed only because its earlier names claimed another
    type and this name fits (run again, as the inbox does). ``sha256``: the file's digest when
    known (:func:`receive_file` computes it), so the file is not read again for it.

    Everything from the store to the run request happens under the item's lock
    (:func:`narra_dagster.resources.item_lock.item_lock`), which a deletion holds too: an
    upload that meets a deletion of the same bytes waits for it to end, then finds the item
    deleted and becomes its new version (stored again, a partition, a run of its own:
    ``new``), never "already here" for bytes being removed.

    Raises:
        BadInputError: ``empty_file``, ``unsupported_type``, ``too_large`` (from
            :func:`store_upload`); nothing is kept.
        ItemBusy: the item stayed locked by another request (a deletion) for 30 s; nothing
            was stored (``code`` ``item_busy``: answer it as a conflict to retry).
        OSError: when the store or the request folder cannot be written.
    """
    media_store: MediaStore = resources["media_store"]
    digest = sha256 or file_sha256(path)
    with item_lock(digest[:KEY_LENGTH]):  # the same bytes twice at once: one partition, one run
        upload = store_upload(path, media_store, source_name=source_name,
                              ingested_by="narra serve", sha256=digest)
        kind = registry.get(upload.kind)
        exists = instance.has_dynamic_partition(kind.partitions.name, upload.partition_key)
        reason = None
        if exists and not upload.renamed_to_fit and not upload.restored_after:
            return Accepted(upload, new=False, run_requested=False)
        if not exists:
            instance.add_dynamic_partitions(kind.partitions.name, [upload.partition_key])
        if upload.restored_after:  # also a partition a deletion that died midway left
            reason = f"restored-{upload.restored_after}"
        elif exists:
            reason = f"renamed-{secrets.token_hex(4)}"
        # published before the run is asked for, so it comes before analysis.started
        _publish(resources, RECEIVED, upload.partition_key, kind.name, upload.source_name,
                 {"size_bytes": upload.size_bytes, "reason": reason})
        seconds = kind.media_seconds(path) if kind.media_seconds and reason is None else None
        request_run(upload.partition_key, kind.name, upload.source_name, reason=reason,
                    media_seconds=seconds)
    return Accepted(upload, new=not exists or upload.restored_after is not None,
                    run_requested=True)


def waiting_request(media_id: str, instance: dg.DagsterInstance) -> dict[str, Any] | None:
    """The run request of ``media_id`` whose run does not exist yet (the sensor has not taken
    it), or None. A request file whose run exists is one the sensor took and removes on its
    next tick."""
    waiting = pending_request(media_id)
    if waiting is None:
        return None
    if not waiting.get("reason"):  # a first run, alone or in a batch run
        return None if has_first_run(instance, media_id) else waiting
    try:
        run_key = run_request_for(waiting)[0].run_key
    except (ValueError, KeyError, TypeError):
        return None
    if instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1):
        return None
    return waiting


def request_retry(media_id: str, kind: str, source_name: str, instance: dg.DagsterInstance,
                  resources: dict[str, Any]) -> dict[str, Any]:
    """Ask for a new run of a failed item's whole chain (the caller checks it failed). A retry
    already waiting for the sensor is answered, not asked twice.

    Returns:
        The pending request record (``media_id``, ``kind``, ``reason``, ``requested_at``).

    Raises:
        ItemGone: the item was deleted meanwhile (checked under the item's lock, which a
            deletion holds, so no retry is asked for an item that is gone).
        ItemBusy: the item stayed locked (a deletion) for 30 s.
    """
    with item_lock(media_id):
        if (not instance.has_dynamic_partition(registry.get(kind).partitions.name, media_id)
                or resources["media_store"].tombstone(media_id) is not None):
            raise ItemGone(f"item {media_id} was deleted; there is nothing to retry")
        waiting = waiting_request(media_id, instance)
        if waiting is not None and str(waiting.get("reason") or "").startswith("retry-"):
            return waiting  # asked already: one run, however often the button is pressed
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        request_run(media_id, kind, source_name, reason=f"retry-{stamp}")
        _publish(resources, RETRY_REQUESTED, media_id, kind, source_name, {"reason": stamp})
        return pending_request(media_id) or {}


def _publish(resources: dict[str, Any], event_type: str, media_id: str, kind: str,
             source_name: str, metadata: dict[str, Any]) -> None:
    sink = resources.get("event_sink")
    if sink is None:
        return
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    try:
        sink.publish([make_event(event_type, run_id=f"api-{media_id}-{now}", media_id=media_id,
                                 kind=kind, occurred_at=now, source_name=source_name,
                                 metadata=metadata)])
    except Exception as exc:  # noqa: BLE001 - an event sink being down must not lose the upload
        log.warning("could not publish %s for %s: %s: %s", event_type, media_id,
                    type(exc).__name__, exc)
