"""Dagster concurrency pools (the instance sets their limits; see dagster.yaml and README).

- ``transcription``: at most N Whisper transcriptions at once, so parallel runs do not
  oversubscribe the cores with CTranslate2 threads.
- ``search_index``: every step that writes the LanceDB ``chunks`` table; a limit of 1 serializes
  writes, since concurrent ``merge_insert`` commits on the same keys can duplicate rows.
- ``image_index``: steps that write the image similarity table, serialized for the same reason.
"""

TRANSCRIPTION = "transcription"
SEARCH_INDEX = "search_index"
IMAGE_INDEX = "image_index"
