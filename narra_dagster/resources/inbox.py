"""The local inbox folder the upload sensor watches."""

import hashlib
import os
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from narra_dagster import settings

NAME_MAX = 255  # bytes of one file name on Linux file systems (ext4, xfs, btrfs)
REASON_SUFFIX = ".reason.txt"
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".download", "~")


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
        skipped: name -> why). Symbolic links (never followed out of the inbox), folders, FIFOs,
        sockets and devices are skipped without being opened, so none can block a tick; a file
        that vanishes while being looked at is simply not taken."""
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
                    mtime = entry.stat(follow_symlinks=False).st_mtime
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

    def move_processed(self, name: str, key: str, size: int, mtime_ns: int) -> Path | None:
        """Move ``inbox/<name>`` to ``.processed/<key>/<name>`` if it is still the file that was
        registered (same size in bytes and modification time in ns). Returns None, and moves
        nothing, when it is gone or was replaced since: a replaced file is then a new upload."""
        source = Path(self.path) / name
        try:
            stat = source.stat()
        except FileNotFoundError:
            return None
        if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
            return None
        target = self.processed_dir / key / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def reject(self, name: str, reason: str) -> Path | None:
        """Move ``inbox/<name>`` to ``.rejected/`` (never overwriting) with a reason file beside
        it, which also names the file. Any name the file system allows works: a name too long
        to take a prefix or the ``.reason.txt`` suffix (255 bytes) gets a shortened one.
        Returns where it went, or None when it vanished first."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
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
