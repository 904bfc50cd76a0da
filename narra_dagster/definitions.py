"""The Dagster definitions of narra: assets, checks, jobs, sensors and resources."""

import dagster as dg

from narra_dagster.assets.video import video_assets, video_pipeline
from narra_dagster.resources import default_resources
from narra_dagster.sensors.upload import upload_sensor


def build_defs(resources: dict | None = None) -> dg.Definitions:
    """Assemble the definitions; ``resources`` overrides the defaults by key.

    Default resources read NARRA_HOME when this is called, so a caller that changes the
    environment (a test, the CLI) builds its own.
    """
    # A video's chain is linear, so steps gain nothing from separate processes; running them in
    # the run's own process imports the ML libraries and loads each model once per run instead
    # of once per step. Parallelism comes from runs (the queued coordinator runs two at once).
    return dg.Definitions(
        assets=video_assets,
        jobs=[video_pipeline],
        sensors=[upload_sensor],
        resources={**default_resources(), **(resources or {})},
        executor=dg.in_process_executor,
    )


defs = build_defs()
