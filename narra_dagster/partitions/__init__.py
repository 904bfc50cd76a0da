"""One dynamic partitions definition per media kind; a partition key is a content hash prefix."""

import dagster as dg

from narra_dagster.media import MediaKind

videos = dg.DynamicPartitionsDefinition(name="videos")
images = dg.DynamicPartitionsDefinition(name="images")
documents = dg.DynamicPartitionsDefinition(name="documents")

PARTITIONS_BY_KIND: dict[MediaKind, dg.DynamicPartitionsDefinition] = {
    "video": videos,
    "image": images,
    "document": documents,
}
