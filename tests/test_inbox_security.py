"""The inbox never follows a link, stored files are private, outside names reach a terminal inert.

These are the front-door review's findings about the shared drop folder, rerun as the attacker
ran them: a regular file swapped with a symbolic link to a secret by an atomic
``renameat2(RENAME_EXCHANGE)`` in a loop while the real upload sensor ticks, a hard link to a
file outside the inbox, and a file name that carries terminal escape sequences.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from narra_dagster.core.display import visible
from narra_dagster.defs.intake.inbox_sensor import upload_sensor
from narra_dagster.resources import LocalMediaStore
from narra_dagster.resources.inbox import LocalInbox, NotInboxFile

AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h


def _png(colour: tuple[int, int, int], note: str) -> bytes:
    """A small valid PNG whose bytes differ by colour and by a text chunk."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("note", note)
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _exchange(libc, a: Path, b: Path) -> int:
    """``renameat2(a, b, RENAME_EXCHANGE)``: 0, or the errno it failed with."""
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return 0
    return ctypes.get_errno()


@pytest.fixture
def libc():
    lib = ctypes.CDLL(None, use_errno=True)
    if not hasattr(lib, "renameat2"):
        pytest.skip("this C library has no renameat2 (glibc 2.28 or newer has it)")
    return lib


def _tick(instance, inbox, store):
    context = dg.build_sensor_context(instance=instance,
                                      resources={"inbox": inbox, "media_store": store})
    result = upload_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def _stored_bytes(store_root: Path) -> list[bytes]:
    return [p.read_bytes() for p in store_root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_a_file_swapped_for_a_symlink_in_a_loop_never_stores_what_the_link_points_to(
        instance, tmp_path, libc):
    """The attack of the review: ``photo.png`` (a plain PNG) and ``swap.png`` (a symbolic link
    to a secret PNG outside the inbox) exchange names as fast as a thread can while the real
    sensor ticks; whichever name the sensor scans as a plain file may be the link by the time it
    is opened. At the old main the secret was stored within seconds; now it never is."""
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret_bytes = _png((200, 0, 0), "root:x:0:0:root:/root:/bin/bash")
    secret.write_bytes(secret_bytes)
    inbox = LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=0.0, max_per_tick=50)
    root = Path(inbox.path)
    root.mkdir()
    store = LocalMediaStore(root=str(tmp_path / "media"))
    regular, link = root / "photo.png", root / "swap.png"
    stop = threading.Event()
    swaps = [0]

    def restock(n: int) -> None:
        """Put back whichever of the two names the sensor took away (it moves what it stored
        to .processed/): a fresh plain PNG, and the link."""
        names = {p.name: p for p in (regular, link) if os.path.lexists(p)}
        kinds = [os.path.islink(p) for p in names.values()]
        if True not in kinds:
            spare = root / ".link.tmp"
            os.symlink(secret, spare)
            os.replace(spare, link if link.name not in names else regular)
        if False not in kinds:
            spare = root / ".file.tmp"  # hidden: the scan leaves it alone until renamed
            spare.write_bytes(_png((0, n % 250, 100), f"plain {n}"))
            past = time.time() - 60
            os.utime(spare, (past, past))
            os.replace(spare, regular if regular.name not in names else link)

    def swapper() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            code = _exchange(libc, regular, link)
            if code == 0:
                swaps[0] += 1
            elif code == errno.ENOENT:
                restock(n)
            else:
                raise OSError(code, os.strerror(code))

    restock(0)
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    ticks = 0
    deadline = time.monotonic() + 8.0
    try:
        while time.monotonic() < deadline:
            _tick(instance, inbox, store)
            ticks += 1
    finally:
        stop.set()
        thread.join(5)
    assert swaps[0] > 100, f"the swapper exchanged the names only {swaps[0]} times"
    assert ticks >= 5
    stored = _stored_bytes(Path(store.root))
    assert stored, "the sensor stored none of the plain files: the race was never run"
    assert not [b for b in stored if b"root:x:0:0" in b], (
        f"the secret outside the inbox was stored ({ticks} ticks, {swaps[0]} swaps)")
    # and nothing the sensor moved aside holds it either (a link may be moved, never read)
    for folder in (root / ".processed", root / ".rejected"):
        for p in folder.rglob("*") if folder.exists() else ():
            if p.is_file() and not p.is_symlink():
                assert b"root:x:0:0" not in p.read_bytes(), p
    assert secret.read_bytes() == secret_bytes  # the target is untouched


