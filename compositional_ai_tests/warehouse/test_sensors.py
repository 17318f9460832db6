"""The landing sensor: a complete batch folder becomes one partition and one run, once."""

import json

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, SkipReason, build_sensor_context
from dagster._core.utils import make_new_run_id

from compositional_ai.landing import formats
from compositional_ai.resources.landing import LandingArea
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.sensors import (
    MAX_ATTEMPTS,
    PARTITION_NAME_TAG,
    batch_run_key,
    landing_batch_sensor,
)


def _land(root, batch, *, ready=True):
    folder = root / "batches" / batch
    folder.mkdir(parents=True)
    (folder / formats.REQUESTS_FILE).write_text("")
    if ready:
        (folder / formats.READY_MARKER).write_text(json.dumps({"batch_id": batch}))


def _tick(instance, landing, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"landing": landing})
    result = landing_batch_sensor(context)
    if isinstance(result, SkipReason):
        return [], cursor, result
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    return result.run_requests, result.cursor, None


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def test_each_ready_batch_is_requested_exactly_once(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    _land(tmp_path, "2026-01-12")
    _land(tmp_path, "2026-01-19", ready=False)

    requests, cursor, _ = _tick(instance, landing, None)

    assert [r.partition_key for r in requests] == ["2026-01-05", "2026-01-12"]
    assert [r.run_key for r in requests] == [
        batch_run_key("2026-01-05"),
        batch_run_key("2026-01-12"),
    ]
    assert json.loads(cursor) == ["2026-01-05", "2026-01-12"]
    assert instance.get_dynamic_partitions(landing_batches.name) == ["2026-01-05", "2026-01-12"]

    again, same_cursor, skip = _tick(instance, landing, cursor)
    assert again == [] and same_cursor == cursor and "none new" in skip.skip_message

    (tmp_path / "batches" / "2026-01-19" / formats.READY_MARKER).write_text("{}")
    later, later_cursor, _ = _tick(instance, landing, cursor)
    assert [r.partition_key for r in later] == ["2026-01-19"]
    assert json.loads(later_cursor) == ["2026-01-05", "2026-01-12", "2026-01-19"]


def _batch_run(instance, batch, status, job_name="batch_job"):
    instance.add_run(
        DagsterRun(
            job_name=job_name,
            run_id=make_new_run_id(),
            status=status,
            tags={PARTITION_NAME_TAG: batch},
        )
    )


def test_a_lost_cursor_does_not_re_request_ingested_batches(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    _land(tmp_path, "2026-01-12")
    _tick(instance, landing, None)
    _batch_run(instance, "2026-01-05", DagsterRunStatus.SUCCESS)
    _batch_run(instance, "2026-01-12", DagsterRunStatus.STARTED)

    # A reset sensor starts with no cursor; the partitions it added earlier still exist, one
    # ingested, one being ingested.
    requests, _, skip = _tick(instance, landing, None)

    assert requests == [] and skip is not None


def test_a_partition_that_no_run_ingested_is_requested(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    for batch in ("2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"):
        _land(tmp_path, batch)
    # What an interrupted demo leaves: every partition added, the first one's run failed, the
    # second one's run of another job (which ingests nothing of the batch), the others never
    # run; one more batch ingested.
    instance.add_dynamic_partitions(
        landing_batches.name, ["2026-01-05", "2026-01-12", "2026-01-19"]
    )
    _batch_run(instance, "2026-01-05", DagsterRunStatus.FAILURE)
    _batch_run(instance, "2026-01-12", DagsterRunStatus.SUCCESS, job_name="reference_job")
    _batch_run(instance, "2026-01-19", DagsterRunStatus.SUCCESS)

    requests, cursor, _ = _tick(instance, landing, None)

    assert [r.partition_key for r in requests] == ["2026-01-05", "2026-01-12", "2026-01-26"]
    assert json.loads(cursor) == ["2026-01-05", "2026-01-12", "2026-01-26"]
    assert instance.get_dynamic_partitions(landing_batches.name) == [
        "2026-01-05",
        "2026-01-12",
        "2026-01-19",
        "2026-01-26",
    ]


@pytest.mark.parametrize(
    "name",
    [
        ".tmp-2026-01-26",  # a batch still being written under its temporary name
        "2026-01-26",  # a folder whose _READY marker has not been written yet
    ],
)
def test_incomplete_batches_are_not_requested(tmp_path, instance, name):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, name, ready=name.startswith("."))

    requests, cursor, skip = _tick(instance, landing, None)

    assert requests == [] and cursor is None and skip is not None


def test_a_folder_that_cannot_be_a_partition_key_is_skipped_not_fatal(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    _land(tmp_path, "2026...bad")  # '...' is refused in Dagster partition keys

    requests, _, _ = _tick(instance, landing, None)

    assert [r.partition_key for r in requests] == ["2026-01-05"]


def test_a_batch_whose_runs_failed_is_requested_again_a_few_times(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    _land(tmp_path, "2026-01-12")
    first, cursor, _ = _tick(instance, landing, None)
    assert [r.run_key for r in first] == [batch_run_key("2026-01-05"), batch_run_key("2026-01-12")]
    _batch_run(instance, "2026-01-12", DagsterRunStatus.SUCCESS)

    keys = []
    for _ in range(MAX_ATTEMPTS - 1):
        _batch_run(instance, "2026-01-05", DagsterRunStatus.FAILURE)
        again, cursor, _ = _tick(instance, landing, cursor)
        assert [r.partition_key for r in again] == ["2026-01-05"]
        keys.append(again[0].run_key)
        # Until the requested run exists, a tick asks again under the same key: Dagster runs a
        # run key once, so the batch gets one run per failure, not one per tick.
        waiting, cursor, _ = _tick(instance, landing, cursor)
        assert [r.run_key for r in waiting] == [again[0].run_key]
    assert keys == [f"landing-batch:2026-01-05:attempt-{n}" for n in range(2, MAX_ATTEMPTS + 1)]

    _batch_run(instance, "2026-01-05", DagsterRunStatus.CANCELED)
    given_up, _, skip = _tick(instance, landing, cursor)
    assert given_up == [] and skip is not None


def test_a_failed_batch_that_a_later_run_ingested_is_not_requested_again(tmp_path, instance):
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    _, cursor, _ = _tick(instance, landing, None)
    _batch_run(instance, "2026-01-05", DagsterRunStatus.FAILURE)
    _batch_run(instance, "2026-01-05", DagsterRunStatus.SUCCESS)

    requests, _, skip = _tick(instance, landing, cursor)

    assert requests == [] and "none new" in skip.skip_message


def test_a_never_ingested_partition_with_a_failed_run_gets_a_fresh_run_key(tmp_path, instance):
    # The cursor was lost (a new instance of the sensor) and the only run of the batch failed:
    # its first run key is spent, so the request carries the next one.
    landing = LandingArea(root=str(tmp_path))
    _land(tmp_path, "2026-01-05")
    instance.add_dynamic_partitions(landing_batches.name, ["2026-01-05"])
    _batch_run(instance, "2026-01-05", DagsterRunStatus.FAILURE)

    requests, cursor, _ = _tick(instance, landing, None)

    assert [r.run_key for r in requests] == ["landing-batch:2026-01-05:attempt-2"]
    assert json.loads(cursor) == ["2026-01-05"]
