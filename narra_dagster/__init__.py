"""narra-dagster: uploaded media turned into searchable, inspectable Dagster assets."""

__version__ = "0.1.0"

# Bumped when a change to the pipeline should give every item a fresh run from the upload sensor;
# it is part of each sensor run key.
PIPELINE_VERSION = "1"
