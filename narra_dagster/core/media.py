"""Content identity of uploads: the partition key.

What kind a file is, is each kind's own business (``recognise`` in ``defs/<kind>/kind.py``, asked
through :mod:`narra_dagster.registry`).

A partition key is the first 16 hex digits (64 bits) of the file's SHA-256, so the same bytes
always map to the same partition whatever the file is called. At 64 bits, a collision between two
different files is expected only after about 4 billion uploads (the birthday bound, 2**32).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

KEY_LENGTH = 16
KEY_PATTERN = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def partition_key_for(path: Path) -> str:
    """Return the partition key of a file: the first 16 hex digits of its SHA-256."""
    return file_sha256(path)[:KEY_LENGTH]


def is_partition_key(value: str) -> bool:
    """True when ``value`` has the shape of a partition key (16 lowercase hex digits)."""
    return bool(KEY_PATTERN.match(value))
