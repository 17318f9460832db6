"""The repair service: the seed damage model and the log of every assessment it makes."""

import time
from datetime import UTC, datetime

import numpy as np
import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)

from compositional_ai.feedback.policy import PROMOTION_METRIC, promotion_decision
from compositional_ai.repair_service.quotes import quote_usd
from compositional_ai.repair_service.vision_models import (
    photo_model_asset,
    photo_pixels,
)
from compositional_ai.resources.model_registry import CHAMPION, ModelRegistry
from compositional_ai.resources.warehouse import EMPTY_IS_NORMAL_KEY, Warehouse
from compositional_ai.vision.training import predict_proba
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.silver import HOLDOUT_IDENTITIES

REPAIR_MODEL = "repair_damage_model"
INFERENCE_BATCH_SIZE = 128

INFERENCE_LOG_SCHEMA = {
    "request_id": pl.String,
    "batch": pl.String,
    "source": pl.String,
    "client_request_id": pl.String,
    "status": pl.String,
    "error": pl.String,
    "model_name": pl.String,
    "model_version": pl.String,
    "input_sha256": pl.String,
    "product_id": pl.String,
    "predicted_level": pl.Int64,
    "probabilities": pl.List(pl.Float64),
    "confidence": pl.Float64,
    "quote_usd": pl.Float64,
    "latency_ms": pl.Float64,
    "inferred_at": pl.Datetime("us", "UTC"),
}


@asset(
    key_prefix="repair",
    group_name="repair_service",
    tags={"role": "training_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "holdout": HOLDOUT_IDENTITIES,
    },
)
def repair_seed_training_set(
    context: AssetExecutionContext, labels: pl.DataFrame, holdout: pl.DataFrame
) -> pl.DataFrame:
    """The workshop archive's technician-labelled photos, which train the first repair model."""
    seed = labels.filter(
        (pl.col("channel") == "workshop")
        & ~pl.col("photo_sha256").is_in(holdout["sha256"].implode())
    ).select(
        "request_id", "request_batch", "photo_sha256", "damage_level", "cell_type", "label_origin"
    )
    if seed.is_empty():
        context.log.warning("no workshop-archive labels yet: the seed training set is empty")
    context.add_output_metadata(
        {
            "by_level": MetadataValue.json(
                seed.group_by("damage_level").len().sort("damage_level").to_dicts()
            )
        }
    )
    return seed


def promotion_gate(model_name: str, metric: str):
    """A callback that makes a new version of `model_name` champion unless it is worse than the
    current champion on the holdout `metric` beyond the tolerance, and records why."""

    def promote(
        context: AssetExecutionContext, registry: ModelRegistry, version: str, metrics: dict
    ) -> dict:
        champion = (
            registry.version_by_alias(model_name, CHAMPION)
            if registry.has_alias(model_name, CHAMPION)
            else None
        )
        decision = promotion_decision(
            metrics[metric], champion.metrics.get(metric) if champion else None, metric=metric
        )
        if decision.promote:
            registry.set_alias(model_name, version, CHAMPION)
        registry.record_decision(
            model_name,
            version,
            {
                "promotion": "champion" if decision.promote else "challenger",
                "promotion_reason": decision.reason,
                "promotion_metric": metric,
                "challenger_metric": f"{decision.challenger:.6f}",
                "champion_metric": "none"
                if decision.champion is None
                else f"{decision.champion:.6f}",
                "champion_before": champion.version if champion else "none",
            },
        )
        context.log.info(
            f"{model_name} v{version}: {'promoted' if decision.promote else 'not promoted'} "
            f"({decision.reason})"
        )
        return {
            "promoted": decision.promote,
            "promotion_reason": decision.reason,
            "champion_before": champion.version if champion else "none",
            f"champion_{metric}": MetadataValue.float(decision.champion)
            if decision.champion is not None
            else MetadataValue.text("none"),
        }

    return promote


promote_if_not_worse = promotion_gate(REPAIR_MODEL, PROMOTION_METRIC)


repair_damage_model = photo_model_asset(
    key_prefix="repair",
    name="repair_damage_model",
    group_name="repair_service",
    training_set_key=["repair", "repair_seed_training_set"],
    model_name=REPAIR_MODEL,
    label_column="damage_level",
    num_classes=4,
    description="The seed repair model: a CNN grading damage 0-3, trained on the workshop archive.",
    after_register=promote_if_not_worse,
)


