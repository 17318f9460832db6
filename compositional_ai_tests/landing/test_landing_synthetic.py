"""The synthetic photo generator: label-preserving transforms, vectorised, seeded."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositional_ai.landing.elpv import load_elpv_labels
from compositional_ai.landing.synthetic import (
    BRIGHTNESS_RANGE,
    GAMMA_RANGE,
    MAX_SHIFT_PX,
    NOISE_SIGMA_RANGE,
    Transforms,
    apply_transforms,
    decode_gray,
    draw_transforms,
    encode_png,
    synthesize,
)


def identity(n: int, **changes) -> Transforms:
    """Parameters that change nothing, except the ones named."""
    values = {
        "flip_horizontal": np.zeros(n, dtype=bool),
        "flip_vertical": np.zeros(n, dtype=bool),
        "shift_rows": np.zeros(n, dtype=np.int64),
        "shift_columns": np.zeros(n, dtype=np.int64),
        "gamma": np.ones(n),
        "contrast": np.ones(n),
        "brightness": np.ones(n),
        "noise_sigma": np.zeros(n),
    }
    return Transforms(**{**values, **{k: np.asarray(v) for k, v in changes.items()}})


def ramp(n: int = 2, size: int = 6) -> np.ndarray:
    """n distinct small gray images with no symmetry, so every transform shows."""
    base = np.arange(size * size, dtype=np.uint8).reshape(size, size) * 7
    return np.stack([base + 3 * i for i in range(n)]).astype(np.uint8)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # nothing drawn: the photo is unchanged
        ({}, lambda img: img),
        # a horizontal flip mirrors the columns, and only of the first photo
        (
            {"flip_horizontal": [True, False]},
            lambda img: np.stack([img[0, :, ::-1], img[1]]),
        ),
        # a vertical flip mirrors the rows
        ({"flip_vertical": [True, True]}, lambda img: img[:, ::-1, :]),
        # a shift down by 2 rows repeats the first row into the gap
        (
            {"shift_rows": [2, 0]},
            lambda img: np.stack([np.concatenate([img[0, :1], img[0, :1], img[0, :-2]]), img[1]]),
        ),
        # a shift left by one column repeats the last column
        (
            {"shift_columns": [0, -1]},
            lambda img: np.stack([img[0], np.concatenate([img[1, :, 1:], img[1, :, -1:]], axis=1)]),
        ),
    ],
)
def test_geometric_transforms_move_pixels_exactly(changes, expected):
    images = ramp()
    out = apply_transforms(images, identity(2, **changes), RNG)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected(images))


def test_photometric_transforms_change_levels_not_layout():
    images = np.full((3, 8, 8), 100, dtype=np.uint8)
    images[:, 2:4, 2:4] = 200
    out = apply_transforms(
        images, identity(3, brightness=[1.1, 1.0, 1.0], gamma=[1.0, 0.5, 1.0]), RNG
    )
    # Brightness scales every level: 100 -> 110, 200 -> 220.
    assert set(np.unique(out[0])) == {110, 220}
    # Gamma below 1 lifts the dark levels more than the bright ones, keeping their order.
    assert out[1, 0, 0] > 100 and out[1, 2, 2] > 200 and out[1, 2, 2] > out[1, 0, 0]
    np.testing.assert_array_equal(out[2], images[2])


def test_noise_has_the_drawn_sigma_and_saturates_at_the_range():
    images = np.full((2, 200, 200), 128, dtype=np.uint8)
    images[1] = 255
    out = apply_transforms(images, identity(2, noise_sigma=[3.0, 3.0]), np.random.default_rng(1))
    assert abs(out[0].astype(float).std() - 3.0) < 0.1
    assert abs(out[0].astype(float).mean() - 128) < 0.1
    assert out[1].max() == 255 and out[1].min() < 255


def test_a_stack_and_its_parameters_must_agree():
    with pytest.raises(ValueError, match="stack of 3"):
        apply_transforms(ramp(2), identity(3), RNG)


def test_drawn_parameters_stay_within_their_ranges():
    drawn = draw_transforms(2000, np.random.default_rng(3))
    assert np.abs(drawn.shift_rows).max() == MAX_SHIFT_PX
    assert np.abs(drawn.shift_columns).max() == MAX_SHIFT_PX
    for values, (low, high) in (
        (drawn.gamma, GAMMA_RANGE),
        (drawn.brightness, BRIGHTNESS_RANGE),
        (drawn.noise_sigma, NOISE_SIGMA_RANGE),
    ):
        assert low <= values.min() and values.max() <= high
    assert 0.45 < drawn.flip_horizontal.mean() < 0.55
    assert 0.45 < drawn.flip_vertical.mean() < 0.55


@pytest.fixture(scope="module")
def cells() -> list[bytes]:
    """Three real elpv cells, as their PNG bytes."""
    paths = load_elpv_labels()["source_path"].head(3).to_list()
    return [Path(path).read_bytes() for path in paths]


def test_synthetic_cells_resemble_their_parents_and_differ_from_them(cells):
    made = synthesize(cells, seed=5)
    assert len(made) == 3
    for parent, photo in zip(cells, made, strict=True):
        original, synthetic = decode_gray(parent), decode_gray(photo.png)
        assert synthetic.shape == original.shape == (300, 300)
        assert photo.png != parent
        # Undo the drawn shift and flips, in reverse order: what is left is gray-level jitter
        # and noise.
        params = json.loads(photo.transforms)
        restored = np.roll(synthetic, (-params["shift_px"][0], -params["shift_px"][1]), (0, 1))
        if params["flip_vertical"]:
            restored = restored[::-1, :]
        if params["flip_horizontal"]:
            restored = restored[:, ::-1]
        inner = (slice(10, -10), slice(10, -10))
        correlation = np.corrcoef(
            restored[inner].ravel().astype(float), original[inner].ravel().astype(float)
        )[0, 1]
        assert correlation > 0.95
        assert abs(float(synthetic.mean()) - float(original.mean())) < 0.25 * original.mean()


def test_synthesize_is_seeded_and_keeps_the_parents_order(cells):
    first, again = synthesize(cells, seed=5), synthesize(cells, seed=5)
    assert [p.png for p in first] == [p.png for p in again]
    assert [p.png for p in synthesize(cells, seed=6)] != [p.png for p in first]
    # A smaller photo among them is transformed on its own, in its place.
    small = encode_png(np.full((40, 30), 90, dtype=np.uint8))
    mixed = synthesize([cells[0], small, cells[1]], seed=5)
    assert [decode_gray(p.png).shape for p in mixed] == [(300, 300), (40, 30), (300, 300)]
    with Image.open(io.BytesIO(mixed[1].png)) as image:
        assert (image.format, image.mode) == ("PNG", "L")


def test_no_parent_no_photo():
    assert synthesize([], seed=1) == []
