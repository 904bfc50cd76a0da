"""The spoken chain of the video kind: source -> audio -> transcript -> chunks -> embeddings ->
index rows. Audio-only files (WAV, MP3, FLAC, Ogg/Opus, M4A/AAC) take this same chain.

Each stage is one stage function made an asset of the ``video`` group by ``@video_stage``
(:class:`narra_dagster.core.stage.StageSet`): partitioned by ``videos`` (one partition per
content), reading its upstream artifact from the media store, writing its own atomically and
describing it in its metadata. Bad input fails classified and is never retried; model and index
stages retry transient errors with exponential backoff and jitter.
"""

import logging
import time

import dagster as dg
import numpy as np

from narra_dagster.core import limits, pools
from narra_dagster.core.embeddings import embed_chunks, embeddings_check_spec
from narra_dagster.core.stage import upload_name
from narra_dagster.defs.search.settings import CHUNKING_SETTINGS, EMBEDDING_MODEL, TRANSCRIPTION_MODEL
from narra_dagster.defs.video import avio
from narra_dagster.defs.video.chunking import Chunk, chunk_segments
from narra_dagster.defs.video.partitions import video_stage
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.media_store import SOURCE, MediaStore
from narra_dagster.resources.search_index import IndexRow, SearchIndex
from narra_dagster.resources.speech import Transcript
from narra_dagster.resources.transcriber import Transcriber

PROBE = "probe.json"
AUDIO = "audio.wav"
TRANSCRIPT = "transcript.json"
CHUNKS = "chunks.json"
EMBEDDINGS = "embeddings.npy"

CHECK_TRANSCRIPT_CONFIDENCE = "transcript_confidence"
CHECK_INDEX_ROWS = "index_rows_match_chunks"

MIN_MEAN_CONFIDENCE = 0.5


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


@video_stage(kinds={"pyav"})
def video_source(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """The uploaded video or audio file, validated and probed with PyAV: container, codecs,
    duration (s), frame rate, resolution (pixels), size (bytes) and streams. Every packet is
    demuxed and each stream's first frame decoded, so a truncated or fake file fails here,
    classified (``empty_file``, ``not_media``, ``corrupt_media``, ``no_streams``); writes
    ``probe.json``."""
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


@video_stage(kinds={"pyav"}, deps=[video_source])
def video_audio(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """The first audio track as 16 kHz mono 16-bit WAV (``audio.wav``), the input Whisper
    expects. A video without an audio track gives an empty WAV and says so; audio that cannot be
    decoded fails as ``corrupt_media``."""
    with media_store.writer(key, AUDIO) as tmp:
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


@video_stage(
    kinds={"whisper"},
    deps=[video_audio, TRANSCRIPTION_MODEL],
    pool=pools.TRANSCRIPTION,
    retry=True,
    check_specs=[dg.AssetCheckSpec(CHECK_TRANSCRIPT_CONFIDENCE, asset="video_transcript",
                                   description="Mean word confidence is at least 0.5 (warns).")],
    # 2: transcribed in blocks, implausible segments dropped; 3: every segment records its
    # language and probability, the transcript's is that of most of the speech
    code_version="3",
)
def video_transcript(key: str, *, media_store: MediaStore, transcriber: Transcriber,
                     log: logging.Logger) -> dg.MaterializeResult:
    """What is said: segments with start and end (s), text, confidence and word timings, plus
    the language (``transcript.json``). Metadata gives the real-time factor (transcription
    seconds per second of audio), the model and a preview; the ``transcript_confidence`` check
    warns below a mean word confidence of 0.5."""
    wav = media_store.local_path(key, AUDIO)
    audio_s = avio.wav_seconds(wav)
    block_s = limits.current().transcription_block_s
    started = time.perf_counter()

    def progress(start_s: float, end_s: float, segments: int) -> None:
        if audio_s > block_s:  # one line per block of a long recording
            log.info(f"{key}: transcribed {end_s:.0f} of {audio_s:.0f} s "
                     f"({100 * end_s / audio_s:.0f}%), {segments} segments, "
                     f"{time.perf_counter() - started:.0f} s so far")

    transcript = transcriber.transcribe_blocks(avio.iter_wav_blocks(wav, block_s), progress)
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
            "language_probability": dg.MetadataValue.float(
                round(transcript.language_probability or 0.0, 4)),
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


@video_stage(kinds={"python"}, deps=[video_transcript, CHUNKING_SETTINGS],
             code_version="2")  # 2: a chunk holds one language, recorded with it
def video_chunks(key: str, *, media_store: MediaStore, log: logging.Logger) -> dg.MaterializeResult:
    """The transcript cut into timestamped search chunks on segment boundaries (at most 15 s or
    40 words each, and one language each, ``chunks.json``), every chunk with its start and end in seconds, its word
    timings and its spoken language (ISO 639-1, from its segments)."""
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


@video_stage(
    kinds={"ctranslate2"},
    deps=[video_chunks, EMBEDDING_MODEL],
    retry=True,
    check_specs=[embeddings_check_spec("video_chunk_embeddings")],
)
def video_chunk_embeddings(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                           log: logging.Logger) -> dg.MaterializeResult:
    """One embedding per chunk: float32 [chunks, 384], L2-normalized, stored as
    ``embeddings.npy``; the ``embeddings_shape_and_norm`` check verifies shape, dtype and norm."""
    chunks = _load_chunks(media_store, key)
    result, elapsed = embed_chunks(key, [c.text for c in chunks], EMBEDDINGS,
                                   media_store=media_store, embedder=embedder)
    log.info(f"{key}: embedded {len(chunks)} chunks in {elapsed:.3f} s")
    return result


@video_stage(
    kinds={"lancedb"},
    deps=[video_chunk_embeddings],
    pool=pools.SEARCH_INDEX,
    retry=True,
    check_specs=[dg.AssetCheckSpec(CHECK_INDEX_ROWS, asset="video_index_rows",
                                   description="The index holds exactly one row per chunk.")],
)
def video_index_rows(key: str, *, media_store: MediaStore, search_index: SearchIndex,
                     log: logging.Logger) -> dg.MaterializeResult:
    """The item's rows in the search index, one per chunk with its time span, replaced as a
    whole each time (stale rows of this item are deleted in the same commit); the
    ``index_rows_match_chunks`` check compares the counts.

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
