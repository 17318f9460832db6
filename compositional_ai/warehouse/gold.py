"""Gold: BI tables and ML tables modelled from silver and the inference logs."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetKey, MetadataValue, asset

from compositional_ai.repair_service.served_assets import (
    SERVED_INFERENCE_LOG,
    SERVED_OUTCOMES,
    all_damage_labels,
    all_inferences,
)
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse import labels as damage_labels_module
from compositional_ai.warehouse import reporting

TABLE = {"role": "table"}
REPORT = {"role": "report"}


@asset(
    key_prefix="gold",
    group_name="gold",
    tags={"role": "feature_set"},
    ins={
        "requests": AssetIn(key=["silver", "repair_requests"]),
        "outcomes": AssetIn(key=["silver", "technician_outcomes"]),
    },
)
def confirmed_labels(
    context: AssetExecutionContext, requests: pl.DataFrame, outcomes: pl.DataFrame
) -> pl.DataFrame:
    """Technician-confirmed damage levels of landed requests, joined to the photo they confirm.

    Outcomes recorded through the live service join the training sets directly, next to the
    served inference log they confirm.
    """
    labels = reporting.confirmed_labels(requests, outcomes)
    context.log.info(
        f"{labels.height} confirmed labels from {outcomes.height} outcomes of "
        f"{requests.height} requests"
    )
    return labels


@asset(
    key_prefix="gold",
    group_name="gold",
    tags={"role": "feature_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
    },
    deps=[
        SERVED_INFERENCE_LOG,
        SERVED_OUTCOMES,
        AssetKey(["chatbot", "chatbot_capture_log"]),
        AssetKey(["silver", "repair_requests"]),
        AssetKey(["silver", "synthetic_photos"]),
    ],
)
def damage_labels(
    context: AssetExecutionContext,
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    warehouse: Warehouse,
) -> pl.DataFrame:
    """Every damage label with its origin: technician (landed and served outcomes, the only
    confirmed ones), model (predictions), chatbot (what customers reported) and synthetic
    (synthetic photos with their parent's technician label).

    gold.confirmed_labels stays the technician-only table the BI reports and the seed model
    read; training sets choose from these rows only under their recorded label policies.
    """
    rows = all_damage_labels(warehouse, labels, all_inferences(warehouse, inference_log))
    by_origin = dict(rows.group_by("label_origin").len().sort("label_origin").iter_rows())
    agreement = damage_labels_module.agreement_with_technicians(rows)
    context.log.info(f"gold.damage_labels: {rows.height} labels by origin {by_origin}")
    context.add_output_metadata(
        {
            "rows_by_origin": MetadataValue.json(by_origin),
            "confirmed_rows": int(rows["confirmed"].sum()),
            "agreement_with_technicians": MetadataValue.json(agreement),
        }
    )
    return rows


@asset(
    key_prefix="gold",
    group_name="gold",
    tags=TABLE,
    ins={"customers": AssetIn(key=["silver", "customers"])},
)
def customer_holdings(customers: pl.DataFrame) -> pl.DataFrame:
    """Each customer's latest profile and the services they hold."""
    return reporting.latest_customers(customers)


@asset(
    key_prefix="gold",
    group_name="gold",
    tags=REPORT,
    ins={
        "requests": AssetIn(key=["silver", "repair_requests"]),
        "catalog": AssetIn(key=["silver", "product_catalog"]),
        "outcomes": AssetIn(key=["silver", "technician_outcomes"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
    },
)
def repair_volume_weekly(
    requests: pl.DataFrame,
    catalog: pl.DataFrame,
    outcomes: pl.DataFrame,
    inference_log: pl.DataFrame,
) -> pl.DataFrame:
    """Online repair requests, quotes and quote acceptance by product line and week."""
    return reporting.repair_volume_weekly(requests, catalog, outcomes, inference_log)


@asset(
    key_prefix="gold",
    group_name="gold",
    tags=REPORT,
    ins={
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
    },
)
def damage_level_distribution(inference_log: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """The share of each damage level per batch, as predicted and as confirmed."""
    return reporting.damage_level_distribution(inference_log, labels)


@asset(
    key_prefix="gold",
    group_name="gold",
    tags=REPORT,
    ins={"labels": AssetIn(key=["gold", "confirmed_labels"])},
)
def defect_rate_by_cell_type(labels: pl.DataFrame) -> pl.DataFrame:
    """Inspected photos and the share found defective, by cell type."""
    return reporting.defect_rate_by_cell_type(labels)


@asset(
    key_prefix="gold",
    group_name="gold",
    tags=REPORT,
    ins={
        "silver_quarantine": AssetIn(key=["silver", "quarantine"]),
        "chat_quarantine": AssetIn(key=["chatbot", "chat_quarantine"]),
    },
)
def quarantine_summary(
    context: AssetExecutionContext, silver_quarantine: pl.DataFrame, chat_quarantine: pl.DataFrame
) -> pl.DataFrame:
    """Quarantined rows by source and reason, over every batch."""
    summary = reporting.quarantine_summary(silver_quarantine, chat_quarantine)
    context.add_output_metadata(
        {
            "quarantined_rows": int(summary["rows"].sum()) if summary.height else 0,
            "by_reason": MetadataValue.json(summary.to_dicts()),
        }
    )
    return summary
