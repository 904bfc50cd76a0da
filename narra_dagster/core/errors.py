"""Classified errors: what went wrong with an item, in words a person understands.

Two families matter to orchestration:

- :class:`BadInputError`: the file itself is the problem (empty, not media, truncated, too large).
  Retrying cannot help, so assets turn it into ``dagster.Failure(allow_retries=False)`` and the
  partition fails at once with the error's ``code`` in its metadata.
- Anything else (a model runtime hiccup, a locked index file) is treated as transient and retried
  by the asset's ``RetryPolicy`` with exponential backoff and jitter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg


class NarraError(Exception):
    """Base class of narra's own errors; ``code`` is a stable, machine-readable class name."""

    code = "narra_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code


class BadInputError(NarraError):
    """The uploaded file cannot be processed; retrying will not help.

    Codes used: ``empty_file``, ``not_media``, ``corrupt_media``, ``no_streams``,
    ``too_large``, ``unsupported_type``, ``missing_source``, ``type_mismatch`` (the name claims
    another kind than the bytes); images: ``not_image``, ``corrupt_image``,
    ``unsupported_format``, ``decompression_bomb``; PDFs: see ``narra_dagster.defs.document.pdf``.
    """

    code = "bad_input"


@contextlib.contextmanager
def classified_failures(stage: str) -> Iterator[None]:
    """Turn a :class:`BadInputError` raised inside the block into a non-retryable Dagster failure.

    Args:
        stage: the asset name, shown in the failure message.

    Raises:
        dagster.Failure: with ``allow_retries=False`` and metadata ``error_class`` = the error's
            code, when the block raised :class:`BadInputError`. Other exceptions pass through
            unchanged so the step's ``RetryPolicy`` can retry them.
    """
    try:
        yield
    except BadInputError as exc:
        raise dg.Failure(
            description=f"[{exc.code}] {stage}: {exc}",
            metadata={"error_class": exc.code, "stage": stage, "retryable": False},
            allow_retries=False,
        ) from exc
