"""The document (PDF) kind's registry entry."""

from narra_dagster.core.kind import MediaKind
from narra_dagster.defs.document import assets, pdf  # noqa: F401 - assets registers the stages
from narra_dagster.defs.document.partitions import document_stage

DOCUMENT = MediaKind(
    name="document",
    noun="a PDF",
    stage_set=document_stage,
    recognise=pdf.recognise,
    extensions=pdf.EXTENSIONS,
    aliases=("pdfs", "doc", "docs", "paper", "papers"),
    description="Every stage of one PDF, from its pages to its summary and index rows.",
)
