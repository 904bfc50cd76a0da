"""What every surface needs first: the Dagster instance and the definitions (with resources)."""

from __future__ import annotations

import dagster as dg

from narra_dagster import settings


def open_instance() -> dg.DagsterInstance:
    """The Dagster instance at DAGSTER_HOME (default ``$NARRA_HOME/dagster``, given the
    project's ``dagster.yaml`` when it has none).

    Raises:
        dagster.DagsterError: when the instance's storage cannot be opened.
    """
    settings.ensure_dagster_home()
    return dg.DagsterInstance.get()


def load_definitions(resources: dict | None = None) -> dg.Definitions:
    """The project's definitions, with the default resources (overridden by ``resources``)."""
    from narra_dagster.definitions import build_defs

    return build_defs(resources)
