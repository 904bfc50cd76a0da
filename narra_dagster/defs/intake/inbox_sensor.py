"""The upload sensor: files dropped into the inbox become partitions and runs.

One tick:

1. Files registered by the previous tick (listed in the cursor with their partition key, size
   and modification time) are moved from the inbox to ``inbox/.processed/<partition key>/``.
   They are moved only now, after Dagster has committed that tick's partitions, run requests and cursor together, so a daemon crash mid-tick can never
   leave a file moved but unregistered: nothing a user dropped is lost.
2. Stable files (unchanged for ``stable_seconds``; not hidden, not ``.part``/``.tmp``) are taken,
   oldest first, up to ``max_per_tick``: hashed into a partition key, copied into the media store,
   and answered with one ``AddDynamicPartitionsRequest`` per kind and the runs of the new items:
   one batch run per kind for up to 50 items or 30 minutes of media
   (:class:`narra_dagster.defs.intake.uploads.NewItems`), or a per-item run whose ``run_key`` is
   ``<kind>:<key>:v<pipeline version>`` for an item alone. A file whose bytes are already a
   partition starts no second run. A file of an unknown type is moved to ``inbox/.rejected/``
   with a ``.reason.txt`` beside it. Each file is opened without following links and read
   from that one descriptor (:meth:`narra_dagster.resources.inbox.LocalInbox.open_file`): a
   name swapped for a symbolic link is skipped, and nothing outside the inbox is ever stored.
"""


import json
import time

import dagster as dg

from narra_dagster import registry
from narra_dagster.core.errors import BadInputError
from narra_dagster.defs.intake.uploads import NewItems, store_upload
from narra_dagster.core.kind import printable
from narra_dagster.resources.inbox import LocalInbox, NotInboxFile
from narra_dagster.resources.media_store import MediaStore

@dg.sensor(
    name="upload_sensor",
    jobs=registry.jobs(),
    # Dagster's sensor loop passes every 5 s; a 5 s minimum would skip every pass that comes a
    # hair early and tick only every 10 s. 1 s: every pass ticks (a directory listing).
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new file in the inbox as a partition and starts its run.",
)
def upload_sensor(
    context: dg.SensorEvaluationContext, inbox: LocalInbox, media_store: MediaStore
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    moved = 0
    for name, (key, size, mtime_ns) in cursor.get("registered", {}).items():
        if inbox.move_processed(name, key, size, mtime_ns) is not None:
            moved += 1

    stable, unstable, skipped = inbox.candidates(time.time())
    for name, why in sorted(skipped.items())[:10]:
        context.log.info(f"skipped {printable(name)}: {why}")
    registered: dict[str, tuple[str, int, int]] = {}
    new = NewItems(context.instance, "upload_sensor", media_store)
    rejected = 0
    for entry in stable[: inbox.max_per_tick]:
        try:
            # opened once, without following links; sniffed, hashed, copied from that descriptor
            with inbox.open_file(entry.name) as opened:
                upload = store_upload(opened.file, media_store, source_name=entry.name,
                                      ingested_by="upload_sensor")
                new.add(upload, opened.path)
        except NotInboxFile as exc:  # swapped for a link (or a hard link) since the scan
            skipped[entry.name] = exc.strerror
            context.log.warning(f"skipped {printable(entry.name)}: {exc.strerror}; nothing "
                                "was read through it")
            continue
        except BadInputError as exc:
            inbox.reject(entry.name, f"[{exc.code}] {exc}")
            context.log.warning(f"rejected {printable(entry.name)}: [{exc.code}] {exc}")
            rejected += 1
            continue
        except OSError as exc:  # vanished or unreadable mid-tick: try again next tick
            context.log.warning(f"could not read {printable(entry.name)} yet: {exc}")
            continue
        registered[entry.name] = (upload.partition_key, opened.stat.st_size,
                                  opened.stat.st_mtime_ns)

    waiting = max(0, len(stable) - inbox.max_per_tick)
    summary = (f"{new.new_items} new in {len(new.run_requests)} runs, {new.already} already known, "
               f"{rejected} rejected, {moved} moved to processed, {unstable} still being written, "
               f"{waiting} waiting, {len(skipped)} skipped (not regular files)")
    context.log.info(summary)
    return new.sensor_result(
        json.dumps({"registered": registered, "last_tick": summary}, sort_keys=True), summary)
