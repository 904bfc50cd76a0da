"""The real services the production tests use (PostgreSQL, Redis, a local S3), each found with a
short timeout so a missing one skips its tests with a reason instead of hanging them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

PG_HOST = os.environ.get("NARRA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NARRA_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("NARRA_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("NARRA_TEST_PG_PASSWORD", "")
REDIS_URL = os.environ.get("NARRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONNECT_TIMEOUT_S = 3


def _pg_connect(db: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD,
                            dbname=db, connect_timeout=CONNECT_TIMEOUT_S)
    conn.autocommit = True
    return conn


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL does not answer within 3 s."""
    try:
        _pg_connect().close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}")


def require_redis():
    """Return a Redis client, or skip the calling test when Redis does not answer within 3 s."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                  socket_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return client


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """Create a fresh, uniquely named database for one test and drop it afterwards."""
    require_postgres()
    name = f"narra_test_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(_pg_connect()) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with contextlib.closing(_pg_connect()) as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_env(db: str) -> dict[str, str]:
    """The environment the production dagster.yaml reads its connection from."""
    return {"DAGSTER_PG_HOST": PG_HOST, "DAGSTER_PG_PORT": str(PG_PORT),
            "DAGSTER_PG_USER": PG_USER, "DAGSTER_PG_PASSWORD": PG_PASSWORD, "DAGSTER_PG_DB": db}


def production_dagster_home(path: Path, **overrides) -> Path:
    """Write the repository's dagster.production.yaml into ``path`` (a DAGSTER_HOME), with
    top-level blocks replaced or merged one level deep by ``overrides`` (e.g. shorter
    run-monitoring intervals for a test)."""
    config = yaml.safe_load((REPO / "dagster.production.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def daemon(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A real ``dagster-daemon run`` on the project's definitions, stopped (SIGINT, then SIGKILL
    after 30 s) when the block ends.

    The instance's storage is created first, in a process of its own: on a fresh SQLite
    DAGSTER_HOME the daemon and a CLI the test runs meanwhile (``narra health``, ``dagster``)
    would otherwise both create the tables, and the loser dies with "table secondary_indexes
    already exists" (seen on CI).
    """
    subprocess.run(
        [sys.executable, "-c",
         "from dagster import DagsterInstance\n"
         "with DagsterInstance.get() as instance:\n"
         "    instance.get_runs(limit=1)\n"],
        env=env, cwd=REPO, check=True, timeout=120, capture_output=True,
    )
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [shutil.which("dagster-daemon") or "dagster-daemon", "run", "-m", "narra_dagster.definitions"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 1.0, on_timeout=None):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    detail = on_timeout() if on_timeout else ""
    pytest.fail(f"{what} did not happen within {timeout_s} s\n{detail}")
