"""Gold: BI tables and ML tables modelled from silver and the inference logs."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, MetadataValue, asset

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
