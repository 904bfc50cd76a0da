"""The document kind's partitions and its stage decorator: one partition per content."""

import dagster as dg

from narra_dagster.core.stage import StageSet

documents = dg.DynamicPartitionsDefinition(name="documents")

document_stage = StageSet("document", documents, group_name="document")
"""``@document_stage(...)`` makes a stage function an asset of the ``document`` group (see
:class:`narra_dagster.core.stage.StageSet`)."""
