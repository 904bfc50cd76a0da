"""What every surface needs first: the Dagster instance and the definitions (with resources)."""

from __future__ import annotations

import dagster as dg

from narra_dagster import settings


STATEMENT_TIMEOUT_MS = 15_000
"""A query that takes longer is cancelled (PostgreSQL); dagster-webserver's default."""


def open_instance(*, pooled: bool = True) -> dg.DagsterInstance:
    """The Dagster instance at DAGSTER_HOME (default ``$NARRA_HOME/dagster``, given the
    project's ``dagster.yaml`` when it has none).

    ``pooled``: keep a database connection open and reuse it, as dagster-webserver does
    (``DagsterInstance.optimize_for_webserver``). dagster-postgres otherwise opens a connection
    per query (SQLAlchemy's ``NullPool``): about 10 ms each on the same machine against 1 ms
    reused (``python -m bench.scale``), which a page of 50 items asking tens of queries pays
    hundreds of times. A no-op on SQLite.

    Raises:
        dagster.DagsterError: when the instance's storage cannot be opened.
    """
    settings.ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    if pooled:
        instance.optimize_for_webserver(statement_timeout=STATEMENT_TIMEOUT_MS,
                                        pool_recycle=3600, max_overflow=20)
    return instance


def load_definitions(resources: dict | None = None) -> dg.Definitions:
    """The project's definitions, with the default resources (overridden by ``resources``)."""
    from narra_dagster.definitions import build_defs

    return build_defs(resources)
