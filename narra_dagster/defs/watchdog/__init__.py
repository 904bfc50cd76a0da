"""Recovery without a person: the run worker watchdog (``sensor.py``)."""
