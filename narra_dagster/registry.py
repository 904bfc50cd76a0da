"""The media kinds narra processes: the only list of them.

Adding a kind is one folder under ``narra_dagster/defs/`` (its stages and its ``kind.py``) plus
one entry in :data:`KINDS`; the sensors, batch runs, domain events, intake, search and the
command line read everything else from the entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from narra_dagster.core.kind import MediaKind
from narra_dagster.defs.document.kind import DOCUMENT
from narra_dagster.defs.image.kind import IMAGE
from narra_dagster.defs.video.kind import VIDEO

KINDS: tuple[MediaKind, ...] = (VIDEO, IMAGE, DOCUMENT)

_BY_NAME = {kind.name: kind for kind in KINDS}
_BY_JOB = {name: kind for kind in KINDS for name in (kind.job_name, kind.batch_job_name)}


class UnknownKindError(KeyError):
    """A kind name that is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:
        return self.args[0]


def names() -> list[str]:
    """The kinds' names, in registry order (``["video", "image", "document"]``)."""
    return list(_BY_NAME)


def get(name: str) -> MediaKind:
    """The kind called ``name``, or named so by people: ``"pdf"``, ``"photo"``, ``"audio"``,
    ``"videos"`` (case-insensitive; see :attr:`MediaKind.names_people_use`).

    Raises:
        UnknownKindError: for a word that names no kind.
    """
    kind = _BY_NAME.get(name) or next(
        (k for k in KINDS if name.strip().lower() in k.names_people_use), None)
    if kind is None:
        raise UnknownKindError(
            f"unknown kind {name!r}; the kinds are {', '.join(_BY_NAME)} (pdf, photo, audio... "
            "are understood too)")
    return kind


def jobs() -> list:
    """Every kind's jobs, per-item then batch (``[video_pipeline, video_batch, ...]``): what
    the intake sensors target."""
    return [job for kind in KINDS for job in (kind.job, kind.batch_job)]


def for_job(job_name: str) -> MediaKind | None:
    """The kind whose per-item or batch job is ``job_name``, or None for any other job."""
    return _BY_JOB.get(job_name)


def noun(name: str) -> str:
    """How a person names a file of kind ``name`` (``"a PDF"``); the name itself if unknown."""
    kind = _BY_NAME.get(name)
    return kind.noun if kind else name


def kind_for_bytes(head: bytes) -> MediaKind | None:
    """The kind whose signature a file's first bytes match (512 bytes are plenty), or None."""
    return next((kind for kind in KINDS if kind.recognise(head)), None)


def kind_for_extension(name: str) -> MediaKind | None:
    """The kind a file name's extension claims (``"clip.MP4"`` -> video), or None."""
    suffix = Path(name).suffix.lower()
    return next((kind for kind in KINDS if suffix in kind.extensions), None)


def kind_for_file(path: Path) -> MediaKind | None:
    """The kind of a file: from its bytes, else from its extension, else None.

    The extension is a fallback only for files whose bytes say nothing recognisable (an empty
    file, a text file renamed ``.mp4``): the item then enters its kind's chain and fails
    validation with a clear error instead of disappearing.

    Raises:
        OSError: when the file cannot be read.
    """
    with open(path, "rb") as fh:
        return kind_for_open_file(fh, path.name)


def kind_for_open_file(fh: BinaryIO, name: str) -> MediaKind | None:
    """The kind of an open file, as :func:`kind_for_file` says it, from its first 512 bytes
    read with ``pread`` (the file's position does not move) and the extension of ``name``.
    For intake that must read one handle only: the inbox opens a file without following
    links and sniffs, hashes and copies that same handle (``name`` is then only metadata).

    Args:
        fh: a binary file with a real descriptor (``fileno()``), opened for reading.
        name: the name the file arrived under; only its extension is used.

    Raises:
        OSError: when the file cannot be read.
    """
    head = os.pread(fh.fileno(), 512, 0)
    return kind_for_bytes(head) or kind_for_extension(name)
