"""A cross-process write lock for a LanceDB database on a local path.

Two writers committing ``merge_insert`` on the same keys at once can both insert (LanceDB's
conflict resolution retries the commit, not the match), so the same row appears twice:
``tests/test_concurrency.py`` shows it with eight runs. Dagster's ``search_index`` and
``image_index`` pools serialize writes between runs that go through the run queue, but a
``narra process`` in a terminal, a test or a batch run does not take pool slots. On a local path
an advisory ``flock`` on a file beside the tables serializes every writer on the machine.

Object stores (``s3://``...) have no file lock. There, when the production instance's PostgreSQL
is configured (``DAGSTER_PG_HOST`` and the rest, as ``dagster.production.yaml`` reads them), a
session-level ``pg_advisory_lock`` on a key derived from the table's URI serializes writers across
machines; PostgreSQL drops it when the writer's connection ends, so a killed writer cannot hold
it. The pools alone are not enough: Dagster 1.13's ``claim_concurrency_slot`` on PostgreSQL
selects a free slot ``FOR UPDATE SKIP LOCKED`` in autocommit mode and claims it in a second
statement, so two steps can rarely hold one slot. Without PostgreSQL, object-store writes are
serialized by the pools only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".narra-write.lock"


def is_local_uri(uri: str) -> bool:
    """True for a plain path or a ``file://`` URI, False for an object store URI."""
    return "://" not in uri or uri.startswith("file://")


PG_CONNECT_TIMEOUT_S = 10


def advisory_key(uri: str, table: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of ``table`` at ``uri``: the first 8 bytes
    of SHA-256 of ``"<uri>/<table>"`` (trailing slashes of ``uri`` ignored)."""
    digest = hashlib.sha256(f"{uri.rstrip('/')}/{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _postgres_dsn() -> dict | None:
    """Connection arguments from the production instance's environment, or None when
    ``DAGSTER_PG_HOST`` is not set."""
    if not os.environ.get("DAGSTER_PG_HOST"):
        return None
    return {"host": os.environ["DAGSTER_PG_HOST"], "port": int(os.environ.get("DAGSTER_PG_PORT") or 5432),
            "user": os.environ.get("DAGSTER_PG_USER") or "postgres",
            "password": os.environ.get("DAGSTER_PG_PASSWORD") or "",
            "dbname": os.environ.get("DAGSTER_PG_DB") or "postgres",
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "application_name": "narra-index-write-lock"}


@contextlib.contextmanager
def _postgres_lock(dsn: dict, key: int, timeout_s: float | None = None) -> Iterator[None]:
    import psycopg2

    conn = psycopg2.connect(**dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            if timeout_s is None:
                cur.execute("SELECT pg_advisory_lock(%s)", (key,))
            else:  # the wait is bounded by lock_timeout: LockNotAvailable past it
                cur.execute("SET lock_timeout = %s", (f"{max(1, int(timeout_s * 1000))}ms",))
                try:
                    cur.execute("SELECT pg_advisory_lock(%s)", (key,))
                except psycopg2.errors.LockNotAvailable as exc:
                    raise TimeoutError(f"advisory lock {key} still held after {timeout_s} s") from exc
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None, poll_s: float = 0.02) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, mode 0600, with its folder) for the
    block. Each call opens its own file description, so two threads of one process exclude
    each other as two processes do; the kernel drops the lock when the holder dies.

    Args:
        path: the lock file.
        timeout_s: give up after this many seconds (polled every ``poll_s``); None waits as
            long as it takes.

    Raises:
        TimeoutError: when the lock is still held by another after ``timeout_s``.
        OSError: when the lock file cannot be created.
    """
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{path} still locked after {timeout_s} s") from None
                    time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def write_lock(uri: str, table: str) -> Iterator[None]:
    """Hold an exclusive lock for writes to ``table`` of the database at ``uri``.

    Local path: an ``flock`` on ``<uri>/.narra-write.lock.<table>``. Object store: a PostgreSQL
    advisory lock (:func:`advisory_key`) when ``DAGSTER_PG_HOST`` is set, else nothing. Either
    lock is released when the block ends or the process dies (the kernel drops ``flock`` locks
    with the file descriptor, PostgreSQL drops advisory locks with the connection), so a killed
    writer never leaves the table locked.

    Raises:
        OSError: when the lock file cannot be created in the database folder.
        psycopg2.OperationalError: when PostgreSQL is configured but cannot be reached within
            10 s (the write is not attempted unlocked).
    """
    if not is_local_uri(uri):
        dsn = _postgres_dsn()
        if dsn is None:
            yield
        else:
            with _postgres_lock(dsn, advisory_key(uri, table)):
                yield
        return
    with file_lock(Path(uri.removeprefix("file://")) / f"{LOCK_NAME}.{table}"):
        yield
