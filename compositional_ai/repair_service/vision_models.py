"""Train, evaluate and register a photo model; shared by the repair and defect model assets."""

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from compositional_ai.feedback.lineage import record_training
from compositional_ai.lib import tables
from compositional_ai.repair_service.served_log import PHOTOS_DIR
from compositional_ai.repair_service.warm_start import (
    ARCHITECTURE_PARAMS,
    PAIRS_ARTIFACT,
    WarmStartPlan,
    plan_warm_start,
    scratch,
    training_pairs,
)
from compositional_ai.resources.landing import LandingArea
from compositional_ai.resources.model_registry import (
    ASSET_TAG,
    CHAMPION,
    FINGERPRINT_TAG,
    ModelRegistry,
    frame_digest,
)
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.vision.images import STORED_IMAGE_SIZE, decode_gray
from compositional_ai.vision.metrics import (
    classification_metrics,
    four_class_to_binary_proba,
    levels_to_binary,
)
from compositional_ai.vision.plots import confusion_matrix_png
from compositional_ai.vision.training import TrainConfig, fit_model, predict_proba
from compositional_ai.warehouse.lookups import table_exists

LEVEL_NAMES = ["level 0", "level 1", "level 2", "level 3"]
BINARY_NAMES = ["functional", "defective"]


class VisionTrainingConfig(Config):
    """Training settings of a photo model; the defaults are the demo's.

    96 px, flips only and lr 1e-3 were the best of the configurations measured on the elpv
    split (benchmarks/vision_experiments.py); `max_seconds` keeps each training within the
    demo's time budget on 2 cores.
    """

    image_size: int = STORED_IMAGE_SIZE
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 16
    patience: int = 10
    val_fraction: float = 0.15
    class_weighting: str = "sqrt"
    augment: str = "flips"
    max_seconds: float = 240.0
    seed: int = 0
    members: int = 1
    # Each prediction averages the photo's 4 flips: about a point of holdout accuracy for 4x a
    # forward pass that costs well under a millisecond per photo at 96 px.
    test_time_flips: bool = True
    # Decide at the training data's class priors after the class-weighted loss: 1-3 points of
    # 4-class accuracy in the measurements, the promotion metric.
    prior_correction: bool = True
    # Continue from this asset's previous version when everything it learned still holds and
    # at most `warm_start_max_new_share` of the set is new: `warm_start_epochs` at
    # `warm_start_lr` over the new rows and `warm_start_replay` times as many old ones
    # (repair_service/warm_start.py). Otherwise, or when off, train from scratch.
    warm_start: bool = True
    warm_start_epochs: int = 4
    warm_start_lr: float = 3e-4
    warm_start_max_new_share: float = 0.5
    warm_start_replay: float = 1.0
    warm_start_min_rows: int = 512

    def warm_start_settings(self) -> dict:
        return {
            "warm_start": self.warm_start,
            "warm_start_epochs": self.warm_start_epochs,
            "warm_start_lr": self.warm_start_lr,
            "warm_start_max_new_share": self.warm_start_max_new_share,
            "warm_start_replay": self.warm_start_replay,
            "warm_start_min_rows": self.warm_start_min_rows,
        }

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
            augment=self.augment,
            max_seconds=self.max_seconds,
            seed=self.seed,
            members=self.members,
            test_time_flips=self.test_time_flips,
            prior_correction=self.prior_correction,
        )


PHOTOS_BY_SHA_SQL = (
    "select sha256, any_value(content) as content from silver.repair_photos "
    "where sha256 in (select unnest($shas)) group by sha256"
)
SYNTHETIC_PHOTOS_BY_SHA_SQL = (
    "select sha256, any_value(content) as content from silver.synthetic_photos "
    "where sha256 in (select unnest($shas)) group by sha256"
)


