"""Keyed pseudonyms: stable across spellings, different per key, never the raw value."""

import polars as pl
import pytest

from compositional_ai.lib.pseudonym import (
    MissingPseudonymKeyError,
    pseudonym_key_from_env,
    pseudonymise,
)


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("email", "Ann.Lee@Example.org", " ann.lee@example.org"),  # case and blanks
        ("phone", "+1 (555) 010-0123", "1-555-010-0123 x12"),  # punctuation and extension
        ("name", "Ann  Lee", "ann lee"),  # case and inner spacing
    ],
)
def test_spelling_variants_share_a_pseudonym(kind, a, b):
    values = pseudonymise(pl.Series("v", [a, b]), kind=kind, key=b"k")

    assert values[0] == values[1]
    assert a.strip().lower() not in values[0]


def test_keys_and_kinds_separate_pseudonyms():
    one = pseudonymise(pl.Series("v", ["ann"]), kind="name", key=b"k1")[0]
    other_key = pseudonymise(pl.Series("v", ["ann"]), kind="name", key=b"k2")[0]

    assert one != other_key
    assert len(one) == 20


def test_nulls_and_blanks_stay_null():
    values = pseudonymise(pl.Series("v", [None, "", "x@y.org"]), kind="email", key=b"k")

    assert values.to_list()[:2] == [None, None]
    assert values[2] is not None


def test_a_missing_key_is_an_error(monkeypatch):
    monkeypatch.delenv("COMPOSITIONAL_AI_PSEUDONYM_KEY")

    with pytest.raises(MissingPseudonymKeyError, match="COMPOSITIONAL_AI_PSEUDONYM_KEY"):
        pseudonym_key_from_env()
