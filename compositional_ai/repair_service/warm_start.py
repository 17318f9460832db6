"""Warm starts: a photo model's next version continues from the asset's previous version.

A new landing batch adds a few hundred labelled photos to a training set of thousands. Training
from scratch on all of them costs as much as the history is long; continuing from the previous
version's weights on the new photos, with a replay sample of the old ones so it does not forget
them, costs as much as the batch is large.

A warm start is only taken when the previous version's lessons still hold: every (photo, label)
pair it learned from must still be in the training set with the same label. A label that was
corrected or withdrawn since (a technician overruling a self-label, a photo found in the
holdout) cannot be unlearned by fine-tuning, so the version trains from scratch instead, as it
does when the architecture changed, when nothing is new, or when most of the set is new.
"""

import math
from dataclasses import dataclass

import polars as pl

# Settings that shape the weights: a version trained with other values cannot be continued.
ARCHITECTURE_PARAMS = (
    "image_size",
    "width",
    "stem_convs",
    "dropout",
    "members",
    "test_time_flips",
    "prior_correction",
    "num_classes",
)
# Logged with every version: the (photo, label) pairs its weights learned from.
PAIRS_ARTIFACT = "training_pairs.parquet"
PAIRS_SCHEMA = {"photo_sha256": pl.String, "label": pl.Int64}


@dataclass(frozen=True)
class WarmStartPlan:
    """What the next version trains on, and from which weights.

    `parent` is the version to continue from (None: from scratch); `rows` are the training-set
    rows to train on: all of them from scratch, the new ones and the replay sample when warm.
    """

    parent: str | None
    reason: str
    rows: pl.DataFrame
    new_rows: int
    replay_rows: int

    @property
    def warm(self) -> bool:
        return self.parent is not None


def training_pairs(training_set: pl.DataFrame, label_column: str) -> pl.DataFrame:
    """The distinct (photo, label) pairs of a training set, sorted."""
    return (
        training_set.select(
            pl.col("photo_sha256").cast(pl.String),
            pl.col(label_column).cast(pl.Int64).alias("label"),
        )
        .unique()
        .sort("photo_sha256", "label")
    )


def scratch(training_set: pl.DataFrame, reason: str) -> WarmStartPlan:
    """A plan to train from scratch on the whole set."""
    return WarmStartPlan(None, reason, training_set, training_set.height, 0)


def plan_warm_start(
    training_set: pl.DataFrame,
    label_column: str,
    *,
    parent: str,
    parent_pairs: pl.DataFrame,
    max_new_share: float,
    replay_ratio: float,
    seed: int,
    min_rows: int = 0,
) -> WarmStartPlan:
    """Continue from `parent` (trained on `parent_pairs`) when its lessons still hold and the new
    rows are at most `max_new_share` of the set; the replay sample is `replay_ratio` times the
    new rows, or more to make `min_rows` in all (at most every old row), drawn with `seed`.

    The floor matters when little is new: a few rows alone would pull batch-norm statistics and
    the weights toward themselves."""
    if not 0.0 < max_new_share <= 1.0:
        raise ValueError(f"max_new_share must be in (0, 1], got {max_new_share}")
    if replay_ratio < 0.0:
        raise ValueError(f"replay_ratio must be >= 0, got {replay_ratio}")
    current = training_pairs(training_set, label_column)
    parent_pairs = parent_pairs.select(*PAIRS_SCHEMA).cast(PAIRS_SCHEMA)
    gone = parent_pairs.join(current, on=["photo_sha256", "label"], how="anti")
    if gone.height:
        relabelled = gone.join(current, on="photo_sha256", how="semi").height
        return scratch(
            training_set,
            f"{gone.height} of the {parent_pairs.height} photo labels v{parent} learned from no "
            f"longer hold ({relabelled} relabelled, {gone.height - relabelled} withdrawn): "
            "fine-tuning cannot unlearn them",
        )
    keys = ["_pair_sha256", "_pair_label"]
    keyed = training_set.with_columns(
        pl.col("photo_sha256").cast(pl.String).alias(keys[0]),
        pl.col(label_column).cast(pl.Int64).alias(keys[1]),
    )
    known = parent_pairs.rename(dict(zip(PAIRS_SCHEMA, keys, strict=True)))
    new = keyed.join(known, on=keys, how="anti").drop(keys)
    old = keyed.join(known, on=keys, how="semi").drop(keys)
    if new.is_empty():
        return scratch(training_set, f"nothing is new since v{parent}: trained with these settings")
    if new.height > max_new_share * training_set.height:
        return scratch(
            training_set,
            f"{new.height} of {training_set.height} rows are new since v{parent}, more than "
            f"{max_new_share:.0%}: a fresh training sees them all alike",
        )
    wanted = max(math.ceil(replay_ratio * new.height), min_rows - new.height)
    replay_count = min(old.height, wanted)
    replay = old.sample(replay_count, seed=seed) if replay_count else old.clear()
    return WarmStartPlan(
        parent,
        f"continues v{parent} on {new.height} new rows and {replay_count} replayed of "
        f"{old.height} it learned from",
        pl.concat([new, replay]),
        new.height,
        replay_count,
    )
