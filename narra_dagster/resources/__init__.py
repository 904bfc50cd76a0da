"""Resources: interfaces and their backends (media store, transcriber, text embedder, OCR, image
classifier, search and image indices, inbox, event sink). Nothing here imports from above."""

from narra_dagster.resources.embedder import Ct2TextEmbedder, OnnxTextEmbedder, TextEmbedder
from narra_dagster.resources.image_index import ImageIndex, LanceImageIndex
from narra_dagster.resources.media_store import LocalMediaStore, MediaStore
from narra_dagster.resources.ocr import OcrEngine, OcrLine, RapidOcrEngine
from narra_dagster.resources.recognizer import ImageClassifier, OnnxImageClassifier, Recognition
from narra_dagster.resources.search_index import LanceSearchIndex, SearchIndex
from narra_dagster.resources.transcriber import (
    FasterWhisperTranscriber,
    OpenAIWhisperTranscriber,
    Transcriber,
)

__all__ = [
    "FasterWhisperTranscriber", "ImageClassifier", "ImageIndex", "LanceImageIndex", "LanceSearchIndex", "LocalMediaStore", "MediaStore",
    "Ct2TextEmbedder", "OcrEngine", "OcrLine", "OnnxImageClassifier", "OnnxTextEmbedder", "OpenAIWhisperTranscriber", "RapidOcrEngine", "Recognition", "SearchIndex", "TextEmbedder", "Transcriber",
    "default_resources",
]


def default_resources() -> dict:
    """The embedded defaults, all under $NARRA_HOME: local store, LanceDB, models from PyPI.

    With ``NARRA_S3_BUCKET`` set, the media store and the search index are on S3 instead (and
    ``s3_inbox`` watches ``NARRA_S3_INBOX_PREFIX`` when set); see ``resources/s3.py``.
    """
    import os

    from narra_dagster.resources.events import event_sink_from_env
    from narra_dagster.resources.inbox import LocalInbox
    from narra_dagster.resources.transcriber import whisper_settings_from_env

    s3: dict = {}
    if os.environ.get("NARRA_S3_BUCKET"):  # dagster-aws comes with the production extra
        from narra_dagster.resources.s3 import s3_resources_from_env

        s3 = s3_resources_from_env()
    return {
        "media_store": LocalMediaStore(),
        "transcriber": FasterWhisperTranscriber(**whisper_settings_from_env()),
        "embedder": OnnxTextEmbedder(),
        "search_index": LanceSearchIndex(),
        "ocr": RapidOcrEngine(),
        "image_classifier": OnnxImageClassifier(),
        "image_index": LanceImageIndex(),
        "inbox": LocalInbox(),
        "event_sink": event_sink_from_env(),
        **s3,
    }
