"""Server-sent events: the domain events of the event sink, followed as they are published."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator

from narra_dagster.resources.events import EventSink

POLL_S = 0.5
"""How often the sink is read for new events (seconds); events themselves are published by the
domain events sensor every few seconds."""
BATCH = 500
"""Events read from the sink at a time; a full batch is followed at once by the next."""
KEEPALIVE_S = 15.0
"""A comment line after this many quiet seconds, so proxies and clients keep the stream open."""


def sse_message(position: str, event: dict) -> str:
    """One event in the ``text/event-stream`` format: ``id`` (the sink position, for
    ``Last-Event-ID``), ``event`` (its type) and ``data`` (the event as one line of JSON)."""
    return f"id: {position}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"


def current_version(history: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The events of one item's history that belong to its current version: those after its
    last ``analysis.deleted``. An item deleted and uploaded again keeps its old events in the
    sink (events are facts, never rewritten), and a page following the new upload must not
    read the old version's ``analysis.completed`` as its own. When the deletion is the last
    event (the item is deleted now), that event alone is kept.

    Args:
        history: ``(position, event)`` pairs of one item, oldest first.
    """
    deletions = [i for i, (_, event) in enumerate(history)
                 if event.get("type") == "analysis.deleted"]
    if not deletions:
        return history
    last = deletions[-1]
    return history[last:] if last == len(history) - 1 else history[last + 1:]


def _older(event: dict, since_s: float | None) -> bool:
    """Whether ``event`` occurred before ``since_s`` (seconds since the epoch)."""
    if since_s is None:
        return False
    try:
        return dt.datetime.fromisoformat(event.get("occurred_at") or "").timestamp() < since_s
    except (TypeError, ValueError):
        return False


async def event_stream(request, sink: EventSink, position: str, media_id: str | None = None,
                       since_s: float | None = None) -> AsyncIterator[str]:
    """Events after ``position`` (only ``media_id``'s when given, and of those only the current
    version's: :func:`current_version`), then each new one as the sink receives it, until the
    client disconnects. The sink is read in a worker thread, so a slow
    file or Redis never blocks the server's event loop.

    ``since_s``: when the item's current version began (its deletion's time, seconds since the
    epoch; :meth:`narra_dagster.resources.media_store.MediaStore.version`): events that occurred
    before it are the deleted version's, skipped even when the domain events sensor publishes
    them late (it reads Dagster's event log every few seconds, so a run's last stage events
    can reach the sink after the deletion and the new upload)."""
    from starlette.concurrency import run_in_threadpool

    yield "retry: 2000\n\n"  # how long a browser waits before reconnecting
    if media_id is not None:  # the item's history so far, of its current version only
        backlog: list[tuple[str, dict]] = []
        while True:
            batch = await run_in_threadpool(sink.read_after, position, BATCH)
            for position, event in batch:
                if event.get("media_id") == media_id and not _older(event, since_s):
                    backlog.append((position, event))
            if len(batch) < BATCH or await request.is_disconnected():
                break
        for at, event in current_version(backlog):
            yield sse_message(at, event)
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        batch = await run_in_threadpool(sink.read_after, position, BATCH)
        for position, event in batch:
            if media_id is None or (event.get("media_id") == media_id
                                    and not _older(event, since_s)):
                yield sse_message(position, event)
                quiet_since = time.monotonic()
        if len(batch) == BATCH:
            continue
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)
