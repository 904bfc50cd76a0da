"""Pages of items, newest first, across the kinds and the deleted items: every item once, in
upload order, whatever the page size; on a real (temporary) Dagster instance and media store,
with items registered the way the intake registers them (not processed)."""

import datetime as dt
import hashlib

import dagster as dg
import pytest

from narra_dagster import registry
from narra_dagster.app.status import partition_status, status_page
from narra_dagster.resources import LocalMediaStore
from narra_dagster.resources.media_store import MANIFEST


def _register(instance, store, kind: str, n: int, at: dt.datetime) -> str:
    key = hashlib.sha256(f"{kind}-{n}".encode()).hexdigest()[:16]
    store.write_json(key, MANIFEST, {
        "partition_key": key, "kind": kind, "source_name": f"{kind}-{n}",
        "ingested_at": at.isoformat(timespec="seconds"), "names": [{"name": f"{kind}-{n}"}]})
    instance.add_dynamic_partitions(registry.get(kind).partitions.name, [key])
    return key


@pytest.mark.parametrize("limit", [1, 2, 3, 50])
def test_pages_list_every_item_once_newest_first(tmp_path, limit):
    store = LocalMediaStore(root=str(tmp_path / "media"))
    defs = dg.Definitions(resources={"media_store": store})
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    kinds = ["image", "video", "image", "document", "image", "video", "image", "document"]
    with dg.instance_for_test() as instance:
        keys = [_register(instance, store, kind, n, start + dt.timedelta(seconds=n))
                for n, kind in enumerate(kinds)]
        # the second item deleted last: it is listed first, as deleted
        instance.delete_dynamic_partition("videos", keys[1])
        store.write_tombstone(keys[1], {"kind": "video", "names": ["video-1"],
                                        "deleted_at": "2026-11-02T00:00:00+00:00"})

        seen, cursor, pages = [], None, 0
        while True:
            items, cursor = status_page(instance, defs, cursor=cursor, limit=limit)
            assert len(items) <= limit
            seen += [(i["media_id"], i["state"]) for i in items]
            pages += 1
            if cursor is None:
                break
        expected = [(keys[1], "deleted")] + [(k, "registered") for k in reversed(keys)
                                             if k != keys[1]]
        assert seen == expected
        assert pages == -(-len(expected) // limit)

        images, cursor = status_page(instance, defs, kind="image", limit=50)
        assert [i["media_id"] for i in images] == [keys[6], keys[4], keys[2], keys[0]]
        assert cursor is None
        assert [i["media_id"] for i in partition_status(instance, defs, keys[3])] == [keys[3]]
        with pytest.raises(ValueError, match="not a cursor"):
            status_page(instance, defs, cursor="bm90IGEgY3Vyc29y")
