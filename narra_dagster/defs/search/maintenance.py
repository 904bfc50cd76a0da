"""Assets of the search index itself (group ``search``): its upkeep as it grows."""

import datetime as dt
import warnings

import dagster as dg

from narra_dagster.core import pools
from narra_dagster.defs.search.settings import GROUP as SETTINGS_GROUP
from narra_dagster.resources.search_index import SearchIndex

GROUP = "search"


class MaintenanceConfig(dg.Config):
    """How much history the compaction keeps."""

    cleanup_older_than_hours: float = 24.0


@dg.asset(
    group_name=GROUP,
    kinds={"lancedb"},
    code_version="1",
    # Compaction commits to the chunks table, so it queues behind index writes like they do.
    pool=pools.SEARCH_INDEX,
    # daily at 03:30, when uploads are few
    automation_condition=dg.AutomationCondition.on_cron("30 3 * * *"),
)
def search_index_maintenance(
    context: dg.AssetExecutionContext, config: MaintenanceConfig, search_index: SearchIndex
) -> dg.MaterializeResult:
    """The search index kept fast as it grows: scalar indices on the keys that upserts and
    filters use, an approximate-nearest-neighbour index on the embeddings once the table is large
    enough, small fragments compacted, new rows added to the indices, and table versions older
    than a day removed. Runs daily at 03:30 (its automation condition); results never change,
    only speed and disk use."""
    report = search_index.maintain(
        cleanup_older_than=dt.timedelta(hours=config.cleanup_older_than_hours))
    if report is None:
        context.log.info(f"{type(search_index).__name__} needs no maintenance")
        return dg.MaterializeResult(metadata={"backend": type(search_index).__name__,
                                              "note": "nothing to maintain"})
    context.log.info(
        f"{report['rows']} rows; fragments {report['fragments_before']} -> "
        f"{report['fragments_after']}; versions {report['versions_before']} -> "
        f"{report['versions_after']}; created {report['indices_created'] or 'no index'}")
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(report["rows"]),
            "fragments_before": dg.MetadataValue.int(report["fragments_before"]),
            "fragments_after": dg.MetadataValue.int(report["fragments_after"]),
            "versions_before": dg.MetadataValue.int(report["versions_before"]),
            "versions_after": dg.MetadataValue.int(report["versions_after"]),
            "indices": dg.MetadataValue.json(report["indices"]),
            "indices_created": dg.MetadataValue.json(report["indices_created"]),
            "vector_index": report["vector_index"] or "none (exact search)",
            "scalar_index_s": dg.MetadataValue.float(report["scalar_index_s"]),
            "ann_index_s": dg.MetadataValue.float(report["ann_index_s"]),
            "optimize_s": dg.MetadataValue.float(report["optimize_s"]),
        }
    )


search_index_maintenance_job = dg.define_asset_job(
    "search_index_maintenance_job", selection=[search_index_maintenance],
    description="Compact and index the search table.")


with warnings.catch_warnings():  # include_sources is beta in Dagster 1.13
    warnings.simplefilter("ignore", dg.BetaWarning)
    narra_automation_sensor = dg.AutomationConditionSensorDefinition(
        "narra_automation_sensor",
        target=(dg.AssetSelection.groups(GROUP)
                | dg.AssetSelection.groups(SETTINGS_GROUP, include_sources=True)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description="Evaluates the automation conditions of the search index upkeep (daily) and of "
                    "the pipeline settings observations (every 10 minutes).",
    )
