"""The asset lists tests materialize, read from the registry (never listed by hand)."""

import dagster as dg

from narra_dagster import registry
from narra_dagster.defs.video import assets as video_module

# The spoken chain of the video kind (source -> ... -> index rows), without the picture stages.
video_assets = [a for a in registry.get("video").stage_set.assets
                if a.key.to_user_string() in {name for name in dir(video_module)
                                              if name.startswith("video_")}]
image_assets = registry.get("image").stage_set.assets
document_assets = registry.get("document").stage_set.assets


def chain_for_kind(defs: dg.Definitions, kind: str) -> list[dg.AssetKey]:
    """The asset keys of a kind's chain in dependency order (the stages of its group)."""
    return [stage.key for stage in registry.get(kind).stages]
