"""The plain Python loop: the same stage functions on the same files, without Dagster runs.

    python -m bench.plain KIND FILE...     (prints JSON)

Stores each file (as `narra process` does), sets the kind's resources up once with
``dagster.build_resources`` (the same ``setup_for_execution`` a run calls, so models load once),
then runs each of the kind's stages (``registry.get(kind).stages``, dependency order) per file
with ``Stage.run`` (the guarded stage function the asset calls), timing each call. Run it
in a fresh process and a fresh NARRA_HOME, like `narra process`, so both pay the same imports.
"""

import json
import logging
import sys
import time

started = time.perf_counter()

import dagster as dg  # noqa: E402

from narra_dagster import registry  # noqa: E402
from narra_dagster.defs.intake.uploads import store_upload  # noqa: E402
from narra_dagster.resources import default_resources  # noqa: E402


def main(kind: str, files: list[str]) -> dict:
    from pathlib import Path

    stages = registry.get(kind).stages
    imported = time.perf_counter()
    needed = set().union(*(stage.resource_keys for stage in stages))
    log = logging.getLogger("bench.plain")
    out = {"kind": kind, "items": [], "imports_s": round(imported - started, 3)}
    with dg.build_resources({k: v for k, v in default_resources().items() if k in needed}) as res:
        out["setup_s"] = round(time.perf_counter() - imported, 3)
        for file in files:
            item_started = time.perf_counter()
            upload = store_upload(Path(file), res.media_store)
            item = {"file": Path(file).name, "partition_key": upload.partition_key,
                    "ingest_s": round(time.perf_counter() - item_started, 3), "steps": {}}
            for stage in stages:
                t = time.perf_counter()
                try:
                    stage.run(upload.partition_key, res, log)
                except Exception as exc:  # noqa: BLE001 - reported per item, as Dagster would
                    item["error"] = f"{stage.name}: {exc}"
                    break
                item["steps"][stage.name] = round(time.perf_counter() - t, 4)
            item["seconds"] = round(time.perf_counter() - item_started, 3)
            out["items"].append(item)
    out["wall_in_process_s"] = round(time.perf_counter() - started, 3)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
