"""Domain events out: the sensor that turns runs into ``analysis.*`` and ``<stage>.*`` events."""
