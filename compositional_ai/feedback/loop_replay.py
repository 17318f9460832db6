"""Replay the landing batches through the repair model twice: retrained on technician-confirmed
labels, and retrained on its own unconfirmed predictions (pure numpy / polars / torch).

The replay starts from the seed state, a model trained on the workshop archive (the first batch).
For every later batch in order, the current version of each variant grades the batch's photos,
the technician outcomes the batch brings are recorded, then each variant retrains:

- "confirmed" on the archive plus every technician label recorded by then. Outcomes arrive one
  batch late, so a label of batch j is usable from batch j + 1 on (and never before the batch
  that confirmed it);
- "self_labelled" on the archive plus its own predictions for every batch so far, unconfirmed.

Where a variant's versions answer is a `Grader`: `InProcessGrader` runs the model here (batched
`predict_proba` under inference mode, the service's code path); `service_replay.ServiceGrader`
sends every photo to a real repair service over HTTP. Each variant learns from what its grader
logged, never from the replay's own copy of the answers: its predictions, and the outcomes
recorded against them.

Each version is trained from scratch with the same seed (no warm start), as the feedback asset
trains the next repair model, so the two curves differ only by the labels they learned from.
Every version is scored on the fixed holdout, which no training set ever contains.
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

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
    # The version id the variant's grader reports for it (the service's registry version).
    "served_version": pl.String,
    "train_rows": pl.Int64,
    "self_label_share": pl.Float64,
    "four_class_accuracy": pl.Float64,
    "binary_accuracy": pl.Float64,
}

# The figures of a version that go with it where it is published.
REPLAY_METRICS = ("train_rows", "self_label_share", "four_class_accuracy", "binary_accuracy")

TRAINING_ROWS_SCHEMA = {
    "step": pl.Int64,
    "variant": pl.String,
    "model_version": pl.String,
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "damage_level": pl.Int64,
    "label_origin": pl.String,
}

# What a grader answers for each request it graded, and what it logged: `request_id` is the
# landing request's id, `served_request_id` the id the grader gave the assessment, and
# `model_version` the version the grader says answered.
GRADED_SCHEMA = {
    "request_id": pl.String,
    "served_request_id": pl.String,
    "photo_sha256": pl.String,
    "model_version": pl.String,
    "predicted_level": pl.Int64,
    "confidence": pl.Float64,
}

# The technician labels a grader recorded against its assessments.
RECORDED_LABELS_SCHEMA = {
    "request_id": pl.String,
    "photo_sha256": pl.String,
    "damage_level": pl.Int64,
}

PREDICTIONS_SCHEMA = {
    "step": pl.Int64,
    "batch": pl.String,
    "variant": pl.String,
    **GRADED_SCHEMA,
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
    """The per-version table, every version's training rows, every prediction made, and the
    grader's account of how the predictions were made."""

    table: pl.DataFrame
    training_rows: pl.DataFrame
    predictions: pl.DataFrame
    majority_four_class_accuracy: float
    majority_binary_accuracy: float
    seconds: float
    grading: dict = field(default_factory=dict)


class Grader(Protocol):
    """Where each variant's current version answers, and what it logged."""

    def publish(self, variant: str, version: str, model, metrics: dict) -> str:
        """Make `model` the version that grades the variant's next batch; return its id."""
        ...

    def grade(self, variant: str, requests: pl.DataFrame, images: np.ndarray) -> pl.DataFrame:
        """Grade the requests (request_id, photo_sha256, ...; `images` decoded in the same
        order) with the variant's current version: rows of GRADED_SCHEMA."""
        ...

    def confirm(self, variant: str, labels: pl.DataFrame) -> None:
        """Record technician outcomes (rows of the labels frame) against the variant's
        assessments of those requests."""
        ...

    def logged_predictions(self, variant: str) -> pl.DataFrame:
        """Every successful assessment the variant's grader logged: rows of GRADED_SCHEMA."""
        ...

    def recorded_labels(self, variant: str) -> pl.DataFrame:
        """Every technician label recorded with the variant's grader: RECORDED_LABELS_SCHEMA."""
        ...

    def summary(self) -> dict:
        """How the grading went: requests, failures, latency, versions served."""
        ...