def photo_contents(
    warehouse: Warehouse, shas: pl.Series, *, served_photos: Path | None = None
) -> list[bytes]:
    """The photo bytes for each sha256, in the given order: landed photos from silver (real,
    then synthetic ones), photos the live service received from its photo store (named by their
    sha256)."""
    unique = shas.unique().to_list()
    found = warehouse.query(PHOTOS_BY_SHA_SQL, {"shas": unique}, purpose="read training photos")
    by_sha = dict(zip(found["sha256"].to_list(), found["content"].to_list(), strict=True))
    rest = [sha for sha in unique if sha not in by_sha]
    if rest and table_exists(warehouse, "silver", "synthetic_photos"):
        found = warehouse.query(
            SYNTHETIC_PHOTOS_BY_SHA_SQL, {"shas": rest}, purpose="read synthetic training photos"
        )
        by_sha.update(zip(found["sha256"].to_list(), found["content"].to_list(), strict=True))
    if served_photos is not None and served_photos.is_dir():
        for sha in (sha for sha in unique if sha not in by_sha):
            stored = sorted(served_photos.glob(f"{sha}.*"))
            if stored:
                by_sha[sha] = stored[0].read_bytes()
    missing = [sha for sha in unique if sha not in by_sha]
    if missing:
        raise LookupError(
            f"{len(missing)} training photos are neither in silver.repair_photos, "
            f"silver.synthetic_photos nor in the served photo store {served_photos}"
        )
    return [by_sha[sha] for sha in shas.to_list()]


# A semi join against the wanted digests (registered as a table), de-duplicated afterwards in
# polars: several times faster than `in (unnest(...))` with a group-by over the pixel blobs.
PIXELS_BY_SHA_SQL = (
    "select p.sha256, p.pixels from silver.photo_pixels p "
    "semi join wanted_photos w on p.sha256 = w.sha256 where p.image_size = $size"
)


def photo_pixels(
    warehouse: Warehouse, shas: pl.Series, size: int, *, served_photos: Path | None = None
) -> np.ndarray:
    """uint8 [N, size, size] for each sha256, in the given order.

    Photos that silver already decoded at `size` (silver.photo_pixels) are read as pixels; the
    rest (another size, synthetic or served photos) are decoded from their bytes, with the same
    decoder, so a model sees the same pixels whichever way they came.
    """
    unique = shas.unique().cast(pl.String)
    found = pl.DataFrame(schema={"sha256": pl.String, "pixels": pl.Binary})
    if unique.len():
        with warehouse.connect("read decoded photos") as con:
            # Before any batch is decoded there is no table: every photo is decoded below.
            if tables.table_exists(con, "silver", "photo_pixels"):
                con.register("wanted_photos", unique.to_frame("sha256").to_arrow())
                try:
                    found = con.execute(PIXELS_BY_SHA_SQL, {"size": size}).pl()
                finally:
                    con.unregister("wanted_photos")
    found = found.unique("sha256", keep="first")
    wrong = found.filter(pl.col("pixels").bin.size() != size * size)
    if wrong.height:
        raise ValueError(
            f"silver.photo_pixels holds {wrong.height} blob(s) that are not {size} x {size} "
            f"bytes, e.g. for photo {wrong['sha256'][0]}"
        )
    found_shas = found["sha256"].to_list()
    flat = np.frombuffer(b"".join(found["pixels"].to_list()), dtype=np.uint8)
    parts = [flat.reshape(found.height, size, size)]
    rest = unique.filter(~unique.is_in(found["sha256"].implode()))
    if rest.len():
        contents = photo_contents(warehouse, rest, served_photos=served_photos)
        parts.append(decode_gray(contents, size))
    # Each requested sha's row in the stacked pixels, by a join rather than a loop over rows.
    index = pl.DataFrame(
        {"sha256": [*found_shas, *rest.to_list()]}, schema={"sha256": pl.String}
    ).with_row_index("row")
    rows = (
        pl.DataFrame({"sha256": shas}, schema={"sha256": pl.String})
        .join(index, on="sha256", how="left", maintain_order="left")["row"]
        .to_numpy()
    )
    return np.concatenate(parts)[rows]


