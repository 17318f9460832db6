"""Repair quotes from an assessed damage level and the product's list price."""

from functools import lru_cache

import polars as pl

INSPECTION_FEE_USD = 49.0
# Share of the list price charged for parts and labour at each damage level (0 = no damage).
PARTS_SHARE_BY_LEVEL = (0.0, 0.15, 0.35, 0.6)


def quote_usd(level: pl.Expr, list_price_usd: pl.Expr) -> pl.Expr:
    """The quote: the inspection fee plus a share of the list price that grows with damage."""
    share = level.replace_strict(
        list(range(len(PARTS_SHARE_BY_LEVEL))),
        list(PARTS_SHARE_BY_LEVEL),
        return_dtype=pl.Float64,
    )
    return (pl.lit(INSPECTION_FEE_USD) + share * list_price_usd.fill_null(0.0)).round(2)


# A catalog has few prices and there are four levels, so the pairs a service sees repeat; the
# cache keeps `quote_usd` the one definition (its rounding included) at a dict lookup per call.
@lru_cache(maxsize=65_536)
def quote_usd_one(level: int, list_price_usd: float | None) -> float:
    """`quote_usd` for one level and price, as a Python float."""
    return pl.select(quote_usd(pl.lit(level, pl.Int64), pl.lit(list_price_usd, pl.Float64))).item()
