"""Classified errors: what went wrong with an item, in words a person understands.

Three families matter to orchestration:

- :class:`BadInputError`: the file itself is the problem (empty, not media, truncated, too large).
  Retrying cannot help, so stages turn it into ``dagster.Failure(allow_retries=False)`` and the
  partition fails at once with the error's ``code`` in its metadata.
- Transient errors (:func:`is_transient`): I/O, timeouts, connection resets, locks and commit
  conflicts (``OSError`` and its subclasses) and runtime failures of a model or index library
  (``RuntimeError``). The stage's ``RetryPolicy`` retries them with exponential backoff and
  jitter.
- Anything else is deterministic (a ``TypeError``, ``ValueError``, ``KeyError``, a failed
  Dagster check...): the same input would fail the same way, so it is reported once, as a
  non-retryable failure whose ``error_class`` is the exception's class and whose message is its
  root cause, never as "Exceeded max_retries".
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
    ``unsupported_format``, ``decompression_bomb``; PDFs: see ``narra_dagster.defs.document.pdf``;
    ``deleted`` (:class:`ItemDeleted`).
    """

    code = "bad_input"


class ItemDeleted(BadInputError):
    """The item was deleted while (or before) a stage ran: the stage wrote nothing that stays,
    and retrying cannot bring the item back (code ``deleted``, never retried)."""

    code = "deleted"


class StageTimeout(BaseException):
    """A stage ran past its time limit (``NARRA_STAGE_TIME_LIMIT_S``); code ``timeout``, never
    retried.

    A ``BaseException``, like ``KeyboardInterrupt``, so that the ``except Exception`` of a
    library or of a stage (Pillow's plugins, a page loop) cannot turn it into another error:
    only :func:`classified_failures` catches it.
    """

    code = "timeout"


@contextlib.contextmanager
def classified_failures(stage: str) -> Iterator[None]:
    """Turn a :class:`BadInputError` raised inside the block into a non-retryable Dagster failure.

    Args:
        stage: the asset name, shown in the failure message.

    Raises:
        dagster.Failure: with ``allow_retries=False`` and metadata ``error_class`` = the error's
            code, when the block raised :class:`BadInputError` or :class:`StageTimeout`, or the exception's class name
            when it raised a deterministic error. Transient errors (:func:`is_transient`) pass
            through unchanged so the step's ``RetryPolicy`` can retry them.
    """
    try:
        yield
    except (BadInputError, StageTimeout) as exc:
        raise dg.Failure(
            description=f"[{exc.code}] {stage}: {exc}",
            metadata={"error_class": exc.code, "stage": stage, "retryable": False},
            allow_retries=False,
        ) from exc
    except dg.Failure:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        name = type(exc).__name__
        raise dg.Failure(
            description=f"[{name}] {stage}: {exc}",
            metadata={"error_class": name, "stage": stage, "retryable": False},
            allow_retries=False,
        ) from exc


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: ``OSError`` (I/O, ``TimeoutError``, ``ConnectionError``,
    lock and commit-conflict errors of LanceDB, which it raises as ``OSError``) and
    ``RuntimeError`` (a model runtime or native library failing at run time)."""
    return isinstance(exc, (OSError, RuntimeError))
