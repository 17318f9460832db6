"""Replay the landing batches through the repair model twice: retrained on technician-confirmed
labels, and retrained on its own unconfirmed predictions (pure numpy / polars / torch).

The replay starts from the seed state, a model trained on the workshop archive (the first batch).
For every later batch in order, the current model of each variant grades the batch's photos the
way the service does (batched `predict_proba` under inference mode), then each variant retrains:

- "confirmed" on every technician label available by then. Outcomes arrive one batch late, so a
  label of batch j is usable from batch j + 1 on (and never before the batch that confirmed it);
- "self_labelled" on the archive plus its own predictions for every batch so far, unconfirmed.

Each version is trained from scratch with the same seed (no warm start), as the feedback asset
trains the next repair model, so the two curves differ only by the labels they learned from.
Every version is scored on the fixed holdout, which no training set ever contains.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from compositional_ai.vision.images import decode_gray
from compositional_ai.vision.metrics import (
    NUM_LEVELS,
    classification_metrics,
    four_class_to_binary_proba,
    levels_to_binary,
)
from compositional_ai.vision.training import TrainConfig, fit, predict_proba

CONFIRMED = "confirmed"
SELF_LABELLED = "self_labelled"
VARIANTS = (CONFIRMED, SELF_LABELLED)
TECHNICIAN = "technician"
MODEL = "model"
# The repair service's inference batch size, so predictions follow its code path.
INFERENCE_BATCH_SIZE = 128

REPLAY_SCHEMA = {
    "step": pl.Int64,
    "batch": pl.String,
    "variant": pl.String,
    "model_version": pl.String,
    "train_rows": pl.Int64,
    "self_label_share": pl.Float64,
    "four_class_accuracy": pl.Float64,
    "binary_accuracy": pl.Float64,
}

TRAINING_ROWS_SCHEMA = {
    "step": pl.Int64,
    "variant": pl.String,
    "model_version": pl.String,
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "damage_level": pl.Int64,
    "label_origin": pl.String,
}

PREDICTIONS_SCHEMA = {
    "step": pl.Int64,
    "batch": pl.String,
    "variant": pl.String,
    "model_version": pl.String,
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "predicted_level": pl.Int64,
    "confidence": pl.Float64,
}


@dataclass(frozen=True)
class ReplayConfig:
    """Training settings of every replayed version: small images and few epochs keep it cheap.

    There is no wall-clock budget, so a replay gives the same figures however loaded the machine.
    """

    image_size: int = 48
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    patience: int = 4
    # No validation carve-out: a fixed number of epochs on every row. Selecting the best epoch
    # on 15 % of the 491-photo archive picks a constant first-epoch model for some seeds.
    val_fraction: float = 0.0
    class_weighting: str = "sqrt"
    seed: int = 0
    num_threads: int = 1

    def to_train_config(self) -> TrainConfig:
        return TrainConfig(
            image_size=self.image_size,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            width=self.width,
            patience=self.patience,
            val_fraction=self.val_fraction,
            class_weighting=self.class_weighting,
            seed=self.seed,
            num_threads=self.num_threads,
            max_seconds=None,
        )


@dataclass
class ReplayResult:
    """The per-version table, every version's training rows, and every prediction made."""

    table: pl.DataFrame
    training_rows: pl.DataFrame
    predictions: pl.DataFrame
    majority_four_class_accuracy: float
    majority_binary_accuracy: float
    seconds: float


def model_version(variant: str, step: int) -> str:
    """The replay's name for a variant's version after `step` retrainings, e.g. confirmed-v3."""
    return f"{variant}-v{step + 1}"


