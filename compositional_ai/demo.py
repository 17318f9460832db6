"""Run the whole graph on the demo landing data, the way the sensors would, in one process.

The order is the one time imposes: reference data; each landing batch as the landing sensor
requests it; the seed repair model once the workshop archive is in; then one retraining run, as
the inference-partition sensor requests it.
"""

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    RunsFilter,
    build_sensor_context,
)

from compositional_ai.definitions import build_definitions
from compositional_ai.feedback.sensors import inference_partition_sensor
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.resources.model_registry import CHAMPION
from compositional_ai.settings import DataPaths
from compositional_ai.warehouse.sensors import landing_batch_sensor

logger = logging.getLogger("compositional_ai.demo")

DAGSTER_YAML = """\
# Written by compositional-ai. Nothing the project starts may reach for the network.
telemetry:
  enabled: false
# Silver validates a batch against the batches before it (returning customers, outcomes for the
# previous week's requests), so ingestion runs queue one at a time, in the order they were
# submitted: a backfill submits partitions in key order, the landing sensor in landing order.
run_queue:
  tag_concurrency_limits:
    - key: compositional_ai/ingest
      limit: 1
    - key: compositional_ai/retrain
      limit: 1
"""
WRITTEN_BY_US = "# Written by compositional-ai."


# Op names of the photo-model assets, which take a training configuration.
SEED_MODEL_OP = "repair__repair_damage_model"
RETRAINING_MODEL_OPS = ["feedback__repair_damage_model_next", "defect_detection__defect_detector"]


REFERENCE_STEP = "reference data: product catalog and evaluation holdout"

# Every run the demo executes in its own process says which process that is, so a run whose
# process was killed (it stays STARTED in Dagster's storage) can be told from one still going.
OWNER_HOST_TAG = "compositional_ai/host"
OWNER_PID_TAG = "compositional_ai/pid"
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


class DemoRunFailed(RuntimeError):
    """Raised when a run of the demo does not succeed; the message names the job and partition."""


class DemoInterrupted(DemoRunFailed):
    """Raised when a run of the demo stopped because the process was interrupted (Ctrl-C)."""


# How a step failure records an interruption: Dagster turns SIGINT inside a step into its own
# error; a KeyboardInterrupt raised by the step's code stays one.
INTERRUPTIONS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


def init_dagster_home(paths: DataPaths) -> Path:
    """Create the persistent Dagster home under the data directory, telemetry off."""
    home = paths.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # A file the project wrote is brought up to date; one a person wrote is left alone.
    if not config.exists() or config.read_text(encoding="utf-8").startswith(WRITTEN_BY_US):
        config.write_text(DAGSTER_YAML, encoding="utf-8")
    return home


def owner_tags() -> dict[str, str]:
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def fail_orphaned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the unfinished runs that a process on this host executed and is gone.

    A run killed with its process (SIGKILL, a lost terminal) never records its end: it would
    stay STARTED, hold its concurrency slot (one ingestion at a time) and, for a batch, look
    as if it were still being ingested. Returns the run ids marked failed."""
    records = instance.get_run_records(
        filters=RunsFilter(statuses=UNFINISHED, tags={OWNER_HOST_TAG: socket.gethostname()})
    )
    failed = []
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(OWNER_PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        instance.report_run_failed(
            run, message=f"process {pid} that executed this run is gone; it never finished"
        )
        failed.append(run.run_id)
    return failed


def execute_job(
    defs: Definitions,
    instance: DagsterInstance,
    job_name: str,
    *,
    partition_key: str | None = None,
    tags: dict | None = None,
    run_config: dict | None = None,
) -> None:
    job = defs.resolve_job_def(job_name)
    label = f"{job_name}" + (f" [{partition_key}]" if partition_key else "")
    logger.info("running %s", label)
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        tags={**(tags or {}), **owner_tags()},
        # The demo prints its own progress; Dagster's console shows only warnings and errors,
        # while every event still goes to the instance for the UI.
        run_config={
            **(run_config or {}),
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
        raise_on_error=False,
    )
    if not result.success:
        errors = [
            (event.step_key, event.event_specific_data.error)
            for event in result.all_events
            if event.is_step_failure and event.event_specific_data.error
        ]
        if any(error.cls_name in INTERRUPTIONS for _, error in errors):
            raise DemoInterrupted(f"{label} was interrupted (run {result.run_id})")
        failures = [f"{step}: {_root_cause(error)}" for step, error in errors]
        raise DemoRunFailed(f"{label} failed (run {result.run_id}): {'; '.join(failures)}")


def _root_cause(error) -> str:
    """The innermost error of a Dagster step failure: the one a person needs to read."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def sensor_requests(sensor, instance: DagsterInstance, defs: Definitions) -> list[RunRequest]:
    """Evaluate a sensor once, as a tick would: add the partitions it asks for, return its runs."""
    # The context opens the resources that manage their own lifetime (the warehouse's).
    with build_sensor_context(instance=instance, resources=defs.resources or {}) as context:
        result = sensor(context)
    if result is None or not hasattr(result, "run_requests"):
        return []
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(result.run_requests or [])


def run_demo(
    paths: DataPaths,
    *,
    training_run_config: dict | None = None,
    on_step: Callable[[str], None] = logger.info,
) -> list[str]:
    """Materialize every asset on the landing data under `paths`, in time order.

    Returns the steps it ran (the labels given to `on_step`): the reference data always, then
    only what is new since the last run (landing batches, the seed model, a retraining).
    """
    steps: list[str] = []

    def step(label: str) -> None:
        steps.append(label)
        on_step(label)

    os.environ.setdefault("DAGSTER_HOME", str(init_dagster_home(paths)))
    instance = DagsterInstance.get()
    for run_id in fail_orphaned_runs(instance):
        logger.warning("run %s was left unfinished by a killed process: marked failed", run_id)
    defs = build_definitions(paths)
    ops = training_run_config or {}

    step(REFERENCE_STEP)
    execute_job(defs, instance, "reference_job")

    batch_requests = sensor_requests(landing_batch_sensor, instance, defs)
    registry = defs.resources["model_registry"]
    for request in sorted(batch_requests, key=lambda r: r.partition_key):
        step(f"landing batch {request.partition_key}")
        execute_job(
            defs,
            instance,
            "batch_job",
            partition_key=request.partition_key,
            tags=dict(request.tags),
        )
        if not registry.has_alias(REPAIR_MODEL, CHAMPION):
            step("seed repair model from the workshop archive")
            execute_job(
                defs,
                instance,
                "seed_model_job",
                run_config=ops_config(ops, [SEED_MODEL_OP]),
            )

    for request in sensor_requests(inference_partition_sensor, instance, defs):
        step("retraining on the inference logs")
        execute_job(
            defs,
            instance,
            "retraining_job",
            tags=dict(request.tags),
            run_config=ops_config(ops, RETRAINING_MODEL_OPS),
        )
    return steps


def ops_config(training: dict, op_names: list[str] = RETRAINING_MODEL_OPS) -> dict:
    """Run config giving each named training op the same training settings (if any)."""
    if not training:
        return {}
    return {"ops": {name: {"config": training} for name in op_names}}