def test_a_hard_link_to_a_file_outside_is_skipped_and_left_in_place(instance, tmp_path):
    """A hard link has no link to refuse by ``O_NOFOLLOW``: its bytes are the outside file's.
    The sensor refuses any file with more than one name, stores nothing and says why."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png((0, 0, 200), "root:x:0:0:hard"))
    inbox = LocalInbox(path=str(tmp_path / "inbox"), stable_seconds=0.0, max_per_tick=50)
    root = Path(inbox.path)
    root.mkdir()
    os.link(secret, root / "hard.png")
    store = LocalMediaStore(root=str(tmp_path / "media"))
    result = _tick(instance, inbox, store)
    assert not result.run_requests
    assert "1 skipped" in (result.skip_reason or "") or "1 skipped" in str(result), result
    assert not [b for b in _stored_bytes(Path(store.root)) if b"root:x:0:0" in b]
    assert (root / "hard.png").exists()  # left where it is, not moved or rejected
    with pytest.raises(NotInboxFile, match="hard link"):
        with inbox.open_file("hard.png"):
            pass
    os.symlink(secret, root / "soft.png")
    with pytest.raises(NotInboxFile, match="symbolic link"):
        with inbox.open_file("soft.png"):
            pass
    # a folder, a FIFO: refused without a descriptor left open (a name swapped for a folder
    # after each scan must not leak one descriptor per tick)
    (root / "folder.png").mkdir()
    os.mkfifo(root / "pipe.png")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        for name in ("folder.png", "pipe.png"):
            with pytest.raises(NotInboxFile, match="not a regular file"):
                with inbox.open_file(name):
                    pass
    assert len(os.listdir("/proc/self/fd")) <= before


def test_stored_files_are_private_under_a_private_home(instance, tmp_path, monkeypatch):
    """What the sensor stores is ``0600`` in ``0700`` folders, whatever the umask; the home is
    made (or tightened to) ``0700``."""
    from narra_dagster import settings

    home = tmp_path / "home"
    monkeypatch.setenv("NARRA_HOME", str(home))
    old = os.umask(0o022)
    try:
        home.mkdir(mode=0o755)
        os.chmod(home, 0o755)
        assert settings.ensure_home() == home.absolute()
        inbox = LocalInbox(path=str(home / "inbox"), stable_seconds=0.0, max_per_tick=50)
        Path(inbox.path).mkdir()
        (Path(inbox.path) / "photo.png").write_bytes(_png((10, 200, 10), "private"))
        store = LocalMediaStore(root=str(home / "media"))
        result = _tick(instance, inbox, store)
    finally:
        os.umask(old)
    assert result.run_requests
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [p for p in (home / "media").rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
    for p in [home / "media", *[p for p in (home / "media").rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))


@pytest.mark.parametrize("name, shown", [
    ("evil\x1b]0;pwned\x07.png", "evil\\x1b]0;pwned\\x07.png"),
    ("red\x1b[31m.png", "red\\x1b[31m.png"),
    ("over\rwrite.png", "over\\x0dwrite.png"),
    ("gpj\u202eexe.png", "gpj\\u202eexe.png"),
    ("caf\u00e9 \u65e5\u672c.png", "caf\u00e9 \u65e5\u672c.png"),  # letters stay letters
    ("bad\udce9.png", "bad\\xe9.png"),  # a byte of a name that is not UTF-8
])
def test_outside_names_are_shown_with_their_controls_escaped(name, shown):
    assert visible(name) == shown
