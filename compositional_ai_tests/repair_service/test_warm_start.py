"""When a photo model's next version continues the previous one, and on which rows."""

import polars as pl
import pytest

from compositional_ai.repair_service.warm_start import plan_warm_start, training_pairs


def training_set(levels: dict[str, int]) -> pl.DataFrame:
    """One row per request: request r<sha> for photo <sha> at its level."""
    return pl.DataFrame(
        {
            "request_id": [f"r{sha}" for sha in levels],
            "photo_sha256": list(levels),
            "damage_level": list(levels.values()),
        }
    )


OLD = {f"old{i:02d}": i % 4 for i in range(20)}
NEW = {f"new{i:02d}": (i + 1) % 4 for i in range(5)}


def plan(current: dict, parent: dict, **overrides):
    settings = {"max_new_share": 0.5, "replay_ratio": 1.0, "seed": 0, **overrides}
    return plan_warm_start(
        training_set(current),
        "damage_level",
        parent="3",
        parent_pairs=training_pairs(training_set(parent), "damage_level"),
        **settings,
    )


def test_a_few_new_rows_continue_the_parent_with_as_many_replayed():
    result = plan({**OLD, **NEW}, OLD)
    assert result.warm
    assert result.parent == "3"
    assert (result.new_rows, result.replay_rows) == (5, 5)
    shas = result.rows["photo_sha256"].to_list()
    assert shas[:5] == list(NEW)
    assert set(shas[5:]) < set(OLD)
    assert len(set(shas)) == 10
    assert result.reason == "continues v3 on 5 new rows and 5 replayed of 20 it learned from"


def test_the_replay_sample_is_seeded_and_capped_by_what_the_parent_learned():
    again = plan({**OLD, **NEW}, OLD)
    other = plan({**OLD, **NEW}, OLD, seed=1)
    assert plan({**OLD, **NEW}, OLD).rows.equals(again.rows)
    assert not other.rows.equals(again.rows)
    everything = plan({**OLD, **NEW}, OLD, replay_ratio=10.0)
    assert everything.replay_rows == 20
    assert set(everything.rows["photo_sha256"]) == set(OLD) | set(NEW)
    none = plan({**OLD, **NEW}, OLD, replay_ratio=0.0)
    assert (none.replay_rows, none.rows.height) == (0, 5)


def test_a_relabelled_photo_the_parent_learned_means_training_from_scratch():
    relabelled = {**OLD, "old03": 0, **NEW}
    result = plan(relabelled, OLD)
    assert not result.warm
    assert result.rows.height == 25
    assert result.reason.startswith("1 of the 20 photo labels v3 learned from no longer hold")
    assert "(1 relabelled, 0 withdrawn)" in result.reason


def test_a_withdrawn_photo_the_parent_learned_means_training_from_scratch():
    withdrawn = {
        sha: level for sha, level in {**OLD, **NEW}.items() if sha not in ("old01", "old02")
    }
    result = plan(withdrawn, OLD)
    assert not result.warm
    assert "(0 relabelled, 2 withdrawn)" in result.reason


def test_nothing_new_or_mostly_new_trains_from_scratch():
    same = plan(OLD, OLD)
    assert not same.warm
    assert same.reason == "nothing is new since v3: trained with these settings"
    half = dict(list(OLD.items())[:5])
    mostly = plan(OLD, half)
    assert not mostly.warm
    assert mostly.reason.startswith("15 of 20 rows are new since v3, more than 50%")
    assert plan(OLD, half, max_new_share=0.8).warm


def test_a_photo_in_several_requests_counts_each_row():
    current = training_set({**OLD, **NEW})
    repeated = pl.concat([current, current.filter(pl.col("photo_sha256") == "new00")])
    result = plan_warm_start(
        repeated,
        "damage_level",
        parent="3",
        parent_pairs=training_pairs(training_set(OLD), "damage_level"),
        max_new_share=0.5,
        replay_ratio=1.0,
        seed=0,
    )
    assert (result.new_rows, result.replay_rows) == (6, 6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"max_new_share": 0.0}, "max_new_share"), ({"replay_ratio": -1.0}, "replay_ratio")],
)
def test_settings_out_of_range_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        plan({**OLD, **NEW}, OLD, **overrides)


def test_little_that_is_new_is_trained_with_enough_replayed_to_make_the_floor():
    few = {"new00": 1}
    result = plan({**OLD, **few}, OLD, min_rows=12)
    assert (result.new_rows, result.replay_rows, result.rows.height) == (1, 11, 12)
    # Never more than the parent learned from; a ratio above the floor still counts.
    assert plan({**OLD, **few}, OLD, min_rows=100).replay_rows == 20
    assert plan({**OLD, **NEW}, OLD, min_rows=6, replay_ratio=2.0).replay_rows == 10
