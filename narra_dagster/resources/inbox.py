"""The local inbox folder the upload sensor watches."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from narra_dagster import settings

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".download", "~")


class LocalInbox(dg.ConfigurableResource):
    """A local inbox folder that the upload sensor watches."""

    path: str = Field(default_factory=lambda: str(settings.inbox_dir()),
                      description="Folder watched for uploads; default $NARRA_HOME/inbox.")
    stable_seconds: float = Field(
        default=2.0, ge=0.0,
        description="A file is taken once it has not been modified for this long (seconds).")
    max_per_tick: int = Field(default=50, ge=1, description="Files taken per sensor tick.")

    @property
    def processed_dir(self) -> Path:
        return Path(self.path) / ".processed"

    @property
    def rejected_dir(self) -> Path:
        return Path(self.path) / ".rejected"

    def candidates(self, now: float) -> tuple[list[os.DirEntry], int]:
        """Return (stable files oldest first, number of files still being written)."""
        root = Path(self.path)
        root.mkdir(parents=True, exist_ok=True)
        stable, unstable = [], 0
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(PARTIAL_SUFFIXES):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat().st_mtime < self.stable_seconds:
                    unstable += 1
                    continue
                stable.append(entry)
        stable.sort(key=lambda e: (e.stat().st_mtime, e.name))
        return stable, unstable

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

    def reject(self, name: str, reason: str) -> Path:
        """Move ``inbox/<name>`` to ``.rejected/`` (never overwriting) with a reason file."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / name
        if target.exists():
            target = self.rejected_dir / f"{int(time.time() * 1000)}-{name}"
        shutil.move(str(Path(self.path) / name), target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        return target
