"""A real `narra serve` process on a fresh NARRA_HOME, for the API error and fuzzing suites
(``tests/test_api_errors.py``, ``tests/test_api_fuzz.py``): its log captured to a file, so a
test can assert that a request left no traceback there."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, subprocess_env
from tests.services import free_port, wait_for

CSRF = {"X-Narra-Request": "1"}
"""The header a program without a token sends with a request that changes something."""
SAMPLE_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")  # 17 pages


@dataclass
class Server:
    url: str
    home: Path
    log_path: Path
    proc: subprocess.Popen

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_since(self, offset: int) -> str:
        """The log written after ``offset`` characters (take ``len(server.log())`` before)."""
        return self.log()[offset:]


@contextlib.contextmanager
def narra_serve(home: Path, *, token: str | None = None,
                env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `narra serve` on a free loopback port with ``home`` as NARRA_HOME (and its Dagster
    instance inside it, from the project's dagster.yaml), wait until ``/readyz`` answers 200
    (at most 120 s, the log in the failure), and stop it (SIGTERM, then SIGKILL after 30 s)."""
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    full_env = {**subprocess_env(home), **(env or {})}
    full_env.pop("NARRA_API_TOKEN_FILE", None)
    full_env.pop("NARRA_API_TOKEN", None)
    if token:
        full_env["NARRA_API_TOKEN"] = token
    port = free_port()
    log_path = home / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "narra_dagster.cli", "serve", "--port",
                                 str(port)], env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)
    server = Server(f"http://127.0.0.1:{port}", home, log_path, proc)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"narra serve exited with {proc.returncode}\n{server.log()[-4000:]}")
        try:
            return httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 120, "narra serve ready", interval_s=0.5, on_timeout=server.log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


def upload(server: Server, name: str, data: bytes, token: str | None = None) -> httpx.Response:
    """POST one file to ``/api/v1/media`` as a program does (the token, else the CSRF header)."""
    headers = {"Authorization": f"Bearer {token}"} if token else CSRF
    return httpx.post(f"{server.api}/media", files={"file": (name, data)}, headers=headers,
                      timeout=60)


def png_bytes(color: tuple[int, int, int] = (20, 30, 200)) -> bytes:
    """A small real PNG (64 x 48, Pillow); another ``color`` is other bytes, so another item."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return out.getvalue()