class InProcessGrader:
    """Each variant's current version predicts here, in batches, as the service's code does."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[str, object]] = {}
        self._graded: dict[str, list[pl.DataFrame]] = {}
        self._labels: dict[str, list[pl.DataFrame]] = {}
        self._published: dict[str, list[str]] = {}

    def publish(self, variant: str, version: str, model, metrics: dict) -> str:
        self._current[variant] = (version, model)
        self._published.setdefault(variant, []).append(version)
        return version

    def grade(self, variant: str, requests: pl.DataFrame, images: np.ndarray) -> pl.DataFrame:
        version, model = self._current[variant]
        proba = predict_proba(model, images, batch_size=INFERENCE_BATCH_SIZE)
        graded = requests.select(
            "request_id",
            pl.col("request_id").alias("served_request_id"),
            "photo_sha256",
            pl.lit(version).alias("model_version"),
            pl.Series("predicted_level", proba.argmax(axis=1).astype(np.int64)),
            pl.Series("confidence", proba.max(axis=1).astype(np.float64)),
        ).cast(GRADED_SCHEMA)
        self._graded.setdefault(variant, []).append(graded)
        return graded

    def confirm(self, variant: str, labels: pl.DataFrame) -> None:
        # A technician confirms an assessment: labels of requests never graded are not recorded.
        graded = self.logged_predictions(variant).select("request_id")
        recorded = labels.join(graded, on="request_id", how="semi")
        self._labels.setdefault(variant, []).append(
            recorded.select(list(RECORDED_LABELS_SCHEMA)).cast(RECORDED_LABELS_SCHEMA)
        )

    def logged_predictions(self, variant: str) -> pl.DataFrame:
        return _concat_or_empty(self._graded.get(variant, []), GRADED_SCHEMA)

    def recorded_labels(self, variant: str) -> pl.DataFrame:
        return _concat_or_empty(self._labels.get(variant, []), RECORDED_LABELS_SCHEMA)

    def summary(self) -> dict:
        return {
            "through": "in_process",
            "requests_sent": sum(
                frame.height for frames in self._graded.values() for frame in frames
            ),
            "failures": 0,
            "published_versions": self._published,
        }


def _concat_or_empty(frames: list[pl.DataFrame], schema: dict) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


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


def outcomes_arriving(
    labels: pl.DataFrame, batch: str, previous: str, archive: str
) -> pl.DataFrame:
    """The technician labels that become usable with `batch` and were not with `previous`: the
    outcomes the batch brings for the requests of earlier online batches."""

    def usable(by: str) -> pl.Expr:
        return (pl.col("request_batch") < by) & (pl.col("confirmed_in_batch") <= by)

    return labels.filter((pl.col("request_batch") != archive) & usable(batch) & ~usable(previous))


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
    grader: Grader | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> ReplayResult:
    """Replay the batches for both variants and score every version on the holdout.

    `labels`: technician labels (request_id, request_batch, confirmed_in_batch, photo_sha256,
    damage_level, and whatever else the grader needs to record an outcome); `requests`: what the
    service assessed (request_id, batch, photo_sha256, and whatever else the grader sends);
    `holdout`: sha256, damage_level, content; `photos`: sha256, content of every label and
    request photo. Batch keys sort in time order; the first batch is the workshop archive.
    `grader` (default: an `InProcessGrader`) grades the batches; `on_step` receives each row of
    the table as it is recorded.
    """
    started = time.perf_counter()
    grader = InProcessGrader() if grader is None else grader
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

    def train(training: pl.DataFrame) -> tuple[pl.DataFrame, object]:
        # The holdout is for scoring only: whatever the labels say, its photos never train.
        training = training.filter(~pl.col("photo_sha256").is_in(holdout_shas)).sort("request_id")
        result = fit(
            pixels.of(training["photo_sha256"]),
            training["damage_level"].cast(pl.Int64).to_numpy(),
            num_classes=NUM_LEVELS,
            config=train_config,
        )
        return training, result.model

    def release(step: int, batch: str, variant: str, training: pl.DataFrame, model) -> None:
        # Scored here, not through the grader: holdout photos must never enter a served log,
        # where they would become self-labels.
        four, binary = holdout_scores(model, holdout_images, holdout_levels)
        version = model_version(variant, step)
        row = {
            "step": step,
            "batch": batch,
            "variant": variant,
            "model_version": version,
            "served_version": None,
            "train_rows": training.height,
            "self_label_share": training.filter(pl.col("label_origin") == MODEL).height
            / training.height,
            "four_class_accuracy": four,
            "binary_accuracy": binary,
        }
        metrics = {key: row[key] for key in REPLAY_METRICS}
        row["served_version"] = grader.publish(variant, version, model, metrics)
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
        # Both variants start from the same seed model: train it once, release it to each.
        seed_rows, seed = train(archive_rows)
        for variant in VARIANTS:
            release(0, archive, variant, seed_rows, seed)
        for step, batch in enumerate(batches[1:], start=1):
            arrived = requests.filter(pl.col("batch") == batch).sort("request_id")
            images = pixels.of(arrived["photo_sha256"])
            # The variants' graders are independent: grading both at once overlaps one
            # service's waits (disk syncs, the network) with the other's work.
            with ThreadPoolExecutor(len(VARIANTS)) as pool:
                pending = [pool.submit(grader.grade, v, arrived, images) for v in VARIANTS]
                answers = [future.result() for future in pending]
            for variant, graded in zip(VARIANTS, answers, strict=True):
                predicted.append(
                    graded.with_columns(
                        pl.lit(step).alias("step"),
                        pl.lit(batch).alias("batch"),
                        pl.lit(variant).alias("variant"),
                    )
                )
            grader.confirm(CONFIRMED, outcomes_arriving(labels, batch, batches[step - 1], archive))
            confirmed = pl.concat(
                [
                    archive_rows,
                    grader.recorded_labels(CONFIRMED).with_columns(
                        pl.lit(TECHNICIAN).alias("label_origin")
                    ),
                ],
                how="vertical_relaxed",
            )
            own = self_labelled_by(archive_rows, grader.logged_predictions(SELF_LABELLED))
            for variant, training in ((CONFIRMED, confirmed), (SELF_LABELLED, own)):
                training, model = train(training)
                release(step, batch, variant, training, model)
        grading = grader.summary()
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
        grading=grading,
    )
