"""The rules that keep the feedback loop from learning its own mistakes (pure polars).

A training set takes every technician label. Labels of the other origins (warehouse.labels:
model, chatbot, synthetic) enter only under an explicit `LabelPolicy`, recorded in the training
set's metadata: per origin an enabled flag, a confidence threshold where the origin has a
confidence (model, chatbot), and a share cap. The defaults admit none of them.

Under a policy, an admitted label
- never shows a holdout photo, nor a synthetic photo made from one (its parent_sha256);
- never labels a photo or a request a technician already labelled (for a synthetic photo: its
  parent must carry a technician label in the set, which it inherits);
- is one per photo: when several origins offer a label for the same photo, the first of
  ORIGIN_PRECEDENCE wins, and within an origin the most confident;
- keeps its origin's rows within `max_share` of the whole set: each origin takes at most
  floor(max_share * technician_rows / (1 - max_share)) rows, which bounds its share even when
  every origin is enabled.
Evaluation takes none of these labels: models are scored on the holdout's expert labels only.
"""

import math
from dataclasses import dataclass, field

import polars as pl

from compositional_ai.landing.formats import CHATBOT, MODEL, SYNTHETIC, TECHNICIAN

# Holdout metric a challenger must not fall behind the champion on, beyond the tolerance.
PROMOTION_METRIC = "four_class_accuracy"
PROMOTION_TOLERANCE = 0.01

NON_TECHNICIAN_ORIGINS = (MODEL, CHATBOT, SYNTHETIC)
# A synthetic photo is a photo no other origin labels; a customer's description was given for
# this very photo, a prediction is the model's own belief.
ORIGIN_PRECEDENCE = (SYNTHETIC, CHATBOT, MODEL)


@dataclass(frozen=True)
class OriginPolicy:
    """Whether, and how many, labels of one non-technician origin may enter a training set.

    `min_confidence` None means the origin has no confidence to threshold (synthetic labels are
    their parent's technician label); `max_share` caps the origin's rows as a share of the set.
    """

    enabled: bool = False
    min_confidence: float | None = None
    max_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"max_share must be within 0..1, got {self.max_share}")

    @property
    def admits(self) -> bool:
        return self.enabled and self.max_share > 0

    def cap(self, technician_rows: int) -> int:
        """The most rows of this origin a set with `technician_rows` technician rows may take."""
        if not self.admits:
            return 0
        if self.max_share >= 1.0:
            return 2**62
        # The epsilon keeps an exact quotient (0.3 * 7 / 0.7) from rounding down below itself.
        return math.floor(self.max_share * technician_rows / (1 - self.max_share) + 1e-9)

    def record(self) -> dict:
        return {
            "enabled": self.enabled,
            "min_confidence": self.min_confidence,
            "max_share": self.max_share,
        }


@dataclass(frozen=True)
class LabelPolicy:
    """The recorded policy of one training set: one OriginPolicy per non-technician origin."""

    model: OriginPolicy = field(default_factory=lambda: OriginPolicy(min_confidence=0.95))
    chatbot: OriginPolicy = field(default_factory=lambda: OriginPolicy(min_confidence=1.0))
    synthetic: OriginPolicy = field(default_factory=OriginPolicy)

    @classmethod
    def from_config(cls, config, model: OriginPolicy) -> "LabelPolicy":
        """The policy of a training-set config: `model` as given, chatbot and synthetic from the
        config's `chatbot_*` and `synthetic_*` fields, which every training set names alike."""
        return cls(
            model=model,
            chatbot=OriginPolicy(
                enabled=config.chatbot_labels_enabled,
                min_confidence=config.chatbot_min_confidence,
                max_share=config.chatbot_max_share,
            ),
            synthetic=OriginPolicy(
                enabled=config.synthetic_labels_enabled, max_share=config.synthetic_max_share
            ),
        )

    def of(self, origin: str) -> OriginPolicy:
        if origin not in NON_TECHNICIAN_ORIGINS:
            raise ValueError(f"no policy for label origin {origin!r}")
        return getattr(self, origin)

    def record(self) -> dict:
        """The policy as the training set's metadata records it."""
        return {origin: self.of(origin).record() for origin in NON_TECHNICIAN_ORIGINS}


