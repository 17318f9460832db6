"""The landing sensor: each new, complete batch folder becomes a partition and one run."""

import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from compositional_ai.jobs import batch_job
from compositional_ai.resources.landing import LandingArea
from compositional_ai.warehouse.landing_files import check_batch_key
from compositional_ai.warehouse.partitions import landing_batches


def batch_run_key(batch: str) -> str:
    return f"landing-batch:{batch}"


@sensor(job=batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def landing_batch_sensor(context: SensorEvaluationContext, landing: LandingArea):
    """Add a partition and request one ingestion run for every batch whose _READY has appeared.

    The cursor lists the batches already requested; run keys make a re-delivered request a no-op.
    """
    requested = set(json.loads(context.cursor)) if context.cursor else set()
    # A batch that is already a partition was ingested by someone else (the demo, a person in
    # the UI); the sensor leaves it alone rather than ingesting it a second time.
    existing = set(context.instance.get_dynamic_partitions(landing_batches.name))
    ready = []
    for batch in landing.ready_batches():
        try:
            ready.append(check_batch_key(batch))
        except ValueError as error:
            # One badly named folder must not stop the other batches from being ingested.
            context.log.warning(f"landing folder skipped: {error}")
    new = [batch for batch in ready if batch not in requested and batch not in existing]
    if not new:
        return SkipReason(f"no new landing batches ({len(ready)} ready, none new)")
    context.log.info(f"new landing batches: {new}")
    return SensorResult(
        run_requests=[
            RunRequest(run_key=batch_run_key(batch), partition_key=batch) for batch in new
        ],
        dynamic_partitions_requests=[landing_batches.build_add_request(new)],
        cursor=json.dumps(sorted(requested | set(new))),
    )
