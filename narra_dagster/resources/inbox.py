"""The local inbox folder the upload sensor watches.

A shared drop folder is written by people (and programs) who may not be the ones who read the
library, so the inbox never follows a link: each candidate is opened with ``O_NOFOLLOW``
relative to the inbox folder's own descriptor, ``fstat``-ed, refused unless it is a regular file
with one name, and then sniffed, hashed and copied from that one descriptor
(:meth:`LocalInbox.open_file`). Swapping a file for a symbolic link to ``/etc/passwd`` between
the scan and the open (an atomic ``renameat2(RENAME_EXCHANGE)``) finds ``ELOOP``; swapping it
after the open changes nothing, as the name is not opened again.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import stat as stat_mode
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dagster as dg
from pydantic import Field

from narra_dagster import settings

NAME_MAX = 255  # bytes of one file name on Linux file systems (ext4, xfs, btrfs)
REASON_SUFFIX = ".reason.txt"
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".download", "~")
# O_NONBLOCK: a FIFO swapped in after the scan opens at once (and is refused by fstat) instead of
# waiting for a writer; it changes nothing for a regular file.
_OPEN_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0))
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class NotInboxFile(OSError):
    """The name in the inbox is not (or is no longer) a plain file of its own: a symbolic link
    (``ELOOP`` from ``O_NOFOLLOW``), a hard link to a file with other names, a folder, FIFO,
    socket or device. Nothing was read through it."""


@dataclass(frozen=True)
class InboxFile:
    """One inbox file opened without following links (:meth:`LocalInbox.open_file`).

    Attributes:
        file: the open file (binary, read-only), positioned at its start.
        stat: ``fstat`` of the descriptor: a regular file with one link.
        path: a path that names the open descriptor itself (``/proc/self/fd/<n>``), for code
            that takes a path (a container's header read by PyAV): opening it opens the same
            file, whatever the inbox name points to by then.
    """

    file: BinaryIO
    stat: os.stat_result
    path: Path


def _fd_path(fd: int) -> Path:
    base = Path("/proc/self/fd")
    return (base if base.is_dir() else Path("/dev/fd")) / str(fd)


class LocalInbox(dg.ConfigurableResource):
    """A local inbox folder that the upload sensor watches."""

    path: str = Field(default_factory=lambda: str(settings.inbox_dir()),
                      description="Folder watched for uploads; default $NARRA_HOME/inbox.")
    stable_seconds: float = Field(
        default=1.0, ge=0.0,
        description="A file is taken once it has not been modified for this long (seconds). "
                    "A copy that can stall longer mid-file (a slow network share) should be "
                    "written under a .part name and renamed when complete.")
    max_per_tick: int = Field(default=50, ge=1, description="Files taken per sensor tick.")

    @property
    def processed_dir(self) -> Path:
        return Path(self.path) / ".processed"

    @property
    def rejected_dir(self) -> Path:
        return Path(self.path) / ".rejected"

    def candidates(self, now: float) -> tuple[list[os.DirEntry], int, dict[str, str]]:
        """Return (stable regular files oldest first, number still being written, the entries
        skipped: name -> why). Symbolic links (never followed out of the inbox), hard links,
        folders, FIFOs, sockets and devices are skipped without being opened, so none can block
        a tick; a file that vanishes while being looked at is simply not taken."""
        root = Path(self.path)
        root.mkdir(parents=True, exist_ok=True)
        stable, unstable, skipped = [], 0, {}
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(PARTIAL_SUFFIXES):
                    continue
                try:
                    if entry.is_symlink():
                        skipped[entry.name] = "a symbolic link (never followed)"
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        skipped[entry.name] = ("a folder" if entry.is_dir(follow_symlinks=False)
                                               else "not a regular file (FIFO, socket or device)")
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_nlink != 1:  # refused by open_file too; said here once per tick
                        skipped[entry.name] = (f"a hard link ({st.st_nlink} names): its bytes "
                                               "are a file elsewhere too; copy it in instead")
                        continue
                    mtime = st.st_mtime
                except OSError:  # vanished meanwhile
                    continue
                if now - mtime < self.stable_seconds:
                    unstable += 1
                    continue
                stable.append(entry)

        def age(entry: os.DirEntry) -> tuple[float, str]:
            try:
                return entry.stat(follow_symlinks=False).st_mtime, entry.name
            except OSError:
                return 0.0, entry.name

        stable.sort(key=age)
        return stable, unstable, skipped

    @contextlib.contextmanager
    def open_file(self, name: str) -> Iterator[InboxFile]:
        """Open ``inbox/<name>`` for reading without following any link.

        The inbox folder is opened first and the file relative to its descriptor with
        ``O_NOFOLLOW``; the descriptor is then ``fstat``-ed. Everything the sensor does with the
        file (sniff, hash, copy, read the header) goes through the descriptor this yields.

        Args:
            name: a file name directly in the inbox (no ``/``).

        Yields:
            :class:`InboxFile`; the file is closed when the block ends.

        Raises:
            NotInboxFile: a symbolic link, a hard link (more than one name: its bytes belong to
                a file elsewhere too), or not a regular file.
            FileNotFoundError: the name is gone.
            OSError: any other reason it cannot be opened.
        """
        if "/" in name or name in ("", ".", ".."):
            raise NotInboxFile(errno.EINVAL, "not a file name directly in the inbox", name)
        folder = os.open(self.path, _DIR_FLAGS)
        try:
            try:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise NotInboxFile(errno.ELOOP, "a symbolic link (never followed)",
                                       name) from None
                raise
        finally:
            os.close(folder)
        try:  # checked on the raw descriptor: fdopen refuses a folder without closing it
            st = os.fstat(fd)
            if not stat_mode.S_ISREG(st.st_mode):
                raise NotInboxFile(errno.EINVAL, "not a regular file (a folder, FIFO, socket "
                                                 "or device)", name)
            fh = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            if st.st_nlink != 1:
                raise NotInboxFile(errno.EMLINK, f"a hard link ({st.st_nlink} names): its bytes "
                                                 "are a file elsewhere too; copy it in instead",
                                   name)
            yield InboxFile(fh, st, _fd_path(fd))

    def move_processed(self, name: str, key: str, size: int, mtime_ns: int) -> Path | None:
        """Move ``inbox/<name>`` to ``.processed/<key>/<name>`` if it is still the file that was
        registered (a regular file, not a link, of the same size in bytes and modification time
        in ns). Returns None, and moves nothing, when it is gone or was replaced since: a
        replaced file is then a new upload. Only the name is moved (``rename``): no link is
        followed and no bytes are read."""
        source = Path(self.path) / name
        try:
            stat = source.lstat()
        except FileNotFoundError:
            return None
        if not stat_mode.S_ISREG(stat.st_mode) or (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return None
        target = self.processed_dir / key / name
        settings.private_dir(target.parent)
        os.replace(source, target)
        return target

    def remove_processed(self, key: str) -> int:
        """Remove ``.processed/<key>/`` (the originals an item's upload came from), as deleting
        the item does. Links inside are removed, never followed. Returns the files removed.

        Raises:
            ValueError: when ``key`` is not a partition key (it names the folder).
        """
        from narra_dagster.core.media import is_partition_key

        if not is_partition_key(key):
            raise ValueError(f"not a partition key: {key!r}")
        folder = self.processed_dir / key
        if not folder.is_dir() or folder.is_symlink():
            return 0
        count = sum(1 for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def reject(self, name: str, reason: str) -> Path | None:
        """Move ``inbox/<name>`` to ``.rejected/`` (never overwriting) with a reason file beside
        it, which also names the file. Any name the file system allows works: a name too long
        to take a prefix or the ``.reason.txt`` suffix (255 bytes) gets a shortened one.
        Returns where it went, or None when it vanished first."""
        settings.private_dir(self.rejected_dir)
        target = self.rejected_dir / name
        if target.exists() or len(os.fsencode(name)) > NAME_MAX - len(REASON_SUFFIX):
            digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
            target = self.rejected_dir / f"{int(time.time() * 1000)}-{digest}{Path(name).suffix[:16]}"
        try:
            shutil.move(str(Path(self.path) / name), target)
        except FileNotFoundError:
            return None
        shown = name.encode("unicode_escape", "backslashreplace").decode("ascii")
        target.with_name(target.name + REASON_SUFFIX).write_text(
            f"{reason}\nfile: {shown}\n", encoding="utf-8")
        return target
