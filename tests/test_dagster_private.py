"""The private Dagster APIs narra relies on (narra_dagster/core/dagster_private.py) still do
what batch runs need. If a Dagster upgrade breaks one of these, the batch job would silently
write materializations the UI reads as stale or failed partitions it never counts: this fails
loudly instead, naming what changed."""

import dagster as dg

from narra_dagster.core import dagster_private


@dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="things"), code_version="7")
def parent():
    return None


@dg.observable_source_asset
def knob():
    """A setting observed as a data version, like the pipeline settings."""
    return dg.DataVersion("v42")


@dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="things"), code_version="3",
          deps=[parent, knob])
def child():
    return None


def test_provenance_tags_match_what_an_asset_run_writes():
    """The tags computed for a batch materialization equal those Dagster wrote itself."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("things", ["a", "z"])
        from dagster._core.definitions.observe import observe

        assert observe([knob], instance=instance).success
        assert dg.materialize([parent], partition_key="a", instance=instance).success
        assert dg.materialize([parent], partition_key="z", instance=instance).success
        assert dg.materialize([parent, child, knob], partition_key="a", selection=[child],
                              instance=instance).success
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=child.key, asset_partitions=["a"]), limit=1).records
        written = record.asset_materialization.tags
        computed = dagster_private.provenance_tags(instance, child, child.key, "a")
        assert computed[dagster_private.CODE_VERSION_TAG] == "3"
        assert len(computed) == 6  # code version, data version, 2 tags per parent
        for tag, value in computed.items():
            assert written.get(tag) == value, (tag, written)


@dg.op(out=dg.Out(dg.Nothing))
def plans_child(context: dg.OpExecutionContext):
    dagster_private.report_planned(context, [child.key], "b")
    raise dg.Failure("the item failed before its materialization", allow_retries=False)


@dg.job
def planner():
    plans_child()


def test_planned_materialization_of_a_failed_run_marks_the_partition_failed():
    """Dagster's status cache counts a partition as failed when a failed run planned it."""
    from dagster._core.storage.partition_status_cache import (
        get_and_update_asset_status_cache_value,
    )

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("things", ["b"])
        assert not planner.execute_in_process(instance=instance, raise_on_error=False).success
        planned = instance.get_latest_planned_materialization_info(child.key, partition="b")
        assert planned is not None, "no planned materialization recorded"
        status = get_and_update_asset_status_cache_value(
            instance, child.key, child.partitions_def)
        assert status is not None and "b" in status.deserialize_failed_partition_subsets(
            child.partitions_def).get_partition_keys()


def test_a_lost_run_worker_failure_is_one_that_run_retries_retry():
    """The watchdog's failure is recorded as an unexpected termination, which Dagster's run
    retry daemon retries even with retry_on_asset_or_op_failure false."""
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    overrides = {"run_retries": {"enabled": True, "max_retries": 2,
                                 "retry_on_asset_or_op_failure": False}}
    with dg.instance_for_test(overrides=overrides) as instance:
        run = instance.create_run_for_job(planner, status=dg.DagsterRunStatus.STARTED)
        dagster_private.report_lost_run_worker(instance, run, "the run worker is gone")
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        assert should_retry(failed, instance)
