"""The feedback loop: confirmed predictions retrain the repair model, promoted only if better."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    asset_check,
    multi_asset_check,
)

from compositional_ai.feedback.lineage import create_lineage_view
from compositional_ai.feedback.policy import (
    LabelPolicy,
    OriginPolicy,
    feedback_training_rows,
    holdout_descendants,
    holdout_leakage,
    self_label_share,
    share_figures,
)
from compositional_ai.landing.formats import CHATBOT, SYNTHETIC, TECHNICIAN
from compositional_ai.repair_service.assets import REPAIR_MODEL, promote_if_not_worse
from compositional_ai.repair_service.served_assets import (
    SERVED_INFERENCE_LOG,
    SERVED_OUTCOMES,
    all_damage_labels,
    all_inferences,
)
from compositional_ai.repair_service.vision_models import photo_model_asset
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse.silver import HOLDOUT_IDENTITIES

# No configuration can let model-proposed labels be more than this share of a training set.
SELF_LABEL_CEILING = 0.25
# Nor chatbot or synthetic labels (the model's ceiling has its own check, SELF_LABEL_SHARE).
ORIGIN_CEILINGS = {CHATBOT: 0.25, SYNTHETIC: 0.25}
NO_HOLDOUT_LEAKAGE = "no_holdout_photos"
SELF_LABEL_SHARE = "self_label_share_within_ceiling"
NO_HOLDOUT_DESCENDANTS = "no_synthetic_children_of_holdout_photos"
LABEL_SHARES = "label_shares_within_policy"
EVALUATION_LABELS = "evaluation_labels_technician_only"
TRAINING_SET = AssetKey(["feedback", "repair_feedback_training_set"])
SEED_TRAINING_SET = AssetKey(["repair", "repair_seed_training_set"])
# The labels a training set may choose from, read from the warehouse beside the asset inputs.
LABEL_SOURCES = [
    SERVED_INFERENCE_LOG,
    SERVED_OUTCOMES,
    AssetKey(["chatbot", "chatbot_capture_log"]),
    AssetKey(["silver", "repair_requests"]),
    AssetKey(["silver", "synthetic_photos"]),
]


class FeedbackPolicyConfig(Config):
    """Which labels besides the technicians' the next repair model may learn from, and how many.

    Every origin is off by default. Model-proposed labels (self-labels) follow the share unless
    `self_label_enabled` says otherwise: a positive `self_label_max_share` turns them on, as it
    did before the flag existed. Chatbot and synthetic labels each need their flag.
    """

    self_label_min_confidence: float = 0.95
    self_label_max_share: float = 0.0
    self_label_enabled: bool | None = None
    chatbot_labels_enabled: bool = False
    chatbot_min_confidence: float = 1.0
    chatbot_max_share: float = 0.1
    synthetic_labels_enabled: bool = False
    synthetic_max_share: float = 0.1

    def label_policy(self) -> LabelPolicy:
        model_enabled = (
            self.self_label_max_share > 0
            if self.self_label_enabled is None
            else self.self_label_enabled
        )
        model = OriginPolicy(
            enabled=model_enabled,
            min_confidence=self.self_label_min_confidence,
            max_share=self.self_label_max_share,
        )
        return LabelPolicy.from_config(self, model)


def leakage_check(
    training: pl.DataFrame, holdout: pl.DataFrame, asset_key: AssetKey | None = None
) -> AssetCheckResult:
    """Fails when a training row shows a holdout photo, with the count in its metadata."""
    leaked = holdout_leakage(training, holdout["sha256"])
    return _leak_result(NO_HOLDOUT_LEAKAGE, leaked, training, asset_key)


def descendants_check(
    training: pl.DataFrame, holdout_shas: pl.Series, asset_key: AssetKey
) -> AssetCheckResult:
    """Fails when a training row shows a synthetic photo made from a holdout photo."""
    leaked = holdout_descendants(training, holdout_shas)
    return _leak_result(NO_HOLDOUT_DESCENDANTS, leaked, training, asset_key)


def _leak_result(
    name: str, leaked: int, training: pl.DataFrame, asset_key: AssetKey | None
) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=name,
        asset_key=asset_key,
        passed=leaked == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={"leaked_rows": leaked, "training_rows": training.height},
    )


def label_share_check(
    training: pl.DataFrame,
    policy: LabelPolicy,
    asset_key: AssetKey,
    ceilings: dict[str, float],
) -> AssetCheckResult:
    """Fails when a non-technician origin holds more of the set than its recorded policy allows
    (nothing when disabled) or than its ceiling."""
    passed, figures = share_figures(training, policy, ceilings)
    return AssetCheckResult(
        check_name=LABEL_SHARES,
        asset_key=asset_key,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            key: MetadataValue.float(value) if isinstance(value, float) else value
            for key, value in figures.items()
        }
        | {"policy": MetadataValue.json(policy.record())},
    )


def evaluation_check(holdout: pl.DataFrame, asset_key: AssetKey) -> AssetCheckResult:
    """Fails when the holdout the trained model will be scored on carries a label that is not a
    technician's: evaluation takes no model, chatbot or synthetic label.

    It runs with the training set, in the run that trains the model, so it stops that training;
    a holdout without the label_origin column holds the landing contract's expert labels.
    """
    if "label_origin" in holdout.columns:
        origins = holdout["label_origin"].fill_null(TECHNICIAN)
    else:
        origins = pl.Series("label_origin", [TECHNICIAN] * holdout.height, dtype=pl.String)
    by_origin = dict(origins.value_counts().sort("label_origin").iter_rows())
    others = int((origins != TECHNICIAN).sum())
    return AssetCheckResult(
        check_name=EVALUATION_LABELS,
        asset_key=asset_key,
        passed=others == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "holdout_rows": holdout.height,
            "non_technician_rows": others,
            "rows_by_origin": MetadataValue.json(by_origin),
        },
    )


def label_checks(asset_key: AssetKey) -> list[AssetCheckSpec]:
    """The blocking checks a training set runs on itself with its recorded policy in hand."""
    return [
        AssetCheckSpec(
            NO_HOLDOUT_DESCENDANTS,
            asset=asset_key,
            blocking=True,
            description="No synthetic photo made from a holdout photo (by parent_sha256) is in "
            "the training set.",
        ),
        AssetCheckSpec(
            LABEL_SHARES,
            asset=asset_key,
            blocking=True,
            description="Model, chatbot and synthetic labels each keep within the share their "
            "recorded policy allows (none when disabled) and within their ceiling.",
        ),
        AssetCheckSpec(
            EVALUATION_LABELS,
            asset=asset_key,
            blocking=True,
            additional_deps=[AssetKey(["silver", "holdout_photos"])],
            description="The holdout the model is scored on holds technician labels only.",
        ),
    ]


def consumed_lineage(training: pl.DataFrame) -> dict:
    """Which inference-log partitions and model versions a training set consumed."""
    served = training.filter(pl.col("inference_batch").is_not_null())
    return {
        "inference_partitions": sorted(served["inference_batch"].unique().to_list()),
        "model_versions": sorted(served["model_version"].unique().to_list()),
        "rows_by_origin": dict(training.group_by("label_origin").len().iter_rows()),
    }


@asset(
    key_prefix="feedback",
    group_name="feedback",
    tags={"role": "training_set"},
    ins={
        "labels": AssetIn(key=["gold", "confirmed_labels"]),
        "inference_log": AssetIn(key=["repair", "repair_inference_log"]),
        "holdout": HOLDOUT_IDENTITIES,
    },
    deps=LABEL_SOURCES,
    check_specs=label_checks(TRAINING_SET),
)
def repair_feedback_training_set(
    context: AssetExecutionContext,
    config: FeedbackPolicyConfig,
    labels: pl.DataFrame,
    inference_log: pl.DataFrame,
    holdout: pl.DataFrame,
    warehouse: Warehouse,
):
    """Technician labels joined to the predictions they confirm, plus the model, chatbot and
    synthetic labels the recorded policy admits: the next repair model's data.

    The candidates are gold.damage_labels' rows, built here from the same sources with the same
    function, so a training run needs no rebuilt gold table first.
    """
    policy = config.label_policy()
    inferences = all_inferences(warehouse, inference_log)
    training = feedback_training_rows(
        all_damage_labels(warehouse, labels, inferences),
        inferences,
        policy=policy,
        holdout_shas=holdout["sha256"],
    )
    lineage = consumed_lineage(training)
    context.log.info(f"feedback training set: {training.height} rows, {lineage}")
    model = policy.model
    yield Output(
        training,
        metadata={
            "lineage": MetadataValue.json(lineage),
            "label_policy": MetadataValue.json(policy.record()),
            "self_label_policy": MetadataValue.json(
                {"min_confidence": model.min_confidence, "max_share": model.max_share}
            ),
            "self_label_share": MetadataValue.float(self_label_share(training)),
        },
    )
    yield descendants_check(training, holdout["sha256"], TRAINING_SET)
    yield label_share_check(training, policy, TRAINING_SET, ORIGIN_CEILINGS)
    yield evaluation_check(holdout, TRAINING_SET)


@asset_check(
    asset=repair_feedback_training_set,
    name=NO_HOLDOUT_LEAKAGE,
    blocking=True,
    additional_ins={"holdout": HOLDOUT_IDENTITIES},
    description="No photo of the evaluation holdout is in the training set.",
)
def no_holdout_photos(
    repair_feedback_training_set: pl.DataFrame, holdout: pl.DataFrame
) -> AssetCheckResult:
    return leakage_check(repair_feedback_training_set, holdout)


@asset_check(
    asset=repair_feedback_training_set,
    name=SELF_LABEL_SHARE,
    blocking=True,
    description=f"Model-proposed labels are at most {SELF_LABEL_CEILING:.0%} of the rows.",
)
def self_label_share_within_ceiling(repair_feedback_training_set: pl.DataFrame) -> AssetCheckResult:
    share = self_label_share(repair_feedback_training_set)
    return AssetCheckResult(
        passed=share <= SELF_LABEL_CEILING,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "self_label_share": MetadataValue.float(share),
            "ceiling": MetadataValue.float(SELF_LABEL_CEILING),
        },
    )


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            NO_HOLDOUT_LEAKAGE,
            asset=SEED_TRAINING_SET,
            blocking=True,
            # A multi-asset check reads only what its specs depend on.
            additional_deps=[AssetKey(["silver", "holdout_photos"])],
            description="No photo of the evaluation holdout is in the seed training set.",
        ),
        AssetCheckSpec(
            EVALUATION_LABELS,
            asset=SEED_TRAINING_SET,
            blocking=True,
            additional_deps=[AssetKey(["silver", "holdout_photos"])],
            description="The holdout the seed model is scored on holds technician labels only.",
        ),
    ],
    # The whole table: an input that is also a spec's dependency cannot carry "columns" metadata.
    ins={
        "seed": AssetIn(key=SEED_TRAINING_SET),
        "holdout": AssetIn(key=["silver", "holdout_photos"]),
    },
)
def seed_training_set_checks(seed: pl.DataFrame, holdout: pl.DataFrame):
    """The seed training set's blocking checks, in one step: no holdout photo, and a holdout of
    technician labels to score the seed model on."""
    yield leakage_check(seed, holdout, SEED_TRAINING_SET)
    yield evaluation_check(holdout, SEED_TRAINING_SET)


repair_damage_model_next = photo_model_asset(
    key_prefix="feedback",
    name="repair_damage_model_next",
    group_name="feedback",
    training_set_key=["feedback", "repair_feedback_training_set"],
    model_name=REPAIR_MODEL,
    label_column="damage_level",
    num_classes=4,
    description="The next repair model version, retrained on confirmed feedback; champion only "
    "if it is not worse.",
    after_register=promote_if_not_worse,
)


@asset(
    key_prefix="gold",
    group_name="feedback",
    tags={"role": "report"},
    deps=[
        AssetKey(["repair", "repair_inference_log"]),
        SERVED_INFERENCE_LOG,
        SERVED_OUTCOMES,
        AssetKey(["gold", "confirmed_labels"]),
        AssetKey(["repair", "repair_damage_model"]),
        AssetKey(["feedback", "repair_damage_model_next"]),
        AssetKey(["defect_detection", "defect_detector"]),
        AssetKey(["recommendation", "service_recommender"]),
    ],
)
def prediction_lineage(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
    """A view from each prediction to its label, the model versions that learned from it, and
    what those versions predicted next."""
    create_lineage_view(warehouse)
    figures = warehouse.query(
        "select count(*) as rows, count(distinct request_id) as predictions, "
        "count(distinct consumed_by || '@' || consumed_by_version) as consuming_versions "
        "from gold.prediction_lineage",
        purpose="describe gold.prediction_lineage",
    ).to_dicts()[0]
    context.log.info(f"gold.prediction_lineage: {figures}")
    return MaterializeResult(metadata={key: int(value) for key, value in figures.items()})
