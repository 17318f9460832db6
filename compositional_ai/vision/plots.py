"""Confusion-matrix images for reports and MLflow, rendered off-screen."""

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str
) -> bytes:
    """Render counts (row = true, column = predicted) as a small PNG, shaded by row share."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"matrix is {counts.shape}, expected ({n}, {n}) for {n} labels")
    row_totals = counts.sum(axis=1, keepdims=True)
    # Shading by the share of each true class keeps rare classes visible next to common ones.
    share = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

    side = 1.4 + 0.75 * n
    # A Figure without pyplot has no global state and never opens a window.
    figure = Figure(figsize=(side + 0.8, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if share[row, col] > 0.6 else "black"
        axes.text(
            col,
            row,
            f"{value}\n{share[row, col]:.0%}",
            ha="center",
            va="center",
            fontsize=8,
            color=colour,
        )
    axes.set_xticks(range(n), labels, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(n), labels, fontsize=8)
    axes.set_xlabel("predicted", fontsize=9)
    axes.set_ylabel("true", fontsize=9)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
