"""Every registered media kind's definitions: its stages and its two jobs (``<kind>_pipeline``
per item, ``<kind>_batch`` for many items in one run), read from the registry."""

import dagster as dg

from narra_dagster import registry


@dg.definitions
def media_kinds() -> dg.Definitions:
    """The assets and jobs of each kind in :data:`narra_dagster.registry.KINDS`."""
    return dg.Definitions.merge(*(kind.definitions() for kind in registry.KINDS))