@dataclass(frozen=True)
class SelfLabelPolicy:
    """When the model's own predictions may stand in for a missing technician label.

    `max_share` caps model-labelled rows as a share of the whole training set; 0 keeps them out.
    The model-only form of LabelPolicy, kept for callers that set only these two figures.
    """

    min_confidence: float = 0.95
    max_share: float = 0.0

    def as_label_policy(self) -> LabelPolicy:
        return LabelPolicy(
            model=OriginPolicy(
                enabled=self.max_share > 0,
                min_confidence=self.min_confidence,
                max_share=self.max_share,
            )
        )


def _label_policy(policy: LabelPolicy | SelfLabelPolicy) -> LabelPolicy:
    return policy.as_label_policy() if isinstance(policy, SelfLabelPolicy) else policy


def _shas(values: pl.Series | None) -> pl.Series:
    return pl.Series([], dtype=pl.String) if values is None else values.cast(pl.String)


def admitted_labels(
    technician: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    policy: LabelPolicy,
    holdout_shas: pl.Series,
) -> pl.DataFrame:
    """Every technician row not on a holdout photo, plus the candidates `policy` admits.

    `technician` needs request_id and photo_sha256; `candidates` also label_origin,
    parent_sha256 and label_confidence. Other columns are kept (null where a frame lacks them).
    """
    holdout = _shas(holdout_shas).implode()
    technician = technician.filter(~pl.col("photo_sha256").is_in(holdout))
    enabled = [origin for origin in ORIGIN_PRECEDENCE if policy.of(origin).admits]
    if not enabled or candidates.is_empty():
        return technician
    labelled_photos = technician["photo_sha256"].implode()
    labelled_requests = technician["request_id"].implode()
    confident = pl.lit(True)
    for origin in enabled:
        threshold = policy.of(origin).min_confidence
        if threshold is not None:
            confident = confident & (
                (pl.col("label_origin") != origin)
                | (pl.col("label_confidence").fill_null(-1.0) >= threshold)
            )
    rank = {origin: index for index, origin in enumerate(ORIGIN_PRECEDENCE)}
    caps = {origin: policy.of(origin).cap(technician.height) for origin in enabled}
    synthetic = pl.col("label_origin") == SYNTHETIC
    admitted = (
        candidates.filter(pl.col("label_origin").is_in(enabled))
        .filter(
            ~pl.col("photo_sha256").is_in(holdout)
            & ~pl.col("parent_sha256").fill_null("").is_in(holdout)
            & ~pl.col("photo_sha256").is_in(labelled_photos)
            # A synthetic photo's request is its parent's: labelled, and that is the point.
            & (synthetic | ~pl.col("request_id").is_in(labelled_requests))
            & (~synthetic | pl.col("parent_sha256").is_in(labelled_photos))
            & confident
        )
        .with_columns(pl.col("label_origin").replace_strict(rank).alias("_rank"))
        .sort(
            ["_rank", "label_confidence", "request_id", "photo_sha256"],
            descending=[False, True, False, False],
            nulls_last=True,
        )
        # One label per photo: a resent photo cannot multiply its weight.
        .unique("photo_sha256", keep="first", maintain_order=True)
        .with_columns(pl.int_range(pl.len()).over("label_origin").alias("_position"))
        .filter(pl.col("_position") < pl.col("label_origin").replace_strict(caps))
        .drop("_rank", "_position")
    )
    return pl.concat([technician, admitted], how="diagonal_relaxed")


def model_candidates(labels: pl.DataFrame, inference_log: pl.DataFrame) -> pl.DataFrame:
    """The model's labels on requests no technician labelled: one per successful prediction."""
    technician = labels.filter(pl.col("label_origin") == TECHNICIAN)
    return inference_log.filter(
        (pl.col("status") == "ok") & ~pl.col("request_id").is_in(technician["request_id"].implode())
    ).select(
        "request_id",
        pl.col("input_sha256").alias("photo_sha256"),
        pl.lit(None, pl.String).alias("parent_sha256"),
        pl.col("predicted_level").alias("damage_level"),
        pl.lit(None, pl.String).alias("cell_type"),
        pl.lit(MODEL).alias("label_origin"),
        pl.col("confidence").alias("label_confidence"),
    )


def other_candidates(labels: pl.DataFrame) -> pl.DataFrame:
    """The chatbot and synthetic rows of a damage-labels frame (warehouse.labels), as
    candidates; a technician-only frame has none."""
    columns = set(labels.columns)
    return labels.filter(pl.col("label_origin").is_in([CHATBOT, SYNTHETIC])).select(
        "request_id",
        "photo_sha256",
        pl.col("parent_sha256")
        if "parent_sha256" in columns
        else pl.lit(None, pl.String).alias("parent_sha256"),
        "damage_level",
        pl.col("cell_type")
        if "cell_type" in columns
        else pl.lit(None, pl.String).alias("cell_type"),
        "label_origin",
        (pl.col("confidence") if "confidence" in columns else pl.lit(None, pl.Float64)).alias(
            "label_confidence"
        ),
    )


