import numpy as np
import pytest
import torch

from compositional_ai.vision.model import DamageCNN, count_parameters


@pytest.fixture
def model() -> DamageCNN:
    torch.manual_seed(0)
    return DamageCNN(4, width=8, image_size=32).eval()


def pixels(n: int = 3, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8))


def test_logits_shape_for_uint8_and_float(model: DamageCNN) -> None:
    x = pixels()
    assert model(x).shape == (3, 4)
    assert model(x.float() / 255).shape == (3, 4)


def test_uint8_and_scaled_float_give_the_same_logits(model: DamageCNN) -> None:
    x = pixels()
    with torch.inference_mode():
        from_uint8 = model(x)
        # Per-image standardisation makes the input scale irrelevant: 0..1 and 0..255 agree.
        from_unit = model(x.float() / 255)
        from_raw_scale = model(x.float())
    assert torch.allclose(from_uint8, from_unit, atol=1e-4)
    assert torch.allclose(from_uint8, from_raw_scale, atol=1e-4)


def test_exposure_shift_does_not_change_logits(model: DamageCNN) -> None:
    x = pixels().float() / 255
    with torch.inference_mode():
        assert torch.allclose(model(x), model(0.5 * x + 0.2), atol=1e-4)


def test_standardise_gives_zero_mean_unit_variance_and_keeps_blank_images_finite() -> None:
    x = torch.cat([pixels(2), torch.full((1, 1, 32, 32), 90, dtype=torch.uint8)])
    out = DamageCNN.standardise(x)
    assert torch.allclose(out[:2].mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out[:2].std(dim=(1, 2, 3), correction=0), torch.ones(2), atol=1e-4)
    # The mean of a flat image carries float rounding, so "zero" is within 1e-3 here.
    assert torch.allclose(out[2], torch.zeros(1, 32, 32), atol=1e-3)


def test_accepts_images_without_channel_axis(model: DamageCNN) -> None:
    x = pixels()
    with torch.inference_mode():
        assert torch.equal(model(x[:, 0]), model(x))


@pytest.mark.parametrize(
    "shape",
    [
        # Three channels: the model is grayscale only.
        (2, 3, 32, 32),
        # A single image without the batch axis is ambiguous with [N, H, W]; 2-D is refused.
        (32, 32),
    ],
)
def test_rejects_wrong_shapes(model: DamageCNN, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(shape, dtype=torch.uint8))


def test_other_input_sizes_work_thanks_to_global_pooling(model: DamageCNN) -> None:
    with torch.inference_mode():
        assert model(pixels(2, 48)).shape == (2, 4)


@pytest.mark.parametrize(
    ("width", "low", "high"),
    [
        # The default: a few hundred thousand parameters, small enough for 2 CPU cores.
        (16, 250_000, 350_000),
        # Parameters grow with the square of the width.
        (8, 60_000, 90_000),
    ],
)
def test_parameter_count(width: int, low: int, high: int) -> None:
    assert low <= count_parameters(DamageCNN(4, width=width)) <= high


@pytest.mark.parametrize(
    "kwargs",
    [
        # One class is not a classifier.
        {"num_classes": 1},
        {"num_classes": 4, "width": 0},
        {"num_classes": 4, "dropout": 1.0},
        # Four halvings need at least 16 pixels, five (two stem convolutions) 32.
        {"num_classes": 4, "image_size": 8},
        {"num_classes": 4, "image_size": 24, "stem_convs": 2},
        {"num_classes": 4, "stem_convs": 3},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DamageCNN(**kwargs)


def _feature_map_side(model: DamageCNN, size: int) -> int:
    with torch.inference_mode():
        return model.features(model.standardise(pixels(1, size))).shape[-1]


def test_two_stem_convolutions_take_twice_the_side_to_the_same_map() -> None:
    one = DamageCNN(4, width=8, image_size=64).eval()
    two = DamageCNN(4, width=8, image_size=128, stem_convs=2).eval()
    assert _feature_map_side(one, 64) == _feature_map_side(two, 128) == 4
    assert two(pixels(2, 128)).shape == (2, 4)
    # The extra convolution is narrow: at most a few hundred more parameters.
    assert 0 < count_parameters(two) - count_parameters(one) < 500
    assert two.init_kwargs["stem_convs"] == 2
