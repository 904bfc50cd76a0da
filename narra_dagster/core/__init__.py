"""What every media kind shares: errors, content identity, the stage decorator, the kind
declaration and batch runs (intake lives in :mod:`narra_dagster.defs.intake`). Nothing here
names a kind."""
