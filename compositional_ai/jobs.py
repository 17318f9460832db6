"""The jobs that sensors and the demo run: ingest a batch, bootstrap, retrain, reference data."""

from dagster import AssetSelection, DagsterRunStatus, define_asset_job, in_process_executor

from compositional_ai.resources.warehouse import HOLD_FOR_RUN, HOLD_TAG

INGEST_TAG = "compositional_ai/ingest"
RETRAIN_TAG = "compositional_ai/retrain"

# A run in one of these states did its work or is doing it; a failed or canceled one did not,
# so what it was for is still to do (the sensors and the demo ask for it again).
DONE_OR_UNDER_WAY = [
    DagsterRunStatus.SUCCESS,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

REFERENCE_ASSETS = AssetSelection.assets(
    ["bronze", "product_catalog"],
    ["silver", "product_catalog"],
    ["bronze", "holdout_labels"],
    ["bronze", "holdout_photos"],
    ["silver", "holdout_photos"],
)

# One run per landing batch: landed files to bronze, silver, and the batch's inference logs.
BATCH_ASSETS = (
    AssetSelection.groups("bronze", "silver", "chatbot")
    | AssetSelection.assets(["repair", "repair_inference_log"])
) - REFERENCE_ASSETS

SEED_MODEL_ASSETS = AssetSelection.assets(
    ["gold", "confirmed_labels"],
    ["repair", "repair_seed_training_set"],
    ["repair", "repair_damage_model"],
)

# The loop replay is an experiment run on demand (loop_replay_job), not part of retraining.
RETRAINING_ASSETS = AssetSelection.groups(
    "gold", "feedback", "defect_detection", "recommendation"
) - AssetSelection.assets(["feedback", "feedback_loop_replay"])

# Ingestion is many short steps (a batch run: ten steps, about 50 warehouse reads and writes, a
# few seconds in all). Its runs execute in one process, holding the warehouse open throughout:
# a process per step would start an interpreter and import the code location for each one, and
# the file would be opened and checkpointed at every access. Other processes wait for the run.
HELD_WAREHOUSE = {HOLD_TAG: HOLD_FOR_RUN}

reference_job = define_asset_job(
    "reference_job",
    selection=REFERENCE_ASSETS,
    description="Load the product catalog and the evaluation holdout.",
    executor_def=in_process_executor,
    tags=HELD_WAREHOUSE,
)

batch_job = define_asset_job(
    "batch_job",
    selection=BATCH_ASSETS,
    description="Ingest one landing batch through bronze and silver, and assess its requests.",
    executor_def=in_process_executor,
    # The instance's run queue admits one run with INGEST_TAG at a time (see demo.DAGSTER_YAML).
    tags={**HELD_WAREHOUSE, INGEST_TAG: "landing_batch"},
)

seed_model_job = define_asset_job(
    "seed_model_job",
    selection=SEED_MODEL_ASSETS,
    description="Train the first repair model from the workshop archive's confirmed labels.",
    # A chain of three steps, so nothing runs in parallel; one process spares two start-ups. The
    # warehouse is not held: training computes for minutes between accesses.
    executor_def=in_process_executor,
)

retraining_job = define_asset_job(
    "retraining_job",
    selection=RETRAINING_ASSETS,
    description="Rebuild gold, the training sets and the models from the inference logs.",
    # The definitions' multiprocess executor: the two photo models train side by side, and
    # every step opens the warehouse only for its own reads and writes.
    # One retraining at a time: a second request waits in the queue instead of overlapping.
    tags={RETRAIN_TAG: "models"},
)
