"""Repair quotes grow with the assessed damage and the product's price."""

import polars as pl
import pytest

from compositional_ai.repair_service.quotes import quote_usd, quote_usd_one


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


def test_one_quote_is_the_vectorised_quote():
    # Prices with half cents and binary-inexact fractions, where a different rounding would show.
    prices = [None, 0.0, 0.01, 0.03, 1.005, 2.675, 99.99, 149.95, 200.0, 333.33, 1234.565, 1e7 / 3]
    levels = range(4)
    frame = pl.DataFrame(
        {
            "level": [level for level in levels for _ in prices],
            "price": [price for _ in levels for price in prices],
        },
        schema={"level": pl.Int64, "price": pl.Float64},
    )
    expected = frame.select(quote_usd(pl.col("level"), pl.col("price"))).to_series().to_list()

    quoted = [quote_usd_one(level, price) for level, price in frame.iter_rows()]

    assert quoted == expected
    assert all(type(quote) is float for quote in quoted)
