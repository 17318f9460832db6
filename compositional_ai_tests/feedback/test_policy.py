"""The feedback policy: confirmed labels in, self-labels only under an explicit cap, no holdout."""

import polars as pl
import pytest

from compositional_ai.feedback.policy import (
    SelfLabelPolicy,
    feedback_training_rows,
    holdout_leakage,
    promotion_decision,
    self_label_share,
)

LABELS = pl.DataFrame(
    {
        "request_id": ["R1", "R2", "R3", "R4"],
        "photo_sha256": ["a", "b", "c", "d"],
        "damage_level": [0, 3, 1, 2],
        "cell_type": ["mono", "poly", "mono", "poly"],
        "label_origin": ["technician"] * 4,
    }
)
LOG = pl.DataFrame(
    {
        "request_id": ["R2", "R3", "R5", "R6", "R7"],
        "batch": ["b1", "b1", "b2", "b2", "b2"],
        "status": ["ok", "ok", "ok", "ok", "ok"],
        "model_version": ["1", "1", "2", "2", "2"],
        "input_sha256": ["b", "c", "e", "f", "g"],
        "predicted_level": [3, 0, 2, 1, 0],
        "confidence": [0.9, 0.6, 0.99, 0.97, 0.5],
    }
)
NO_HOLDOUT = pl.Series([], dtype=pl.String)


def test_confirmed_labels_carry_the_prediction_they_confirm():
    rows = feedback_training_rows(LABELS, LOG, policy=SelfLabelPolicy(), holdout_shas=NO_HOLDOUT)

    assert rows["request_id"].to_list() == ["R1", "R2", "R3", "R4"]
    assert rows["label_origin"].unique().to_list() == ["technician"]
    # R3 was predicted 0 and confirmed 1: the label is the technician's, never the model's.
    r3 = rows.filter(pl.col("request_id") == "R3").row(0, named=True)
    assert (r3["damage_level"], r3["predicted_level"], r3["model_version"]) == (1, 0, "1")
    # R1 and R4 came from the workshop archive: no inference row, no model version.
    assert rows.filter(pl.col("inference_batch").is_null())["request_id"].to_list() == ["R1", "R4"]


@pytest.mark.parametrize(
    ("policy", "expected_self_labelled"),
    [
        # The default admits no self-labels at all.
        (SelfLabelPolicy(), []),
        # A 20 % cap on 4 confirmed rows admits one self-label: the most confident.
        (SelfLabelPolicy(min_confidence=0.95, max_share=0.2), ["R5"]),
        # A 40 % cap admits two, still only above the confidence threshold.
        (SelfLabelPolicy(min_confidence=0.95, max_share=0.4), ["R5", "R6"]),
        # A high threshold keeps R6 (0.97) out whatever the cap.
        (SelfLabelPolicy(min_confidence=0.98, max_share=0.5), ["R5"]),
    ],
)
def test_self_labels_enter_only_under_the_policy(policy, expected_self_labelled):
    rows = feedback_training_rows(LABELS, LOG, policy=policy, holdout_shas=NO_HOLDOUT)

    model_rows = rows.filter(pl.col("label_origin") == "model")
    assert model_rows["request_id"].to_list() == expected_self_labelled
    assert self_label_share(rows) <= policy.max_share + 1e-9


def test_holdout_photos_never_enter():
    rows = feedback_training_rows(
        LABELS, LOG, policy=SelfLabelPolicy(max_share=0.4), holdout_shas=pl.Series(["b", "e"])
    )

    assert "b" not in rows["photo_sha256"].to_list()
    assert "e" not in rows["photo_sha256"].to_list()
    assert holdout_leakage(rows, pl.Series(["b", "e"])) == 0
    assert holdout_leakage(LABELS, pl.Series(["b", "e", "zz"])) == 1


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [
        (0.70, None, True),  # the first version always becomes champion
        (0.80, 0.75, True),  # better
        (0.745, 0.75, True),  # worse, but within the 0.01 tolerance
        (0.70, 0.75, False),  # worse beyond the tolerance: stays a challenger
    ],
)
def test_promotion_decision(challenger, champion, promote):
    decision = promotion_decision(challenger, champion)

    assert decision.promote is promote
    assert f"{challenger:.4f}" in decision.reason or champion is None


def test_a_resent_photo_is_one_self_label_not_many():
    repeated = pl.concat(
        [LOG]
        + [
            LOG.filter(pl.col("request_id") == "R5").with_columns(
                pl.lit(f"R5-{n}").alias("request_id")
            )
            for n in range(5)
        ]
    )

    rows = feedback_training_rows(
        LABELS,
        repeated,
        policy=SelfLabelPolicy(min_confidence=0.95, max_share=0.5),
        holdout_shas=NO_HOLDOUT,
    )

    model_rows = rows.filter(pl.col("label_origin") == "model")
    assert model_rows["photo_sha256"].to_list().count("e") == 1
    assert sorted(model_rows["photo_sha256"].to_list()) == ["e", "f"]
