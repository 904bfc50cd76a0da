"""Dagster definitions, one folder per domain, loaded by ``narra_dagster.definitions``.

``video/``, ``image/`` and ``document/`` each hold one media kind: its stages (one stage function
per asset), its own domain code and its ``kind.py`` (the registry entry). ``search/`` keeps the
index and the pipeline settings, ``intake/`` the upload sensors, ``events/`` the domain events.
"""
