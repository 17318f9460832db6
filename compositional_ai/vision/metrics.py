"""Classification metrics for damage levels, and the binary (defective / functional) read-outs.

Damage levels are 0..3 = round(defect_probability * 3); a cell is defective at level >= 2, i.e.
defect probability >= 0.5.
"""

import numpy as np

NUM_LEVELS = 4
DEFECTIVE_FROM_LEVEL = 2
LEVEL_NAMES = ("0 functional", "1 possibly defective", "2 likely defective", "3 defective")
BINARY_NAMES = ("functional", "defective")


def defect_probability_to_level(probability: np.ndarray) -> np.ndarray:
    """Defect probability in {0, 1/3, 2/3, 1} -> damage level 0..3 (int64)."""
    levels = np.rint(np.asarray(probability, dtype=np.float64) * 3).astype(np.int64)
    if levels.size and (levels.min() < 0 or levels.max() > NUM_LEVELS - 1):
        raise ValueError("defect probabilities must lie in [0, 1]")
    return levels


def levels_to_binary(levels: np.ndarray) -> np.ndarray:
    """Damage level 0..3 -> 1 for defective (level >= 2), 0 for functional (int64)."""
    return (np.asarray(levels) >= DEFECTIVE_FROM_LEVEL).astype(np.int64)


def four_class_to_binary_proba(proba: np.ndarray) -> np.ndarray:
    """Level probabilities [N, 4] -> P(defective) [N] = P(level 2) + P(level 3)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != NUM_LEVELS:
        raise ValueError(f"expected probabilities [N, {NUM_LEVELS}], got {proba.shape}")
    return proba[:, DEFECTIVE_FROM_LEVEL:].sum(axis=1)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix.

    A class never predicted has precision 0; a class absent from y_true has recall 0. Macro-F1
    averages over the classes present in y_true or y_pred (scikit-learn's default), so a class
    missing from a small sample does not count as a failure.
    """
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    total = int(matrix.sum())
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        denominator = precision + recall
        f1 = np.where(denominator > 0, 2 * precision * recall / denominator, 0.0)
    present = (support > 0) | (predicted > 0)
    return {
        "count": total,
        "accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": [
            {
                "class": k,
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k in range(num_classes)
        ],
        "confusion_matrix": matrix.tolist(),
    }