def holdout_scores(model, images: np.ndarray, levels: np.ndarray) -> tuple[float, float]:
    """Four-class and binary holdout accuracy, read out as the repair model's evaluation does."""
    proba = predict_proba(model, images, batch_size=INFERENCE_BATCH_SIZE)
    four = classification_metrics(levels, proba.argmax(axis=1), NUM_LEVELS)["accuracy"]
    predicted_binary = (four_class_to_binary_proba(proba) >= 0.5).astype(np.int64)
    binary = classification_metrics(levels_to_binary(levels), predicted_binary, 2)["accuracy"]
    return float(four), float(binary)


def confirmed_by(labels: pl.DataFrame, batch: str, archive: str) -> pl.DataFrame:
    """Technician labels usable once `batch` is in: the archive's, and those of earlier batches
    whose outcome has arrived by `batch`."""
    usable = labels.filter(
        (pl.col("request_batch") == archive)
        | ((pl.col("request_batch") < batch) & (pl.col("confirmed_in_batch") <= batch))
    )
    return usable.select(
        "request_id", "photo_sha256", "damage_level", pl.lit(TECHNICIAN).alias("label_origin")
    )


def self_labelled_by(archive_rows: pl.DataFrame, own_predictions: pl.DataFrame) -> pl.DataFrame:
    """The archive's technician labels plus the variant's own predictions, unconfirmed."""
    own = own_predictions.select(
        "request_id",
        "photo_sha256",
        pl.col("predicted_level").alias("damage_level"),
        pl.lit(MODEL).alias("label_origin"),
    )
    return pl.concat([archive_rows, own], how="vertical_relaxed")


class _Pixels:
    """Every photo the replay needs, decoded once, looked up by sha256 in bulk."""

    def __init__(self, photos: pl.DataFrame, image_size: int) -> None:
        unique = photos.unique("sha256", keep="first", maintain_order=True)
        self.index = unique.select("sha256").with_row_index("row")
        self.images = decode_gray(unique["content"].to_list(), image_size)

    def of(self, shas: pl.Series) -> np.ndarray:
        rows = (
            pl.DataFrame({"sha256": shas})
            .join(self.index, on="sha256", how="left", maintain_order="left")
            .get_column("row")
        )
        if rows.null_count():
            raise LookupError(f"{rows.null_count()} photos of the replay have no content")
        return self.images[rows.to_numpy()]


