"""The image kind's partitions and its stage decorator: one partition per content."""

import dagster as dg

from narra_dagster.core.stage import StageSet

images = dg.DynamicPartitionsDefinition(name="images")

image_stage = StageSet("image", images, group_name="image")
"""``@image_stage(...)`` makes a stage function an asset of the ``image`` group (see
:class:`narra_dagster.core.stage.StageSet`)."""
