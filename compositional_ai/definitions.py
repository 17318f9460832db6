"""The compositional-ai code location: every asset, check, job, sensor and resource."""

from dagster import (
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multiprocess_executor,
)

from compositional_ai import jobs
from compositional_ai.chatbot import assets as chatbot_assets
from compositional_ai.defect_detection import assets as defect_assets
from compositional_ai.feedback import assets as feedback_assets
from compositional_ai.feedback import replay_assets
from compositional_ai.feedback.sensors import inference_partition_sensor
from compositional_ai.recommendation import assets as recommendation_assets
from compositional_ai.repair_service import assets as repair_assets
from compositional_ai.repair_service import served_assets
from compositional_ai.repair_service.served_assets import served_log_sensor
from compositional_ai.resources.landing import LandingArea
from compositional_ai.resources.model_registry import ModelRegistry
from compositional_ai.resources.warehouse import Warehouse, WarehouseIOManager
from compositional_ai.settings import DataPaths
from compositional_ai.warehouse import bronze, gold, silver
from compositional_ai.warehouse.sensors import landing_batch_sensor

ASSET_MODULES = [
    bronze,
    silver,
    gold,
    chatbot_assets,
    repair_assets,
    feedback_assets,
    defect_assets,
    recommendation_assets,
    served_assets,
    replay_assets,
]


def build_resources(paths: DataPaths) -> dict:
    """The resources for one data directory: warehouse, landing folder, model registry."""
    warehouse = str(paths.warehouse)
    return {
        "io_manager": WarehouseIOManager(path=warehouse),
        "warehouse": Warehouse(path=warehouse),
        "landing": LandingArea(root=str(paths.landing)),
        "model_registry": ModelRegistry(
            tracking_uri=f"sqlite:///{paths.mlflow / 'mlflow.db'}",
            artifact_root=str(paths.mlflow / "artifacts"),
        ),
    }


def build_definitions(paths: DataPaths) -> Definitions:
    return Definitions(
        assets=load_assets_from_modules(ASSET_MODULES),
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[
            jobs.reference_job,
            jobs.batch_job,
            jobs.seed_model_job,
            jobs.retraining_job,
            replay_assets.loop_replay_job,
        ],
        sensors=[landing_batch_sensor, inference_partition_sensor, served_log_sensor],
        resources=build_resources(paths),
        # Warehouse access is serialised by its lock, so steps may run in parallel safely; two
        # at a time matches the two cores the project is sized for.
        executor=multiprocess_executor.configured({"max_concurrent": 2}),
    )


defs = build_definitions(DataPaths.from_env())
