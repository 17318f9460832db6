"""Repair quotes grow with the assessed damage and the product's price."""

import polars as pl
import pytest

from compositional_ai.repair_service.quotes import quote_usd


@pytest.mark.parametrize(
    ("level", "price", "expected"),
    [
        (0, 1000.0, 49.0),  # no damage: the inspection fee only
        (1, 1000.0, 199.0),  # 15 % of the price on top
        (3, 200.0, 169.0),  # 60 % of the price on top
        (2, None, 49.0),  # a product without a price is quoted the fee, not null
    ],
)
def test_quote(level, price, expected):
    frame = pl.DataFrame(
        {"level": [level], "price": [price]}, schema={"level": pl.Int64, "price": pl.Float64}
    )

    quoted = frame.select(quote_usd(pl.col("level"), pl.col("price")))

    assert quoted.item() == pytest.approx(expected)
