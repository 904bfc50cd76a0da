"""A cross-process write lock for a LanceDB database on a local path.

Two writers committing ``merge_insert`` on the same keys at once can both insert (LanceDB's
conflict resolution retries the commit, not the match), so the same row appears twice:
``tests/test_concurrency.py`` shows it with eight runs. Dagster's ``search_index`` and
``image_index`` pools serialize writes between runs that go through the run queue, but a
``narra process`` in a terminal, a test or a batch run does not take pool slots. On a local path
an advisory ``flock`` on a file beside the tables serializes every writer on the machine. Object
stores (``s3://``...) have no such lock; there the pools are what serializes writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".narra-write.lock"


def is_local_uri(uri: str) -> bool:
    """True for a plain path or a ``file://`` URI, False for an object store URI."""
    return "://" not in uri or uri.startswith("file://")


@contextlib.contextmanager
def write_lock(uri: str, table: str) -> Iterator[None]:
    """Hold an exclusive advisory lock for writes to ``table`` of the database at ``uri``.

    A no-op for object-store URIs. The lock is released when the block ends or the process dies
    (the kernel drops ``flock`` locks with the file descriptor), so a killed writer never leaves
    the table locked.

    Raises:
        OSError: when the lock file cannot be created in the database folder.
    """
    if not is_local_uri(uri):
        yield
        return
    folder = Path(uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{LOCK_NAME}.{table}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
