"""The rules that keep the feedback loop from learning its own mistakes (pure polars)."""

from dataclasses import dataclass

import polars as pl

# Holdout metric a challenger must not fall behind the champion on, beyond the tolerance.
PROMOTION_METRIC = "four_class_accuracy"
PROMOTION_TOLERANCE = 0.01


@dataclass(frozen=True)
class SelfLabelPolicy:
    """When the model's own predictions may stand in for a missing technician label.

    `max_share` caps model-labelled rows as a share of the whole training set; 0 keeps them out.
    """

    min_confidence: float = 0.95
    max_share: float = 0.0


def feedback_training_rows(
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    *,
    policy: SelfLabelPolicy,
    holdout_shas: pl.Series,
) -> pl.DataFrame:
    """Training rows for the next model: every confirmed label, plus self-labels under `policy`.

    A confirmed label of a served request carries the prediction it confirmed, so the set records
    which inference-log rows and model versions it consumed. Holdout photos never enter.
    """
    served = inference_log.filter(pl.col("status") == "ok").select(
        "request_id",
        pl.col("batch").alias("inference_batch"),
        "model_version",
        "predicted_level",
        "confidence",
    )
    confirmed = labels.select(
        "request_id",
        "photo_sha256",
        "damage_level",
        "cell_type",
        "label_origin",
    ).join(served, on="request_id", how="left")
    rows = [confirmed]
    if policy.max_share > 0:
        unconfirmed = (
            inference_log.filter(
                (pl.col("status") == "ok")
                & ~pl.col("request_id").is_in(labels["request_id"].implode())
                & (pl.col("confidence") >= policy.min_confidence)
            )
            .sort("confidence", "request_id", descending=[True, False])
            # One self-label per photo: a client resending an image cannot multiply its weight.
            .unique("input_sha256", keep="first", maintain_order=True)
            .select(
                "request_id",
                pl.col("input_sha256").alias("photo_sha256"),
                pl.col("predicted_level").alias("damage_level"),
                pl.lit(None, pl.String).alias("cell_type"),
                pl.lit("model").alias("label_origin"),
                pl.col("batch").alias("inference_batch"),
                "model_version",
                "predicted_level",
                "confidence",
            )
        )
        # The most self-labels that keep their share of the combined set within max_share.
        cap = int(policy.max_share * confirmed.height / (1 - policy.max_share))
        rows.append(unconfirmed.head(cap))
    combined = pl.concat(rows, how="vertical_relaxed")
    return combined.filter(~pl.col("photo_sha256").is_in(holdout_shas.implode())).sort("request_id")


def holdout_leakage(training: pl.DataFrame, holdout_shas: pl.Series) -> int:
    """How many training rows show a holdout photo."""
    return training.filter(pl.col("photo_sha256").is_in(holdout_shas.implode())).height


def self_label_share(training: pl.DataFrame) -> float:
    """The share of training rows whose label came from a model, not a technician."""
    if training.is_empty():
        return 0.0
    return training.filter(pl.col("label_origin") == "model").height / training.height


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger: float
    champion: float | None


def promotion_decision(
    challenger: float,
    champion: float | None,
    *,
    tolerance: float = PROMOTION_TOLERANCE,
    metric: str = PROMOTION_METRIC,
) -> PromotionDecision:
    """A challenger becomes champion unless it is worse than the champion beyond `tolerance`."""
    if champion is None:
        return PromotionDecision(True, "no champion yet", challenger, None)
    if challenger >= champion - tolerance:
        return PromotionDecision(
            True,
            f"{metric} {challenger:.4f} is within {tolerance} of or above the "
            f"champion's {champion:.4f}",
            challenger,
            champion,
        )
    return PromotionDecision(
        False,
        f"{metric} {challenger:.4f} is more than {tolerance} below the champion's {champion:.4f}",
        challenger,
        champion,
    )
