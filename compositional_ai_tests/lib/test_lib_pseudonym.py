"""Keyed pseudonyms: stable across spellings, different per key, never the raw value."""

import random

import polars as pl
import pytest

from compositional_ai.lib.pseudonym import (
    MissingPseudonymKeyError,
    pseudonym_key_from_env,
    pseudonymise,
    pseudonymise_one,
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


# Values whose normalisation could differ between Python and polars if the scalar path took them.
EDGE_CONTACTS = [
    "  Ann   LEE \t",  # outer and inner whitespace, case
    "ann\nlee",  # a newline between words
    "\x0bAnn\x0c",  # vertical tab and form feed: whitespace to both
    "Ann\x1cLee\x1f",  # whitespace to Python only: takes the polars path
    "555 010 0123 x12",  # an extension
    "555-010-0123 EXT. 9",  # an extension spelled out, upper case
    "555-010-0123ext9\n",  # an extension before a trailing newline
    "x12",  # nothing but an extension
    "(555) 010-0123 x12 x34",  # only the last extension goes
    "ÅSA Öberg",  # non-ASCII letters
    "ǅemal  Σίσυφος",  # title case and a final sigma
    "İstanbul",  # lower-cases to two code points
    "٣٤٥ ١٢",  # Arabic-Indic digits
    "Ann\u00a0Lee\u2003",  # no-break and em spaces
    "",  # empty
    "   ",  # blank
    "\x00\x7f",  # controls that are not whitespace
]


@pytest.mark.parametrize("kind", ["name", "email", "phone"])
@pytest.mark.parametrize("value", [*EDGE_CONTACTS, None])
def test_one_value_gets_the_vectorised_pseudonym(kind, value):
    expected = pseudonymise(pl.Series("v", [value], dtype=pl.String), kind=kind, key=b"k")[0]

    assert pseudonymise_one(value, kind=kind, key=b"k") == expected


@pytest.mark.parametrize("kind", ["name", "email", "phone"])
def test_random_values_get_the_vectorised_pseudonym(kind):
    # 2,000 seeded values per kind from ASCII letters, digits, punctuation and whitespace (the
    # scalar path); one in five also holds one character outside it (the polars path).
    plain = "aAbxXeEtT. -()+@_0123456789\t\n\x0b\x0c\r"
    odd = "\x1d\x7féΣ\u00a0٣"
    generator = random.Random(20240611)
    values = []
    for _ in range(2000):
        chars = generator.choices(plain, k=generator.randint(0, 24))
        if generator.random() < 0.2:
            chars.insert(generator.randint(0, len(chars)), generator.choice(odd))
        values.append("".join(chars))
    expected = pseudonymise(pl.Series("v", values, dtype=pl.String), kind=kind, key=b"k")

    assert [pseudonymise_one(v, kind=kind, key=b"k") for v in values] == expected.to_list()
    # Most values keep something to hash (a phone needs a digit), so few pseudonyms are null.
    assert expected.null_count() < 400


def test_one_value_of_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown contact kind"):
        pseudonymise_one("ann", kind="address", key=b"k")
