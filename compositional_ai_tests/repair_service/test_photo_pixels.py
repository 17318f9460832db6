"""Photos are decoded once, in silver, and read back as the same pixels by inference and
training."""

import hashlib
from pathlib import Path

import elpv_dataset
import numpy as np
import polars as pl
import pytest

from compositional_ai.lib.tables import write_frame
from compositional_ai.repair_service import vision_models
from compositional_ai.repair_service.vision_models import holdout_pixels, photo_pixels
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.vision.images import STORED_IMAGE_SIZE, decode_gray
from compositional_ai.warehouse.silver import decoded_pixels


def _elpv(count: int) -> list[bytes]:
    folder = Path(elpv_dataset.__file__).parent / "data" / "images"
    return [path.read_bytes() for path in sorted(folder.glob("*.png"))[:count]]


def _photos(contents: list[bytes], batch: str = "b1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "batch": batch,
            "sha256": [hashlib.sha256(content).hexdigest() for content in contents],
            "content": contents,
        }
    )


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    with warehouse.connect("test set-up") as con:
        con.execute("create schema silver")
    return warehouse


def _write(warehouse: Warehouse, table: str, frame: pl.DataFrame) -> None:
    with warehouse.connect("test write") as con:
        write_frame(con, "silver", table, frame)


def test_decoded_pixels_holds_each_photo_once_as_the_decoder_gives_it():
    contents = _elpv(3)
    frame = decoded_pixels(_photos([*contents, contents[0]]), size=40)
    assert frame.height == 3
    assert frame["image_size"].to_list() == [40, 40, 40]
    by_sha = dict(zip(frame["sha256"], frame["pixels"], strict=True))
    expected = decode_gray(contents, 40)
    for content, pixels in zip(contents, expected, strict=True):
        assert by_sha[hashlib.sha256(content).hexdigest()] == pixels.tobytes()


def test_stored_pixels_are_read_and_the_others_decoded_in_request_order(warehouse):
    contents = _elpv(5)
    photos = _photos(contents)
    _write(warehouse, "repair_photos", photos)
    # Only the first three were decoded by silver; the last two come from their bytes.
    _write(warehouse, "photo_pixels", decoded_pixels(photos.head(3), size=STORED_IMAGE_SIZE))
    order = [4, 0, 2, 0, 3, 1]
    shas = pl.Series([photos["sha256"][i] for i in order])
    images = photo_pixels(warehouse, shas, STORED_IMAGE_SIZE)
    expected = decode_gray([contents[i] for i in order], STORED_IMAGE_SIZE)
    assert images.shape == (6, STORED_IMAGE_SIZE, STORED_IMAGE_SIZE)
    assert np.array_equal(images, expected)
    # Another size is never cut from the stored pixels: it is decoded from the bytes.
    assert np.array_equal(
        photo_pixels(warehouse, shas, 40), decode_gray([contents[i] for i in order], 40)
    )


def test_without_the_pixel_table_every_photo_is_decoded(warehouse):
    contents = _elpv(2)
    _write(warehouse, "repair_photos", _photos(contents))
    images = photo_pixels(warehouse, _photos(contents)["sha256"], 32)
    assert np.array_equal(images, decode_gray(contents, 32))


def test_a_stored_blob_of_the_wrong_length_is_an_error_not_a_garbled_image(warehouse):
    contents = _elpv(2)
    photos = _photos(contents)
    _write(warehouse, "repair_photos", photos)
    broken = decoded_pixels(photos, size=32).with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.col("pixels").bin.slice(0, 100))
        .otherwise(pl.col("pixels"))
        .alias("pixels")
    )
    _write(warehouse, "photo_pixels", broken)
    with pytest.raises(ValueError, match="not 32 x 32"):
        photo_pixels(warehouse, photos["sha256"], 32)


def test_an_unknown_photo_is_named(warehouse):
    _write(warehouse, "repair_photos", _photos(_elpv(1)))
    with pytest.raises(LookupError, match="1 training photos"):
        photo_pixels(warehouse, pl.Series(["0" * 64]), 32)


def test_a_holdout_is_decoded_once_per_size_and_callers_get_their_own_copy(monkeypatch):
    calls = []

    def counted(contents, size):
        calls.append((len(contents), size))
        return decode_gray(contents, size)

    monkeypatch.setattr(vision_models, "decode_gray", counted)
    monkeypatch.setattr(vision_models, "_DECODED_HOLDOUTS", {})
    holdout = _photos(_elpv(5))
    first = holdout_pixels(holdout, 32)
    first[:] = 0
    again = holdout_pixels(holdout, 32)
    assert calls == [(5, 32)]
    assert np.array_equal(again, decode_gray(holdout["content"].to_list(), 32))
    assert again.any()
    # Another size, another order or other photos are decoded anew, in their own row order.
    assert holdout_pixels(holdout, 48).shape == (5, 48, 48)
    reversed_rows = holdout_pixels(holdout.reverse(), 32)
    assert np.array_equal(reversed_rows, again[::-1])
    holdout_pixels(_photos(_elpv(6)), 32)
    assert calls == [(5, 32), (5, 48), (5, 32), (6, 32)]
    # Only the last two decodings are kept.
    holdout_pixels(holdout, 32)
    assert calls[-1] == (5, 32)
    assert len(vision_models._DECODED_HOLDOUTS) == 2