def assess(
    requests: pl.DataFrame,
    images: np.ndarray,
    model,
    *,
    model_version: str,
    catalog: pl.DataFrame,
) -> pl.DataFrame:
    """Grade each request's photo (uint8 pixels [N, S, S] at the model's size, one per request
    in order), quote the repair, and return inference-log rows."""
    if len(images) != requests.height:
        raise ValueError(f"{requests.height} requests but {len(images)} images")
    started = time.perf_counter()
    proba = predict_proba(model, images, batch_size=INFERENCE_BATCH_SIZE)
    elapsed_ms = (time.perf_counter() - started) * 1000
    per_image_ms = elapsed_ms / max(len(images), 1)
    levels = proba.argmax(axis=1).astype(np.int64)
    frame = requests.select(
        "request_id", "batch", pl.col("photo_sha256").alias("input_sha256"), "product_id"
    ).with_columns(
        pl.lit("batch").alias("source"),
        pl.lit(None, pl.String).alias("client_request_id"),
        pl.lit("ok").alias("status"),
        pl.lit(None, pl.String).alias("error"),
        pl.lit(REPAIR_MODEL).alias("model_name"),
        pl.lit(model_version).alias("model_version"),
        pl.Series("predicted_level", levels),
        pl.Series("probabilities", proba.astype(np.float64).tolist(), dtype=pl.List(pl.Float64)),
        pl.Series("confidence", proba.max(axis=1).astype(np.float64)),
        # Batch inference has no per-request timing: each row carries its share of the batch.
        pl.lit(per_image_ms).alias("latency_ms"),
        pl.lit(datetime.now(UTC)).alias("inferred_at"),
    )
    prices = catalog.select("product_id", "list_price_usd")
    frame = frame.join(prices, on="product_id", how="left").with_columns(
        quote_usd(pl.col("predicted_level"), pl.col("list_price_usd")).alias("quote_usd")
    )
    return frame.select(list(INFERENCE_LOG_SCHEMA)).cast(INFERENCE_LOG_SCHEMA)


PREDICTIONS_VALID_CHECK = "predictions_valid"


def prediction_problems(log: pl.DataFrame) -> dict[str, int]:
    """Counts of inference-log rows that must not reach training; all zero for a sound log."""
    ok = log.filter(pl.col("status") == "ok")
    sums = ok["probabilities"].list.sum()
    return {
        "schema_mismatches": sum(
            log.schema.get(name) != dtype for name, dtype in INFERENCE_LOG_SCHEMA.items()
        ),
        "null_predictions": ok.filter(
            pl.col("predicted_level").is_null() | pl.col("model_version").is_null()
        ).height,
        "levels_out_of_range": ok.filter(~pl.col("predicted_level").is_between(0, 3)).height,
        "probabilities_not_summing_to_one": int(((sums - 1.0).abs() > 1e-4).sum())
        if ok.height
        else 0,
        "wrong_probability_count": ok.filter(pl.col("probabilities").list.len() != 4).height,
    }


def predictions_valid(log: pl.DataFrame) -> AssetCheckResult:
    problems = prediction_problems(log)
    return AssetCheckResult(
        check_name=PREDICTIONS_VALID_CHECK,
        passed=not any(problems.values()),
        severity=AssetCheckSeverity.ERROR,
        metadata={**problems, "rows": log.height},
    )


@asset(
    key_prefix="repair",
    group_name="repair_service",
    partitions_def=landing_batches,
    tags={"role": "inference_log"},
    metadata={"partition_column": "batch"},
    # photo_pixels: the batch's photos, decoded once in silver.
    deps=[AssetKey(["repair", "repair_damage_model"]), AssetKey(["silver", "photo_pixels"])],
    ins={
        "requests": AssetIn(key=["silver", "repair_requests"]),
        "catalog": AssetIn(key=["silver", "product_catalog"]),
    },
    check_specs=[
        AssetCheckSpec(
            PREDICTIONS_VALID_CHECK,
            asset=AssetKey(["repair", "repair_inference_log"]),
            blocking=True,
            description="No null or malformed prediction and the log's schema, before training.",
        )
    ],
)
def repair_inference_log(
    context: AssetExecutionContext,
    requests: pl.DataFrame,
    catalog: pl.DataFrame,
    warehouse: Warehouse,
    model_registry: ModelRegistry,
):
    """Every online repair assessment of a batch: the champion's grade, probabilities and quote.

    The serving model is whichever version carries the registry alias `champion` when the batch
    is assessed, and every row names that version.
    """
    online = requests.filter(pl.col("channel") == "online")
    if online.is_empty():
        context.log.info(f"batch {context.partition_key}: no online requests to assess")
        empty = pl.DataFrame(schema=INFERENCE_LOG_SCHEMA)
        yield Output(empty, metadata={EMPTY_IS_NORMAL_KEY: True})
        yield predictions_valid(empty)
        return
    champion = model_registry.version_by_alias(REPAIR_MODEL, CHAMPION)
    model = model_registry.load_torch(REPAIR_MODEL, champion.version)
    images = photo_pixels(warehouse, online["photo_sha256"], model.image_size)
    log = assess(online, images, model, model_version=champion.version, catalog=catalog)
    context.log.info(
        f"batch {context.partition_key}: {log.height} assessments by {REPAIR_MODEL} "
        f"v{champion.version}"
    )
    yield Output(
        log,
        metadata={
            "model_version": champion.version,
            "predicted_levels": MetadataValue.json(
                log.group_by("predicted_level").len().sort("predicted_level").to_dicts()
            ),
        },
    )
    yield predictions_valid(log)
