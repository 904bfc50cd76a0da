"""The per-content lock: one item's intake and its deletion never interleave.

Every door that turns bytes into an item (the HTTP API's upload and retry, ``narra process`` /
``narra ingest``, the inbox and S3 sensors, the run request sensor) and the deletion of an item
(:mod:`narra_dagster.app.lifecycle`) hold this lock on the item's partition key while they read
and change what the item is: its stored upload, manifest, tombstone, dynamic partition and
pending run request. So an upload that meets a deletion waits for it and then finds the item
deleted (and becomes a new version of it), instead of answering "already here" for bytes that
are being removed. A stage takes it for the moment it checks, after writing, that its item was
not deleted meanwhile (:mod:`narra_dagster.core.stage`).

Where the lock lives:

- **Local set-up** (the default, and any set-up whose processes share ``$NARRA_HOME`` on one
  machine): an ``flock`` on ``$NARRA_HOME/locks/<key>.lock``, with the primitive of
  :func:`narra_dagster.resources.index_lock.file_lock`. The kernel drops it when its holder
  dies, so a killed process never leaves an item locked. The empty lock file stays (removing a
  lock file that another process may be about to lock would let two holders in).
- **Production** (``NARRA_S3_BUCKET`` and the instance's PostgreSQL, ``DAGSTER_PG_HOST``): a
  session-level ``pg_advisory_lock`` on a key derived from ``narra-item/<key>``, the same
  mechanism as the index write lock, so the API, the daemon and run workers on different
  machines exclude each other; PostgreSQL drops it with the holder's connection. With S3 but
  without PostgreSQL the ``flock`` serializes only the processes of one machine.

The lock is re-entrant within a thread (a door that holds it may call code that takes it
again), and never held across a run: only around the short critical sections above.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from narra_dagster import settings
from narra_dagster.core.media import is_partition_key
from narra_dagster.resources.index_lock import _postgres_dsn, _postgres_lock, advisory_key, file_lock

DEFAULT_TIMEOUT_S = 30.0
"""How long a door waits for an item held by another (a deletion takes well under a second;
a stage's check after writing, milliseconds)."""

_held = threading.local()


class ItemBusy(TimeoutError):
    """Another process or thread held the item's lock for longer than the caller would wait
    (``code`` ``item_busy``): try again later."""

    code = "item_busy"


def locks_dir():
    """``$NARRA_HOME/locks``: one empty lock file per item that was ever locked."""
    return settings.narra_home() / "locks"


def _shared_backend() -> dict | None:
    """PostgreSQL connection arguments when the set-up spans machines (S3 store and the
    production instance's PostgreSQL), else None (the local ``flock``)."""
    if not os.environ.get("NARRA_S3_BUCKET"):
        return None
    return _postgres_dsn()


@contextlib.contextmanager
def item_lock(key: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of item ``key`` for the block (see the module docstring).

    Args:
        key: the item's partition key (16 hex digits).
        timeout_s: seconds to wait for another holder; None waits as long as it takes.

    Raises:
        ValueError: when ``key`` is not a partition key (it names the lock file).
        ItemBusy: when another holder kept it past ``timeout_s``.
        OSError: when the lock file cannot be created.
        psycopg2.OperationalError: in production, when PostgreSQL cannot be reached.
    """
    if not is_partition_key(key):
        raise ValueError(f"not a partition key: {key!r}")
    held: dict[str, int] = _held.__dict__.setdefault("keys", {})
    if held.get(key):  # this thread holds it already
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    dsn = _shared_backend()
    lock = (_postgres_lock(dsn, advisory_key("narra-item", key), timeout_s) if dsn
            else file_lock(locks_dir() / f"{key}.lock", timeout_s))
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(lock)
    except TimeoutError as exc:  # only the wait: a TimeoutError of the block passes unchanged
        raise ItemBusy(f"item {key} is being changed by another request (an upload or a "
                       f"deletion) and stayed busy for {timeout_s} s; try again") from exc
    with stack:
        held[key] = 1
        try:
            yield
        finally:
            held.pop(key, None)


def holds(key: str) -> bool:
    """True when this thread holds item ``key``'s lock."""
    return bool(_held.__dict__.get("keys", {}).get(key))
