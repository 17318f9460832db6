"""Every damage label with its origin, in one frame (pure polars): the rows of gold.damage_labels.

A damage label says which level (0-3) a photo shows, and who said so (`label_origin`):

- technician: a technician inspected the photo (landed outcomes and outcomes recorded through the
  service). The only confirmed labels: `confirmed` is true for these rows alone.
- model: the repair model's prediction (batch inference log and served assessments), with its
  confidence and the model version that made it.
- chatbot: the level the customer described in the chat (`reported_damage_level` of the capture
  log), with the extractor's confidence.
- synthetic: a synthetic photo, labelled with its parent photo's technician label; a synthetic
  photo whose parent has no technician label has no label yet.

Training sets decide which of these they take, under the recorded policies of
`feedback.policy`; evaluation takes none of them (it scores on the holdout's expert labels).
"""

import polars as pl

from compositional_ai.landing.formats import CHATBOT, MODEL, SYNTHETIC, TECHNICIAN
from compositional_ai.warehouse.reporting import DEFECTIVE_FROM_LEVEL

DAMAGE_LABEL_SCHEMA = {
    "label_origin": pl.String,
    "confirmed": pl.Boolean,
    "request_id": pl.String,
    "photo_sha256": pl.String,
    # The real photo a synthetic photo was made from; null for every other origin.
    "parent_sha256": pl.String,
    # The landing batch (or served segment) the label arrived in, and the request's own batch.
    "batch": pl.String,
    "request_batch": pl.String,
    "damage_level": pl.Int64,
    "defective": pl.Boolean,
    "cell_type": pl.String,
    # The model's or the extractor's confidence; null for technician and synthetic labels.
    "confidence": pl.Float64,
    # Who labelled: the technician id, model@version, extractor version or generator version.
    "labelled_by": pl.String,
    "model_version": pl.String,
}

# What each source must hold; extra columns are ignored.
INFERENCE_COLUMNS = (
    "request_id",
    "batch",
    "status",
    "model_name",
    "model_version",
    "input_sha256",
    "predicted_level",
    "confidence",
)
CAPTURE_COLUMNS = (
    "batch",
    "request_id",
    "reported_damage_level",
    "reported_level_confidence",
    "extractor_version",
)
REQUEST_COLUMNS = ("batch", "request_id", "photo_sha256")
SYNTHETIC_COLUMNS = ("batch", "sha256", "parent_sha256", "generator_version")


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    typed = frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in DAMAGE_LABEL_SCHEMA.items()
    )
    return typed.with_columns((pl.col("damage_level") >= DEFECTIVE_FROM_LEVEL).alias("defective"))


def technician_labels(confirmed: pl.DataFrame) -> pl.DataFrame:
    """Technician labels from confirmed-label rows (reporting.LABEL_COLUMNS)."""
    return _finish(
        confirmed.select(
            pl.lit(TECHNICIAN).alias("label_origin"),
            pl.lit(True).alias("confirmed"),
            "request_id",
            "photo_sha256",
            pl.col("confirmed_in_batch").alias("batch"),
            "request_batch",
            "damage_level",
            "cell_type",
            pl.col("technician_id").alias("labelled_by"),
        )
    )


def model_labels(inferences: pl.DataFrame) -> pl.DataFrame:
    """One model label per successful prediction of the inference logs."""
    return _finish(
        inferences.filter(pl.col("status") == "ok").select(
            pl.lit(MODEL).alias("label_origin"),
            pl.lit(False).alias("confirmed"),
            "request_id",
            pl.col("input_sha256").alias("photo_sha256"),
            "batch",
            pl.col("batch").alias("request_batch"),
            pl.col("predicted_level").alias("damage_level"),
            "confidence",
            pl.format("{}@{}", "model_name", "model_version").alias("labelled_by"),
            "model_version",
        )
    )


def chatbot_labels(capture_log: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """The level each customer reported in the chat, on the photo of the request chatted about."""
    photos = requests.select(
        "request_id", "photo_sha256", pl.col("batch").alias("request_batch")
    ).unique("request_id", keep="first", maintain_order=True)
    return _finish(
        capture_log.filter(pl.col("reported_damage_level").is_not_null())
        .join(photos, on="request_id", how="inner")
        .select(
            pl.lit(CHATBOT).alias("label_origin"),
            pl.lit(False).alias("confirmed"),
            "request_id",
            "photo_sha256",
            "batch",
            "request_batch",
            pl.col("reported_damage_level").alias("damage_level"),
            pl.col("reported_level_confidence").alias("confidence"),
            pl.col("extractor_version").alias("labelled_by"),
        )
    )


def synthetic_labels(synthetic: pl.DataFrame, technician: pl.DataFrame) -> pl.DataFrame:
    """Each synthetic photo with its parent's technician label (the earliest, when several)."""
    parents = technician.sort("batch", "request_id").unique(
        "photo_sha256", keep="first", maintain_order=True
    )
    return _finish(
        synthetic.join(
            parents.select(
                pl.col("photo_sha256").alias("parent_sha256"),
                "request_id",
                "request_batch",
                "damage_level",
                "cell_type",
            ),
            on="parent_sha256",
            how="inner",
        )
        .unique("sha256", keep="first", maintain_order=True)
        .select(
            pl.lit(SYNTHETIC).alias("label_origin"),
            pl.lit(False).alias("confirmed"),
            "request_id",
            pl.col("sha256").alias("photo_sha256"),
            "parent_sha256",
            "batch",
            "request_batch",
            "damage_level",
            "cell_type",
            pl.col("generator_version").alias("labelled_by"),
        )
    )


def damage_labels(
    *,
    confirmed: pl.DataFrame,
    inferences: pl.DataFrame,
    capture_log: pl.DataFrame,
    requests: pl.DataFrame,
    synthetic: pl.DataFrame,
) -> pl.DataFrame:
    """Every damage label of the four origins, one schema (DAMAGE_LABEL_SCHEMA)."""
    technician = technician_labels(confirmed)
    frames = [
        technician,
        model_labels(inferences),
        chatbot_labels(capture_log, requests),
        synthetic_labels(synthetic, technician),
    ]
    order = {origin: rank for rank, origin in enumerate((TECHNICIAN, MODEL, CHATBOT, SYNTHETIC))}
    return (
        pl.concat(frames)
        .with_columns(pl.col("label_origin").replace_strict(order).alias("_order"))
        .sort("request_id", "_order", "photo_sha256", nulls_last=True)
        .drop("_order")
    )


def agreement_with_technicians(labels: pl.DataFrame) -> dict[str, dict[str, float]]:
    """For model and chatbot labels: how many name a technician-labelled request, and how many
    of those give the technician's level."""
    technician = labels.filter(pl.col("label_origin") == TECHNICIAN).select(
        "request_id", pl.col("damage_level").alias("technician_level")
    )
    technician = technician.unique("request_id", keep="first")
    figures = {}
    for origin in (MODEL, CHATBOT):
        compared = labels.filter(pl.col("label_origin") == origin).join(
            technician, on="request_id", how="inner"
        )
        agreeing = compared.filter(pl.col("damage_level") == pl.col("technician_level")).height
        figures[origin] = {
            "compared": compared.height,
            "agreeing": agreeing,
            "agreement": round(agreeing / compared.height, 4) if compared.height else 0.0,
        }
    return figures
