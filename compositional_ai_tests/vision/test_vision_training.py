import dataclasses
import io

import numpy as np
import pytest
import torch

from compositional_ai.vision.metrics import classification_metrics
from compositional_ai.vision.model import DamageCNN, DamageEnsemble
from compositional_ai.vision.training import (
    EpochRecord,
    TrainConfig,
    affine_augment,
    class_weights,
    dihedral_augment,
    fit,
    fit_ensemble,
    fit_model,
    flip_augment,
    mixup_loss,
    model_from_bytes,
    model_to_bytes,
    predict_proba,
    stratified_split,
)

SIZE = 32
# Small and single-threaded so the whole file runs in seconds on a shared 2-core machine.
FAST = TrainConfig(
    image_size=SIZE,
    epochs=8,
    batch_size=32,
    lr=3e-3,
    width=8,
    dropout=0.0,
    num_threads=1,
    max_seconds=None,
    patience=8,
)


def synthetic_cells(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise cells; class 1 has a dark 8 x 8 patch somewhere, class 2 a dark full-length bar."""
    rng = np.random.default_rng(seed)
    images = rng.integers(110, 170, (n, SIZE, SIZE)).astype(np.uint8)
    labels = np.arange(n) % 3
    for i in np.flatnonzero(labels == 1):
        row, col = rng.integers(2, SIZE - 10, 2)
        images[i, row : row + 8, col : col + 8] = 20
    for i in np.flatnonzero(labels == 2):
        at = rng.integers(4, SIZE - 8)
        if rng.random() < 0.5:
            images[i, at : at + 3, :] = 20
        else:
            images[i, :, at : at + 3] = 20
    return images, labels


@pytest.fixture(scope="module")
def trained():
    images, labels = synthetic_cells(300, seed=0)
    records: list[EpochRecord] = []
    result = fit(images, labels, num_classes=3, config=FAST, on_epoch=records.append)
    return result, records


def test_training_learns_a_separable_problem(trained) -> None:
    result, _ = trained
    images, labels = synthetic_cells(150, seed=1)
    predictions = predict_proba(result.model, images).argmax(1)
    # A broken loop (no optimizer step, wrong labels, frozen weights) stays near 1/3.
    assert classification_metrics(labels, predictions, 3)["accuracy"] >= 0.95


def test_result_reports_the_run(trained) -> None:
    result, records = trained
    assert records == result.history
    assert [r.epoch for r in result.history] == list(range(1, len(result.history) + 1))
    assert 1 <= result.best_epoch <= len(result.history)
    assert result.stopped_reason in ("completed", "early_stopping")
    # 15 % of 100 per class is carved out for validation.
    assert (result.num_train, result.num_val) == (255, 45)
    assert result.history[0].train_loss > result.history[-1].train_loss
    assert not result.model.training
    assert result.train_seconds > 0


def test_best_epoch_weights_are_the_ones_returned(trained) -> None:
    result, _ = trained
    best = result.history[result.best_epoch - 1]
    assert best.val_loss == min(r.val_loss for r in result.history)


def test_predict_proba_rows_are_distributions_and_mode_is_restored(trained) -> None:
    result, _ = trained
    images, _ = synthetic_cells(37, seed=2)
    result.model.train()
    proba = predict_proba(result.model, images, batch_size=10)
    assert result.model.training
    result.model.eval()
    assert proba.shape == (37, 3)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert proba.min() >= 0.0
    # Batching does not change the answer (eval-mode BatchNorm uses running statistics).
    assert np.allclose(proba, predict_proba(result.model, images[:, None]), atol=1e-6)


def test_predict_proba_grades_in_eval_mode_even_when_only_a_submodule_trains() -> None:
    # A model in eval mode with one BatchNorm switched back to training: in training mode that
    # layer would normalise by the batch, so the answer shows which mode the forward pass used.
    torch.manual_seed(0)
    model = DamageCNN(3, width=8, image_size=SIZE)
    with torch.no_grad():
        model.features[1].running_mean.fill_(0.5)
    images, _ = synthetic_cells(6, seed=4)
    model.eval()
    expected = predict_proba(model, images)
    model.features[1].train()

    proba = predict_proba(model, images)

    assert np.array_equal(proba, expected)
    assert not any(module.training for module in model.modules())


def test_model_bytes_round_trip_gives_equal_predictions(trained) -> None:
    result, _ = trained
    images, _ = synthetic_cells(20, seed=3)
    restored = model_from_bytes(model_to_bytes(result.model))
    assert restored.init_kwargs == {
        "num_classes": 3,
        "width": 8,
        "dropout": 0.0,
        "image_size": SIZE,
        "stem_convs": 1,
    }
    assert not restored.training
    assert np.array_equal(predict_proba(restored, images), predict_proba(result.model, images))


def test_model_files_keep_the_stem_and_older_files_load(tmp_path) -> None:
    torch.manual_seed(0)
    two = DamageCNN(4, width=8, image_size=64, stem_convs=2).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    restored = model_from_bytes(model_to_bytes(two))
    assert restored.init_kwargs["stem_convs"] == 2
    assert np.array_equal(predict_proba(restored, images), predict_proba(two, images))
    # A file written before stem_convs existed has no such key: it is a one-convolution stem.
    one = DamageCNN(4, width=8, image_size=32).eval()
    saved = torch.load(io.BytesIO(model_to_bytes(one)), weights_only=True)
    del saved["init"]["stem_convs"]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    older = model_from_bytes(buffer.getvalue())
    assert older.init_kwargs["stem_convs"] == 1
    assert np.array_equal(
        predict_proba(older, images[:, :32, :32]), predict_proba(one, images[:, :32, :32])
    )


def test_model_from_bytes_refuses_other_files(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a"):
        model_from_bytes(path.read_bytes())


def test_same_seed_same_model_other_seed_other_model() -> None:
    images, labels = synthetic_cells(90, seed=4)
    config = dataclasses.replace(FAST, epochs=2)
    first = fit(images, labels, num_classes=3, config=config)
    second = fit(images, labels, num_classes=3, config=config)
    third = fit(images, labels, num_classes=3, config=dataclasses.replace(config, seed=1))
    losses = [[r.train_loss for r in run.history] for run in (first, second, third)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
    second_state = second.model.state_dict()
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second_state[name]), name


def test_fit_leaves_global_torch_state_alone() -> None:
    images, labels = synthetic_cells(60, seed=5)
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(images, labels, num_classes=3, config=dataclasses.replace(FAST, epochs=1))
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.rand(3), expected)


def test_time_budget_stops_training() -> None:
    images, labels = synthetic_cells(120, seed=6)
    config = dataclasses.replace(FAST, epochs=50, max_seconds=1e-3)
    result = fit(images, labels, num_classes=3, config=config)
    assert result.stopped_reason == "time_budget"
    # The budget runs out inside the first epoch; that partial epoch is still validated.
    assert len(result.history) == 1
    assert result.best_epoch == 1


def test_early_stopping_when_validation_never_improves() -> None:
    # Blank images standardise to zeros, so every prediction is the same: accuracy is flat.
    images = np.full((60, SIZE, SIZE), 128, np.uint8)
    labels = np.arange(60) % 3
    config = dataclasses.replace(FAST, epochs=20, patience=2, monitor="accuracy")
    result = fit(images, labels, num_classes=3, config=config)
    assert result.stopped_reason == "early_stopping"
    assert (result.best_epoch, len(result.history)) == (1, 3)


def test_without_validation_the_last_epoch_is_kept() -> None:
    images, labels = synthetic_cells(60, seed=7)
    config = dataclasses.replace(FAST, epochs=2, val_fraction=0.0)
    result = fit(images, labels, num_classes=3, config=config)
    assert (result.num_val, result.best_epoch, result.stopped_reason) == (0, 2, "completed")
    assert result.history[-1].val_loss is None


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        # Decoded at another size than the config says.
        (np.zeros((10, 16, 16), np.uint8), np.zeros(10, int), "image_size"),
        # One label short.
        (np.zeros((10, SIZE, SIZE), np.uint8), np.zeros(9, int), "labels"),
        # A label outside 0..2.
        (np.zeros((10, SIZE, SIZE), np.uint8), np.full(10, 3), "labels"),
    ],
)
def test_fit_rejects_bad_inputs(images, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        fit(images, labels, num_classes=3, config=FAST)


@pytest.mark.parametrize(
    "changes",
    [
        {"epochs": 0},
        # BatchNorm needs at least two images per batch.
        {"batch_size": 1},
        {"val_fraction": 1.0},
        {"class_weighting": "inverse"},
        {"augment": "rotate"},
        {"monitor": "auc"},
        {"max_seconds": 0},
        {"image_size": 8},
        {"label_smoothing": 1.0},
        {"label_smoothing": -0.1},
        {"mixup": -0.2},
    ],
)
def test_config_validation(changes: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(FAST, **changes)


def test_dihedral_augment_keeps_each_image_at_its_index() -> None:
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (200, 1, 6, 6), dtype=np.uint8))
    out = dihedral_augment(images, generator)
    seen = set()
    for i in range(len(images)):
        variants = [
            torch.rot90(v, k, dims=(-2, -1))
            for v in (images[i], images[i].flip(-1))
            for k in range(4)
        ]
        matches = [k for k, v in enumerate(variants) if torch.equal(out[i], v)]
        # Image i comes out as a flip / rotation of image i, so its label still applies.
        assert matches, f"image {i} is not a flip or rotation of its input"
        seen.add(matches[0])
    assert seen == set(range(8))


def test_flip_augment_keeps_each_image_at_its_index_and_busbars_horizontal() -> None:
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (100, 1, 4, 7), dtype=np.uint8))
    out = flip_augment(images, generator)
    seen = set()
    for i in range(len(images)):
        variants = [images[i], images[i].flip(-1), images[i].flip(-2), images[i].flip(-1, -2)]
        matches = [k for k, v in enumerate(variants) if torch.equal(out[i], v)]
        # Only flips: a rotation would not even keep the 4 x 7 shape.
        assert matches, f"image {i} is not a flip of its input"
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def _stripes(rows: np.ndarray, side: int = 32) -> torch.Tensor:
    """uint8 [N, 1, side, side], black but for one bright 2-pixel horizontal band per image."""
    images = np.zeros((len(rows), 1, side, side), dtype=np.uint8)
    for i, row in enumerate(rows):
        images[i, 0, row : row + 2] = 255
    return torch.from_numpy(images)


def test_affine_augment_moves_images_a_little_and_keeps_busbars_horizontal() -> None:
    rows = np.arange(6, 24)
    images = _stripes(rows)
    out = affine_augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Where the band is at the left and at the right edge: a rotation of at most 4 degrees over
    # 32 pixels tilts it by at most 2.3 rows.
    left = out[:, 0, :, 3].argmax(dim=1).numpy()
    right = out[:, 0, :, 28].argmax(dim=1).numpy()
    assert np.abs(left - right).max() <= 3
    # Each band stays near its row or its up-down mirror (shift and zoom move it a few rows),
    # so image i is still image i and keeps its label.
    centre = (left + right) / 2
    nearest = np.minimum(np.abs(centre - (rows + 0.5)), np.abs(centre - (31 - rows - 0.5)))
    assert nearest.max() <= 3.5
    # ...and it does move: not every image comes back on its own or its mirrored row.
    assert nearest.max() > 0.5
    assert torch.equal(out, affine_augment(images, torch.Generator().manual_seed(3)))


def test_affine_augment_scales_uint8_like_the_model() -> None:
    images = torch.full((4, 1, 16, 16), 255, dtype=torch.uint8)
    out = affine_augment(images, torch.Generator().manual_seed(0))
    # A flat image stays flat whatever the resampling (its border repeats).
    assert torch.allclose(out, torch.ones_like(out))
    floats = torch.full((4, 1, 16, 16), 0.25)
    assert torch.allclose(affine_augment(floats, torch.Generator()), floats)


def test_flip_tta_averages_the_four_flips(trained) -> None:
    result, _ = trained
    images, _ = synthetic_cells(12, seed=8)
    variants = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    expected = np.mean([predict_proba(result.model, v) for v in variants], axis=0)
    assert np.allclose(predict_proba(result.model, images, tta=True), expected, atol=1e-6)


@pytest.mark.parametrize("augment", ["none", "dihedral", "affine"])
def test_other_augmentations_train(augment: str) -> None:
    images, labels = synthetic_cells(60, seed=9)
    config = dataclasses.replace(FAST, epochs=1, augment=augment)
    assert len(fit(images, labels, num_classes=3, config=config).history) == 1


def test_dihedral_augment_needs_square_images() -> None:
    with pytest.raises(ValueError, match="square"):
        dihedral_augment(torch.zeros(2, 1, 4, 6), torch.Generator())


def test_stratified_split_takes_the_fraction_of_every_class() -> None:
    labels = np.array([0] * 40 + [1] * 20 + [2] * 4)
    rest, part = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert np.bincount(labels[part]).tolist() == [10, 5, 1]
    assert np.array_equal(np.sort(np.concatenate([rest, part])), np.arange(64))


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [
        # Counts 6 / 2 / 2: uniform weights.
        ("none", [1.0, 1.0, 1.0]),
        # Inverse frequency 10 / (3 * count) already averages 1 over the samples.
        ("balanced", [10 / 18, 10 / 6, 10 / 6]),
        # Square roots of those, rescaled so 6 * w0 + 4 * w1 = 10.
        ("sqrt", [0.77350, 1.33975, 1.33975]),
    ],
)
def test_class_weights(weighting: str, expected: list[float]) -> None:
    labels = np.array([0] * 6 + [1] * 2 + [2] * 2)
    weights = class_weights(labels, 3, weighting)
    assert weights == pytest.approx(expected, rel=1e-4)
    assert np.dot(weights, [6, 2, 2]) == pytest.approx(10.0)


def test_class_weights_give_absent_classes_zero() -> None:
    assert class_weights(np.array([0, 0, 1]), 3, "balanced")[2] == 0.0


def test_ensemble_members_differ_by_seed_and_average_their_probabilities() -> None:
    images, labels = synthetic_cells(90, seed=10)
    config = dataclasses.replace(FAST, epochs=2, members=2)
    result = fit_ensemble(images, labels, num_classes=3, config=config)
    alone = [
        fit(images, labels, num_classes=3, config=dataclasses.replace(config, seed=seed))
        for seed in (0, 1)
    ]
    probe, _ = synthetic_cells(12, seed=11)
    each = [predict_proba(member.model, probe) for member in alone]
    assert len(result.members) == 2
    assert len(result.history) == 4
    # The members are exactly the models the two seeds train on their own.
    losses = [[(r.train_loss, r.val_loss) for r in m.history] for m in result.members]
    assert losses == [[(r.train_loss, r.val_loss) for r in m.history] for m in alone]
    assert not np.allclose(each[0], each[1])
    assert np.allclose(predict_proba(result.model, probe), np.mean(each, axis=0), atol=1e-6)


def test_ensemble_flips_average_each_member_over_the_four_flips(trained) -> None:
    result, _ = trained
    images, _ = synthetic_cells(12, seed=12)
    ensemble = DamageEnsemble([result.model], flips=True).eval()
    assert np.allclose(
        predict_proba(ensemble, images), predict_proba(result.model, images, tta=True), atol=1e-6
    )
    plain = DamageEnsemble([result.model], flips=False).eval()
    assert np.allclose(predict_proba(plain, images), predict_proba(result.model, images), atol=1e-6)


def test_ensemble_shares_the_time_budget_among_members() -> None:
    images, labels = synthetic_cells(120, seed=13)
    config = dataclasses.replace(FAST, epochs=50, members=3, max_seconds=1e-3)
    result = fit_ensemble(images, labels, num_classes=3, config=config)
    assert [m.stopped_reason for m in result.members] == ["time_budget"] * 3
    assert result.stopped_reason == "time_budget"


def test_fit_model_trains_a_plain_model_unless_members_or_flips_are_asked_for() -> None:
    images, labels = synthetic_cells(60, seed=14)
    config = dataclasses.replace(FAST, epochs=1)
    assert isinstance(fit_model(images, labels, num_classes=3, config=config).model, DamageCNN)
    flipped = dataclasses.replace(config, test_time_flips=True)
    model = fit_model(images, labels, num_classes=3, config=flipped).model
    assert isinstance(model, DamageEnsemble)
    assert model.flips
    assert len(model.members) == 1


def test_ensemble_refuses_members_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="members disagree"):
        DamageEnsemble([DamageCNN(4, image_size=32), DamageCNN(4, image_size=48)])
    with pytest.raises(ValueError, match="at least one member"):
        DamageEnsemble([])


def test_prior_correction_divides_each_member_by_its_class_weights(trained) -> None:
    result, _ = trained
    images, _ = synthetic_cells(12, seed=15)
    weights = torch.tensor([[0.5, 1.0, 2.0]])
    corrected = DamageEnsemble([result.model], class_weights=weights).eval()
    raw = predict_proba(result.model, images)
    expected = raw / weights.numpy()
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(predict_proba(corrected, images), expected, atol=1e-6)
    # A class the member never trained on (weight 0) keeps probability 0.
    absent = DamageEnsemble([result.model], class_weights=torch.tensor([[1.0, 0.0, 1.0]])).eval()
    assert np.allclose(predict_proba(absent, images)[:, 1], 0.0, atol=1e-9)


def test_fit_model_applies_the_prior_correction_of_the_weights_it_trained_with() -> None:
    images, labels = synthetic_cells(60, seed=16)
    labels = np.where(labels == 2, 0, labels)  # two classes, 2:1
    config = dataclasses.replace(FAST, epochs=1, class_weighting="balanced", prior_correction=True)
    result = fit_model(images, labels, num_classes=3, config=config)
    (member,) = result.members
    assert torch.allclose(result.model.class_weights, torch.tensor([member.class_weights]))
    assert member.class_weights[2] == 0.0
    assert np.allclose(predict_proba(result.model, images)[:, 2], 0.0, atol=1e-9)


@pytest.mark.parametrize(
    "weights",
    [
        [[1.0, 1.0]],  # one weight short of the classes
        [[1.0, -1.0, 1.0]],  # negative
        [[0.0, 0.0, 0.0]],  # nothing left to predict
    ],
)
def test_ensemble_refuses_unusable_class_weights(weights) -> None:
    with pytest.raises(ValueError, match="class_weights"):
        DamageEnsemble([DamageCNN(3, image_size=32)], class_weights=torch.tensor(weights))


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_from_an_initial_model_continues_its_weights_and_leaves_it_alone(trained) -> None:
    result, _ = trained
    before = _weights(result.model).clone()
    images, labels = synthetic_cells(64, seed=20)
    # At a learning rate of nearly zero, the weights stay where training started.
    still = dataclasses.replace(FAST, epochs=1, lr=1e-12, val_fraction=0.0)
    continued = fit(images, labels, num_classes=3, config=still, initial=result.model)
    fresh = fit(images, labels, num_classes=3, config=still)
    assert torch.allclose(_weights(continued.model), before, atol=1e-6)
    assert not torch.allclose(_weights(fresh.model), before, atol=1e-2)
    # Training on moves the copy, not the model it started from.
    moved = fit(
        images,
        labels,
        num_classes=3,
        config=dataclasses.replace(still, lr=3e-3),
        initial=result.model,
    )
    assert not torch.allclose(_weights(moved.model), before, atol=1e-4)
    assert torch.equal(_weights(result.model), before)
    assert continued.model is not result.model


def test_a_warm_start_keeps_what_the_initial_model_knew(trained) -> None:
    result, _ = trained
    images, labels = synthetic_cells(150, seed=21)
    short = dataclasses.replace(FAST, epochs=1, val_fraction=0.0)
    continued = fit(images[:30], labels[:30], num_classes=3, config=short, initial=result.model)
    fresh = fit(images[:30], labels[:30], num_classes=3, config=short)
    accuracy = {
        name: float((predict_proba(model, images).argmax(axis=1) == labels).mean())
        for name, model in (("continued", continued.model), ("fresh", fresh.model))
    }
    assert accuracy["continued"] >= 0.9, accuracy
    assert accuracy["continued"] > accuracy["fresh"] + 0.2, accuracy


def test_an_ensemble_continues_member_by_member() -> None:
    images, labels = synthetic_cells(90, seed=22)
    config = dataclasses.replace(FAST, epochs=1, members=2, val_fraction=0.0)
    first = fit_model(images, labels, num_classes=3, config=config).model
    still = dataclasses.replace(config, lr=1e-12)
    again = fit_model(images, labels, num_classes=3, config=still, initial=first).model
    for old, new in zip(first.members, again.members, strict=True):
        assert torch.allclose(_weights(new), _weights(old), atol=1e-6)
    assert not torch.allclose(_weights(again.members[0]), _weights(first.members[1]), atol=1e-3)


def test_fit_refuses_an_initial_model_of_another_shape() -> None:
    images, labels = synthetic_cells(30, seed=23)
    config = dataclasses.replace(FAST, epochs=1)
    with pytest.raises(ValueError, match="grades 4 classes at 32 px"):
        fit(images, labels, num_classes=3, config=config, initial=DamageCNN(4, image_size=SIZE))
    with pytest.raises(ValueError, match="initial ensemble has 1 members"):
        fit_ensemble(
            images,
            labels,
            num_classes=3,
            config=dataclasses.replace(config, members=2),
            initial=DamageEnsemble([DamageCNN(3, image_size=SIZE)]),
        )
    with pytest.raises(ValueError, match="trains a DamageEnsemble; the initial model is a Damage"):
        fit_model(
            images,
            labels,
            num_classes=3,
            config=dataclasses.replace(config, test_time_flips=True),
            initial=DamageCNN(3, image_size=SIZE),
        )


def test_class_weights_come_from_the_population_when_training_on_a_sample() -> None:
    images, labels = synthetic_cells(60, seed=24)
    sample = labels != 2
    config = dataclasses.replace(FAST, epochs=1, val_fraction=0.0)
    alone = fit(images[sample], labels[sample], num_classes=3, config=config)
    weighted = fit(
        images[sample], labels[sample], num_classes=3, config=config, population_labels=labels
    )
    # Alone, the sample's missing class gets weight 0 (a prior correction would rule it out).
    assert alone.class_weights[2] == 0.0
    assert np.allclose(weighted.class_weights, class_weights(labels, 3, "sqrt"))
    assert min(weighted.class_weights) > 0


def test_mixup_blends_images_and_losses_by_the_same_share() -> None:
    images, labels = synthetic_cells(16, seed=12)
    model = DamageCNN(3, width=4, image_size=SIZE).eval()
    x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    loss_fn = torch.nn.CrossEntropyLoss()
    partner = torch.randperm(16, generator=torch.Generator().manual_seed(3))

    def mixed(share: float) -> float:
        return float(mixup_loss(model, loss_fn, x, y, share, torch.Generator().manual_seed(3)))

    with torch.inference_mode():
        # All of the batch itself, or all of its shuffled copy, is plain training on either.
        assert mixed(1.0) == pytest.approx(float(loss_fn(model(x), y)), rel=1e-5)
        assert mixed(0.0) == pytest.approx(float(loss_fn(model(x[partner]), y[partner])), rel=1e-5)
        # Halfway: the blended image, scored half against each label.
        blend = (x.float() / 255 + x[partner].float() / 255) / 2
        logits = model(blend)
        half = (loss_fn(logits, y) + loss_fn(logits, y[partner])) / 2
        assert mixed(0.5) == pytest.approx(float(half), rel=1e-5)


def test_mixup_training_is_seeded_and_still_learns() -> None:
    images, labels = synthetic_cells(300, seed=0)
    config = dataclasses.replace(FAST, mixup=0.4, epochs=12)
    first = fit(images, labels, num_classes=3, config=config)
    again = fit(images, labels, num_classes=3, config=config)
    plain = fit(images, labels, num_classes=3, config=dataclasses.replace(config, mixup=0.0))
    losses = [[r.train_loss for r in run.history] for run in (first, again, plain)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
    test_images, test_labels = synthetic_cells(150, seed=1)
    predictions = predict_proba(first.model, test_images).argmax(1)
    assert classification_metrics(test_labels, predictions, 3)["accuracy"] >= 0.9


def test_label_smoothing_makes_the_model_less_certain() -> None:
    images, labels = synthetic_cells(300, seed=0)
    smooth = dataclasses.replace(FAST, label_smoothing=0.3)
    sharp = fit(images, labels, num_classes=3, config=FAST).model
    smoothed = fit(images, labels, num_classes=3, config=smooth).model
    test_images, test_labels = synthetic_cells(150, seed=1)
    sharp_top = predict_proba(sharp, test_images).max(1)
    smoothed_proba = predict_proba(smoothed, test_images)
    # Targets of 0.8 for the label: confidence stays well below what plain training reaches.
    assert smoothed_proba.max(1).mean() < sharp_top.mean() - 0.05
    accuracy = classification_metrics(test_labels, smoothed_proba.argmax(1), 3)["accuracy"]
    assert accuracy >= 0.9