# Decoded holdouts by (digest of their photos, size): a retraining evaluates every photo model
# on the same holdout, so a process decodes it once per size. Bounded: the last few only.
_DECODED_HOLDOUTS: dict[tuple[str, int], np.ndarray] = {}
_DECODED_HOLDOUTS_KEPT = 2


def holdout_pixels(holdout: pl.DataFrame, size: int) -> np.ndarray:
    """uint8 [N, size, size] of the holdout's photos, in its row order (a copy of the cache)."""
    key = (frame_digest(holdout.with_row_index("row"), ["row", "sha256"]), size)
    if key not in _DECODED_HOLDOUTS:
        while len(_DECODED_HOLDOUTS) >= _DECODED_HOLDOUTS_KEPT:
            _DECODED_HOLDOUTS.pop(next(iter(_DECODED_HOLDOUTS)))
        _DECODED_HOLDOUTS[key] = decode_gray(holdout["content"].to_list(), size)
    return _DECODED_HOLDOUTS[key].copy()


def evaluate(model, holdout: pl.DataFrame, *, binary_only: bool) -> tuple[dict, dict]:
    """Holdout metrics (overall and by cell type) and the confusion matrices to plot."""
    images = holdout_pixels(holdout, model.image_size)
    proba = predict_proba(model, images)
    levels = holdout["damage_level"].to_numpy()
    true_binary = levels_to_binary(levels)
    if binary_only:
        predicted_binary = proba.argmax(axis=1)
    else:
        predicted_binary = (four_class_to_binary_proba(proba) >= 0.5).astype(np.int64)
    binary = classification_metrics(true_binary, predicted_binary, 2)
    metrics = {"binary_accuracy": binary["accuracy"], "binary_macro_f1": binary["macro_f1"]}
    metrics["per_class"] = binary["per_class"]
    matrices = {"binary": binary["confusion_matrix"]}
    if not binary_only:
        four = classification_metrics(levels, proba.argmax(axis=1), 4)
        metrics.update(four_class_accuracy=four["accuracy"], macro_f1=four["macro_f1"])
        matrices["four_class"] = four["confusion_matrix"]
        metrics["per_class"] = four["per_class"]
    majority = np.bincount(levels, minlength=4).max() / len(levels)
    metrics["majority_four_class_accuracy"] = float(majority)
    metrics["majority_binary_accuracy"] = float(max(true_binary.mean(), 1 - true_binary.mean()))
    cell_types = holdout["cell_type"].to_numpy()
    for cell_type in np.unique(cell_types):
        mask = cell_types == cell_type
        metrics[f"binary_accuracy_{cell_type}"] = float(
            (predicted_binary[mask] == true_binary[mask]).mean()
        )
        if not binary_only:
            metrics[f"four_class_accuracy_{cell_type}"] = float(
                (proba.argmax(axis=1)[mask] == levels[mask]).mean()
            )
    metrics["holdout_size"] = len(levels)
    return metrics, matrices


