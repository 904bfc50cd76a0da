"""The Dagster definitions of narra: assets, checks, jobs, sensors and resources."""

import os

import dagster as dg

from narra_dagster.assets.document import document_assets
from narra_dagster.assets.frames import frame_assets
from narra_dagster.assets.image import image_assets
from narra_dagster.assets.models import model_assets
from narra_dagster.assets.pipeline_settings import (
    settings_assets,
    settings_observation_job,
    settings_schedule,
)
from narra_dagster.assets.search import (
    search_assets,
    search_index_maintenance_job,
    search_index_maintenance_schedule,
)
from narra_dagster.assets.video import video_assets
from narra_dagster.assets.video_enrichment import enrichment_assets
from narra_dagster.batch import batch_jobs
from narra_dagster.jobs import JOBS_BY_KIND
from narra_dagster.resources import default_resources
from narra_dagster.sensors.events import domain_events_sensor
from narra_dagster.sensors.s3_upload import s3_upload_sensor
from narra_dagster.sensors.upload import upload_sensor


def executor_from_env() -> dg.ExecutorDefinition:
    """The in-process executor, or with ``NARRA_EXECUTOR=celery`` dagster-celery's executor:
    every step becomes a task on the broker ``NARRA_CELERY_BROKER`` (e.g. ``redis://host:6379/0``
    or ``pyamqp://user@host//``), executed by a ``dagster-celery worker``; results come back over
    ``NARRA_CELERY_BACKEND`` (default: the broker). Both are read from the environment when the
    run starts, never written to a file. Steps on other hosts need shared storage: the S3 media
    store and index (``NARRA_S3_BUCKET``)."""
    if os.environ.get("NARRA_EXECUTOR", "in_process") != "celery":
        return dg.in_process_executor
    from dagster_celery import celery_executor

    backend = "NARRA_CELERY_BACKEND" if os.environ.get("NARRA_CELERY_BACKEND") else "NARRA_CELERY_BROKER"
    return celery_executor.configured({"broker": {"env": "NARRA_CELERY_BROKER"},
                                       "backend": {"env": backend}})


def build_defs(resources: dict | None = None) -> dg.Definitions:
    """Assemble the definitions; ``resources`` overrides the defaults by key.

    Default resources read NARRA_HOME when this is called, so a caller that changes the
    environment (a test, the CLI) builds its own.
    """
    # A video's chain is linear, so steps gain nothing from separate processes; running them in
    # the run's own process imports the ML libraries and loads each model once per run instead
    # of once per step. Parallelism comes from runs (the queued coordinator runs two at once).
    resources = {**default_resources(), **(resources or {})}
    sensors = [upload_sensor, domain_events_sensor]
    if "s3_inbox" in resources:
        sensors.append(s3_upload_sensor)
    return dg.Definitions(
        assets=[*video_assets, *enrichment_assets, *frame_assets, *image_assets,
                *document_assets, *model_assets, *settings_assets, *search_assets],
        jobs=[*JOBS_BY_KIND.values(), *batch_jobs(), settings_observation_job,
              search_index_maintenance_job],
        schedules=[settings_schedule, search_index_maintenance_schedule],
        sensors=sensors,
        resources=resources,
        executor=executor_from_env(),
    )


defs = build_defs()
