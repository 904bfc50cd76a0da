"""What a transcriber returns: words, segments and the transcript (pydantic models, written as
``transcript.json``); times in seconds from the start of the media."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Word(BaseModel):
    """One recognized word; times in seconds from the start of the media."""

    start_s: float
    end_s: float
    word: str
    probability: float = Field(ge=0.0, le=1.0)


class Segment(BaseModel):
    """One transcript segment as the recognizer emitted it; times in seconds.

    ``confidence`` is the mean of the word probabilities in [0, 1] (``exp(avg_logprob)`` when the
    backend gave no word timings). ``language`` is the ISO 639-1 code the segment was decoded in
    (configured, or detected at the start of its block of audio) and ``language_probability``
    the detector's probability for it in [0, 1] (1.0 when configured; None when unknown).
    """

    start_s: float
    end_s: float
    text: str
    confidence: float = Field(ge=0.0, le=1.0)
    avg_logprob: float
    no_speech_prob: float = 0.0
    words: list[Word] = Field(default_factory=list)
    language: str | None = None
    language_probability: float | None = Field(default=None, ge=0.0, le=1.0)


class Transcript(BaseModel):
    """A whole transcript. ``audio_duration_s`` is the length of the audio that was transcribed
    (seconds); ``language`` the ISO 639-1 code of most of its speech and
    ``language_probability`` the detector's probability for it in [0, 1]."""

    language: str | None
    language_probability: float | None = None
    audio_duration_s: float
    model: str
    segments: list[Segment] = Field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments).strip()

    @property
    def mean_confidence(self) -> float | None:
        """Duration-weighted mean segment confidence, or None when there are no segments."""
        total = sum(max(s.end_s - s.start_s, 1e-3) for s in self.segments)
        if not self.segments:
            return None
        return sum(s.confidence * max(s.end_s - s.start_s, 1e-3) for s in self.segments) / total