def training_fingerprint(
    training_digest: str,
    holdout_digest: str,
    config: TrainConfig,
    num_classes: int,
    warm_start: dict | None = None,
) -> str:
    """A digest of the training set, the holdout and the settings a version was trained with."""
    # The time budget is left out: it decides when training stops, not what it learns from.
    settings = {k: v for k, v in asdict(config).items() if k != "max_seconds"}
    payload = json.dumps(
        {
            "training": training_digest,
            "holdout": holdout_digest,
            "num_classes": num_classes,
            "config": settings,
            "warm_start": warm_start or {},
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def per_class_markdown(per_class: list[dict], names: list[str]) -> str:
    """Precision, recall, F1 and support of each class as a Markdown table."""
    rows = [
        f"| {names[row['class']]} | {row['precision']:.3f} | {row['recall']:.3f} | "
        f"{row['f1']:.3f} | {row['support']} |"
        for row in per_class
    ]
    return "\n".join(
        ["| class | precision | recall | F1 | holdout cells |", "|---|---|---|---|---|", *rows]
    )


def png_markdown(png: bytes, caption: str) -> str:
    """An inline Markdown image, so the Dagster UI shows the plot with the asset's metadata."""
    return f"![{caption}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def matrix_markdown(matrix: list[list[int]], names: list[str]) -> str:
    header = "| true \\ predicted | " + " | ".join(names) + " |"
    rule = "|" + " --- |" * (len(names) + 1)
    rows = [
        f"| {name} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(names, matrix, strict=True)
    ]
    return "\n".join([header, rule, *rows])


def train_and_register(
    context: AssetExecutionContext,
    *,
    model_name: str,
    training_set: pl.DataFrame,
    label_column: str,
    num_classes: int,
    holdout: pl.DataFrame,
    config: VisionTrainingConfig,
    warehouse: Warehouse,
    registry: ModelRegistry,
    lineage: dict,
    served_photos: Path | None = None,
) -> tuple[str, dict, dict]:
    """Train on the training set's photos, evaluate on the holdout, log to MLflow, register.

    Returns the registered version, the holdout metrics, and Dagster metadata for the asset.
    """
    if training_set.is_empty():
        raise ValueError(f"{model_name}: the training set is empty; nothing to train on")
    train_config = config.to_train_config()
    digest = frame_digest(training_set, ["photo_sha256", label_column])
    fingerprint = training_fingerprint(
        digest,
        frame_digest(holdout, ["sha256", "damage_level"]),
        train_config,
        num_classes,
        config.warm_start_settings(),
    )
    trained_before = registry.version_tagged(model_name, FINGERPRINT_TAG, fingerprint)
    if trained_before is not None:
        # Training is seeded and deterministic: the same rows and settings (and, for a warm
        # start, the same earlier version) give the same model, so a re-run (a retry, a
        # re-delivered partition, a manual re-materialization) reuses the version instead of
        # registering a copy of it.
        context.log.info(
            f"{model_name}: training set {digest} with these settings is already version "
            f"{trained_before.version}; not training again"
        )
        return (
            trained_before.version,
            dict(trained_before.metrics),
            {
                "model_name": model_name,
                "model_version": trained_before.version,
                "reused_version": True,
                "decided_before": "promotion" in trained_before.tags,
                "training_rows": training_set.height,
                "training_set_digest": digest,
                "training_fingerprint": fingerprint,
                "mlflow_run": MetadataValue.url(registry.run_url(trained_before.run_id)),
                "lineage": MetadataValue.json(lineage),
            },
        )
    asset_key = context.asset_key.to_user_string()
    plan = plan_training(
        registry, model_name, asset_key, training_set, label_column, num_classes, config
    )
    fit_config, initial = train_config, None
    if plan.warm:
        initial = registry.load_torch(model_name, plan.parent)
        fit_config = replace(
            train_config,
            epochs=min(config.warm_start_epochs, train_config.epochs),
            lr=config.warm_start_lr,
            val_fraction=0.0,
        )
    images = photo_pixels(
        warehouse,
        plan.rows["photo_sha256"],
        train_config.image_size,
        served_photos=served_photos,
    )
    labels = plan.rows[label_column].cast(pl.Int64).to_numpy()
    context.log.info(
        f"{model_name}: training on {len(labels)} photos ({plan.reason}), {fit_config}"
    )

    def on_epoch(record) -> None:
        context.log.debug(f"{model_name} epoch {record.epoch}: {record.as_dict()}")

    result = fit_model(
        images,
        labels,
        num_classes=num_classes,
        config=fit_config,
        on_epoch=on_epoch,
        initial=initial,
        # A warm start trains on a sample; its class weights and prior correction are the
        # whole set's, so a sample that lacks a class does not teach the model to rule it out.
        population_labels=training_set[label_column].cast(pl.Int64).to_numpy()
        if plan.warm
        else None,
    )
    metrics, matrices = evaluate(result.model, holdout, binary_only=num_classes == 2)
    names = BINARY_NAMES if num_classes == 2 else LEVEL_NAMES
    primary = "binary" if num_classes == 2 else "four_class"
    png = confusion_matrix_png(matrices[primary], names, f"{model_name} on the holdout")
    per_class_table = per_class_markdown(metrics["per_class"], names)
    scalar_metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    scalar_metrics["train_seconds"] = result.train_seconds
    warm_params = {
        "warm_started_from": plan.parent or "none",
        "warm_start_reason": plan.reason,
        "fine_tune_rows": len(labels) if plan.warm else 0,
    }
    with registry.training_run(
        model_name,
        dagster_run_id=context.run.run_id,
        asset_key=asset_key,
        params={
            **asdict(train_config),
            **config.warm_start_settings(),
            **warm_params,
            "num_classes": num_classes,
            **lineage,
        },
    ) as run:
        dataset = mlflow.data.from_pandas(
            training_set.select("photo_sha256", pl.col(label_column).cast(pl.Float64)).to_pandas(),
            name=f"{model_name}_training_set",
            digest=digest,
        )
        mlflow.log_input(dataset, context="training")
        holdout_dataset = mlflow.data.from_pandas(
            holdout.select("sha256", pl.col("damage_level").cast(pl.Float64)).to_pandas(),
            name="elpv_holdout",
            digest=frame_digest(holdout, ["sha256", "damage_level"]),
        )
        mlflow.log_input(holdout_dataset, context="evaluation")
        mlflow.log_metrics(scalar_metrics)
        for record in result.history:
            values = {
                k: v
                for k, v in record.as_dict().items()
                if isinstance(v, int | float) and k != "epoch"
            }
            mlflow.log_metrics(values, step=record.epoch)
        mlflow.log_image(_png_image(png), "confusion_matrix.png")
        mlflow.log_dict(metrics, "holdout_metrics.json")
        mlflow.log_text(per_class_table, "per_class.md")
        registry.log_frame(training_pairs(training_set, label_column), PAIRS_ARTIFACT)
        version = registry.log_torch_model(result.model, model_name)
        registry.tag_version(
            model_name, version, {FINGERPRINT_TAG: fingerprint, ASSET_TAG: asset_key}
        )
        run_id = run.info.run_id
    recorded = record_training(warehouse, training_set, model_name, version)
    context.log.info(
        f"{model_name} v{version}: {json.dumps(scalar_metrics)}; {recorded} training rows "
        "recorded in feedback.model_training_rows"
    )
    metadata = {
        "model_name": model_name,
        "model_version": version,
        "mlflow_run_id": run_id,
        "mlflow_run": MetadataValue.url(registry.run_url(run_id)),
        "training_rows": training_set.height,
        "warm_started_from": plan.parent or "none",
        "warm_start_reason": plan.reason,
        "trained_on_rows": len(labels),
        "reused_version": False,
        "decided_before": False,
        "training_set_digest": digest,
        "training_fingerprint": fingerprint,
        "best_epoch": result.best_epoch,
        "stopped_reason": result.stopped_reason,
        **{key: MetadataValue.float(value) for key, value in scalar_metrics.items()},
        "confusion_matrix": MetadataValue.md(matrix_markdown(matrices[primary], names)),
        "confusion_matrix_plot": MetadataValue.md(
            png_markdown(png, f"{model_name} v{version}: confusion matrix on the holdout")
        ),
        "per_class": MetadataValue.md(per_class_table),
        "lineage": MetadataValue.json(lineage),
    }
    return version, metrics, metadata


def plan_training(
    registry: ModelRegistry,
    model_name: str,
    asset_key: str,
    training_set: pl.DataFrame,
    label_column: str,
    num_classes: int,
    config: VisionTrainingConfig,
) -> WarmStartPlan:
    """From scratch, or continuing the newest version `asset_key` registered (see warm_start)."""
    if not config.warm_start:
        return scratch(training_set, "warm start is off")
    # Only a version the promotion gate accepted is continued: a rejected one is not built on.
    previous = registry.version_with_tags(model_name, {ASSET_TAG: asset_key, "promotion": CHAMPION})
    if previous is None:
        return scratch(training_set, f"{asset_key} has no promoted version to continue")
    params = registry.run_params(previous.run_id)
    wanted = {**asdict(config.to_train_config()), "num_classes": num_classes}
    differ = [
        f"{key} {params.get(key)} -> {wanted[key]}"
        for key in ARCHITECTURE_PARAMS
        if params.get(key) != str(wanted[key])
    ]
    if differ:
        return scratch(
            training_set, f"v{previous.version} has another architecture: {', '.join(differ)}"
        )
    pairs = registry.run_frame(previous.run_id, PAIRS_ARTIFACT)
    if pairs is None:
        return scratch(training_set, f"v{previous.version} recorded no training pairs")
    return plan_warm_start(
        training_set,
        label_column,
        parent=previous.version,
        parent_pairs=pairs,
        max_new_share=config.warm_start_max_new_share,
        replay_ratio=config.warm_start_replay,
        seed=config.seed,
        min_rows=config.warm_start_min_rows,
    )


def _png_image(png: bytes):
    from io import BytesIO

    from PIL import Image

    return Image.open(BytesIO(png))


def training_lineage(training_set: pl.DataFrame, training_key: str) -> dict:
    """What a training set consumed: its key, and the inference partitions and model versions
    whose predictions it holds (where it holds any)."""
    lineage = {"training_set": training_key}
    for column, name in (
        ("inference_batch", "inference_partitions"),
        ("model_version", "predicting_versions"),
    ):
        if column in training_set.columns:
            values = sorted(training_set[column].drop_nulls().unique().to_list())
            lineage[name] = ",".join(values) or "none"
    return lineage


AfterRegister = Callable[[AssetExecutionContext, ModelRegistry, str, dict], dict]


def photo_model_asset(
    *,
    key_prefix: str,
    name: str,
    group_name: str,
    training_set_key: list[str],
    model_name: str,
    label_column: str,
    num_classes: int,
    description: str,
    after_register: AfterRegister,
):
    """An asset that trains a photo model on `training_set_key`, evaluates it on the holdout,
    registers it in MLflow, then calls `after_register` (promotion) for more metadata."""

    @asset(
        name=name,
        key_prefix=key_prefix,
        group_name=group_name,
        tags={"role": "model"},
        description=description,
        ins={
            "training_set": AssetIn(key=training_set_key),
            "holdout": AssetIn(key=["silver", "holdout_photos"]),
        },
    )
    def _photo_model(
        context: AssetExecutionContext,
        config: VisionTrainingConfig,
        training_set: pl.DataFrame,
        holdout: pl.DataFrame,
        warehouse: Warehouse,
        model_registry: ModelRegistry,
        landing: LandingArea,
    ) -> MaterializeResult:
        version, metrics, metadata = train_and_register(
            context,
            served_photos=landing.served / PHOTOS_DIR,
            model_name=model_name,
            training_set=training_set,
            label_column=label_column,
            num_classes=num_classes,
            holdout=holdout,
            config=config,
            warehouse=warehouse,
            registry=model_registry,
            lineage=training_lineage(training_set, "/".join(training_set_key)),
        )
        # A reused version keeps the promotion decision made when it was trained; one whose run
        # stopped before deciding gets its decision now.
        if not metadata.pop("decided_before"):
            metadata.update(after_register(context, model_registry, version, metrics))
        return MaterializeResult(metadata=metadata)

    return _photo_model
