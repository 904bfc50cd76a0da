"""The narra benchmark: `python -m bench --quick | --full [--out results.json]`.

Builds its own corpus from real sources (espeak-ng speech over scikit-image photos, scikit-image
photos with variations, PDFs shipped by Debian), runs every measurement side by side in one run,
prints one table and writes the same figures to JSON. Not part of the test suite. See README
("Speed") and ``python -m bench --help``.
"""
