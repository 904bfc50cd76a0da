"""The document (PDF) kind: ``partitions.py`` (the ``documents`` partitions and
``@document_stage``), ``assets.py`` (source, pages, chunks, embeddings, index rows, summary),
``pdf.py`` (pypdf / pypdfium2 helpers) and ``kind.py``, the registry entry.
"""
