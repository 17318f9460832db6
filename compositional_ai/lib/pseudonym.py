"""Keyed pseudonyms for personal data: stable joins without raw names, e-mails or phones."""

import hashlib
import hmac
import os
import re

import polars as pl

from compositional_ai.settings import PSEUDONYM_KEY_ENV

PSEUDONYM_LENGTH = 20

# Characters on which Python's str methods and `re` agree with polars (Rust's char and regex
# Unicode rules) for every step of `normalise_contact`: printable ASCII and the five whitespace
# controls. Python also counts \x1c-\x1f as whitespace and Rust does not, and outside ASCII the
# two may follow different Unicode versions, so any other character takes the polars path.
_PLAIN_CONTACT = re.compile(r"[\x20-\x7e\t\n\x0b\x0c\r]*")
_PHONE_EXTENSION = re.compile(r"(?i)\s*(x|ext\.?)\s*\d+\Z")
_NON_DIGITS = re.compile(r"\D")
_INNER_SPACE = re.compile(r"\s+")


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


def _pseudonym(kind: str, normalised: str, key: bytes) -> str:
    digest = hmac.new(key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_LENGTH]


def _normalise_plain(kind: str, text: str) -> str:
    text = text.strip()
    if kind == "email":
        return text.lower()
    if kind == "phone":
        return _NON_DIGITS.sub("", _PHONE_EXTENSION.sub("", text, count=1))
    if kind == "name":
        return _INNER_SPACE.sub(" ", text.lower())
    raise ValueError(f"unknown contact kind {kind!r}; expected name, email or phone")


def pseudonymise_one(value: str | None, *, kind: str, key: bytes) -> str | None:
    """The pseudonym `pseudonymise` gives one value, without building a polars Series.

    The service pseudonymises three contacts per request; polars' per-call overhead is most of
    that cost, so plain ASCII contacts are normalised in Python with the same rules, and anything
    else goes through the vectorised function, which stays the single definition.
    """
    if value is None:
        return None
    if not _PLAIN_CONTACT.fullmatch(value):
        return pseudonymise(pl.Series([value], dtype=pl.String), kind=kind, key=key).item()
    normalised = _normalise_plain(kind, value)
    return _pseudonym(kind, normalised, key) if normalised else None


def pseudonymise(values: pl.Series, *, kind: str, key: bytes) -> pl.Series:
    """Replace each value by an HMAC-SHA256 pseudonym; nulls and blanks stay null."""
    normalised = pl.select(normalise_contact(kind, pl.lit(values))).to_series()
    # HMAC has no vectorised form in polars; hashing the distinct values keeps it to one call
    # per distinct contact rather than per row.
    distinct = normalised.drop_nulls().unique()
    mapping = {value: _pseudonym(kind, value, key) for value in distinct.to_list() if value}
    return normalised.replace_strict(mapping, default=None, return_dtype=pl.String).alias(
        values.name
    )
