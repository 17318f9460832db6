"""Service recommendations, learned from the repair service's and the chatbot's logs."""

import hashlib
import json

import polars as pl
import polars.selectors as cs
from dagster import AssetExecutionContext, AssetIn, MaterializeResult, MetadataValue, asset

from compositional_ai.feedback.lineage import record_training
from compositional_ai.recommendation.model import evaluate, fit_recommender
from compositional_ai.resources.model_registry import (
    ASSET_TAG,
    CHAMPION,
    FINGERPRINT_TAG,
    ModelRegistry,
    frame_digest,
)
from compositional_ai.resources.warehouse import Warehouse

RECOMMENDER = "service_recommender"
TEST_SHARE = 0.2
SEED = 7
# The figures `evaluate` logs for each version, carried by a reused version's asset too.
METRIC_NAMES = ("hit_rate_at_3", "popularity_hit_rate_at_3", "lift", "n_test")


def training_rows(
    holdings: pl.DataFrame,
    capture_log: pl.DataFrame,
    inference_log: pl.DataFrame,
    requests: pl.DataFrame,
    catalog: pl.DataFrame,
) -> pl.DataFrame:
    """One row per customer who asked for a repair: profile, holdings, and the service's view.

    Demographics the chatbot captured override the CRM's; the predicted damage level and product
    line come from the customer's latest assessed request.
    """
    latest_request = (
        requests.filter(pl.col("channel") == "online")
        .sort("submitted_at")
        .group_by("customer_id")
        .last()
        .select("customer_id", "request_id", "product_id")
    )
    assessed = latest_request.join(
        inference_log.filter(pl.col("status") == "ok").select(
            "request_id",
            pl.col("predicted_level").alias("predicted_damage_level"),
            pl.col("batch").alias("inference_batch"),
            "model_version",
        ),
        on="request_id",
        how="left",
    ).join(catalog.select("product_id", "product_line"), on="product_id", how="left")
    captured = capture_log.select(
        "request_id",
        pl.col("senior_citizen").alias("chat_senior_citizen"),
        pl.col("partner").alias("chat_partner"),
        pl.col("dependents").alias("chat_dependents"),
    )
    rows = (
        holdings.join(assessed, on="customer_id", how="inner")
        .join(captured, on="request_id", how="left")
        .with_columns(
            pl.coalesce("chat_senior_citizen", "senior_citizen").alias("senior_citizen"),
            pl.coalesce("chat_partner", "partner").alias("partner"),
            pl.coalesce("chat_dependents", "dependents").alias("dependents"),
        )
        .drop("chat_senior_citizen", "chat_partner", "chat_dependents")
    )
    # A stable split by customer: the same customer is always on the same side.
    digest = pl.col("customer_id").map_elements(
        lambda value: int(hashlib.sha256(value.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF,
        return_dtype=pl.Float64,
    )
    return rows.with_columns(
        pl.when(digest < TEST_SHARE).then(pl.lit("test")).otherwise(pl.lit("train")).alias("split")
    ).sort("customer_id")


@asset(
    key_prefix="recommendation",
    group_name="recommendation",
    tags={"role": "training_set"},
    ins={
        "holdings": AssetIn(key=["gold", "customer_holdings"]),
        "capture_log": AssetIn(key=["chatbot", "chatbot_capture_log"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "requests": AssetIn(key=["silver", "repair_requests"]),
        "catalog": AssetIn(key=["silver", "product_catalog"]),
    },
)
def recommendation_training_set(
    context: AssetExecutionContext,
    holdings: pl.DataFrame,
    capture_log: pl.DataFrame,
    inference_log: pl.DataFrame,
    requests: pl.DataFrame,
    catalog: pl.DataFrame,
) -> pl.DataFrame:
    """Customers' profiles and holdings beside what the repair service and chatbot recorded."""
    rows = training_rows(holdings, capture_log, inference_log, requests, catalog)
    context.add_output_metadata(
        {
            "rows_by_split": MetadataValue.json(dict(rows.group_by("split").len().iter_rows())),
            "inference_partitions": MetadataValue.json(
                sorted(rows["inference_batch"].drop_nulls().unique().to_list())
            ),
            "model_versions": MetadataValue.json(
                sorted(rows["model_version"].drop_nulls().unique().to_list())
            ),
        }
    )
    return rows


@asset(
    key_prefix="recommendation",
    group_name="recommendation",
    tags={"role": "model"},
    ins={"training_set": AssetIn(key=["recommendation", "recommendation_training_set"])},
)
def service_recommender(
    context: AssetExecutionContext,
    training_set: pl.DataFrame,
    model_registry: ModelRegistry,
    warehouse: Warehouse,
) -> MaterializeResult:
    """Recommends the services a customer lacks; judged by hit-rate@3 against popularity."""
    import mlflow

    train = training_set.filter(pl.col("split") == "train")
    test = training_set.filter(pl.col("split") == "test")
    if train.is_empty() or test.is_empty():
        raise ValueError(
            f"{RECOMMENDER}: {train.height} training and {test.height} test customers; "
            "both splits need rows"
        )
    asset_key = context.asset_key.to_user_string()
    digest = frame_digest(training_set, sorted(training_set.columns))
    settings = {"seed": SEED, "test_share": TEST_SHARE, "k": 3}
    fingerprint = hashlib.sha256(
        json.dumps({"training": digest, **settings}, sort_keys=True).encode()
    ).hexdigest()[:32]
    trained_before = model_registry.version_tagged(RECOMMENDER, FINGERPRINT_TAG, fingerprint)
    if trained_before is not None:
        # Fitting is seeded: the same rows and settings give the same model, so a re-run reuses
        # the version (and keeps it serving) instead of registering a copy.
        model_registry.set_alias(RECOMMENDER, trained_before.version, CHAMPION)
        context.log.info(
            f"{RECOMMENDER}: training set {digest} is already version {trained_before.version}; "
            "not training again"
        )
        return MaterializeResult(
            metadata={
                "model_name": RECOMMENDER,
                "model_version": trained_before.version,
                "reused_version": True,
                "training_set_digest": digest,
                "training_fingerprint": fingerprint,
                "mlflow_run": MetadataValue.url(model_registry.run_url(trained_before.run_id)),
                **{
                    k: MetadataValue.float(float(v))
                    for k, v in trained_before.metrics.items()
                    if k in METRIC_NAMES
                },
            }
        )
    figures = evaluate(train, test, seed=SEED, k=3)
    model = fit_recommender(train, seed=SEED)
    with model_registry.training_run(
        RECOMMENDER,
        dagster_run_id=context.run.run_id,
        asset_key=asset_key,
        params={**settings, "train_rows": train.height},
    ) as run:
        mlflow.log_input(
            mlflow.data.from_pandas(
                # Integers as floats, as the photo models log theirs: MLflow's schema inference
                # warns that an integer column cannot hold a missing value.
                training_set.with_columns(cs.integer().cast(pl.Float64)).to_pandas(),
                name=f"{RECOMMENDER}_training_set",
                digest=digest,
            ),
            context="training",
        )
        mlflow.log_metrics({k: float(v) for k, v in figures.items()})
        version = model_registry.log_sklearn_model(model, RECOMMENDER)
        model_registry.tag_version(
            RECOMMENDER, version, {FINGERPRINT_TAG: fingerprint, ASSET_TAG: asset_key}
        )
        run_id = run.info.run_id
    record_training(warehouse, train, RECOMMENDER, version, default_origin="customer_holdings")
    model_registry.set_alias(RECOMMENDER, version, CHAMPION)
    context.log.info(f"{RECOMMENDER} v{version}: {figures}")
    return MaterializeResult(
        metadata={
            "model_name": RECOMMENDER,
            "model_version": version,
            "mlflow_run_id": run_id,
            "mlflow_run": MetadataValue.url(model_registry.run_url(run_id)),
            "reused_version": False,
            "training_set_digest": digest,
            "training_fingerprint": fingerprint,
            **{k: MetadataValue.float(float(v)) for k, v in figures.items()},
        }
    )
