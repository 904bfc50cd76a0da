"""The image kind's registry entry."""

import dagster as dg

from narra_dagster.core.kind import MediaKind
from narra_dagster.defs.image import assets, imaging  # noqa: F401 - assets registers the stages
from narra_dagster.defs.image.classifier import image_classifier_onnx
from narra_dagster.defs.image.partitions import image_stage

IMAGE = MediaKind(
    name="image",
    noun="an image",
    stage_set=image_stage,
    recognise=imaging.recognise,
    extensions=imaging.EXTENSIONS,
    description="Every stage of one image, from validation to its catalog entry and index rows.",
    extra_assets=(image_classifier_onnx,),
)


@dg.definitions
def image_definitions() -> dg.Definitions:
    """The image stages, the exported classifier, and the ``image_pipeline`` and
    ``image_batch`` jobs."""
    return IMAGE.definitions()
