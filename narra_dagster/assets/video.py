"""The video chain: source -> audio -> transcript -> chunks -> embeddings -> index rows.

Each asset is partitioned by the ``videos`` dynamic partitions (one partition per uploaded file,
keyed by a prefix of its SHA-256), reads its upstream artifact from the media store, writes its
own atomically, and describes it in its materialization metadata. Bad input raises a
non-retryable, classified ``dagster.Failure``; model and index steps retry transient errors with
exponential backoff and jitter.
"""


import logging
import time

import dagster as dg
import numpy as np

from narra_dagster.assets.common import TRANSIENT_RETRY, upload_name
from narra_dagster import avio, pools
from narra_dagster.assets.pipeline_settings import CHUNKING_SETTINGS, EMBEDDING_MODEL, TRANSCRIPTION_MODEL
from narra_dagster.chunking import chunk_segments
from narra_dagster.errors import BadInputError, classified_failures
from narra_dagster.ingest import check_declared_kind
from narra_dagster.partitions import videos
from narra_dagster.resources.embedder import EMBEDDING_DIM, TextEmbedder
from narra_dagster.resources.media_store import SOURCE, MediaStore
from narra_dagster.resources.search_index import IndexRow, SearchIndex
from narra_dagster.resources.transcriber import Transcriber
from narra_dagster.schemas import Chunk, Transcript

GROUP = "video"

PROBE = "probe.json"
AUDIO = "audio.wav"
TRANSCRIPT = "transcript.json"
CHUNKS = "chunks.json"
EMBEDDINGS = "embeddings.npy"

CHECK_TRANSCRIPT_CONFIDENCE = "transcript_confidence"
CHECK_EMBEDDINGS_VALID = "embeddings_shape_and_norm"
CHECK_INDEX_ROWS = "index_rows_match_chunks"

MIN_MEAN_CONFIDENCE = 0.5
NORM_TOLERANCE = 1e-3


def _video_asset(**kwargs):
    """``dg.asset`` with what every stage of the video chain shares: the ``videos`` partitions,
    the ``video`` group and a code version (bump it when a stage's output would change)."""
    return dg.asset(partitions_def=videos, group_name=GROUP, code_version="1", **kwargs)


