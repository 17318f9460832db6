"""Training, prediction and (de)serialisation for `DamageCNN`, on in-memory uint8 images.

`fit` is seeded and, on CPU with a fixed `num_threads`, deterministic: the same config and data
give the same weights. It carves its validation set from the training data it is given, so the
evaluation holdout never influences model selection. Given an `initial` model, training
continues from a copy of its weights (fine-tuning) instead of a fresh initialisation.
"""

import copy
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from compositional_ai.vision.metrics import classification_metrics
from compositional_ai.vision.model import DamageCNN, DamageEnsemble

Augment = Literal["none", "flips", "dihedral", "affine"]
ClassWeighting = Literal["none", "sqrt", "balanced"]
Monitor = Literal["loss", "accuracy", "macro_f1"]
StoppedReason = Literal["completed", "early_stopping", "time_budget"]

_MODEL_FORMAT = "compositional_ai.DamageCNN/1"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the data and num_classes)."""

    # 96 px scored as well as 128 px on the ELPV cells for half the time per epoch.
    image_size: int = 96
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # "flips": random horizontal / vertical flips, which keep the busbars horizontal as in every
    # ELPV photo; "dihedral" adds 90-degree rotations (vertical busbars, never seen in the data);
    # "affine" adds, to the flips, a small rotation, zoom and shift per image (`affine_augment`),
    # as the cropping and rectifying of real cells varies.
    augment: Augment = "flips"
    # Loss weight per class: "balanced" = inverse frequency, "sqrt" = its square root.
    class_weighting: ClassWeighting = "sqrt"
    # Carved from the training data, stratified by class; 0 trains on everything, no selection.
    val_fraction: float = 0.15
    # Epochs without improvement of `monitor` on the validation set before stopping.
    patience: int = 10
    monitor: Monitor = "loss"
    num_threads: int = 2
    # Wall-clock budget for the whole run; training stops before an epoch that would exceed it.
    max_seconds: float | None = 600.0
    width: int = 16
    dropout: float = 0.2
    # 2: a second stride-2 convolution in front (`DamageCNN`), for images of twice the side.
    stem_convs: int = 1
    # Models trained with seeds seed, seed + 1, ... and averaged (`fit_ensemble`); the time
    # budget is shared among them.
    members: int = 1
    # Average each prediction over the image's 4 flips (`DamageEnsemble(flips=True)`).
    test_time_flips: bool = False
    # Divide each member's probabilities by its class weights (`DamageEnsemble`): decisions at
    # the training data's priors, which maximises accuracy, after a loss that favoured rare
    # classes. No effect with class_weighting "none".
    prior_correction: bool = False
    # Cross-entropy towards (1 - s) on the label and s spread over all classes.
    label_smoothing: float = 0.0
    # Mixup: each batch is blended with a shuffled copy of itself, weight drawn from
    # Beta(mixup, mixup), and the loss blended alike; 0 turns it off.
    mixup: float = 0.0

    def __post_init__(self) -> None:
        checks = (
            (self.image_size >= 16, "image_size must be >= 16"),
            (self.stem_convs in (1, 2), "stem_convs must be 1 or 2"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm)"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.augment in ("none", "flips", "dihedral", "affine"), "unknown augment"),
            (self.class_weighting in ("none", "sqrt", "balanced"), "unknown class_weighting"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.monitor in ("loss", "accuracy", "macro_f1"), "unknown monitor"),
            (self.num_threads >= 1, "num_threads must be >= 1"),
            (self.max_seconds is None or self.max_seconds > 0, "max_seconds must be positive"),
            (self.members >= 1, "members must be >= 1"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.mixup >= 0.0, "mixup must be >= 0"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers; the val_* fields are None when training without validation."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_macro_f1: float | None
    lr: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """The model at its best validation epoch (in eval mode) and how the run went."""

    model: DamageCNN
    history: list[EpochRecord]
    best_epoch: int
    train_seconds: float
    stopped_reason: StoppedReason
    class_weights: list[float]
    num_train: int
    num_val: int


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, part) with about `fraction` of every class in part, each sorted."""
    labels = np.asarray(labels)
    part = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        take = int(round(len(members) * fraction))
        part.append(rng.permutation(members)[:take])
    part_idx = np.sort(np.concatenate(part)) if part else np.empty(0, dtype=np.int64)
    rest_mask = np.ones(len(labels), dtype=bool)
    rest_mask[part_idx] = False
    return np.flatnonzero(rest_mask), part_idx


