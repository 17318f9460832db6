import io

import pytest
from PIL import Image

from compositional_ai.vision.images import inspect_image
from compositional_ai.vision.metrics import BINARY_NAMES, LEVEL_NAMES
from compositional_ai.vision.plots import confusion_matrix_png


@pytest.mark.parametrize(
    ("matrix", "labels"),
    [
        # The four damage levels, with a rare class.
        ([[300, 20, 3, 4], [30, 25, 5, 14], [3, 6, 8, 10], [2, 8, 5, 160]], LEVEL_NAMES),
        # Binary read-out; the second row is empty (no defective cells in the sample).
        ([[12, 3], [0, 0]], BINARY_NAMES),
    ],
)
def test_confusion_matrix_png_is_a_small_valid_png(matrix, labels) -> None:
    data = confusion_matrix_png(matrix, labels, "holdout")
    info = inspect_image(data, max_bytes=200_000, max_pixels=1_000_000)
    assert info.format == "PNG"
    # Small enough for a report or an MLflow artifact, big enough to read.
    assert 250 <= info.width <= 800 and 200 <= info.height <= 800
    with Image.open(io.BytesIO(data)) as image:
        # Not a blank canvas: the cells are shaded.
        assert len(image.convert("L").getcolors(maxcolors=100_000)) > 10


def test_confusion_matrix_png_checks_the_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        confusion_matrix_png([[1, 2], [3, 4]], LEVEL_NAMES, "mismatch")
