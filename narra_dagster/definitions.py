"""The Dagster definitions of narra: assets, checks, jobs, sensors and resources."""

import dagster as dg

from narra_dagster.assets.video import video_assets, video_pipeline
from narra_dagster.resources import default_resources
from narra_dagster.sensors.upload import upload_sensor

# A video's chain is linear, so steps gain nothing from separate processes; running them in the
# run's own process imports the ML libraries and loads each model once per run instead of once
# per step. Parallelism comes from runs (the queued coordinator runs two at once).
defs = dg.Definitions(
    assets=video_assets,
    jobs=[video_pipeline],
    sensors=[upload_sensor],
    resources=default_resources(),
    executor=dg.in_process_executor,
)