def class_weights(labels: np.ndarray, num_classes: int, weighting: ClassWeighting) -> np.ndarray:
    """Per-class loss weights, scaled so the average weight over the samples is 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    counts = counts.astype(np.float64)
    if weighting == "none":
        return np.ones(num_classes)
    with np.errstate(divide="ignore"):
        inverse = np.where(counts > 0, counts.sum() / (num_classes * counts), 0.0)
    weights = np.sqrt(inverse) if weighting == "sqrt" else inverse
    return weights * counts.sum() / (weights * counts).sum()


def flip_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of [N, C, H, W] left-right and / or up-down, each with probability 1/2."""
    flips = torch.rand((2, images.shape[0], 1, 1, 1), generator=generator) < 0.5
    images = torch.where(flips[0], images.flip(-1), images)
    return torch.where(flips[1], images.flip(-2), images)


def dihedral_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one of the 8 flips / 90-degree rotations, drawn per image, to square [N, C, S, S]."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square images, got {tuple(images.shape)}")
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)
    out = torch.empty_like(images)
    # One batched op per transform (8 in all), not one per image.
    for transform in range(8):
        index = torch.nonzero(choice == transform).squeeze(1)
        if index.numel() == 0:
            continue
        group = images[index]
        if transform >= 4:
            group = group.flip(-1)
        out[index] = torch.rot90(group, transform % 4, dims=(-2, -1))
    return out


AFFINE_MAX_DEGREES = 4.0
AFFINE_MAX_ZOOM = 0.08
AFFINE_MAX_SHIFT = 0.05


def affine_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip [N, C, H, W] as `flip_augment`, then rotate, zoom and shift each image a little.

    Per image: a rotation of up to AFFINE_MAX_DEGREES, a zoom of up to AFFINE_MAX_ZOOM either
    way and a shift of up to AFFINE_MAX_SHIFT of the side, all uniform, applied in one batched
    bilinear resampling; pixels from outside the image repeat its border. Returns float32, scaled
    to 0..1 for uint8 input as `DamageCNN.standardise` would.
    """
    images = flip_augment(images, generator)
    n = images.shape[0]
    uniform = torch.rand((4, n), generator=generator) * 2 - 1
    angle = torch.deg2rad(uniform[0] * AFFINE_MAX_DEGREES)
    scale = 1.0 + uniform[1] * AFFINE_MAX_ZOOM
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Affine grids work in [-1, 1] coordinates, so a shift of f of the side is 2 f.
    shift = uniform[2:] * (2 * AFFINE_MAX_SHIFT)
    theta = torch.stack(
        (torch.stack((cos, -sin, shift[0]), 1), torch.stack((sin, cos, shift[1]), 1)), 1
    )
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images [N, H, W] or [N, 1, H, W], got {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images))


def _logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    # Switching modes sets an attribute on every submodule (about 0.5 ms a call for the served
    # model); a model wholly in eval mode already, as the service's is, is left alone.
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        with torch.inference_mode():
            parts = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    finally:
        if switch:
            model.train(was_training)
    if not parts:
        return torch.empty((0, model.num_classes))
    return torch.cat(parts)


def flip_variants(images: torch.Tensor) -> list[torch.Tensor]:
    """The batch [N, C, H, W] as is, flipped left-right, up-down, and both (identity first)."""
    left_right = images.flip(-1)
    return [images, left_right, images.flip(-2), left_right.flip(-2)]


def predict_proba(
    model: nn.Module, images: np.ndarray, *, batch_size: int = 256, tta: bool = False
) -> np.ndarray:
    """Class probabilities [N, C] (float64, rows sum to 1) for uint8 images [N, (1,) H, W].

    With `tta`, the probabilities are averaged over the 4 flips of each image (4x the compute);
    flips keep the busbars horizontal, so they suit a model trained with or without them.
    """
    x = _as_tensor(images)
    variants = flip_variants(x) if tta else [x]
    probabilities = [torch.softmax(_logits(model, v, batch_size).double(), dim=1) for v in variants]
    return torch.stack(probabilities).mean(dim=0).numpy()


def _schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))

    return factor


def _score(record: EpochRecord, monitor: Monitor) -> float:
    if monitor == "loss":
        return -record.val_loss
    if monitor == "accuracy":
        return record.val_accuracy
    return record.val_macro_f1


def fit(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    initial: DamageCNN | None = None,
    population_labels: np.ndarray | None = None,
) -> TrainResult:
    """Train a `DamageCNN` on uint8 images [N, S, S] (S = config.image_size) and labels [N].

    With `initial`, training starts from a copy of its weights; `initial` is left as it was.
    `population_labels` are the labels the class weights (and so the prior correction) are
    computed from, when the images are a sample of a larger set (a warm start's new rows and
    replay); by default, the training labels.
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.shape[-2:] != (config.image_size, config.image_size):
        raise ValueError(
            f"images are {images.shape[-2:]}, config.image_size is {config.image_size}: "
            "decode at the configured size"
        )
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1} and not empty")
    if initial is not None and (initial.num_classes, initial.image_size) != (
        num_classes,
        config.image_size,
    ):
        raise ValueError(
            f"the initial model grades {initial.num_classes} classes at {initial.image_size} px; "
            f"this training wants {num_classes} at {config.image_size} px"
        )

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        # fork_rng keeps the seeding (model init, dropout) from touching the caller's torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _fit(images, labels, num_classes, config, on_epoch, initial, population_labels)
    finally:
        torch.set_num_threads(previous_threads)


