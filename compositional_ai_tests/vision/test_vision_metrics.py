import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from compositional_ai.vision.metrics import (
    classification_metrics,
    confusion_matrix,
    defect_probability_to_level,
    four_class_to_binary_proba,
    levels_to_binary,
)


def test_hand_computed_three_class_case() -> None:
    # Confusion [[1, 1, 0], [0, 2, 0], [1, 0, 1]]: precision 1/2, 2/3, 1; recall 1/2, 1, 1/2;
    # F1 1/2, 4/5, 2/3; macro-F1 = (0.5 + 0.8 + 0.6667) / 3.
    result = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["count"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    per_class = result["per_class"]
    assert [c["precision"] for c in per_class] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [c["recall"] for c in per_class] == pytest.approx([0.5, 1.0, 0.5])
    assert [c["f1"] for c in per_class] == pytest.approx([0.5, 0.8, 2 / 3])
    assert [c["support"] for c in per_class] == [2, 2, 2]


CASES = [
    # Perfect predictions: everything 1.
    ([0, 1, 2, 3], [0, 1, 2, 3], 4, 1.0, 1.0),
    # Everything predicted as class 0 of two classes: F1 of class 0 is 2/3, class 1 is 0.
    ([0, 0, 1, 1], [0, 0, 0, 0], 2, 0.5, (2 / 3 + 0) / 2),
    # Class 3 is neither true nor predicted: it does not drag macro-F1 down.
    ([0, 1, 2], [0, 1, 2], 4, 1.0, 1.0),
    # Class 2 predicted but never true: it counts, with F1 0.
    ([0, 0, 1], [0, 2, 1], 3, 2 / 3, (2 / 3 + 1 + 0) / 3),
]


@pytest.mark.parametrize(("y_true", "y_pred", "k", "accuracy", "macro_f1"), CASES)
def test_small_cases(y_true, y_pred, k, accuracy, macro_f1) -> None:
    result = classification_metrics(np.array(y_true), np.array(y_pred), k)
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["macro_f1"] == pytest.approx(macro_f1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.choice(4, size=200, p=[0.55, 0.15, 0.05, 0.25])
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    result = classification_metrics(y_true, y_pred, 4)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0
    )
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert [c["precision"] for c in result["per_class"]] == pytest.approx(precision)
    assert [c["recall"] for c in result["per_class"]] == pytest.approx(recall)
    assert [c["f1"] for c in result["per_class"]] == pytest.approx(f1)
    assert [c["support"] for c in result["per_class"]] == support.tolist()


def test_empty_input_gives_nan_scores_and_zero_matrix() -> None:
    result = classification_metrics(np.array([], int), np.array([], int), 2)
    assert np.isnan(result["accuracy"]) and np.isnan(result["macro_f1"])
    assert result["confusion_matrix"] == [[0, 0], [0, 0]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        # Lengths differ.
        ([0, 1], [0], "labels"),
        # A prediction outside 0..k-1.
        ([0, 1], [0, 4], "y_pred"),
        # A negative true label.
        ([-1, 1], [0, 1], "y_true"),
    ],
)
def test_bad_labels_raise(y_true, y_pred, message) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(y_true), np.array(y_pred), 3)


def test_levels_to_binary() -> None:
    # Defective from level 2 (defect probability 2/3) upwards.
    assert levels_to_binary(np.array([0, 1, 2, 3, 1])).tolist() == [0, 0, 1, 1, 0]


def test_defect_probability_to_level() -> None:
    # The CSV stores thirds as rounded decimals.
    probabilities = np.array([0.0, 0.3333333333333333, 0.6666666666666666, 1.0])
    assert defect_probability_to_level(probabilities).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        defect_probability_to_level(np.array([1.5]))


def test_four_class_to_binary_proba() -> None:
    proba = np.array([[0.7, 0.2, 0.05, 0.05], [0.1, 0.3, 0.4, 0.2], [0.0, 0.0, 0.0, 1.0]])
    assert four_class_to_binary_proba(proba) == pytest.approx([0.1, 0.6, 1.0])
    with pytest.raises(ValueError):
        four_class_to_binary_proba(np.ones((2, 3)) / 3)
