"""Gold transforms: BI tables and ML tables from silver and the inference logs (pure polars)."""

import polars as pl

from compositional_ai.landing import formats

DEFECTIVE_FROM_LEVEL = 2


LABEL_COLUMNS = (
    "request_id",
    "confirmed_in_batch",
    "damage_level",
    "cell_type",
    "inspected_at",
    "technician_id",
    "request_batch",
    "channel",
    "photo_sha256",
    "customer_id",
    "defective",
    "label_origin",
)


def label_columns(labels: pl.DataFrame) -> pl.DataFrame:
    """Confirmed labels in the gold table's columns, with the defective flag and their origin."""
    return labels.with_columns(
        (pl.col("damage_level") >= DEFECTIVE_FROM_LEVEL).alias("defective"),
        pl.lit("technician").alias("label_origin"),
    ).select(LABEL_COLUMNS)


def confirmed_labels(requests: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """Technician-confirmed damage levels joined to the photo each request carried."""
    inspected = outcomes.filter(pl.col("quote_accepted") & pl.col("damage_level").is_not_null())
    joined = (
        inspected.select(
            "request_id",
            pl.col("batch").alias("confirmed_in_batch"),
            "damage_level",
            "cell_type",
            "inspected_at",
            "technician_id",
        )
        .join(
            requests.select(
                "request_id",
                pl.col("batch").alias("request_batch"),
                "channel",
                "photo_sha256",
                "customer_id",
            ),
            on="request_id",
            how="inner",
        )
        .sort("request_id")
    )
    return label_columns(joined)


def latest_customers(customers: pl.DataFrame) -> pl.DataFrame:
    """One row per customer: the export from the latest batch that listed them."""
    columns = [
        "customer_id",
        "batch",
        "gender",
        "senior_citizen",
        "partner",
        "dependents",
        "tenure_months",
        "contract",
        "paperless_billing",
        "payment_method",
        *formats.SERVICE_COLUMNS,
    ]
    return (
        customers.sort("batch", "line_number")
        .group_by("customer_id", maintain_order=True)
        .last()
        .select(columns)
        .rename({"batch": "last_seen_batch"})
        .sort("customer_id")
    )


def repair_volume_weekly(
    requests: pl.DataFrame,
    catalog: pl.DataFrame,
    outcomes: pl.DataFrame,
    inference_log: pl.DataFrame,
) -> pl.DataFrame:
    """Requests, quotes and quote acceptance by product line and ISO week."""
    decided = outcomes.select("request_id", "quote_accepted")
    quotes = inference_log.filter(pl.col("status") == "ok").select("request_id", "quote_usd")
    return (
        requests.filter(pl.col("channel") == "online")
        .select("request_id", "product_id", "submitted_at")
        .join(catalog.select("product_id", "product_line"), on="product_id", how="left")
        .join(quotes, on="request_id", how="left")
        .join(decided, on="request_id", how="left")
        .with_columns(pl.col("submitted_at").dt.truncate("1w").dt.date().alias("week"))
        .group_by("week", "product_line")
        .agg(
            pl.len().alias("requests"),
            pl.col("quote_usd").is_not_null().sum().alias("quoted"),
            pl.col("quote_accepted").is_not_null().sum().alias("decided"),
            pl.col("quote_accepted").fill_null(False).sum().alias("accepted"),
            pl.col("quote_usd").mean().round(2).alias("mean_quote_usd"),
        )
        .with_columns(
            # A week without decisions yet has no acceptance rate, rather than 0 % or NaN.
            pl.when(pl.col("decided") > 0)
            .then((pl.col("accepted") / pl.col("decided")).round(4))
            .alias("acceptance_rate")
        )
        .sort("week", "product_line")
    )


def damage_level_distribution(inference_log: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """How often each damage level is predicted by the service and confirmed by technicians."""
    predicted = inference_log.filter(pl.col("status") == "ok").select(
        pl.col("batch"),
        pl.col("predicted_level").alias("damage_level"),
        pl.lit("predicted").alias("origin"),
    )
    confirmed = labels.select(
        pl.col("request_batch").alias("batch"), "damage_level", pl.lit("confirmed").alias("origin")
    )
    counts = (
        pl.concat([predicted, confirmed]).group_by("batch", "origin", "damage_level").len("count")
    )
    return counts.with_columns(
        (pl.col("count") / pl.col("count").sum().over("batch", "origin")).round(4).alias("share")
    ).sort("batch", "origin", "damage_level")


def defect_rate_by_cell_type(labels: pl.DataFrame) -> pl.DataFrame:
    """Inspected photos and the share found defective, by cell type."""
    return (
        labels.group_by("cell_type")
        .agg(pl.len().alias("inspected"), pl.col("defective").sum().alias("defective"))
        .with_columns((pl.col("defective") / pl.col("inspected")).round(4).alias("defect_rate"))
        .sort("cell_type")
    )


def quarantine_summary(*quarantines: pl.DataFrame) -> pl.DataFrame:
    """Quarantined rows by source and reason, over every batch."""
    rows = pl.concat([frame.select("batch", "source", "reason") for frame in quarantines])
    return (
        rows.group_by("source", "reason")
        .agg(pl.len().alias("rows"), pl.col("batch").n_unique().alias("batches"))
        .sort("source", "reason")
    )
