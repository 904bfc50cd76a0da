"""The image kind: ``partitions.py`` (the ``images`` partitions and ``@image_stage``),
``assets.py`` (validation, metadata, thumbnails, labels, OCR, embedding, similarity, catalog,
index rows), ``imaging.py`` (Pillow helpers), ``similarity.py`` (near-duplicate verdicts),
``classifier.py`` (the exported ONNX classifier asset) and ``kind.py``, the registry entry.
"""
