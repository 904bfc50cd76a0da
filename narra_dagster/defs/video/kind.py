"""The video kind's registry entry. Audio-only files are this kind too (see the README's
"Audio" section for why): they take the same chain, and the picture stages keep nothing."""

from narra_dagster.core import pools
from narra_dagster.core.kind import MediaKind
from narra_dagster.defs.video import assets, avio, enrichment, frames  # noqa: F401 - stages
from narra_dagster.defs.video.partitions import video_stage

VIDEO = MediaKind(
    name="video",
    noun="a video or audio file",
    stage_set=video_stage,
    recognise=avio.recognise,
    extensions=avio.EXTENSIONS,
    aliases=("audio", "movie", "film", "clip", "recording", "sound", "speech", "podcast"),
    description="Every stage of one video or audio file, from the upload to its search index rows.",
    media_seconds=avio.declared_seconds,
    batch_pool=pools.TRANSCRIPTION,
)
