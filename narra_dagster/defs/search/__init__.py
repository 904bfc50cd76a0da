"""The search index itself: its upkeep (``maintenance.py``) and the settings its contents depend
on, observed as data versions (``settings.py``)."""
