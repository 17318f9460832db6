"""The feedback policy: confirmed labels in, self-labels only under an explicit cap, no holdout."""

import polars as pl
import pytest

from compositional_ai.feedback.policy import (
    FEEDBACK_COLUMNS,
    LabelPolicy,
    OriginPolicy,
    SelfLabelPolicy,
    admitted_labels,
    feedback_training_rows,
    holdout_descendants,
    holdout_leakage,
    origin_share,
    promotion_decision,
    self_label_share,
    share_figures,
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


# --- every origin under its own recorded policy ----------------------------------------------

# gold.damage_labels-like rows: the four technician labels, two chat reports and two synthetic
# photos. R5's customer said level 1 (the model predicted 2); R7's customer was unsure.
DAMAGE_LABELS = pl.concat(
    [
        LABELS.with_columns(
            pl.lit(None, pl.String).alias("parent_sha256"),
            pl.lit(None, pl.Float64).alias("confidence"),
        ),
        pl.DataFrame(
            {
                "request_id": ["R5", "R7", "R1", "R2"],
                "photo_sha256": ["e", "g", "s1", "s2"],
                "damage_level": [1, 0, 0, 3],
                "cell_type": [None, None, "mono", "poly"],
                "label_origin": ["chatbot", "chatbot", "synthetic", "synthetic"],
                "parent_sha256": [None, None, "a", "b"],
                "confidence": [1.0, 0.6, None, None],
            }
        ),
    ],
    how="vertical_relaxed",
)


def on(max_share: float = 0.5, min_confidence: float | None = None) -> OriginPolicy:
    """An enabled origin policy."""
    return OriginPolicy(enabled=True, min_confidence=min_confidence, max_share=max_share)


def rows_for(policy: LabelPolicy, holdout: list[str] | None = None) -> pl.DataFrame:
    return feedback_training_rows(
        DAMAGE_LABELS, LOG, policy=policy, holdout_shas=pl.Series(holdout or [], dtype=pl.String)
    )


def admitted(rows: pl.DataFrame) -> list[tuple[str, str, str]]:
    return (
        rows.filter(pl.col("label_origin") != "technician")
        .select("label_origin", "request_id", "photo_sha256")
        .rows()
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # The default policy admits nothing but technicians.
        (LabelPolicy(), []),
        # A share without the flag admits nothing: each origin needs both.
        (LabelPolicy(chatbot=OriginPolicy(max_share=0.5)), []),
        # The flag without a share admits nothing either.
        (LabelPolicy(chatbot=OriginPolicy(enabled=True)), []),
        # Chatbot labels at confidence 1.0: R5's report, not R7's unsure one.
        (LabelPolicy(chatbot=on(min_confidence=1.0)), [("chatbot", "R5", "e")]),
        # Synthetic photos carry their parent's label; no threshold applies.
        (
            LabelPolicy(synthetic=on()),
            [("synthetic", "R1", "s1"), ("synthetic", "R2", "s2")],
        ),
        # A 20 % cap on 4 technician rows admits one synthetic photo: the first by request.
        (LabelPolicy(synthetic=on(max_share=0.2)), [("synthetic", "R1", "s1")]),
        # Chatbot and model both offer a label for photo e: the customer's report wins.
        (
            LabelPolicy(chatbot=on(min_confidence=1.0), model=on(min_confidence=0.95)),
            [("chatbot", "R5", "e"), ("model", "R6", "f")],
        ),
    ],
)
def test_each_origin_enters_only_under_its_own_policy(policy, expected):
    rows = rows_for(policy)
    assert sorted(admitted(rows)) == sorted(expected)
    assert rows.filter(pl.col("label_origin") == "technician").height == 4
    passed, _ = share_figures(rows, policy, {})
    assert passed


def test_admitted_rows_keep_their_origin_confidence_and_prediction():
    policy = LabelPolicy(chatbot=on(min_confidence=1.0), synthetic=on())
    rows = rows_for(policy)
    assert rows.columns == list(FEEDBACK_COLUMNS)
    chat = rows.filter(pl.col("label_origin") == "chatbot").row(0, named=True)
    # The customer's level is the label; the prediction of the same request rides along.
    assert (chat["damage_level"], chat["label_confidence"]) == (1, 1.0)
    assert (chat["predicted_level"], chat["model_version"], chat["inference_batch"]) == (
        2,
        "2",
        "b2",
    )
    synthetic = rows.filter(pl.col("photo_sha256") == "s2").row(0, named=True)
    # A synthetic photo labels no request's own photo: no prediction is consumed through it.
    assert (synthetic["parent_sha256"], synthetic["damage_level"]) == ("b", 3)
    assert synthetic["model_version"] is None and synthetic["predicted_level"] is None


def test_holdout_photos_and_their_synthetic_children_never_enter():
    policy = LabelPolicy(synthetic=on(), chatbot=on(min_confidence=0.5))
    # Photo a is a holdout photo: its technician row and its synthetic child s1 stay out.
    rows = rows_for(policy, holdout=["a", "g"])
    assert "a" not in rows["photo_sha256"].to_list()
    assert "s1" not in rows["photo_sha256"].to_list()
    assert "g" not in rows["photo_sha256"].to_list()
    assert holdout_descendants(rows, pl.Series(["a"])) == 0
    assert holdout_descendants(DAMAGE_LABELS, pl.Series(["a", "b", "z"])) == 2
    assert holdout_descendants(LABELS, pl.Series(["a"])) == 0  # no parent column at all


