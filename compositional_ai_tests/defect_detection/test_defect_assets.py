"""The defect training set: technician labels, and other origins only under the recorded policy."""

import polars as pl
import pytest

from compositional_ai.defect_detection.assets import (
    DEFECT_CEILINGS,
    DEFECT_COLUMNS,
    DefectLabelConfig,
    defect_rows,
)
from compositional_ai.feedback.policy import LabelPolicy, OriginPolicy, share_figures

LABELS = pl.DataFrame(
    {
        "request_id": ["R1", "R2", "R3", "R4", "R5", "R1"],
        "photo_sha256": ["a", "b", "c", "d", "e", "s1"],
        "parent_sha256": [None, None, None, None, None, "a"],
        "damage_level": [0, 3, 1, 2, 3, 0],
        "label_origin": ["technician"] * 4 + ["chatbot", "synthetic"],
        "confidence": [None, None, None, None, 1.0, None],
    }
)
LOG = pl.DataFrame(
    {
        "request_id": ["R2", "R5", "R6", "R7"],
        "batch": ["b1", "b2", "b2", "b2"],
        "status": ["ok", "ok", "ok", "ok"],
        "model_version": ["1", "2", "2", "2"],
        "input_sha256": ["b", "e", "f", "g"],
        "predicted_level": [3, 0, 2, 1],
        "confidence": [0.9, 0.99, 0.97, 0.5],
    }
)
HOLDOUT = pl.Series([], dtype=pl.String)


def origins(rows: pl.DataFrame) -> list[tuple[str, str, int]]:
    return rows.select("label_origin", "photo_sha256", "defective").rows()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # the defaults: technicians only, defective from level 2
        (
            {},
            [("technician", "a", 0), ("technician", "b", 1), ("technician", "c", 0)]
            + [("technician", "d", 1)],
        ),
        # model labels on: the most confident unconfirmed grade, 20 % of 4 rows is 1
        (
            {"model_labels_enabled": True},
            [("technician", "a", 0), ("model", "e", 0), ("technician", "b", 1)]
            + [("technician", "c", 0), ("technician", "d", 1)],
        ),
        # chatbot and model both offer photo e: the customer's report wins, the model takes f
        (
            {
                "model_labels_enabled": True,
                "chatbot_labels_enabled": True,
                "chatbot_max_share": 0.2,
            },
            [("technician", "a", 0), ("technician", "b", 1), ("technician", "c", 0)]
            + [("technician", "d", 1), ("chatbot", "e", 1), ("model", "f", 1)],
        ),
        # synthetic photos with their parent's label
        (
            {"synthetic_labels_enabled": True, "synthetic_max_share": 0.2},
            [("technician", "a", 0), ("synthetic", "s1", 0), ("technician", "b", 1)]
            + [("technician", "c", 0), ("technician", "d", 1)],
        ),
    ],
)
def test_the_config_is_the_policy_the_rows_follow(config, expected):
    policy = DefectLabelConfig(**config).label_policy()
    rows = defect_rows(LABELS, LOG, HOLDOUT, policy=policy)
    assert rows.columns == list(DEFECT_COLUMNS)
    assert sorted(origins(rows)) == sorted(expected)
    passed, _ = share_figures(rows, policy, DEFECT_CEILINGS)
    assert passed
    model = rows.filter(pl.col("label_origin") == "model")
    assert model["model_version"].to_list() == ["2"] * model.height


def test_without_a_policy_the_two_figures_make_a_model_only_one():
    rows = defect_rows(LABELS, LOG, HOLDOUT, min_confidence=0.95, max_share=0.4)
    assert sorted(rows.filter(pl.col("label_origin") == "model")["photo_sha256"]) == ["e", "f"]
    assert "chatbot" not in rows["label_origin"].to_list()
    assert defect_rows(LABELS, LOG, HOLDOUT)["label_origin"].unique().to_list() == ["technician"]


def test_holdout_photos_and_their_children_stay_out():
    policy = LabelPolicy(synthetic=OriginPolicy(enabled=True, max_share=0.5))
    rows = defect_rows(LABELS, LOG, pl.Series(["a", "d"]), policy=policy)
    assert set(rows["photo_sha256"]) == {"b", "c"}
