"""Manufacturing-defect detection, learned from the photos the repair service labelled."""

import polars as pl
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    MetadataValue,
    Output,
    asset,
)

from compositional_ai.feedback.assets import (
    LABEL_SOURCES,
    NO_HOLDOUT_LEAKAGE,
    SELF_LABEL_CEILING,
    descendants_check,
    evaluation_check,
    label_checks,
    label_share_check,
    leakage_check,
)
from compositional_ai.feedback.policy import (
    LabelPolicy,
    OriginPolicy,
    admitted_labels,
    model_candidates,
    other_candidates,
)
from compositional_ai.landing.formats import CHATBOT, MODEL, SYNTHETIC, TECHNICIAN
from compositional_ai.repair_service.assets import promotion_gate
from compositional_ai.repair_service.served_assets import (
    all_damage_labels,
    all_inferences,
)
from compositional_ai.repair_service.vision_models import photo_model_asset
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse.reporting import DEFECTIVE_FROM_LEVEL
from compositional_ai.warehouse.silver import HOLDOUT_IDENTITIES

DEFECT_MODEL = "defect_detector"
DEFECT_TRAINING_SET = AssetKey(["defect_detection", "defect_training_set"])
# No configuration can let one non-technician origin be more than this share of the set.
DEFECT_CEILINGS = {MODEL: SELF_LABEL_CEILING, CHATBOT: 0.25, SYNTHETIC: 0.25}


class DefectLabelConfig(Config):
    """Which labels besides the technicians' the defect detector may learn from, and how many.

    Every origin is off by default; each needs its flag. A model label is the repair model's
    unconfirmed grade (defective from level 2), at least `model_label_min_confidence` sure.
    """

    model_labels_enabled: bool = False
    model_label_min_confidence: float = 0.9
    model_label_max_share: float = 0.2
    chatbot_labels_enabled: bool = False
    chatbot_min_confidence: float = 1.0
    chatbot_max_share: float = 0.1
    synthetic_labels_enabled: bool = False
    synthetic_max_share: float = 0.1

    def label_policy(self) -> LabelPolicy:
        model = OriginPolicy(
            enabled=self.model_labels_enabled,
            min_confidence=self.model_label_min_confidence,
            max_share=self.model_label_max_share,
        )
        return LabelPolicy.from_config(self, model)


DEFECT_COLUMNS = {
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "parent_sha256": pl.String,
    "defective": pl.Int64,
    "label_origin": pl.String,
    "label_confidence": pl.Float64,
    "model_version": pl.String,
}


def defect_rows(
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout_shas: pl.Series,
    *,
    min_confidence: float = 0.9,
    max_share: float = 0.0,
    policy: LabelPolicy | None = None,
) -> pl.DataFrame:
    """Defective-or-functional photos: technician labels, plus what the label policy admits.

    `labels` holds technician labels and may hold chatbot and synthetic candidates
    (gold.damage_labels rows); the model's candidates are the inference log's grades. Without
    `policy`, `min_confidence` and `max_share` make a model-only policy, on when the share is
    positive.
    """
    if policy is None:
        policy = LabelPolicy(
            model=OriginPolicy(
                enabled=max_share > 0, min_confidence=min_confidence, max_share=max_share
            )
        )
    technician = labels.filter(pl.col("label_origin") == TECHNICIAN).select(
        "request_id", "photo_sha256", "damage_level", "label_origin"
    )
    predictions = inference_log.filter(pl.col("status") == "ok").select(
        "request_id", "model_version"
    )
    candidates = pl.concat(
        [
            other_candidates(labels),
            model_candidates(labels, inference_log).join(predictions, on="request_id"),
        ],
        how="diagonal_relaxed",
    )
    rows = admitted_labels(technician, candidates, policy=policy, holdout_shas=holdout_shas)
    rows = rows.with_columns(
        (pl.col("damage_level") >= DEFECTIVE_FROM_LEVEL).cast(pl.Int64).alias("defective")
    )
    return rows.select(
        pl.col(name).cast(dtype) if name in rows.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in DEFECT_COLUMNS.items()
    ).sort("request_id", "label_origin", "photo_sha256")


@asset(
    key_prefix="defect_detection",
    group_name="defect_detection",
    tags={"role": "training_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "holdout": HOLDOUT_IDENTITIES,
    },
    deps=LABEL_SOURCES,
    check_specs=[
        *label_checks(DEFECT_TRAINING_SET),
        AssetCheckSpec(
            NO_HOLDOUT_LEAKAGE,
            asset=DEFECT_TRAINING_SET,
            blocking=True,
            description="No photo of the evaluation holdout is in the training set.",
        ),
    ],
)
def defect_training_set(
    context: AssetExecutionContext,
    config: DefectLabelConfig,
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout: pl.DataFrame,
    warehouse: Warehouse,
):
    """Photos labelled defective or functional by technicians, plus the model, chatbot and
    synthetic labels the recorded policy admits."""
    policy = config.label_policy()
    inferences = all_inferences(warehouse, inference_log)
    rows = defect_rows(
        all_damage_labels(warehouse, labels, inferences),
        inferences,
        holdout["sha256"],
        policy=policy,
    )
    by_origin = dict(rows.group_by("label_origin").len().sort("label_origin").iter_rows())
    context.log.info(f"defect training set: {rows.height} rows by origin {by_origin}")
    yield Output(
        rows,
        metadata={
            "rows_by_origin": MetadataValue.json(by_origin),
            "label_policy": MetadataValue.json(policy.record()),
            "inference_partitions": MetadataValue.json(
                sorted(inferences["batch"].unique().to_list())
            ),
            "model_versions": MetadataValue.json(
                sorted(rows["model_version"].drop_nulls().unique().to_list())
            ),
        },
    )
    yield leakage_check(rows, holdout, DEFECT_TRAINING_SET)
    yield descendants_check(rows, holdout["sha256"], DEFECT_TRAINING_SET)
    yield label_share_check(rows, policy, DEFECT_TRAINING_SET, DEFECT_CEILINGS)
    yield evaluation_check(holdout, DEFECT_TRAINING_SET)


defect_detector = photo_model_asset(
    key_prefix="defect_detection",
    name="defect_detector",
    group_name="defect_detection",
    training_set_key=["defect_detection", "defect_training_set"],
    model_name=DEFECT_MODEL,
    label_column="defective",
    num_classes=2,
    description="A CNN telling defective from functional cells, evaluated on the expert-labelled "
    "holdout.",
    after_register=promotion_gate(DEFECT_MODEL, "binary_accuracy"),
)
