"""What the video chain's outputs depend on besides the upload: the models and the chunking.

Three observable source assets, one per setting, each observed as a data version that is a hash
of the configured identity (never of the loaded weights, so observing is cheap):

- ``transcription_model``: the transcriber's class and configuration (model path and label,
  compute type, beam size, language, VAD); ``threads`` is left out, it changes speed not output.
- ``embedding_model``: the embedder's class, model and tokenizer files and ``max_length``.
- ``chunking_settings``: ``chunking.MAX_CHUNK_SECONDS`` and ``MAX_CHUNK_WORDS``.

``video_transcript``, ``video_chunks`` and ``video_chunk_embeddings`` declare them as deps, so
each materialization records the version it was made with; when an observation gives a new
version (another model configured, a chunking limit changed), Dagster marks every partition
materialized before it stale ("upstream data version changed") in the UI and in its staleness
API, and a backfill of the stale stage (README, "Reprocessing") brings them up to date.
Each is observed every 10 minutes by its automation condition
(``AutomationCondition.on_cron``, evaluated by ``narra_automation_sensor``), and at any time by
the ``pipeline_settings_observation`` job.
"""

import hashlib
import json
import warnings

import dagster as dg

from narra_dagster.defs.video import chunking
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.transcriber import Transcriber

GROUP = "pipeline_settings"

TRANSCRIPTION_MODEL = dg.AssetKey("transcription_model")
EMBEDDING_MODEL = dg.AssetKey("embedding_model")
CHUNKING_SETTINGS = dg.AssetKey("chunking_settings")

OBSERVE_EVERY_10_MINUTES = dg.AutomationCondition.on_cron("*/10 * * * *")

# Fields that change how fast a model runs, not what it outputs.
_SPEED_ONLY = frozenset({"threads", "batch_size"})


def settings_version(kind: str, settings: dict) -> str:
    """A stable data version for a setting: 16 hex digits of the SHA-256 of its canonical JSON
    (``kind`` plus the sorted settings)."""
    blob = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resource_identity(resource: dg.ConfigurableResource) -> dict:
    """The configuration of a model resource that determines its output: class name and every
    config field except those in ``_SPEED_ONLY``."""
    fields = {k: v for k, v in resource.model_dump().items() if k not in _SPEED_ONLY}
    return {"class": type(resource).__name__, **fields}


def chunking_identity() -> dict:
    """The chunking limits in effect: seconds and words per chunk."""
    return {"max_chunk_seconds": chunking.MAX_CHUNK_SECONDS,
            "max_chunk_words": chunking.MAX_CHUNK_WORDS}


def _observed(kind: str, identity: dict) -> dg.ObserveResult:
    return dg.ObserveResult(
        data_version=dg.DataVersion(settings_version(kind, identity)),
        metadata={"settings": dg.MetadataValue.json(identity)},
    )


# observable_source_asset is marked beta in Dagster 1.13; it is the documented way to version
# an external input, so its warning is silenced here rather than shown on every load.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.observable_source_asset(key=TRANSCRIPTION_MODEL, group_name=GROUP, kinds={"whisper"},
                                automation_condition=OBSERVE_EVERY_10_MINUTES)
    def transcription_model(transcriber: Transcriber) -> dg.ObserveResult:
        """The speech-to-text model configured for ``video_transcript``; its data version changes when
        another model, precision, beam size or language is configured."""
        return _observed("transcription_model", {**resource_identity(transcriber),
                                                 "model_name": transcriber.model_name})


    @dg.observable_source_asset(key=EMBEDDING_MODEL, group_name=GROUP, kinds={"ctranslate2"},
                                automation_condition=OBSERVE_EVERY_10_MINUTES)
    def embedding_model(embedder: TextEmbedder) -> dg.ObserveResult:
        """The text embedding model configured for ``video_chunk_embeddings``; its data version
        changes when another model, tokenizer or token limit is configured."""
        return _observed("embedding_model", {**resource_identity(embedder),
                                             "model_name": embedder.model_name})


    @dg.observable_source_asset(key=CHUNKING_SETTINGS, group_name=GROUP, kinds={"python"},
                                automation_condition=OBSERVE_EVERY_10_MINUTES)
    def chunking_settings() -> dg.ObserveResult:
        """The limits ``video_chunks`` cuts transcripts with (seconds and words per chunk)."""
        return _observed("chunking_settings", chunking_identity())


settings_assets = [transcription_model, embedding_model, chunking_settings]

# Selecting source assets by group is beta in Dagster 1.13 (include_sources).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    settings_observation_job = dg.define_asset_job(
        "pipeline_settings_observation",
        selection=dg.AssetSelection.groups(GROUP, include_sources=True),
        description="Observe the configured models and chunking limits, so a change marks the "
                    "partitions made with the old ones stale.",
    )
