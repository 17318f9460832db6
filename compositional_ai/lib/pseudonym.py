"""Keyed pseudonyms for personal data: stable joins without raw names, e-mails or phones."""

import hashlib
import hmac
import os

import polars as pl

from compositional_ai.settings import PSEUDONYM_KEY_ENV

PSEUDONYM_LENGTH = 20


class MissingPseudonymKeyError(RuntimeError):
    """Raised when personal data must be pseudonymised but no key is configured."""


def pseudonym_key_from_env() -> bytes:
    """Read the pseudonym secret from the environment; there is deliberately no default."""
    key = os.environ.get(PSEUDONYM_KEY_ENV, "")
    if not key:
        raise MissingPseudonymKeyError(
            f"{PSEUDONYM_KEY_ENV} is not set: silver tables replace names, e-mails and phones by "
            "keyed pseudonyms, and the key must come from the environment"
        )
    return key.encode()


def normalise_contact(kind: str, column: pl.Expr) -> pl.Expr:
    """Normalise a contact field so that spelling variants map to one pseudonym."""
    text = column.cast(pl.String).str.strip_chars()
    if kind == "email":
        return text.str.to_lowercase()
    if kind == "phone":
        return text.str.replace(r"(?i)\s*(x|ext\.?)\s*\d+$", "").str.replace_all(r"\D", "")
    if kind == "name":
        return text.str.to_lowercase().str.replace_all(r"\s+", " ")
    raise ValueError(f"unknown contact kind {kind!r}; expected name, email or phone")


def pseudonymise(values: pl.Series, *, kind: str, key: bytes) -> pl.Series:
    """Replace each value by an HMAC-SHA256 pseudonym; nulls and blanks stay null."""
    normalised = pl.select(normalise_contact(kind, pl.lit(values))).to_series()
    # HMAC has no vectorised form in polars; hashing the distinct values keeps it to one call
    # per distinct contact rather than per row.
    distinct = normalised.drop_nulls().unique()
    mapping = {
        value: hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[
            :PSEUDONYM_LENGTH
        ]
        for value in distinct.to_list()
        if value
    }
    return normalised.replace_strict(mapping, default=None, return_dtype=pl.String).alias(
        values.name
    )
