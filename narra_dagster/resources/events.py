"""Domain events: what happened to each uploaded item, for clients that must not read Dagster.

Per partition (one uploaded file) a client sees, in order::

    analysis.started
    <stage>.completed   one per stage that succeeded (stage = asset name, e.g. video_transcript)
    <stage>.failed      the stage that failed, with ``error`` and ``error_class``
    analysis.completed  or  analysis.failed (``error``, ``error_class``)

and ``analysis.retrying`` when Dagster's run retries start the item again after a crash (the
crashed attempt publishes no ``analysis.failed``: it is not final). The HTTP API adds
``upload.received`` (before ``analysis.started``) and ``analysis.retry_requested``. Each event is a flat JSON
object::

    {"id": "<32 hex>", "type": "video_transcript.completed", "media_id": "<partition key>",
     "kind": "video", "stage": "video_transcript", "run_id": "...", "occurred_at": "<ISO 8601 UTC>",
     "source_name": "talk.mp4", "error": null, "error_class": null, "metadata": {...}}

``id`` is the SHA-256 (first 32 hex digits) of ``run_id:stage:type``: the same happening always
gets the same id, so a sink or a consumer that has seen an id drops the redelivery (the sensor
re-reads a short overlap of the event log on purpose, see ``sensors/events.py``).

Sinks: :class:`JsonlEventSink` (default, ``$NARRA_HOME/events/events.jsonl``) and
:class:`RedisStreamEventSink` (``XADD`` to a stream, production).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from narra_dagster import settings

STARTED = "analysis.started"
COMPLETED = "analysis.completed"
FAILED = "analysis.failed"
RETRYING = "analysis.retrying"


def event_id(run_id: str, stage: str | None, event_type: str) -> str:
    """The deterministic id of an event: 32 hex digits of SHA-256(``run_id:stage:type``)."""
    return hashlib.sha256(f"{run_id}:{stage or '-'}:{event_type}".encode()).hexdigest()[:32]


def make_event(event_type: str, *, run_id: str, media_id: str, kind: str, occurred_at: str,
               stage: str | None = None, source_name: str | None = None,
               error: str | None = None, error_class: str | None = None,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One domain event as a JSON-ready dict (see the module docstring for the fields)."""
    return {"id": event_id(run_id, stage, event_type), "type": event_type, "media_id": media_id,
            "kind": kind, "stage": stage, "run_id": run_id, "occurred_at": occurred_at,
            "source_name": source_name, "error": error, "error_class": error_class,
            "metadata": metadata or {}}


class EventSink(dg.ConfigurableResource, ABC):
    """Where domain events go. ``publish`` must be idempotent per event ``id``."""

    @abstractmethod
    def publish(self, events: list[dict[str, Any]]) -> int:
        """Deliver events in order; return how many were new (ids not delivered before)."""

    @abstractmethod
    def read(self) -> list[dict[str, Any]]:
        """Every event held, oldest first (for tests and small tools)."""

    @abstractmethod
    def read_after(self, position: str, limit: int = 500) -> list[tuple[str, dict[str, Any]]]:
        """Events after ``position``, oldest first, each with its own position: an opaque,
        increasing string a reader resumes from (the SSE ``id``). ``"0"`` is before the first
        event.

        Raises:
            ValueError: for a position this sink never gave.
        """

    @abstractmethod
    def end_position(self) -> str:
        """The position after the newest event (a reader starting there sees only new ones)."""

    @abstractmethod
    def probe(self) -> str:
        """Check events can be published now; return where they go.

        Raises:
            OSError (or the backend's client error): when they cannot.
        """


