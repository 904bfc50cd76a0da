"""Server-sent events: the domain events of the event sink, followed as they are published."""

from __future__ import annotations

import asyncio
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


async def event_stream(request, sink: EventSink, position: str,
                       media_id: str | None = None) -> AsyncIterator[str]:
    """Events after ``position`` (only ``media_id``'s when given), then each new one as the sink
    receives it, until the client disconnects. The sink is read in a worker thread, so a slow
    file or Redis never blocks the server's event loop."""
    from starlette.concurrency import run_in_threadpool

    yield "retry: 2000\n\n"  # how long a browser waits before reconnecting
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        batch = await run_in_threadpool(sink.read_after, position, BATCH)
        for position, event in batch:
            if media_id is None or event.get("media_id") == media_id:
                yield sse_message(position, event)
                quiet_since = time.monotonic()
        if len(batch) == BATCH:
            continue
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)
