"""The image kind's registry entry."""

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
    aliases=("photo", "photos", "picture", "pictures", "img", "jpeg"),
    description="Every stage of one image, from validation to its catalog entry and index rows.",
    extra_assets=(image_classifier_onnx,),
)
