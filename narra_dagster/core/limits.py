"""Budgets: how much memory and time one item may take, whatever the file declares.

Every budget has a documented default and can be changed with an environment variable named
``NARRA_`` plus the field name in capitals (``NARRA_STAGE_TIME_LIMIT_S=600``), read when a stage
runs, so the daemon, its run workers and ``narra process`` all follow the same settings.
Exceeding a budget is a classified failure of that one item (``too_large``, ``timeout``,
``decompression_bomb``), never retried.

Memory is bounded by construction rather than by a budget: audio is decoded and transcribed as a
stream of blocks of :attr:`Limits.transcription_block_s` seconds, PDF streams inflate at most
:attr:`Limits.pdf_max_stream_bytes`, images at most Pillow's pixel limit, page renders at most
:attr:`Limits.pdf_max_render_pixels`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping

from pydantic import BaseModel, Field, ValidationError


ENV_PREFIX = "NARRA_"


class Limits(BaseModel):
    """The budgets of one item; see the module docstring for how to set them."""

    model_config = {"frozen": True}

    stage_time_limit_s: float = Field(
        default=3600.0, ge=0,
        description="Seconds one stage of one item may run before it fails as `timeout` "
                    "(0: no limit). An hour is 5x what transcribing a 6-hour recording takes "
                    "here (real-time factor about 0.03 with voice activity detection).")
    media_max_seconds: float = Field(
        default=6 * 3600.0, gt=0,
        description="Longest audio or video accepted, in seconds (declared by the container or "
                    "found while decoding); longer fails as `too_large`.")
    transcription_block_s: float = Field(
        default=300.0, ge=30,
        description="Audio is transcribed in blocks of about this many seconds, each cut at its "
                    "quietest moment, so memory does not grow with duration.")
    image_max_bytes: int = Field(default=100 * 1024**2, gt=0,
                                 description="Largest image file accepted, in bytes.")
    image_max_frames: int = Field(
        default=2000, gt=0,
        description="Most frames an animated image (GIF, WebP, TIFF pages) may hold; only the "
                    "first is analysed, but counting them costs a decode each.")
    pdf_max_bytes: int = Field(default=256 * 1024**2, gt=0,
                               description="Largest PDF accepted, in bytes.")
    pdf_max_pages: int = Field(default=2000, gt=0, description="Most pages a PDF may have.")
    pdf_max_ocr_pages: int = Field(
        default=300, ge=0,
        description="Textless pages read by OCR per PDF; further ones are skipped and counted.")
    pdf_max_stream_bytes: int = Field(
        default=75_000_000, gt=0,
        description="Most bytes one PDF content stream may inflate to (pypdf's own default "
                    "ZLIB_MAX_OUTPUT_LENGTH); more fails as `decompression_bomb`.")
    pdf_max_render_pixels: int = Field(
        default=40_000_000, gt=0,
        description="Most pixels of a page rendered for OCR (4 bytes each: 160 MB); a larger "
                    "page is rendered smaller.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Limits":
        """The defaults, overridden by ``NARRA_<FIELD>`` environment variables.

        Raises:
            ValueError: naming the variable, when one holds something that is not a valid value.
        """
        environ = os.environ if environ is None else environ
        values = {name: environ[ENV_PREFIX + name.upper()] for name in cls.model_fields
                  if ENV_PREFIX + name.upper() in environ}
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper()}={values.get(str(e['loc'][0]))!r}: {e['msg']}"
                for e in exc.errors())
            raise ValueError(f"invalid budget setting: {problems}") from None


def current() -> Limits:
    """The budgets in force now (the environment is read at every call; it is cheap)."""
    return Limits.from_env()


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`StageTimeout` in the block once it has run ``seconds`` (wall clock).

    Uses ``SIGALRM`` (``setitimer``), so it applies in a process's main thread, where Dagster's
    run workers and step processes run their steps; elsewhere (a thread) or with ``seconds`` 0 it
    does nothing. The exception is raised at the next Python instruction, so a single long call
    into a native library ends when that call returns.

    Raises:
        narra_dagster.core.errors.StageTimeout: when the block overran (a ``BaseException``,
            so no ``except Exception`` inside the block can swallow it); its message says what
            ran and the limit.
    """
    # Imported here: narra_dagster.core.errors imports Dagster (a second), which every `narra`
    # command would otherwise pay for in its settings check.
    from narra_dagster.core.errors import StageTimeout

    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        raise StageTimeout(
            f"{what} ran past its time limit of {seconds:g} s (NARRA_STAGE_TIME_LIMIT_S) and was "
            "stopped")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
