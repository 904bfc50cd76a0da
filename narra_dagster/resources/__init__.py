"""Resources: media store, transcriber, text embedder, search index (interfaces + backends)."""

from narra_dagster.resources.embedder import OnnxTextEmbedder, TextEmbedder
from narra_dagster.resources.media_store import LocalMediaStore, MediaStore
from narra_dagster.resources.search_index import LanceSearchIndex, SearchIndex
from narra_dagster.resources.transcriber import (
    FasterWhisperTranscriber,
    OpenAIWhisperTranscriber,
    Transcriber,
)

__all__ = [
    "FasterWhisperTranscriber", "LanceSearchIndex", "LocalMediaStore", "MediaStore",
    "OnnxTextEmbedder", "OpenAIWhisperTranscriber", "SearchIndex", "TextEmbedder", "Transcriber",
    "default_resources",
]


def default_resources() -> dict:
    """The embedded defaults, all under $NARRA_HOME: local store, LanceDB, models from PyPI."""
    from narra_dagster.sensors.upload import LocalInbox

    return {
        "media_store": LocalMediaStore(),
        "transcriber": FasterWhisperTranscriber(),
        "embedder": OnnxTextEmbedder(),
        "search_index": LanceSearchIndex(),
        "inbox": LocalInbox(),
    }
