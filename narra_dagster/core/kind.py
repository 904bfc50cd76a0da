"""A media kind: the one declaration that everything outside the kind's folder reads.

Each kind's folder (``narra_dagster/defs/<kind>/``) declares one :class:`MediaKind` in its
``kind.py``, and :mod:`narra_dagster.registry` lists those declarations. Sensors, batch runs,
domain events, intake, search and the command line ask the registry; none of them names a kind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from narra_dagster import PIPELINE_VERSION
from narra_dagster.core.stage import Stage, StageSet

if TYPE_CHECKING:
    from narra_dagster.defs.intake.uploads import Upload


def printable(name: str, limit: int = 200) -> str:
    """A file name made safe for logs and tags: non-ASCII and control characters escaped,
    at most ``limit`` characters."""
    return name.encode("unicode_escape").decode("ascii")[:limit]


@dataclass(frozen=True, eq=False)
class MediaKind:
    """One media kind and everything the platform needs to know about it.

    Attributes:
        name: the kind's name (``"video"``), used in run keys, index rows and ``--kind``.
        noun: how a person names one such file in an error message (``"a PDF"``).
        stage_set: the kind's stages (partitions definition, asset group, stage functions).
        recognise: ``head -> bool``: whether a file's first bytes (512 are read) are of this kind.
        extensions: lower-case file name extensions that claim this kind (``".pdf"``); used
            only when the bytes match no kind, and to spot a name that claims another kind.
        description: one line for the per-item job's description.
        extra_assets: assets of the kind's folder that are not per-item stages (an exported
            model, say); they join the definitions but not the jobs.
        aliases: other words people use for the kind (``"photo"``, ``"audio"``), accepted by
            ``--kind`` as are its plural and its extensions without the dot (``"pdf"``).
        batch_pool: the Dagster concurrency pool a batch run of this kind holds while it runs
            (video: ``transcription``, so batch runs do not transcribe side by side on a small
            machine); None for none.
        media_seconds: ``path -> seconds or None``: the duration a file declares (its container
            header, read in milliseconds), which caps the media in one batch run; None for kinds
            whose items take about the same time each. Never raises: None when unknown.
    """

    name: str
    noun: str
    stage_set: StageSet
    recognise: Callable[[bytes], bool]
    extensions: tuple[str, ...]
    description: str
    extra_assets: tuple[dg.AssetsDefinition, ...] = field(default=())
    aliases: tuple[str, ...] = field(default=())
    media_seconds: Callable[[Path], float | None] | None = None
    batch_pool: str | None = None

    @property
    def names_people_use(self) -> set[str]:
        """Every word that names this kind: its name, its plural, aliases and extensions."""
        words = {self.name, f"{self.name}s", *self.aliases,
                 *(ext.lstrip(".") for ext in self.extensions)}
        return {w.lower() for w in words}

    @property
    def partitions(self) -> dg.DynamicPartitionsDefinition:
        """The kind's dynamic partitions definition (one partition per content)."""
        return self.stage_set.partitions_def

    @property
    def group(self) -> str:
        return self.stage_set.group_name

    @property
    def stages(self) -> list[Stage]:
        """The kind's stages, each after the stages it depends on."""
        return self.stage_set.stages

    @property
    def job_name(self) -> str:
        """The per-item job: every stage of one partition (``<kind>_pipeline``)."""
        return f"{self.name}_pipeline"

    @property
    def batch_job_name(self) -> str:
        """The batch job: many partitions in one run (``<kind>_batch``)."""
        return f"{self.name}_batch"

    @cached_property
    def job(self) -> dg.UnresolvedAssetJobDefinition:
        """The per-item asset job, selecting the kind's group: a stage added to the group joins
        it, the sensors' runs and ``narra process`` with no other wiring."""
        return dg.define_asset_job(self.job_name, selection=dg.AssetSelection.groups(self.group),
                                   description=self.description, tags={"narra/kind": self.name})

    @cached_property
    def batch_job(self) -> dg.JobDefinition:
        """The op job that runs the same stage functions for many partitions in one process."""
        from narra_dagster.core.batch import build_batch_job

        return build_batch_job(self)

    def definitions(self) -> dg.Definitions:
        """The kind's assets and its two jobs, for the definitions loader."""
        return dg.Definitions(assets=[*self.stage_set.assets, *self.extra_assets],
                              jobs=[self.job, self.batch_job])

    def run_key(self, partition_key: str) -> str:
        """The sensor run key of an item: ``<kind>:<partition key>:v<pipeline version>``, so the
        same bytes never start a second run from any sensor."""
        return f"{self.name}:{partition_key}:v{PIPELINE_VERSION}"

    def run_request(self, upload: Upload, reason: str | None = None) -> dg.RunRequest:
        """The run request that processes one upload: its per-item job on its partition.

        Args:
            reason: why an item already run is run again (``"renamed"``), part of the run key
                so that it is a new run, once.
        """
        from narra_dagster.core.batch import batch_item_tag  # batch imports this module

        run_key = self.run_key(upload.partition_key)
        if reason:  # the name (hashed: any bytes a file system allows) makes it once per name
            run_key += f":{reason}:{hashlib.sha256(upload.source_name.encode()).hexdigest()[:12]}"
        return dg.RunRequest(
            run_key=run_key, job_name=self.job_name,
            partition_key=upload.partition_key,
            tags={"narra/source_name": printable(upload.source_name)[:63] or "-",
                  "narra/kind": self.name, batch_item_tag(upload.partition_key): "1"})

    def __repr__(self) -> str:
        return f"MediaKind({self.name!r})"
