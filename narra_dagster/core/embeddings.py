"""Chunk embeddings, the same stage body for every kind that indexes text chunks."""

import time

import dagster as dg
import numpy as np

from narra_dagster.resources.embedder import EMBEDDING_DIM, TextEmbedder
from narra_dagster.resources.media_store import MediaStore

CHECK_EMBEDDINGS_VALID = "embeddings_shape_and_norm"
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed per row; int8 MiniLM rows measure about 1e-7 off


def embeddings_check_spec(asset: str) -> dg.AssetCheckSpec:
    """The ``embeddings_shape_and_norm`` check of an embeddings asset."""
    return dg.AssetCheckSpec(CHECK_EMBEDDINGS_VALID, asset=asset,
                             description="float32 [chunks, 384], finite, unit L2 norm.")


def embed_chunks(key: str, texts: list[str], name: str, *, media_store: MediaStore,
                 embedder: TextEmbedder) -> tuple[dg.MaterializeResult, float]:
    """Embed ``texts`` (one per chunk) and store them as ``name`` (``.npy``, float32
    [len(texts), 384], unit rows; [0, 384] for no text).

    Returns:
        (the result with its metadata and ``embeddings_shape_and_norm`` check, seconds spent
        embedding).
    """
    started = time.perf_counter()
    vectors = embedder.embed(texts) if texts else np.zeros((0, EMBEDDING_DIM), np.float32)
    elapsed = time.perf_counter() - started
    with media_store.writer(key, name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, vectors)
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
    max_norm_error = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
    valid = (vectors.shape == (len(texts), EMBEDDING_DIM) and vectors.dtype == np.float32
             and bool(np.isfinite(vectors).all()) and max_norm_error <= NORM_TOLERANCE)
    return dg.MaterializeResult(
        metadata={
            "model": embedder.model_name,
            "shape": str(list(vectors.shape)),
            "embedding_s": dg.MetadataValue.float(round(elapsed, 4)),
            "path": dg.MetadataValue.path(media_store.uri(key, name)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=CHECK_EMBEDDINGS_VALID, passed=valid,
            metadata={"shape": str(list(vectors.shape)), "dtype": str(vectors.dtype),
                      "max_norm_error": max_norm_error})],
    ), elapsed