class JsonlEventSink(EventSink):
    """Events appended as JSON lines to one file; ids already in the file are skipped.

    An exclusive ``flock`` on ``<file>.lock`` covers read-ids + append, so two publishers (two
    daemons by mistake, a re-run sensor) never write an id twice. Reading the ids is linear in
    the file's size: rotate the file (rename it) when it grows past what a tick should scan.
    """

    path: str = Field(default_factory=lambda: str(settings.narra_home() / "events" / "events.jsonl"),
                      description="JSON-lines file; default $NARRA_HOME/events/events.jsonl.")

    def probe(self) -> str:
        import tempfile

        folder = Path(self.path).parent
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-", suffix=".tmp"):
            pass
        return str(folder)

    def publish(self, events: list[dict[str, Any]]) -> int:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seen = {e["id"] for e in self.read()}
            new = [e for e in events if e["id"] not in seen and not seen.add(e["id"])]
            if new:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n"
                                     for e in new))
                    fh.flush()
                    os.fsync(fh.fileno())
        return len(new)

    def read_after(self, position: str, limit: int = 500) -> list[tuple[str, dict[str, Any]]]:
        """Positions are byte offsets of the end of each event's line."""
        if not position.isdigit():
            raise ValueError(f"not a position of this event file: {position!r}")
        out: list[tuple[str, dict[str, Any]]] = []
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return out
        with fh:
            offset = int(position)
            if offset > os.fstat(fh.fileno()).st_size:
                offset = 0  # the file was rotated since that position: read the new one whole
            fh.seek(offset)
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # being written: read it whole next time
                offset += len(line)
                with contextlib.suppress(ValueError):
                    out.append((str(offset), json.loads(line)))
                if len(out) >= limit:
                    break
        return out

    def end_position(self) -> str:
        try:
            return str(os.path.getsize(self.path))
        except FileNotFoundError:
            return "0"

    def read(self) -> list[dict[str, Any]]:
        path = Path(self.path)
        if not path.exists():
            return []
        out = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(json.JSONDecodeError):  # a torn last line from a crash
                    out.append(json.loads(line))
        return out


# Atomic "publish once": the id's marker is set only if absent, and the entry is added only then.
_XADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'id', ARGV[3], 'type', ARGV[4],
                    'media_id', ARGV[5], 'event', ARGV[6])
end
return false
"""


class RedisStreamEventSink(EventSink):
    """Events added to a Redis stream with ``XADD`` (fields ``id``, ``type``, ``media_id`` and
    ``event``, the JSON). A Lua script sets ``<stream>:seen:<id>`` (``SET NX``, expiring after
    ``dedupe_seconds``) and adds the entry only if the marker was new, atomically, so a
    redelivered event is dropped; consumers reading with ``XREADGROUP`` can still dedupe by
    ``id`` for redeliveries older than that window."""

    url: str = Field(default_factory=lambda: os.environ.get("NARRA_REDIS_URL", "redis://127.0.0.1:6379/0"),
                     description="Redis URL (password in the URL from the environment, never a file).")
    stream: str = Field(default="narra:events", description="Stream key.")
    maxlen: int = Field(default=1_000_000, ge=1, description="Approximate stream length cap.")
    dedupe_seconds: int = Field(default=7 * 24 * 3600, ge=1,
                                description="How long an id is remembered (seconds).")

    _client = PrivateAttr(default=None)
    _script = PrivateAttr(default=None)

    @property
    def client(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10)
            self._script = self._client.register_script(_XADD_ONCE)
        return self._client

    def probe(self) -> str:
        self.client.ping()
        return f"redis stream {self.stream}"

    def publish(self, events: list[dict[str, Any]]) -> int:
        client, new = self.client, 0
        for e in events:
            added = self._script(
                keys=[self.stream, f"{self.stream}:seen:{e['id']}"],
                args=[self.dedupe_seconds, self.maxlen, e["id"], e["type"], e["media_id"],
                      json.dumps(e, ensure_ascii=False, sort_keys=True)],
                client=client)
            new += bool(added)
        return new

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(fields[b"event"]) for _id, fields in self.client.xrange(self.stream)]

    def read_after(self, position: str, limit: int = 500) -> list[tuple[str, dict[str, Any]]]:
        """Positions are stream entry ids (``<ms>-<seq>``)."""
        if position != "0" and not re.fullmatch(r"\d+-\d+", position):
            raise ValueError(f"not an entry id of stream {self.stream}: {position!r}")
        start = "-" if position == "0" else f"({position}"
        return [(entry_id.decode(), json.loads(fields[b"event"]))
                for entry_id, fields in self.client.xrange(self.stream, min=start, count=limit)]

    def end_position(self) -> str:
        last = self.client.xrevrange(self.stream, count=1)
        return last[0][0].decode() if last else "0"


def event_sink_from_env() -> EventSink:
    """``NARRA_EVENT_SINK=redis`` gives the Redis stream sink (``NARRA_REDIS_URL``,
    ``NARRA_EVENT_STREAM``); anything else the JSON-lines file."""
    if os.environ.get("NARRA_EVENT_SINK", "jsonl").lower() == "redis":
        return RedisStreamEventSink(stream=os.environ.get("NARRA_EVENT_STREAM", "narra:events"))
    return JsonlEventSink()
