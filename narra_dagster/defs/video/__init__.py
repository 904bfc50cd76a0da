"""The video kind (audio-only files included): its stages and everything they use.

``partitions.py`` (the ``videos`` partitions and the ``@video_stage`` decorator), ``assets.py``
(source -> audio -> transcript -> chunks -> embeddings -> index rows), ``frames.py`` (keyframes,
on-screen text, labels), ``enrichment.py`` (language, keywords, summary), the PyAV helpers
(``avio.py``, ``keyframes.py``), ``chunking.py``, and ``kind.py``, the registry entry.
"""
