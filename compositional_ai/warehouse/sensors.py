"""The landing sensor: each new, complete batch folder becomes a partition and one run."""

import json
from collections.abc import Iterable

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from compositional_ai.jobs import DONE_OR_UNDER_WAY, batch_job
from compositional_ai.resources.landing import LandingArea
from compositional_ai.warehouse.landing_files import check_batch_key
from compositional_ai.warehouse.partitions import landing_batches


def batch_run_key(batch: str) -> str:
    return f"landing-batch:{batch}"


# The tag Dagster gives a run of one partition.
PARTITION_NAME_TAG = "dagster/partition"


def ingested_or_in_flight(instance: DagsterInstance, batches: Iterable[str]) -> set[str]:
    """The batches among `batches` that a `batch_job` run ingested or is ingesting.

    A partition alone says nothing: the demo adds every new batch's partition before it runs
    the first, so an interrupted demo leaves partitions that no run ever ingested."""
    wanted = sorted(set(batches))
    if not wanted:
        return set()
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=batch_job.name,
            statuses=DONE_OR_UNDER_WAY,
            tags={PARTITION_NAME_TAG: wanted},
        )
    )
    return {record.dagster_run.tags.get(PARTITION_NAME_TAG) for record in records} & set(wanted)


@sensor(job=batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def landing_batch_sensor(context: SensorEvaluationContext, landing: LandingArea):
    """Add a partition and request one ingestion run for every batch whose _READY has appeared.

    The cursor lists the batches already requested; run keys make a re-delivered request a no-op.
    A batch that is already a partition is requested only if no `batch_job` run has ingested it
    or is ingesting it (the demo, or a person in the UI, may have added it and stopped short).
    """
    requested = set(json.loads(context.cursor)) if context.cursor else set()
    existing = set(context.instance.get_dynamic_partitions(landing_batches.name))
    ready = []
    for batch in landing.ready_batches():
        try:
            ready.append(check_batch_key(batch))
        except ValueError as error:
            # One badly named folder must not stop the other batches from being ingested.
            context.log.warning(f"landing folder skipped: {error}")
    unrequested = [batch for batch in ready if batch not in requested]
    done = ingested_or_in_flight(
        context.instance, [batch for batch in unrequested if batch in existing]
    )
    due = [batch for batch in unrequested if batch not in done]
    if not due:
        return SkipReason(f"no new landing batches ({len(ready)} ready, none new)")
    new = [batch for batch in due if batch not in existing]
    if len(new) < len(due):
        context.log.info(f"partitions never ingested: {[b for b in due if b in existing]}")
    context.log.info(f"new landing batches: {new}")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=batch_run_key(batch), partition_key=batch) for batch in due
        ],
        dynamic_partitions_requests=[landing_batches.build_add_request(new)] if new else [],
        cursor=json.dumps(sorted(requested | set(due))),
    )
