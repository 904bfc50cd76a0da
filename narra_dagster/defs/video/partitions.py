"""The video kind's partitions and its stage decorator: one partition per content."""

import dagster as dg

from narra_dagster.core.stage import StageSet

videos = dg.DynamicPartitionsDefinition(name="videos")

video_stage = StageSet("video", videos, group_name="video")
"""``@video_stage(...)`` makes a stage function an asset of the ``video`` group (see
:class:`narra_dagster.core.stage.StageSet`)."""
