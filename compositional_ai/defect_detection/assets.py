"""Manufacturing-defect detection, learned from the photos the repair service labelled."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, Config, MetadataValue, asset

from compositional_ai.repair_service.assets import promotion_gate
from compositional_ai.repair_service.served_assets import (
    SERVED_INFERENCE_LOG,
    SERVED_OUTCOMES,
    all_confirmed_labels,
    all_inferences,
)
from compositional_ai.repair_service.vision_models import photo_model_asset
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse.reporting import DEFECTIVE_FROM_LEVEL

DEFECT_MODEL = "defect_detector"


class DefectLabelConfig(Config):
    """How confident the repair model must be for its unconfirmed grade to label a photo."""

    model_label_min_confidence: float = 0.9
    model_label_max_share: float = 0.2


def defect_rows(
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout_shas: pl.Series,
    *,
    min_confidence: float,
    max_share: float,
) -> pl.DataFrame:
    """Defective-or-functional photos: technician labels first, confident model grades capped."""
    confirmed = labels.select(
        "request_id",
        "photo_sha256",
        pl.col("defective").cast(pl.Int64).alias("defective"),
        "label_origin",
        pl.lit(None, pl.String).alias("model_version"),
    )
    unconfirmed = (
        inference_log.filter(
            (pl.col("status") == "ok")
            & ~pl.col("request_id").is_in(labels["request_id"].implode())
            & (pl.col("confidence") >= min_confidence)
        )
        .sort("confidence", "request_id", descending=[True, False])
        # One model label per photo: a client resending an image cannot multiply its weight.
        .unique("input_sha256", keep="first", maintain_order=True)
        .select(
            "request_id",
            pl.col("input_sha256").alias("photo_sha256"),
            (pl.col("predicted_level") >= DEFECTIVE_FROM_LEVEL).cast(pl.Int64).alias("defective"),
            pl.lit("model").alias("label_origin"),
            "model_version",
        )
    )
    cap = int(max_share * confirmed.height / (1 - max_share)) if max_share < 1 else None
    rows = pl.concat([confirmed, unconfirmed.head(cap)])
    return rows.filter(~pl.col("photo_sha256").is_in(holdout_shas.implode())).sort("request_id")


@asset(
    key_prefix="defect_detection",
    group_name="defect_detection",
    tags={"role": "training_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "holdout": AssetIn(key=["silver", "holdout_photos"]),
    },
    deps=[SERVED_INFERENCE_LOG, SERVED_OUTCOMES],
)
def defect_training_set(
    context: AssetExecutionContext,
    config: DefectLabelConfig,
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout: pl.DataFrame,
    warehouse: Warehouse,
) -> pl.DataFrame:
    """Photos labelled defective or functional by technicians, or by a confident repair model."""
    inference_log = all_inferences(warehouse, inference_log)
    rows = defect_rows(
        all_confirmed_labels(warehouse, labels),
        inference_log,
        holdout["sha256"],
        min_confidence=config.model_label_min_confidence,
        max_share=config.model_label_max_share,
    )
    by_origin = dict(rows.group_by("label_origin").len().iter_rows())
    context.log.info(f"defect training set: {rows.height} rows by origin {by_origin}")
    context.add_output_metadata(
        {
            "rows_by_origin": MetadataValue.json(by_origin),
            "inference_partitions": MetadataValue.json(
                sorted(inference_log["batch"].unique().to_list())
            ),
            "model_versions": MetadataValue.json(
                sorted(rows["model_version"].drop_nulls().unique().to_list())
            ),
        }
    )
    return rows


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
