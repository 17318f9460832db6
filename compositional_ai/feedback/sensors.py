"""The inference-partition sensor: new inference-log partitions trigger one retraining run."""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from compositional_ai.jobs import DONE_OR_UNDER_WAY, retraining_job

INFERENCE_LOGS = (
    AssetKey(["repair", "repair_inference_log"]),
    AssetKey(["repair", "served_inference_log"]),
)
PAGE = 1000
# Every retraining run this sensor requests records the newest inference event it covers, so a
# sensor whose cursor was lost or never set (a new instance, a reset) resumes from the runs.
COVERED_EVENT_TAG = "compositional_ai/inference_event_covered"


def covered_event(context: SensorEvaluationContext) -> int | None:
    """The newest inference event that a retraining run already covers, from the cursor or runs.

    Without a cursor (the demo, which evaluates the sensor afresh each time; a reset sensor),
    only runs that succeeded or are under way count, so a retraining that was interrupted or
    failed is requested again. With one, the daemon's sensor does not repeat a run that failed:
    the next inference partition requests one that trains on everything, as every run does."""
    if context.cursor:
        return int(context.cursor)
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=retraining_job.name, statuses=DONE_OR_UNDER_WAY), limit=20
    )
    covered = [int(run.tags[COVERED_EVENT_TAG]) for run in runs if COVERED_EVENT_TAG in run.tags]
    return max(covered) if covered else None


# Runs that have not started yet read gold, the training sets and the models' inputs only once
# they start, so a waiting run already covers whatever lands before then.
WAITING = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED]


def waiting_retraining(context: SensorEvaluationContext) -> str | None:
    """The id of a retraining run that is requested but not started yet, if there is one."""
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=retraining_job.name, statuses=WAITING), limit=1
    )
    return runs[0].run_id if runs else None


def new_inference_partitions(context: SensorEvaluationContext, after: int | None):
    """Materializations of the inference logs stored after event `after`: (ids, partitions)."""
    storage_ids, partitions = [], set()
    for key in INFERENCE_LOGS:
        cursor = None
        while True:
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, after_storage_id=after),
                limit=PAGE,
                cursor=cursor,
                ascending=True,
            )
            for record in result.records:
                storage_ids.append(record.storage_id)
                if record.partition_key is not None:
                    partitions.add(record.partition_key)
            if not result.has_more:
                break
            cursor = result.cursor
    return storage_ids, sorted(partitions)


@sensor(job=retraining_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def inference_partition_sensor(context: SensorEvaluationContext):
    """Request exactly one retraining run for the inference-log partitions logged since the
    last request, unless a requested one has not started yet; the cursor is the newest event
    already covered."""
    after = covered_event(context)
    storage_ids, partitions = new_inference_partitions(context, after)
    if not storage_ids:
        return SkipReason("no inference-log partitions since the last retraining request")
    waiting = waiting_retraining(context)
    if waiting is not None:
        # Merged into the waiting run rather than queued behind it; the cursor stays, so once
        # that run has started, whatever it may have missed gets one run of its own.
        return SkipReason(
            f"{len(storage_ids)} new inference-log materializations; retraining run {waiting} "
            "has not started yet and will read them"
        )
    newest = max(storage_ids)
    context.log.info(f"{len(storage_ids)} new inference-log materializations: {partitions}")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"retrain-after-event-{newest}",
                tags={
                    "compositional_ai/inference_partitions": ",".join(partitions)[:4000],
                    COVERED_EVENT_TAG: str(newest),
                },
            )
        ],
        cursor=str(newest),
    )