@dataclass
class EnsembleResult:
    """The averaged model and each member's training result, in seed order."""

    model: DamageEnsemble
    members: list[TrainResult]
    train_seconds: float

    @property
    def history(self) -> list[EpochRecord]:
        """Every member's epochs, one after the other."""
        return [record for member in self.members for record in member.history]

    @property
    def best_epoch(self) -> int:
        return self.members[0].best_epoch

    @property
    def stopped_reason(self) -> StoppedReason:
        reasons = {member.stopped_reason for member in self.members}
        return "time_budget" if "time_budget" in reasons else self.members[0].stopped_reason


def fit_ensemble(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    initial: DamageEnsemble | None = None,
    population_labels: np.ndarray | None = None,
) -> EnsembleResult:
    """Train `config.members` models with consecutive seeds and average them.

    Each member gets an equal share of what is left of `config.max_seconds` when it starts, so
    a member that stops early leaves its time to the next. With `initial`, member i continues
    from the weights of the initial ensemble's member i.
    """
    if initial is not None and len(initial.members) != config.members:
        raise ValueError(
            f"the initial ensemble has {len(initial.members)} members; the config asks for "
            f"{config.members}"
        )
    started = time.perf_counter()
    members: list[TrainResult] = []
    for index in range(config.members):
        budget = None
        if config.max_seconds is not None:
            left = config.max_seconds - (time.perf_counter() - started)
            budget = max(left, 1e-3) / (config.members - index)
        member_config = replace(config, seed=config.seed + index, max_seconds=budget)
        members.append(
            fit(
                images,
                labels,
                num_classes=num_classes,
                config=member_config,
                on_epoch=on_epoch,
                initial=None if initial is None else initial.members[index],
                population_labels=population_labels,
            )
        )
    weights = None
    if config.prior_correction and config.class_weighting != "none":
        weights = torch.tensor([m.class_weights for m in members])
    model = DamageEnsemble(
        [m.model for m in members], flips=config.test_time_flips, class_weights=weights
    ).eval()
    return EnsembleResult(model=model, members=members, train_seconds=time.perf_counter() - started)


def fit_model(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    initial: DamageCNN | DamageEnsemble | None = None,
    population_labels: np.ndarray | None = None,
) -> TrainResult | EnsembleResult:
    """`fit` for one plain model, `fit_ensemble` when the config asks for members, flips or a
    prior correction; either continues from `initial` when given one of its own kind."""
    plain = config.members == 1 and not (config.test_time_flips or config.prior_correction)
    kind = DamageCNN if plain else DamageEnsemble
    if initial is not None and not isinstance(initial, kind):
        raise ValueError(
            f"this config trains a {kind.__name__}; the initial model is a {type(initial).__name__}"
        )
    train = fit if plain else fit_ensemble
    return train(
        images,
        labels,
        num_classes=num_classes,
        config=config,
        on_epoch=on_epoch,
        initial=initial,
        population_labels=population_labels,
    )


