"""The Dagster definitions of narra, assembled the way Dagster's ``dg`` scaffold does.

Everything under ``narra_dagster/defs/`` is loaded by :func:`dagster.load_from_defs_folder`: each
media kind's folder contributes its stages and its jobs (``defs/<kind>/kind.py``), ``search/``
the index upkeep and the pipeline settings, ``intake/`` the inbox sensor, ``events/`` the domain
events sensor. This module only adds what is project-wide: the resources, the executor, and the
S3 upload sensor when an S3 inbox is configured.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from narra_dagster.resources import default_resources


def executor_from_env() -> dg.ExecutorDefinition:
    """The in-process executor, or with ``NARRA_EXECUTOR=celery`` dagster-celery's executor:
    every step becomes a task on the broker ``NARRA_CELERY_BROKER`` (e.g. ``redis://host:6379/0``
    or ``pyamqp://user@host//``), executed by a ``dagster-celery worker``; results come back over
    ``NARRA_CELERY_BACKEND`` (default: the broker). Both are read from the environment when the
    run starts, never written to a file. Steps on other hosts need shared storage: the S3 media
    store and index (``NARRA_S3_BUCKET``)."""
    # A kind's chain is nearly linear, so steps gain nothing from separate processes; running
    # them in the run's own process imports the ML libraries and loads each model once per run
    # instead of once per step. Parallelism comes from runs.
    if os.environ.get("NARRA_EXECUTOR", "in_process") != "celery":
        return dg.in_process_executor
    from dagster_celery import celery_executor

    backend = "NARRA_CELERY_BACKEND" if os.environ.get("NARRA_CELERY_BACKEND") else "NARRA_CELERY_BROKER"
    return celery_executor.configured({"broker": {"env": "NARRA_CELERY_BROKER"},
                                       "backend": {"env": backend}})


def load_defs_folder() -> dg.Definitions:
    """Every definition under ``narra_dagster/defs/``, found by Dagster's defs-folder loader.

    ``load_from_defs_folder`` finds the project from ``pyproject.toml``'s ``[tool.dg]``; an
    installed wheel has no ``pyproject.toml``, so there the same component tree is built from
    the package itself.
    """
    import narra_dagster.defs

    here = Path(__file__).resolve().parent
    if (here.parent / "pyproject.toml").exists():
        return dg.load_from_defs_folder(path_within_project=here)
    return dg.ComponentTree.from_module(defs_module=narra_dagster.defs,
                                        project_root=here).build_defs()


def build_defs(resources: dict | None = None) -> dg.Definitions:
    """Assemble the definitions; ``resources`` overrides the defaults by key.

    Default resources read NARRA_HOME when this is called, so a caller that changes the
    environment (a test, the CLI) builds its own.
    """
    resources = {**default_resources(), **(resources or {})}
    extra: list[dg.SensorDefinition] = []
    if "s3_inbox" in resources:
        from narra_dagster.defs.intake.s3_sensor import build_s3_upload_sensor

        extra.append(build_s3_upload_sensor())
    return dg.Definitions.merge(
        load_defs_folder(),
        dg.Definitions(sensors=extra, resources=resources, executor=executor_from_env()),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location: ``dagster dev -m narra_dagster.definitions``, ``dg check defs``."""
    return build_defs()