def replay_feedback_loop(
    labels: pl.DataFrame,
    requests: pl.DataFrame,
    holdout: pl.DataFrame,
    photos: pl.DataFrame,
    *,
    config: ReplayConfig,
    on_step: Callable[[dict], None] | None = None,
) -> ReplayResult:
    """Replay the batches for both variants and score every version on the holdout.

    `labels`: technician labels (request_id, request_batch, confirmed_in_batch, photo_sha256,
    damage_level); `requests`: what the service assessed (request_id, batch, photo_sha256);
    `holdout`: sha256, damage_level, content; `photos`: sha256, content of every label and
    request photo. Batch keys sort in time order; the first batch is the workshop archive.
    `on_step` receives each row of the table as it is recorded.
    """
    started = time.perf_counter()
    holdout_shas = holdout["sha256"].implode()
    batches = sorted(set(labels["request_batch"].to_list()) | set(requests["batch"].to_list()))
    if not batches:
        raise ValueError("no batches to replay: the labels and requests are empty")
    if holdout.is_empty():
        raise ValueError("the holdout is empty: there is nothing to score the versions on")
    archive = batches[0]
    if not requests.filter(pl.col("batch") == archive).is_empty():
        raise ValueError(
            f"the first batch, {archive}, should be the workshop archive, but the service "
            "assessed requests in it: the labels hold no archive to train the seed model on"
        )
    archive_rows = confirmed_by(labels, archive, archive).filter(
        ~pl.col("photo_sha256").is_in(holdout_shas)
    )
    if archive_rows.is_empty():
        raise ValueError(f"the workshop archive (batch {archive}) has no usable confirmed labels")

    train_config = config.to_train_config()
    pixels = _Pixels(photos, config.image_size)
    holdout_images = decode_gray(holdout["content"].to_list(), config.image_size)
    holdout_levels = holdout["damage_level"].cast(pl.Int64).to_numpy()

    rows: list[dict] = []
    trained: list[pl.DataFrame] = []
    predicted: list[pl.DataFrame] = []

    def train(step: int, batch: str, variant: str, training: pl.DataFrame):
        # The holdout is for scoring only: whatever the labels say, its photos never train.
        training = training.filter(~pl.col("photo_sha256").is_in(holdout_shas)).sort("request_id")
        version = model_version(variant, step)
        result = fit(
            pixels.of(training["photo_sha256"]),
            training["damage_level"].cast(pl.Int64).to_numpy(),
            num_classes=NUM_LEVELS,
            config=train_config,
        )
        record(step, batch, variant, version, training, result.model)
        return result.model

    def record(step, batch, variant, version, training, model) -> None:
        four, binary = holdout_scores(model, holdout_images, holdout_levels)
        row = {
            "step": step,
            "batch": batch,
            "variant": variant,
            "model_version": version,
            "train_rows": training.height,
            "self_label_share": training.filter(pl.col("label_origin") == MODEL).height
            / training.height,
            "four_class_accuracy": four,
            "binary_accuracy": binary,
        }
        rows.append(row)
        trained.append(
            training.with_columns(
                pl.lit(step).alias("step"),
                pl.lit(variant).alias("variant"),
                pl.lit(version).alias("model_version"),
            )
        )
        if on_step is not None:
            on_step(row)

    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        # Both variants start from the same seed model: train it once, record it for each.
        seed = train(0, archive, CONFIRMED, archive_rows)
        record(0, archive, SELF_LABELLED, model_version(SELF_LABELLED, 0), archive_rows, seed)
        models = dict.fromkeys(VARIANTS, seed)
        for step, batch in enumerate(batches[1:], start=1):
            arrived = requests.filter(pl.col("batch") == batch).sort("request_id")
            images = pixels.of(arrived["photo_sha256"])
            for variant in VARIANTS:
                proba = predict_proba(models[variant], images, batch_size=INFERENCE_BATCH_SIZE)
                predicted.append(
                    arrived.select("request_id", "photo_sha256").with_columns(
                        pl.lit(step).alias("step"),
                        pl.lit(batch).alias("batch"),
                        pl.lit(variant).alias("variant"),
                        pl.lit(model_version(variant, step - 1)).alias("model_version"),
                        pl.Series("predicted_level", proba.argmax(axis=1).astype(np.int64)),
                        pl.Series("confidence", proba.max(axis=1).astype(np.float64)),
                    )
                )
            own = pl.concat(predicted).filter(pl.col("variant") == SELF_LABELLED)
            models = {
                CONFIRMED: train(step, batch, CONFIRMED, confirmed_by(labels, batch, archive)),
                SELF_LABELLED: train(
                    step, batch, SELF_LABELLED, self_labelled_by(archive_rows, own)
                ),
            }
    finally:
        torch.set_num_threads(previous)

    defective_share = float(levels_to_binary(holdout_levels).mean())
    return ReplayResult(
        table=pl.DataFrame(rows, schema=REPLAY_SCHEMA).sort("step", "variant"),
        training_rows=pl.concat(trained, how="vertical_relaxed")
        .select(list(TRAINING_ROWS_SCHEMA))
        .cast(TRAINING_ROWS_SCHEMA),
        predictions=(
            pl.concat(predicted).select(list(PREDICTIONS_SCHEMA)).cast(PREDICTIONS_SCHEMA)
            if predicted
            else pl.DataFrame(schema=PREDICTIONS_SCHEMA)
        ),
        majority_four_class_accuracy=float(
            np.bincount(holdout_levels, minlength=NUM_LEVELS).max() / len(holdout_levels)
        ),
        majority_binary_accuracy=max(defective_share, 1 - defective_share),
        seconds=time.perf_counter() - started,
    )
