"""Transcript enrichment: the language, keywords and an extractive summary of what is said.

One asset in the ``video`` group, after ``video_chunks``; its body is one call to
:func:`build_video_enrichment` (the stage-function convention). The summary and keywords come
from :mod:`narra_dagster.core.summarize`, the same code that summarizes PDFs.
"""

import logging
import time

import dagster as dg

from narra_dagster.defs.search.settings import EMBEDDING_MODEL
from narra_dagster.defs.video.assets import TRANSCRIPT, video_chunks
from narra_dagster.defs.video.partitions import video_stage
from narra_dagster.resources.embedder import TextEmbedder
from narra_dagster.resources.media_store import MediaStore
from narra_dagster.resources.speech import Transcript
from narra_dagster.core.summarize import split_sentences, summarize, summary_markdown

ENRICHMENT = "enrichment.json"
ENRICHMENT_MD = "enrichment.md"


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


def located_sentences(transcript: Transcript) -> list[tuple[float, str]]:
    """The transcript's sentences, each with the second its first word is said.

    A Whisper segment may hold several sentences; the start of sentence k of a segment is the
    start time of its first word, found by counting the words of the sentences before it (the
    word timings follow the segment text's whitespace-separated words). Without word timings,
    the segment's start is used.
    """
    out = []
    for segment in transcript.segments:
        offset = 0
        for sentence in split_sentences(segment.text.strip()):
            if offset < len(segment.words):
                start = segment.words[offset].start_s
            else:
                start = segment.start_s
            out.append((round(start, 2), sentence))
            offset += len(sentence.split())
    return out


@video_stage(kinds={"ctranslate2"}, deps=[video_chunks, EMBEDDING_MODEL], retry=True)
def video_enrichment(key: str, *, media_store: MediaStore, embedder: TextEmbedder,
                     log: logging.Logger) -> dg.MaterializeResult:
    """What the item is about: the spoken language, keywords, and a five-sentence extractive
    summary (the sentences closest to the transcript's overall meaning, without repeats), each
    with the second it is said. No language model, nothing leaves the machine.

    Language (as the transcriber detected or was told it), keywords and a five-sentence
    extractive summary of the transcript, each summary sentence with the second it starts
    (:func:`located_sentences`). Writes ``enrichment.json``: ``{"language",
    "language_probability", "summary": [{"locator" (s), "text", "relevance"}], "keywords":
    [{"phrase", "relevance", "count"}], ...}`` and ``enrichment.md``."""
    transcript = Transcript.model_validate(media_store.read_json(key, TRANSCRIPT))
    sentences = located_sentences(transcript)
    started = time.perf_counter()
    result = summarize(sentences, embedder.embed)
    elapsed = time.perf_counter() - started
    try:
        title = media_store.manifest(key).get("source_name") or key
    except FileNotFoundError:
        title = key
    markdown = summary_markdown(
        f"{title} (language: {transcript.language or 'unknown'})",
        [(_fmt(s["locator"]), s["text"]) for s in result["summary"]],
        [(k["phrase"], k["relevance"]) for k in result["keywords"]])
    note = "" if result["summary"] else (
        "no speech to summarize" if not transcript.segments else
        "no sentence of 5-60 words in the transcript")
    media_store.write_json(key, ENRICHMENT, {
        "language": transcript.language, "language_probability": transcript.language_probability,
        "transcript_model": transcript.model, "embedding_model": embedder.model_name,
        "method": "centroid + MMR over MiniLM sentence embeddings; keywords: RAKE candidates "
                  "ranked KeyBERT-style", **result})
    media_store.write_bytes(key, ENRICHMENT_MD, markdown.encode())
    log.info(f"{key}: language {transcript.language}, {len(result['keywords'])} keywords, "
             f"{len(result['summary'])} summary sentences in {elapsed:.2f} s")
    return dg.MaterializeResult(metadata={
        "language": transcript.language or "",
        "language_probability": dg.MetadataValue.float(
            round(transcript.language_probability or 0.0, 4)),
        "keywords": ", ".join(k["phrase"] for k in result["keywords"]),
        "summary": dg.MetadataValue.md(markdown),
        "sentences_considered": dg.MetadataValue.int(result["sentences"]),
        "model": embedder.model_name,
        "enrichment_s": dg.MetadataValue.float(round(elapsed, 3)),
        "note": note,
        "path": dg.MetadataValue.path(media_store.uri(key, ENRICHMENT)),
    })
