"""The plain Python loop: the same stage functions on the same files, without Dagster runs.

    python -m bench.plain KIND FILE...     (prints JSON)

Stores each file (as `narra process` does), sets the kind's resources up once with
``dagster.build_resources`` (the same ``setup_for_execution`` a run calls, so models load once),
then calls each ``build_*`` function of the kind's ``STAGES`` per file, timing each call. Run it
in a fresh process and a fresh NARRA_HOME, like `narra process`, so both pay the same imports.
"""

import json
import logging
import sys
import time

started = time.perf_counter()

import dagster as dg  # noqa: E402

from narra_dagster.core.batch import stages_for_kind  # noqa: E402
from narra_dagster.core.intake import store_upload  # noqa: E402
from narra_dagster.resources import default_resources  # noqa: E402


def main(kind: str, files: list[str]) -> dict:
    from pathlib import Path

    from narra_dagster.core.batch import _stage_kwargs

    stages = stages_for_kind(kind)
    imported = time.perf_counter()
    needed = set().union(*(a.required_resource_keys for a, _ in stages)) - {"io_manager"}
    log = logging.getLogger("bench.plain")
    out = {"kind": kind, "items": [], "imports_s": round(imported - started, 3)}
    with dg.build_resources({k: v for k, v in default_resources().items() if k in needed}) as res:
        out["setup_s"] = round(time.perf_counter() - imported, 3)
        for file in files:
            item_started = time.perf_counter()
            upload = store_upload(Path(file), res.media_store)
            item = {"file": Path(file).name, "partition_key": upload.partition_key,
                    "ingest_s": round(time.perf_counter() - item_started, 3), "steps": {}}
            for asset, fn in stages:
                t = time.perf_counter()
                try:
                    fn(upload.partition_key, **_stage_kwargs(fn, res, log))
                except Exception as exc:  # noqa: BLE001 - reported per item, as Dagster would
                    item["error"] = f"{asset.key.to_user_string()}: {exc}"
                    break
                item["steps"][asset.key.to_user_string()] = round(time.perf_counter() - t, 4)
            item["seconds"] = round(time.perf_counter() - item_started, 3)
            out["items"].append(item)
    out["wall_in_process_s"] = round(time.perf_counter() - started, 3)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