def test_a_synthetic_photo_needs_its_parents_technician_label_in_the_set():
    orphan = DAMAGE_LABELS.with_columns(
        pl.when(pl.col("photo_sha256") == "s2")
        .then(pl.lit("zz"))
        .otherwise(pl.col("parent_sha256"))
        .alias("parent_sha256")
    )
    rows = feedback_training_rows(
        orphan, LOG, policy=LabelPolicy(synthetic=on()), holdout_shas=NO_HOLDOUT
    )
    assert admitted(rows) == [("synthetic", "R1", "s1")]


@pytest.mark.parametrize(
    ("max_share", "technician_rows", "cap"),
    [
        (0.0, 100, 0),  # no share, no rows
        (0.2, 4, 1),  # 1 of 5 is 20 %
        (0.25, 3, 1),  # exactly at the share
        (0.3, 7, 3),  # 3 of 10 is 30 %: the quotient is exact, not rounded below itself
        (0.5, 10, 10),  # as many as the technicians
        (1.0, 5, 2**62),  # no cap at all
    ],
)
def test_the_cap_keeps_an_origin_within_its_share(max_share, technician_rows, cap):
    rule = OriginPolicy(enabled=True, max_share=max_share)
    assert rule.cap(technician_rows) == cap
    if 0 < max_share < 1:
        assert cap / (technician_rows + cap) <= max_share + 1e-12
        assert (cap + 1) / (technician_rows + cap + 1) > max_share
    assert OriginPolicy(enabled=False, max_share=max_share).cap(technician_rows) == 0


def test_a_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="max_share"):
        OriginPolicy(enabled=True, max_share=1.5)


def test_every_origin_at_its_cap_keeps_every_share_within_it():
    technician = pl.DataFrame(
        {
            "request_id": [f"T{i}" for i in range(20)],
            "photo_sha256": [f"t{i}" for i in range(20)],
            "label_origin": ["technician"] * 20,
        }
    )
    candidates = pl.DataFrame(
        {
            "request_id": [f"C{i}" for i in range(60)],
            "photo_sha256": [f"c{i}" for i in range(60)],
            "parent_sha256": [None] * 40 + ["t0"] * 20,
            "label_origin": ["model"] * 20 + ["chatbot"] * 20 + ["synthetic"] * 20,
            "label_confidence": [0.99] * 40 + [None] * 20,
        }
    )
    policy = LabelPolicy(
        model=on(max_share=0.2, min_confidence=0.9),
        chatbot=on(max_share=0.2, min_confidence=0.9),
        synthetic=on(max_share=0.2),
    )
    rows = admitted_labels(technician, candidates, policy=policy, holdout_shas=NO_HOLDOUT)
    # Each origin takes floor(0.2 * 20 / 0.8) = 5 rows: 5 of 35 each, below 20 %.
    assert dict(rows.group_by("label_origin").len().iter_rows()) == {
        "technician": 20,
        "model": 5,
        "chatbot": 5,
        "synthetic": 5,
    }
    passed, figures = share_figures(rows, policy, {"model": 0.25})
    assert passed
    assert figures["training_rows"] == 35
    assert figures["model_share"] == pytest.approx(5 / 35)
    assert figures["model_ceiling"] == 0.25 and "chatbot_ceiling" not in figures


SHARE_CHECK_CASES = [
    # disabled origins hold nothing: passes
    (["technician"] * 4, LabelPolicy(), {}, True),
    # a chatbot label while chatbot labels are off: fails, whatever the ceiling
    (["technician"] * 9 + ["chatbot"], LabelPolicy(), {"chatbot": 0.25}, False),
    # one synthetic row in ten, within a 10 % policy
    (["technician"] * 9 + ["synthetic"], LabelPolicy(synthetic=on(max_share=0.1)), {}, True),
    # two in ten, over a 10 % policy
    (
        ["technician"] * 8 + ["synthetic"] * 2,
        LabelPolicy(synthetic=on(max_share=0.1)),
        {},
        False,
    ),
    # within a 50 % policy but over a 25 % ceiling
    (["technician"] * 2 + ["chatbot"] * 2, LabelPolicy(chatbot=on()), {"chatbot": 0.25}, False),
    # an empty set holds nothing
    ([], LabelPolicy(), {"model": 0.25}, True),
]


@pytest.mark.parametrize(("origins", "policy", "ceilings", "passed"), SHARE_CHECK_CASES)
def test_share_figures_compare_each_origin_with_its_policy_and_ceiling(
    origins, policy, ceilings, passed
):
    frame = pl.DataFrame({"label_origin": origins}, schema={"label_origin": pl.String})
    ok, figures = share_figures(frame, policy, ceilings)
    assert ok is passed
    assert figures["training_rows"] == len(origins)
    for origin in ("model", "chatbot", "synthetic"):
        assert figures[f"{origin}_rows"] == origins.count(origin)
        assert figures[f"{origin}_share"] == pytest.approx(origin_share(frame, origin))
        rule = policy.of(origin)
        assert figures[f"{origin}_cap"] == (rule.max_share if rule.admits else 0.0)


def test_the_recorded_policy_names_every_origin():
    assert LabelPolicy(synthetic=on(max_share=0.1)).record() == {
        "model": {"enabled": False, "min_confidence": 0.95, "max_share": 0.0},
        "chatbot": {"enabled": False, "min_confidence": 1.0, "max_share": 0.0},
        "synthetic": {"enabled": True, "min_confidence": None, "max_share": 0.1},
    }
    with pytest.raises(ValueError, match="technician"):
        LabelPolicy().of("technician")
    # The model-only form turns on with a positive share, as it always did.
    assert SelfLabelPolicy(max_share=0.2).as_label_policy().model.admits
    assert not SelfLabelPolicy().as_label_policy().model.admits
