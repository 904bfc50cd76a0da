"""Cutting a transcript into search chunks on segment boundaries."""

from __future__ import annotations

from pydantic import BaseModel, Field

from narra_dagster.resources.speech import Segment, Word
from narra_dagster.resources.transcriber import dominant_language

# A chunk of at most ~15 s / 40 words keeps a hit's start within a sentence or two of the spoken
# phrase and stays far below MiniLM's 256-token window (40 English words is about 55 tokens).
MAX_CHUNK_SECONDS = 15.0
MAX_CHUNK_WORDS = 40


class Chunk(BaseModel):
    """A searchable piece of a transcript, cut on segment boundaries; times in seconds.
    ``language``: the ISO 639-1 code of most of its seconds of speech, from its segments (None
    when they carry none, as transcripts made before languages were recorded)."""

    chunk_index: int
    start_s: float
    end_s: float
    text: str
    words: list[Word] = Field(default_factory=list)
    language: str | None = None


def chunk_segments(
    segments: list[Segment],
    *,
    max_seconds: float = MAX_CHUNK_SECONDS,
    max_words: int = MAX_CHUNK_WORDS,
) -> list[Chunk]:
    """Group consecutive segments into chunks, never splitting a segment.

    A chunk is closed before a segment that would push it past ``max_seconds`` (seconds from
    its first segment's start to the candidate's end) or ``max_words`` words, or whose language
    differs from the previous segment's (when both are known: a chunk holds one language); a
    single segment longer than either limit becomes a chunk of its own.

    Returns:
        Chunks numbered from 0, each with start/end in seconds, joined text, word timings and
        the language of most of its speech.
    """
    chunks: list[Chunk] = []
    current: list[Segment] = []

    def close() -> None:
        if current:
            chunks.append(
                Chunk(
                    chunk_index=len(chunks),
                    start_s=current[0].start_s,
                    end_s=current[-1].end_s,
                    text=" ".join(s.text.strip() for s in current),
                    words=[w for s in current for w in s.words],
                    language=dominant_language(current)[0],
                )
            )
            current.clear()

    words_in = 0
    for segment in segments:
        n = len(segment.text.split())
        known = next((s.language for s in reversed(current) if s.language), None)
        if current and (
            segment.end_s - current[0].start_s > max_seconds or words_in + n > max_words
            or (segment.language and known and segment.language != known)
        ):
            close()
            words_in = 0
        current.append(segment)
        words_in += n
    close()
    return chunks