FEEDBACK_COLUMNS = {
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "parent_sha256": pl.String,
    "damage_level": pl.Int64,
    "cell_type": pl.String,
    "label_origin": pl.String,
    "label_confidence": pl.Float64,
    "inference_batch": pl.String,
    "model_version": pl.String,
    "predicted_level": pl.Int64,
    "confidence": pl.Float64,
}


def feedback_training_rows(
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    *,
    policy: LabelPolicy | SelfLabelPolicy,
    holdout_shas: pl.Series,
) -> pl.DataFrame:
    """Training rows for the next model: every technician label, plus what `policy` admits.

    `labels` holds the technician labels and may hold chatbot and synthetic candidates
    (gold.damage_labels rows; label_origin says which); the model's candidates are the inference
    log's predictions. A row of a served request carries the prediction it labels, so the set
    records which inference-log rows and model versions it consumed; a synthetic row carries
    none (it labels no request's own photo). Holdout photos and their synthetic children never
    enter.
    """
    served = inference_log.filter(pl.col("status") == "ok").select(
        "request_id",
        pl.col("batch").alias("inference_batch"),
        "model_version",
        "predicted_level",
        "confidence",
    )
    technician = labels.filter(pl.col("label_origin") == TECHNICIAN).select(
        "request_id", "photo_sha256", "damage_level", "cell_type", "label_origin"
    )
    candidates = pl.concat(
        [other_candidates(labels), model_candidates(labels, inference_log)],
        how="vertical_relaxed",
    )
    rows = admitted_labels(
        technician, candidates, policy=_label_policy(policy), holdout_shas=holdout_shas
    )
    is_synthetic = pl.col("label_origin") == SYNTHETIC
    joined = pl.concat(
        [
            rows.filter(~is_synthetic).join(served, on="request_id", how="left"),
            rows.filter(is_synthetic),
        ],
        how="diagonal_relaxed",
    )
    return joined.select(
        pl.col(name).cast(dtype) if name in joined.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in FEEDBACK_COLUMNS.items()
    ).sort("request_id", "label_origin", "photo_sha256")


def holdout_leakage(training: pl.DataFrame, holdout_shas: pl.Series) -> int:
    """How many training rows show a holdout photo."""
    return training.filter(pl.col("photo_sha256").is_in(holdout_shas.implode())).height


def holdout_descendants(training: pl.DataFrame, holdout_shas: pl.Series) -> int:
    """How many training rows show a synthetic photo made from a holdout photo."""
    if "parent_sha256" not in training.columns:
        return 0
    return training.filter(pl.col("parent_sha256").is_in(holdout_shas.implode())).height


def self_label_share(training: pl.DataFrame) -> float:
    """The share of training rows whose label came from a model, not a technician."""
    return origin_share(training, MODEL)


def origin_share(training: pl.DataFrame, origin: str) -> float:
    """The share of training rows whose label came from `origin`."""
    if training.is_empty():
        return 0.0
    return training.filter(pl.col("label_origin") == origin).height / training.height


def share_figures(
    training: pl.DataFrame, policy: LabelPolicy, ceilings: dict[str, float]
) -> tuple[bool, dict]:
    """Whether each non-technician origin keeps within its policy's cap (0 when the origin is
    disabled) and within its ceiling in `ceilings` (origins not named there have none), with the
    figures: rows, share, cap and ceiling per origin, and the set's size."""
    figures: dict = {"training_rows": training.height}
    passed = True
    for origin in NON_TECHNICIAN_ORIGINS:
        rule = policy.of(origin)
        share = origin_share(training, origin)
        cap = rule.max_share if rule.admits else 0.0
        limit = min(cap, ceilings.get(origin, 1.0))
        figures[f"{origin}_rows"] = training.filter(pl.col("label_origin") == origin).height
        figures[f"{origin}_share"] = share
        figures[f"{origin}_cap"] = cap
        if origin in ceilings:
            figures[f"{origin}_ceiling"] = ceilings[origin]
        passed = passed and share <= limit + 1e-12
    return passed, figures


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
