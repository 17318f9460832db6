"""The inference-partition sensor: new inference-log partitions request exactly one run."""

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SkipReason,
    build_sensor_context,
)
from dagster._core.utils import make_new_run_id

from compositional_ai.feedback.sensors import COVERED_EVENT_TAG, inference_partition_sensor
from compositional_ai.jobs import retraining_job

LOG = AssetKey(["repair", "repair_inference_log"])


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _log_partitions(instance, *partitions):
    for partition in partitions:
        instance.report_runless_asset_event(AssetMaterialization(LOG, partition=partition))


def _tick(instance, cursor):
    result = inference_partition_sensor(build_sensor_context(instance=instance, cursor=cursor))
    if isinstance(result, SkipReason):
        return [], cursor
    return result.run_requests, result.cursor


def test_one_run_per_new_data_and_none_without(instance):
    requests, cursor = _tick(instance, None)
    assert requests == [] and cursor is None

    _log_partitions(instance, "2026-01-12", "2026-01-19")
    requests, cursor = _tick(instance, None)

    assert len(requests) == 1
    assert requests[0].tags["compositional_ai/inference_partitions"] == "2026-01-12,2026-01-19"
    newest = max(
        record.storage_id for record in instance.fetch_materializations(LOG, limit=10).records
    )
    assert cursor == str(newest)
    assert requests[0].tags[COVERED_EVENT_TAG] == str(newest)
    assert requests[0].run_key == f"retrain-after-event-{newest}"

    # Ticks with nothing new request nothing and keep the cursor.
    for _ in range(3):
        again, same = _tick(instance, cursor)
        assert again == [] and same == cursor

    # A re-materialized partition is new data: one more run, covering only it.
    _log_partitions(instance, "2026-01-19")
    requests, later = _tick(instance, cursor)
    assert len(requests) == 1 and int(later) > int(cursor)
    assert requests[0].tags["compositional_ai/inference_partitions"] == "2026-01-19"


def test_other_assets_do_not_trigger_retraining(instance):
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(["silver", "customers"])))

    requests, cursor = _tick(instance, None)

    assert requests == [] and cursor is None


def test_new_data_joins_a_retraining_run_that_has_not_started(instance):
    _log_partitions(instance, "2026-01-12")
    requests, cursor = _tick(instance, None)
    assert len(requests) == 1
    # The requested run has not started (the instance adds queued runs only with a code
    # location's origin; a run not yet started stands for both waiting states here).
    waiting = instance.add_run(
        DagsterRun(
            job_name=retraining_job.name,
            run_id=make_new_run_id(),
            status=DagsterRunStatus.NOT_STARTED,
            tags=requests[0].tags,
        )
    )
    _log_partitions(instance, "2026-01-19", "2026-01-26")
    for _ in range(2):
        again, same = _tick(instance, cursor)
        assert again == [] and same == cursor
    # Once it has started (here: ended), data after the cursor gets one run of its own.
    instance.report_run_failed(waiting)
    requests, later = _tick(instance, cursor)
    assert len(requests) == 1 and int(later) > int(cursor)
    assert requests[0].tags["compositional_ai/inference_partitions"] == "2026-01-19,2026-01-26"


def test_a_waiting_run_of_another_job_does_not_hold_retraining_back(instance):
    instance.add_run(
        DagsterRun(
            job_name="batch_job", run_id=make_new_run_id(), status=DagsterRunStatus.NOT_STARTED
        )
    )
    _log_partitions(instance, "2026-01-12")
    requests, _ = _tick(instance, None)
    assert len(requests) == 1


def _retraining_run(instance, tags: dict, status: DagsterRunStatus) -> None:
    instance.add_run(
        DagsterRun(job_name=retraining_job.name, run_id=make_new_run_id(), status=status, tags=tags)
    )


@pytest.mark.parametrize(
    ("status", "requested_again"),
    [
        (DagsterRunStatus.SUCCESS, False),
        (DagsterRunStatus.STARTED, False),
        # Interrupted (Ctrl-C, or a killed process marked failed) or canceled: trained nothing.
        (DagsterRunStatus.FAILURE, True),
        (DagsterRunStatus.CANCELED, True),
    ],
)
def test_without_a_cursor_only_a_run_that_trained_or_will_covers_its_data(
    instance, status, requested_again
):
    _log_partitions(instance, "2026-01-12", "2026-01-19")
    (first,), cursor = _tick(instance, None)
    _retraining_run(instance, first.tags, status)

    # The demo evaluates the sensor afresh each time: no cursor, only the runs.
    again, _ = _tick(instance, None)

    assert [r.tags[COVERED_EVENT_TAG] for r in again] == ([cursor] if requested_again else [])
    # The daemon's sensor keeps its cursor and does not repeat a failed run by itself.
    assert _tick(instance, cursor)[0] == []
