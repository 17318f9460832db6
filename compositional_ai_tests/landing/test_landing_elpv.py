from pathlib import Path

import numpy as np
import polars as pl
import pytest

from compositional_ai.landing.elpv import (
    ELPV_COLUMNS,
    apportion,
    load_elpv_labels,
    stratified_holdout,
    stratified_sample,
)

# (damage_level, cell_type) -> (images in elpv-dataset, images in the 25 % holdout)
EXPECTED_STRATA = {
    (0, "mono"): (588, 147),
    (0, "poly"): (920, 230),
    (1, "mono"): (117, 29),
    (1, "poly"): (178, 45),
    (2, "mono"): (56, 14),
    (2, "poly"): (50, 12),
    (3, "mono"): (313, 78),
    (3, "poly"): (402, 101),
}


@pytest.fixture(scope="module")
def labels() -> pl.DataFrame:
    return load_elpv_labels()


def test_labels_have_every_image_once_with_its_damage_level(labels):
    assert labels.columns == list(ELPV_COLUMNS)
    assert labels.height == 2624
    assert labels["photo_file"].n_unique() == 2624
    assert labels["photo_file"][0] == "cell0001.png"
    counts = labels.group_by("damage_level", "cell_type").len()
    assert {(r[0], r[1]): r[2] for r in counts.iter_rows()} == {
        k: v[0] for k, v in EXPECTED_STRATA.items()
    }
    # damage_level is defect_probability * 3 exactly on the four label values.
    pairs = labels.select("defect_probability", "damage_level").unique().sort("damage_level")
    assert pairs["damage_level"].to_list() == [0, 1, 2, 3]
    assert np.allclose(pairs["defect_probability"].to_numpy(), [0, 1 / 3, 2 / 3, 1])
    assert all(Path(p).is_file() for p in labels["source_path"].head(5))


def test_holdout_is_656_images_split_per_stratum(labels):
    holdout = stratified_holdout(labels)
    assert holdout.dtype == pl.Boolean
    assert int(holdout.sum()) == 656
    counts = labels.filter(holdout).group_by("damage_level", "cell_type").len()
    assert {(r[0], r[1]): r[2] for r in counts.iter_rows()} == {
        k: v[1] for k, v in EXPECTED_STRATA.items()
    }


def test_holdout_is_fixed_and_ignores_row_order(labels):
    chosen = set(labels.filter(stratified_holdout(labels))["photo_file"])
    shuffled = labels.sample(fraction=1.0, shuffle=True, seed=3)
    assert set(shuffled.filter(stratified_holdout(shuffled))["photo_file"]) == chosen
    other = set(labels.filter(stratified_holdout(labels, seed=1))["photo_file"])
    assert other != chosen and len(other) == len(chosen)


@pytest.mark.parametrize(
    ("sizes", "total", "expected"),
    [
        # The ELPV strata: floors sum to 654; the two 0.5 remainders of the largest strata win.
        ([588, 920, 117, 178, 56, 50, 313, 402], 656, [147, 230, 29, 45, 14, 12, 78, 101]),
        # Equal remainders and equal sizes: the earlier strata win.
        ([1, 1, 1], 2, [1, 1, 0]),
        # Equal remainders: the larger stratum wins.
        ([3, 1], 2, [2, 0]),
        # Drawing everything or nothing.
        ([4, 6], 10, [4, 6]),
        ([4, 6], 0, [0, 0]),
        # Shares 1.05 and 0.95: the larger remainder wins over the larger stratum.
        ([10, 9], 2, [1, 1]),
    ],
)
def test_apportion(sizes, total, expected):
    assert apportion(np.array(sizes), total).tolist() == expected


def test_apportion_refuses_more_than_there_is():
    with pytest.raises(ValueError, match="cannot draw"):
        apportion(np.array([2, 3]), 6)


def test_stratified_sample_draws_the_requested_number(labels):
    picked = labels.filter(stratified_sample(labels, 12, seed=5))
    assert picked.height == 12
    # Shares of 12: 2.69, 4.21, 0.53, 0.81, 0.26, 0.23, 1.43, 1.84; floors give 8 and the four
    # largest remainders (3 poly, 1 poly, 0 mono, 1 mono) one more each.
    counts = {(r[0], r[1]): r[2] for r in picked.group_by("damage_level", "cell_type").len().rows()}
    assert counts == {
        (0, "mono"): 3,
        (0, "poly"): 4,
        (1, "mono"): 1,
        (1, "poly"): 1,
        (3, "mono"): 1,
        (3, "poly"): 2,
    }
