"""One asset job per media kind, each selecting its kind's asset group.

Selecting by group means a stage added to a kind's group (a new enrichment asset, say) joins that
kind's job, the upload sensor's runs and `narra process` without further wiring.
"""

from typing import Any

import dagster as dg

from narra_dagster.media import MediaKind

# Media kind -> the asset group (and so the job) that processes it.
GROUP_BY_KIND: dict[MediaKind, str] = {"video": "video", "image": "image", "document": "document"}

video_pipeline = dg.define_asset_job(
    "video_pipeline",
    selection=dg.AssetSelection.groups(GROUP_BY_KIND["video"]),
    description="Every stage of one video or audio file, from the upload to its search index rows.",
)
image_pipeline = dg.define_asset_job(
    "image_pipeline",
    selection=dg.AssetSelection.groups(GROUP_BY_KIND["image"]),
    description="Every stage of one image, from validation to its catalog entry and index rows.",
)
document_pipeline = dg.define_asset_job(
    "document_pipeline",
    selection=dg.AssetSelection.groups(GROUP_BY_KIND["document"]),
    description="Every stage of one PDF, from its pages to its summary and index rows.",
)

JOBS_BY_KIND: dict[MediaKind, Any] = {  # UnresolvedAssetJobDefinition
    "video": video_pipeline,
    "image": image_pipeline,
    "document": document_pipeline,
}


def chain_for_kind(defs: dg.Definitions, kind: MediaKind) -> list[dg.AssetKey]:
    """The asset keys of a kind's chain in dependency order (sources first).

    Raises:
        KeyError: for an unknown kind.
    """
    graph = defs.resolve_asset_graph()
    selected = dg.AssetSelection.groups(GROUP_BY_KIND[kind]).resolve(graph)
    return [key for key in graph.toposorted_asset_keys if key in selected]