def _fit(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    on_epoch: Callable[[EpochRecord], None] | None,
    initial: DamageCNN | None = None,
    population_labels: np.ndarray | None = None,
) -> TrainResult:
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_idx, val_idx = stratified_split(labels, config.val_fraction, rng)
    if len(train_idx) < 2:
        raise ValueError("need at least 2 training images after the validation split")
    all_images = _as_tensor(images)
    train_x, train_y = all_images[train_idx], torch.from_numpy(labels[train_idx])
    val_x, val_y = all_images[val_idx], torch.from_numpy(labels[val_idx])

    model = (
        DamageCNN(
            num_classes,
            width=config.width,
            dropout=config.dropout,
            image_size=config.image_size,
            stem_convs=config.stem_convs,
        )
        if initial is None
        else copy.deepcopy(initial)
    )
    weighted = labels[train_idx] if population_labels is None else population_labels
    weights = class_weights(weighted, num_classes, config.class_weighting)
    loss_fn = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32), label_smoothing=config.label_smoothing
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, len(train_idx) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(config.epochs * steps_per_epoch, warmup_steps=steps_per_epoch)
    )

    history: list[EpochRecord] = []
    best_score, best_epoch, best_state = -np.inf, 0, None
    stopped: StoppedReason = "completed"
    deadline = None if config.max_seconds is None else started + config.max_seconds
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        if deadline is not None and history and epoch_started + history[-1].seconds > deadline:
            stopped = "time_budget"
            break
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        order = torch.randperm(len(train_idx), generator=generator)
        loss_sum, seen = 0.0, 0
        # Full batches only: a last batch of one image would break BatchNorm.
        for start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            index = order[start : start + config.batch_size]
            x = train_x[index]
            if config.augment == "flips":
                x = flip_augment(x, generator)
            elif config.augment == "dihedral":
                x = dihedral_augment(x, generator)
            elif config.augment == "affine":
                x = affine_augment(x, generator)
            y = train_y[index]
            if config.mixup > 0:
                share = float(rng.beta(config.mixup, config.mixup))
                loss = mixup_loss(model, loss_fn, x, y, share, generator)
            else:
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(index)
            seen += len(index)
            if deadline is not None and time.perf_counter() > deadline:
                stopped = "time_budget"
                break
        record = _epoch_record(
            model, loss_fn, epoch, loss_sum / max(1, seen), lr, val_x, val_y, epoch_started
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        score = _score(record, config.monitor) if len(val_idx) else float(epoch)
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if stopped == "time_budget":
            break
        if len(val_idx) and epoch - best_epoch >= config.patience:
            stopped = "early_stopping"
            break

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        train_seconds=time.perf_counter() - started,
        stopped_reason=stopped,
        class_weights=[float(w) for w in weights],
        num_train=len(train_idx),
        num_val=len(val_idx),
    )


def mixup_loss(
    model: nn.Module,
    loss_fn: nn.CrossEntropyLoss,
    images: torch.Tensor,
    labels: torch.Tensor,
    share: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The loss on the batch blended with a shuffled copy of itself (mixup, Zhang et al. 2018)."""
    partner = torch.randperm(len(labels), generator=generator)
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    logits = model(share * x + (1.0 - share) * x[partner])
    return share * loss_fn(logits, labels) + (1.0 - share) * loss_fn(logits, labels[partner])


def _epoch_record(
    model: DamageCNN,
    loss_fn: nn.CrossEntropyLoss,
    epoch: int,
    train_loss: float,
    lr: float,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    epoch_started: float,
) -> EpochRecord:
    val_loss = val_accuracy = val_macro_f1 = None
    if len(val_y):
        logits = _logits(model, val_x, batch_size=256)
        # The training loss's class weights: unweighted, the validation loss would favour the
        # early epochs that mostly predict the common classes, and stop training there.
        val_loss = float(loss_fn(logits, val_y))
        metrics = classification_metrics(val_y.numpy(), logits.argmax(1).numpy(), model.num_classes)
        val_accuracy, val_macro_f1 = metrics["accuracy"], metrics["macro_f1"]
    return EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        val_macro_f1=val_macro_f1,
        lr=lr,
        seconds=time.perf_counter() - epoch_started,
    )


def model_to_bytes(model: DamageCNN) -> bytes:
    """Serialise weights and constructor arguments; `model_from_bytes` needs nothing else."""
    buffer = io.BytesIO()
    torch.save(
        {"format": _MODEL_FORMAT, "init": dict(model.init_kwargs), "state": model.state_dict()},
        buffer,
    )
    return buffer.getvalue()


def model_from_bytes(data: bytes) -> DamageCNN:
    """Rebuild a model saved by `model_to_bytes`, in eval mode."""
    # weights_only refuses arbitrary pickled objects, so a tampered file cannot run code.
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != _MODEL_FORMAT:
        raise ValueError(f"not a {_MODEL_FORMAT} model file")
    model = DamageCNN(**saved["init"])
    model.load_state_dict(saved["state"])
    model.eval()
    return model
