"""The feedback loop: confirmed predictions retrain the repair model, promoted only if better."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from compositional_ai.feedback.lineage import create_lineage_view
from compositional_ai.feedback.policy import (
    SelfLabelPolicy,
    feedback_training_rows,
    holdout_leakage,
    self_label_share,
)
from compositional_ai.repair_service.assets import REPAIR_MODEL, promote_if_not_worse
from compositional_ai.repair_service.served_assets import (
    SERVED_INFERENCE_LOG,
    SERVED_OUTCOMES,
    all_confirmed_labels,
    all_inferences,
)
from compositional_ai.repair_service.vision_models import photo_model_asset
from compositional_ai.resources.warehouse import Warehouse

# No configuration can let model-proposed labels be more than this share of a training set.
SELF_LABEL_CEILING = 0.25
NO_HOLDOUT_LEAKAGE = "no_holdout_photos"
SELF_LABEL_SHARE = "self_label_share_within_ceiling"


class FeedbackPolicyConfig(Config):
    """Whether, and how much, the repair model may learn from its own unconfirmed predictions."""

    self_label_min_confidence: float = 0.95
    self_label_max_share: float = 0.0


def consumed_lineage(training: pl.DataFrame) -> dict:
    """Which inference-log partitions and model versions a training set consumed."""
    served = training.filter(pl.col("inference_batch").is_not_null())
    return {
        "inference_partitions": sorted(served["inference_batch"].unique().to_list()),
        "model_versions": sorted(served["model_version"].unique().to_list()),
        "rows_by_origin": dict(training.group_by("label_origin").len().iter_rows()),
    }


@asset(
    key_prefix="feedback",
    group_name="feedback",
    tags={"role": "training_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "holdout": AssetIn(key=["silver", "holdout_photos"]),
    },
    deps=[SERVED_INFERENCE_LOG, SERVED_OUTCOMES],
)
def repair_feedback_training_set(
    context: AssetExecutionContext,
    config: FeedbackPolicyConfig,
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout: pl.DataFrame,
    warehouse: Warehouse,
) -> pl.DataFrame:
    """Confirmed labels joined to the predictions they confirm: the next repair model's data."""
    policy = SelfLabelPolicy(
        min_confidence=config.self_label_min_confidence, max_share=config.self_label_max_share
    )
    training = feedback_training_rows(
        all_confirmed_labels(warehouse, labels),
        all_inferences(warehouse, inference_log),
        policy=policy,
        holdout_shas=holdout["sha256"],
    )
    lineage = consumed_lineage(training)
    context.log.info(f"feedback training set: {training.height} rows, {lineage}")
    context.add_output_metadata(
        {
            "lineage": MetadataValue.json(lineage),
            "self_label_policy": MetadataValue.json(
                {"min_confidence": policy.min_confidence, "max_share": policy.max_share}
            ),
            "self_label_share": MetadataValue.float(self_label_share(training)),
        }
    )
    return training


@asset_check(
    asset=repair_feedback_training_set,
    name=NO_HOLDOUT_LEAKAGE,
    blocking=True,
    additional_ins={"holdout": AssetIn(key=["silver", "holdout_photos"])},
    description="No photo of the evaluation holdout is in the training set.",
)
def no_holdout_photos(
    repair_feedback_training_set: pl.DataFrame, holdout: pl.DataFrame
) -> AssetCheckResult:
    leaked = holdout_leakage(repair_feedback_training_set, holdout["sha256"])
    return AssetCheckResult(
        passed=leaked == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"leaked_rows": leaked, "training_rows": repair_feedback_training_set.height},
    )


@asset_check(
    asset=repair_feedback_training_set,
    name=SELF_LABEL_SHARE,
    blocking=True,
    description=f"Model-proposed labels are at most {SELF_LABEL_CEILING:.0%} of the rows.",
)
def self_label_share_within_ceiling(repair_feedback_training_set: pl.DataFrame) -> AssetCheckResult:
    share = self_label_share(repair_feedback_training_set)
    return AssetCheckResult(
        passed=share <= SELF_LABEL_CEILING,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "self_label_share": MetadataValue.float(share),
            "ceiling": MetadataValue.float(SELF_LABEL_CEILING),
        },
    )


repair_damage_model_next = photo_model_asset(
    key_prefix="feedback",
    name="repair_damage_model_next",
    group_name="feedback",
    training_set_key=["feedback", "repair_feedback_training_set"],
    model_name=REPAIR_MODEL,
    label_column="damage_level",
    num_classes=4,
    description="The next repair model version, retrained on confirmed feedback; champion only "
    "if it is not worse.",
    after_register=promote_if_not_worse,
)


@asset(
    key_prefix="gold",
    group_name="feedback",
    tags={"role": "report"},
    deps=[
        AssetKey(["repair", "repair_inference_log"]),
        SERVED_INFERENCE_LOG,
        SERVED_OUTCOMES,
        AssetKey(["gold", "confirmed_labels"]),
        AssetKey(["repair", "repair_damage_model"]),
        AssetKey(["feedback", "repair_damage_model_next"]),
        AssetKey(["defect_detection", "defect_detector"]),
        AssetKey(["recommendation", "service_recommender"]),
    ],
)
def prediction_lineage(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """A view from each prediction to its label, the model versions that learned from it, and
    what those versions predicted next."""
    create_lineage_view(warehouse)
    figures = warehouse.query(
        "select count(*) as rows, count(distinct request_id) as predictions, "
        "count(distinct consumed_by || '@' || consumed_by_version) as consuming_versions "
        "from gold.prediction_lineage",
        purpose="describe gold.prediction_lineage",
    ).to_dicts()[0]
    context.log.info(f"gold.prediction_lineage: {figures}")
    return MaterializeResult(metadata={key: int(value) for key, value in figures.items()})
