"""What every media kind's assets share: the retry policy for transient errors and the upload's
original name."""

import dagster as dg

from narra_dagster.resources.media_store import MediaStore

# Transient failures (a model runtime or an index write that hiccups) are retried up to 3 times,
# waiting about 2, 4 and 8 s; bad input raises Failure(allow_retries=False) and is never retried.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def upload_name(media_store: MediaStore, key: str) -> str | None:
    """The file name an item was uploaded under (metadata only), or None without a manifest."""
    try:
        return media_store.manifest(key).get("source_name")
    except FileNotFoundError:
        return None
