"""The landing sensor: each new, complete batch folder becomes a partition and one run."""

import json
from collections import Counter
from collections.abc import Iterable

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
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

# A batch whose every ingestion run failed (its process was killed, a foreign process held the
# warehouse too long) is requested again, under a new run key, up to this many runs in all; a
# batch that fails that often needs a person (its runs' errors are in the UI).
MAX_ATTEMPTS = 3


def batch_run_key(batch: str, attempt: int = 1) -> str:
    """The run key of the `attempt`-th run requested for `batch` (Dagster runs a key once)."""
    return f"landing-batch:{batch}" if attempt == 1 else f"landing-batch:{batch}:attempt-{attempt}"


# The tag Dagster gives a run of one partition.
PARTITION_NAME_TAG = "dagster/partition"


def batch_runs(
    instance: DagsterInstance, batches: Iterable[str], statuses: list[DagsterRunStatus]
) -> Counter[str]:
    """How many `batch_job` runs of each of `batches` are in one of `statuses`."""
    wanted = sorted(set(batches))
    if not wanted:
        return Counter()
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=batch_job.name, statuses=statuses, tags={PARTITION_NAME_TAG: wanted}
        )
    )
    return Counter(record.dagster_run.tags.get(PARTITION_NAME_TAG) for record in records)


def ingested_or_in_flight(instance: DagsterInstance, batches: Iterable[str]) -> set[str]:
    """The batches among `batches` that a `batch_job` run ingested or is ingesting.

    A partition alone says nothing: the demo adds every new batch's partition before it runs
    the first, so an interrupted demo leaves partitions that no run ever ingested."""
    return set(batch_runs(instance, batches, DONE_OR_UNDER_WAY))


def failed_runs(instance: DagsterInstance, batches: Iterable[str]) -> Counter[str]:
    """How many `batch_job` runs of each of `batches` failed or were canceled."""
    return batch_runs(instance, batches, [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])


@sensor(job=batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def landing_batch_sensor(context: SensorEvaluationContext, landing: LandingArea):
    """Add a partition and request one ingestion run for every batch whose _READY has appeared.

    The cursor lists the batches already requested; run keys make a re-delivered request a no-op.
    A batch that is already a partition is requested only if no `batch_job` run has ingested it
    or is ingesting it (the demo, or a person in the UI, may have added it and stopped short).
    A requested batch whose runs all failed is requested again (MAX_ATTEMPTS runs in all).
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
    known = [batch for batch in ready if batch in requested or batch in existing]
    done = ingested_or_in_flight(context.instance, known)
    failures = failed_runs(context.instance, [batch for batch in known if batch not in done])
    pending = [batch for batch in ready if batch not in done]
    given_up = [batch for batch in pending if failures[batch] >= MAX_ATTEMPTS]
    due = [batch for batch in pending if batch not in requested and batch not in given_up]
    retry = [
        batch
        for batch in pending
        if batch in requested and batch not in given_up and failures[batch] > 0
    ]
    if given_up:
        context.log.warning(
            f"not requested again after {MAX_ATTEMPTS} failed runs each: {given_up}; see their "
            f"runs' errors, then re-execute them from the UI"
        )
    if not due and not retry:
        return SkipReason(f"no new landing batches ({len(ready)} ready, none new)")
    new = [batch for batch in due if batch not in existing]
    if len(new) < len(due):
        context.log.info(f"partitions never ingested: {[b for b in due if b in existing]}")
    if new:
        context.log.info(f"new landing batches: {new}")
    if retry:
        context.log.info(f"landing batches whose runs failed, requested again: {retry}")
    keys = {batch: batch_run_key(batch, failures[batch] + 1) for batch in due + retry}
    return SensorResult(
        # In batch order: the run queue admits one ingestion at a time, in submission order.
        run_requests=[
            RunRequest(run_key=keys[batch], partition_key=batch) for batch in sorted(keys)
        ],
        dynamic_partitions_requests=[landing_batches.build_add_request(new)] if new else [],
        cursor=json.dumps(sorted(requested | set(due))),
    )