def _fmt_time(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


def _preview(rows: list[tuple[float, float, str]], limit: int = 12) -> dg.MetadataValue:
    lines = ["| start | end | text |", "|---|---|---|"]
    for start, end, text in rows[:limit]:
        lines.append(f"| {_fmt_time(start)} | {_fmt_time(end)} | {text.replace('|', '/')} |")
    if len(rows) > limit:
        lines.append(f"| | | … {len(rows) - limit} more |")
    if not rows:
        lines.append("| | | (nothing) |")
    return dg.MetadataValue.md("\n".join(lines))


@_video_asset(
    kinds={"pyav"},
)
def video_source(context: dg.AssetExecutionContext, media_store: MediaStore) -> dg.MaterializeResult:
    """The uploaded video, validated and probed with PyAV: container, codecs, duration (s),
    frame rate, resolution (pixels), size (bytes) and streams. Every packet is demuxed and each
    stream's first frame decoded, so a truncated or fake file fails here, classified."""
    return build_video_source(context.partition_key, media_store=media_store, log=context.log)


def build_video_source(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """Validate and probe one stored upload; write ``probe.json``.

    Raises:
        dagster.Failure: non-retryable, ``error_class`` ``missing_source``, ``type_mismatch``,
            ``empty_file``, ``not_media``, ``corrupt_media`` or ``no_streams``.
    """
    with classified_failures("video_source"):
        if not media_store.exists(key, SOURCE):
            raise BadInputError(
                f"no upload is stored for partition {key}; add files with `narra ingest` or the "
                "inbox, not by adding partitions by hand", code="missing_source")
        check_declared_kind(media_store.manifest(key))
        info = avio.probe(media_store.local_path(key, SOURCE))
    info["source_name"] = upload_name(media_store, key)
    media_store.write_json(key, PROBE, info)
    video, audio = info["video"], info["audio"]
    log.info(
        f"{key}: {info['container']}, {info['duration_s']:.2f} s, "
        f"video={video and video['codec']}, audio={audio and audio['codec']}"
    )
    return dg.MaterializeResult(
        metadata={
            "source_name": info["source_name"] or "",
            "container": info["container"],
            "duration_s": dg.MetadataValue.float(round(info["duration_s"], 3)),
            "size_bytes": dg.MetadataValue.int(info["size_bytes"]),
            "video_codec": video["codec"] if video else "none",
            "resolution": f"{video['width']}x{video['height']}" if video else "none",
            "fps": dg.MetadataValue.float(round(video["fps"] or 0.0, 3)) if video else 0.0,
            "audio_codec": audio["codec"] if audio else "none",
            "streams": dg.MetadataValue.json(info["streams"]),
            "path": dg.MetadataValue.path(media_store.uri(key, SOURCE)),
        }
    )


@_video_asset(
    kinds={"pyav"},
    deps=[video_source],
)
def video_audio(context: dg.AssetExecutionContext, media_store: MediaStore) -> dg.MaterializeResult:
    """The video's first audio track as 16 kHz mono 16-bit WAV, the input Whisper expects. A video
    without an audio track gives an empty WAV and says so."""
    return build_video_audio(context.partition_key, media_store=media_store, log=context.log)


def build_video_audio(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """Decode the first audio track to ``audio.wav`` (16 kHz mono int16; empty without audio).

    Raises:
        dagster.Failure: non-retryable, ``corrupt_media``, when the audio cannot be decoded.
    """
    with classified_failures("video_audio"), media_store.writer(key, AUDIO) as tmp:
        info = avio.extract_audio(media_store.local_path(key, SOURCE), tmp)
    if not info["has_audio"]:
        log.warning(f"{key}: no audio track; the transcript will be empty")
    return dg.MaterializeResult(
        metadata={
            "has_audio": info["has_audio"],
            "duration_s": dg.MetadataValue.float(round(info["duration_s"], 3)),
            "sample_rate_hz": info["sample_rate"],
            "samples": dg.MetadataValue.int(info["samples"]),
            "size_bytes": dg.MetadataValue.int(2 * info["samples"] + 44),
            "path": dg.MetadataValue.path(media_store.uri(key, AUDIO)),
        }
    )


@_video_asset(
    kinds={"whisper"},
    deps=[video_audio, TRANSCRIPTION_MODEL],
    pool=pools.TRANSCRIPTION,
    retry_policy=TRANSIENT_RETRY,
    check_specs=[dg.AssetCheckSpec(CHECK_TRANSCRIPT_CONFIDENCE, asset="video_transcript",
                                   description="Mean word confidence is at least 0.5 (warns).")],
)
def video_transcript(
    context: dg.AssetExecutionContext, media_store: MediaStore, transcriber: Transcriber
) -> dg.MaterializeResult:
    """What is said in the video: segments with start and end (s), text, confidence and word
    timings, plus the language. Metadata gives the real-time factor (transcription seconds per
    second of audio), the model and a preview."""
    return build_video_transcript(context.partition_key, media_store=media_store,
                                  transcriber=transcriber, log=context.log)


def build_video_transcript(key: str, *, media_store: MediaStore, transcriber: Transcriber,
                           log: logging.Logger) -> dg.MaterializeResult:
    """Transcribe ``audio.wav`` into ``transcript.json``; the result carries the
    ``transcript_confidence`` check (WARN below a mean word confidence of 0.5)."""
    audio = avio.read_wav(media_store.local_path(key, AUDIO))
    audio_s = len(audio) / avio.AUDIO_RATE
    started = time.perf_counter()
    transcript = transcriber.transcribe(audio)
    elapsed = time.perf_counter() - started
    media_store.write_json(key, TRANSCRIPT, transcript.model_dump())
    rtf = elapsed / audio_s if audio_s else 0.0
    words = sum(len(s.words) for s in transcript.segments)
    confidence = transcript.mean_confidence
    note = "" if audio_s else "no audio track: the transcript is empty"
    if audio_s and not transcript.segments:
        note = "no speech found in the audio"
    log.info(
        f"{key}: {len(transcript.segments)} segments, {words} words from {audio_s:.1f} s of audio "
        f"in {elapsed:.2f} s (real-time factor {rtf:.3f}) with {transcriber.model_name}"
    )
    return dg.MaterializeResult(
        metadata={
            "model": transcriber.model_name,
            "language": transcript.language or "",
            "segments": dg.MetadataValue.int(len(transcript.segments)),
            "words": dg.MetadataValue.int(words),
            "audio_duration_s": dg.MetadataValue.float(round(audio_s, 3)),
            "transcription_s": dg.MetadataValue.float(round(elapsed, 3)),
            "real_time_factor": dg.MetadataValue.float(round(rtf, 4)),
            "mean_confidence": dg.MetadataValue.float(round(confidence or 0.0, 4)),
            "note": note,
            "preview": _preview([(s.start_s, s.end_s, s.text) for s in transcript.segments]),
            "path": dg.MetadataValue.path(media_store.uri(key, TRANSCRIPT)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_TRANSCRIPT_CONFIDENCE,
                passed=confidence is None or confidence >= MIN_MEAN_CONFIDENCE,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"mean_confidence": round(confidence or 0.0, 4),
                          "threshold": MIN_MEAN_CONFIDENCE,
                          "segments": len(transcript.segments)},
            )
        ],
    )


@_video_asset(
    kinds={"python"},
    deps=[video_transcript, CHUNKING_SETTINGS],
)
def video_chunks(context: dg.AssetExecutionContext, media_store: MediaStore) -> dg.MaterializeResult:
    """The transcript cut into timestamped search chunks on segment boundaries (at most 15 s or
    40 words each), every chunk with its start and end in seconds and its word timings."""
    return build_video_chunks(context.partition_key, media_store=media_store, log=context.log)


def build_video_chunks(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """Cut ``transcript.json`` into search chunks (``chunks.json``) on segment boundaries."""
    transcript = Transcript.model_validate(media_store.read_json(key, TRANSCRIPT))
    chunks = chunk_segments(transcript.segments)
    media_store.write_json(key, CHUNKS, [c.model_dump() for c in chunks])
    durations = [c.end_s - c.start_s for c in chunks]
    return dg.MaterializeResult(
        metadata={
            "chunks": dg.MetadataValue.int(len(chunks)),
            "mean_chunk_s": dg.MetadataValue.float(round(float(np.mean(durations)), 3) if chunks else 0.0),
            "max_chunk_s": dg.MetadataValue.float(round(max(durations), 3) if chunks else 0.0),
            "preview": _preview([(c.start_s, c.end_s, c.text) for c in chunks]),
            "path": dg.MetadataValue.path(media_store.uri(key, CHUNKS)),
        }
    )


def _load_chunks(media_store: MediaStore, key: str) -> list[Chunk]:
    return [Chunk.model_validate(c) for c in media_store.read_json(key, CHUNKS)]


@_video_asset(
    kinds={"onnx"},
    deps=[video_chunks, EMBEDDING_MODEL],
    retry_policy=TRANSIENT_RETRY,
    check_specs=[dg.AssetCheckSpec(CHECK_EMBEDDINGS_VALID, asset="video_chunk_embeddings",
                                   description="float32 [chunks, 384], finite, unit L2 norm.")],
)
def video_chunk_embeddings(
    context: dg.AssetExecutionContext, media_store: MediaStore, embedder: TextEmbedder
) -> dg.MaterializeResult:
    """One embedding per chunk: float32 [chunks, 384], L2-normalized, stored as ``.npy``."""
    return build_video_chunk_embeddings(context.partition_key, media_store=media_store,
                                        embedder=embedder, log=context.log)


def build_video_chunk_embeddings(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                                 log: logging.Logger) -> dg.MaterializeResult:
    """Embed every chunk's text into ``embeddings.npy`` (float32 [chunks, 384], unit rows); the
    result carries the ``embeddings_shape_and_norm`` check."""
    chunks = _load_chunks(media_store, key)
    started = time.perf_counter()
    vectors = embedder.embed([c.text for c in chunks]) if chunks else np.zeros((0, EMBEDDING_DIM), np.float32)
    elapsed = time.perf_counter() - started
    with media_store.writer(key, EMBEDDINGS) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
    max_norm_error = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
    valid = (
        vectors.shape == (len(chunks), EMBEDDING_DIM)
        and vectors.dtype == np.float32
        and bool(np.isfinite(vectors).all())
        and max_norm_error <= NORM_TOLERANCE
    )
    return dg.MaterializeResult(
        metadata={
            "model": embedder.model_name,
            "shape": str(list(vectors.shape)),
            "embedding_s": dg.MetadataValue.float(round(elapsed, 4)),
            "path": dg.MetadataValue.path(media_store.uri(key, EMBEDDINGS)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_EMBEDDINGS_VALID,
                passed=valid,
                metadata={"shape": str(list(vectors.shape)), "dtype": str(vectors.dtype),
                          "max_norm_error": max_norm_error},
            )
        ],
    )


@_video_asset(
    kinds={"lancedb"},
    deps=[video_chunk_embeddings],
    pool=pools.SEARCH_INDEX,
    retry_policy=TRANSIENT_RETRY,
    check_specs=[dg.AssetCheckSpec(CHECK_INDEX_ROWS, asset="video_index_rows",
                                   description="The index holds exactly one row per chunk.")],
)
def video_index_rows(
    context: dg.AssetExecutionContext, media_store: MediaStore, search_index: SearchIndex
) -> dg.MaterializeResult:
    """The video's rows in the search index, one per chunk with its time span, replaced as a whole
    each time (stale rows of this video are deleted in the same commit)."""
    return build_video_index_rows(context.partition_key, media_store=media_store,
                                  search_index=search_index, log=context.log)


def build_video_index_rows(key: str, *, media_store: MediaStore, search_index: SearchIndex,
                           log: logging.Logger) -> dg.MaterializeResult:
    """Replace this video's ``video_index_rows`` rows in the search index (one per chunk); the
    result carries the ``index_rows_match_chunks`` check.

    Raises:
        RuntimeError: when chunks and embeddings disagree in count (re-materialize embeddings).
    """
    chunks = _load_chunks(media_store, key)
    vectors = np.load(media_store.local_path(key, EMBEDDINGS))
    if len(vectors) != len(chunks):
        raise RuntimeError(f"{len(chunks)} chunks but {len(vectors)} embeddings: re-materialize "
                           "video_chunk_embeddings")
    source_name = upload_name(media_store, key)
    rows = [
        IndexRow(
            media_id=key, kind="video", origin="video_index_rows", source_name=source_name,
            chunk_index=c.chunk_index,
            start_s=c.start_s, end_s=c.end_s, text=c.text,
            words=[(w.word, round(w.start_s, 3), round(w.end_s, 3)) for w in c.words],
            vector=v.tolist(),
        )
        for c, v in zip(chunks, vectors)
    ]
    started = time.perf_counter()
    count = search_index.upsert_partition(key, "video", rows, origin="video_index_rows")
    elapsed = time.perf_counter() - started
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(count),
            "index_rows_total": dg.MetadataValue.int(search_index.count()),
            "upsert_s": dg.MetadataValue.float(round(elapsed, 4)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_INDEX_ROWS,
                passed=count == len(chunks),
                metadata={"rows": count, "chunks": len(chunks)},
            )
        ],
    )


video_assets = [video_source, video_audio, video_transcript, video_chunks,
                video_chunk_embeddings, video_index_rows]

# (asset, stage function) in dependency order: a batch run (narra_dagster.batch) calls the same
# functions for many partitions in one process.
STAGES = [
    (video_source, build_video_source),
    (video_audio, build_video_audio),
    (video_transcript, build_video_transcript),
    (video_chunks, build_video_chunks),
    (video_chunk_embeddings, build_video_chunk_embeddings),
    (video_index_rows, build_video_index_rows),
]
