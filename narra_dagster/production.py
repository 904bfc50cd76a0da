"""Production set-up of a Dagster instance: the per-pool limits Dagster keeps in its database.

Dagster 1.13 reads ``concurrency: pools: default_limit`` from ``dagster.yaml`` but has no per-pool
key there: a pool's own limit is stored in the instance's event-log storage, set with
``dagster instance concurrency set <pool> <limit>`` or, equivalently, :func:`apply_pool_limits`::

    python -m narra_dagster.production pools            # apply POOL_LIMITS to $DAGSTER_HOME
    NARRA_TRANSCRIPTION_SLOTS=4 python -m narra_dagster.production pools

Limits (slots, i.e. steps of that pool running at once across every run of the deployment):

- ``transcription``: ``$NARRA_TRANSCRIPTION_SLOTS``, default 2 (one Whisper per two cores of a
  run worker keeps CTranslate2 from oversubscribing them).
- ``search_index`` and ``image_index``: 1, so writes to one LanceDB table are serialized.
"""

from __future__ import annotations

import os
import sys

import dagster as dg

from narra_dagster.core import pools


def pool_limits() -> dict[str, int]:
    """Pool name -> slots for this deployment (reads ``NARRA_TRANSCRIPTION_SLOTS``).

    Raises:
        ValueError: when ``NARRA_TRANSCRIPTION_SLOTS`` is not a positive integer.
    """
    transcription = int(os.environ.get("NARRA_TRANSCRIPTION_SLOTS", "2"))
    if transcription < 1:
        raise ValueError(f"NARRA_TRANSCRIPTION_SLOTS must be at least 1, not {transcription}")
    return {pools.TRANSCRIPTION: transcription, pools.SEARCH_INDEX: 1, pools.IMAGE_INDEX: 1}


def apply_pool_limits(instance: dg.DagsterInstance,
                      limits: dict[str, int] | None = None) -> dict[str, int]:
    """Set each pool's slot count on ``instance`` (idempotent); return the limits applied.

    Raises:
        RuntimeError: when the instance's storage has no global concurrency support (an
            in-memory instance).
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        raise RuntimeError("this instance's event-log storage does not support pools")
    limits = pool_limits() if limits is None else limits
    for pool, slots in limits.items():
        storage.set_concurrency_slots(pool, slots)
    return limits


def main(argv: list[str]) -> int:
    if argv != ["pools"]:
        print("usage: python -m narra_dagster.production pools", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        for pool, slots in apply_pool_limits(instance).items():
            print(f"{pool}: {slots}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
