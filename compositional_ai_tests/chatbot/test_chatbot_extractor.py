import polars as pl
import pytest

from compositional_ai.chatbot.extractor import (
    EXTRACTOR_VERSION,
    OUTPUT_SCHEMA,
    extract_slots,
    reported_damage_level,
)


def _turns(transcript_id: str, exchanges: list[tuple[str | None, str | None]]) -> list[dict]:
    """Rows for one transcript: each exchange is a bot question for a slot and the reply."""
    rows: list[dict] = []
    for asks, reply in exchanges:
        rows.append(
            {
                "transcript_id": transcript_id,
                "request_id": f"req-{transcript_id}",
                "turn_index": len(rows),
                "speaker": "bot",
                "asks": asks,
                "text": "Could you tell me?",
            }
        )
        if reply is not None:
            rows.append(
                {
                    "transcript_id": transcript_id,
                    "request_id": f"req-{transcript_id}",
                    "turn_index": len(rows),
                    "speaker": "customer",
                    "asks": None,
                    "text": reply,
                }
            )
    return rows


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "transcript_id": pl.String,
            "request_id": pl.String,
            "turn_index": pl.Int64,
            "speaker": pl.String,
            "asks": pl.String,
            "text": pl.String,
        },
    )


def _answer(slot: str, reply: str) -> dict:
    """The single output row for a transcript that asks one slot and gets `reply`."""
    out = extract_slots(_frame(_turns("t1", [(slot, reply)])))
    assert out.height == 1
    return out.row(0, named=True)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("My name is Maribel Oystrander", "Maribel Oystrander"),  # lead-in "my name is"
        ("It's Tobiah Quennell", "Tobiah Quennell"),  # lead-in "it's"
        ("Tobiah Quennell", "Tobiah Quennell"),  # bare name
        ("Dr. Ilse Varrow-Penn", "Dr. Ilse Varrow-Penn"),  # title and hyphenated surname
        ("Sure, I'm Odalys Brackwater", "Odalys Brackwater"),  # filler word then "I'm"
        ("hi! my name's Fenwick Oddsby", "Fenwick Oddsby"),  # greeting, "my name's", lower case
        ("Quillon O'Rourke-Tamsin here", "Quillon O'Rourke-Tamsin"),  # trailing "here"
        ("Name's Perpetua Glinn, thanks", "Perpetua Glinn"),  # clause after a comma is cut
        ("Bertram Quellin Jr.", "Bertram Quellin Jr."),  # suffix keeps its dot
        ("call me Junova", "Junova"),  # single first name
        ("I\u2019m S\u00e9verine Aubriet.", "S\u00e9verine Aubriet"),  # curly quote, accents
        ("  Halvard   Pimm  ", "Halvard Pimm"),  # whitespace is normalised
        ("It's Halvard Pimm, halvard@example.org", "Halvard Pimm"),  # extra clause is cut
        ("I'd rather not say", None),  # decline
        ("no thanks", None),  # decline
        ("Why do you need that?", None),  # a question back is no name
        ("Sure", None),  # a filler word alone is no name
        ("ann.quill@example.org", None),  # an e-mail in the name slot is no name
        ("12345", None),  # digits are no name
        ("It's a secret, sorry", None),  # evasive phrase made of letters
        ("", None),  # empty reply
    ],
)
def test_name_phrasings(reply: str, expected: str | None) -> None:
    row = _answer("name", reply)
    assert row["name"] == expected
    assert row["captured_name"] is (expected is not None)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("you can mail me at orla.vint@example.org", "orla.vint@example.org"),  # in a sentence
        ("orla.vint@example.org", "orla.vint@example.org"),  # bare address
        ("Orla.Vint+repairs@Mail.Example.co.uk.", "orla.vint+repairs@mail.example.co.uk"),  # case
        ("it's odalys_b@sub-domain.example.com, thanks", "odalys_b@sub-domain.example.com"),
        ("<kestrel99@example.net>", "kestrel99@example.net"),  # angle brackets around it
        ("orla.vint@example", None),  # no dotted domain
        ("orla@localhost", None),  # no dotted domain
        ("orla at example dot org", None),  # spelled out, not an address
        ("@example.org", None),  # no local part
        ("orla@.org", None),  # empty domain label
        ("no thanks", None),  # decline
    ],
)
def test_email_phrasings(reply: str, expected: str | None) -> None:
    row = _answer("email", reply)
    assert row["email"] == expected
    assert row["captured_email"] is (expected is not None)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("+1-555-0100 x12", "+1-555-0100 x12"),  # country code, local number, extension
        ("call me on (555) 010-0123", "(555) 010-0123"),  # area code in brackets
        ("555.010.0123", "555.010.0123"),  # dotted
        ("555-010-0123x4412", "555-010-0123x4412"),  # extension without a space
        ("001-555-010-0123", "001-555-010-0123"),  # international prefix 00
        ("5550100123", "5550100123"),  # no separators
        ("(555)010-0123 ext. 7", "(555)010-0123 ext. 7"),  # "ext." extension
        ("my number is 555 010 0123, evenings are best", "555 010 0123"),  # in a sentence
        ("I'd rather not say", None),  # decline
        ("71", None),  # too short to be a phone number
        ("555-01", None),  # too short to be a phone number
        ("12345678901234567", None),  # a digit run too long to be one number
        ("not sharing that", None),  # decline
    ],
)
def test_phone_phrasings(reply: str, expected: str | None) -> None:
    row = _answer("phone", reply)
    assert row["phone"] == expected
    assert row["captured_phone"] is (expected is not None)


@pytest.mark.parametrize(
    ("reply", "age", "senior"),
    [
        ("I'm 71", 71, True),  # "I'm" + number
        ("71", 71, True),  # bare number
        ("I am 34 years old", 34, False),  # with unit
        ("65", 65, True),  # the senior threshold is inclusive
        ("64", 64, False),  # just below the threshold
        ("seventy-one", 71, True),  # spelled out with a hyphen
        ("I'm forty two", 42, False),  # spelled out with a space
        ("nineteen", 19, False),  # spelled-out teen
        ("34 yrs, going on 35", 34, False),  # the number with a unit wins
        ("I'd rather not say", None, None),  # decline
        ("born in 1953", None, None),  # a year is no age
        ("0", None, None),  # out of range
        ("150", None, None),  # out of range
        ("old enough", None, None),  # no number at all
    ],
)
def test_age_phrasings(reply: str, age: int | None, senior: bool | None) -> None:
    row = _answer("age", reply)
    assert row["age"] == age
    assert row["senior_citizen"] is senior


@pytest.mark.parametrize(
    ("reply", "partner", "dependents"),
    [
        ("I live with my partner and two kids", True, True),  # both
        ("just me", False, False),  # alone
        ("my wife and I", True, False),  # partner only
        ("me and my three children", False, True),  # children only
        ("with my husband", True, False),  # partner only
        ("I'm married with 2 kids", True, True),  # "married" means a partner
        ("no kids, just my wife", True, False),  # negated children
        ("My partner, no children", True, False),  # negated children after a comma
        ("single dad with a daughter", False, True),  # single parent
        ("my ex-husband moved out, it's me and my son", False, True),  # an ex is no partner
        ("with my parents", False, False),  # others, neither partner nor dependents
        ("I live alone", False, False),  # alone
        ("I'd rather not say", None, None),  # decline
        ("it's complicated", None, None),  # nobody recognised: unknown, not false
    ],
)
def test_household_phrasings(reply: str, partner: bool | None, dependents: bool | None) -> None:
    row = _answer("household", reply)
    assert row["partner"] is partner
    assert row["dependents"] is dependents


@pytest.mark.parametrize(
    ("reply", "keywords"),
    [
        ("The screen is cracked and it flickers", ["crack", "flicker"]),  # two keywords
        ("Completely dead, won't turn on", ["dead"]),  # synonyms map to one keyword
        ("black spots appeared after it got wet", ["black", "water"]),  # synonym "wet"
        ("no water damage, but the glass is broken", ["broken"]),  # negated mention dropped
        ("It overheats and the panel has a crack", ["crack", "overheating"]),  # vocabulary order
        ("Dropped it, now it's all scratched", ["scratch", "dropped"]),  # inflections
        ("Not cracked, just scratched", ["scratch"]),  # negated mention dropped
        ("It doesn't turn on since the rain", ["dead", "water"]),  # negation inside a keyword
        ("Works fine, I just want a check-up", []),  # nothing in the vocabulary
    ],
)
def test_damage_keywords(reply: str, keywords: list[str]) -> None:
    row = _answer("damage", reply)
    assert row["damage_details"] == reply.strip()
    assert row["damage_keywords"] == keywords


def test_damage_decline_is_null() -> None:
    row = _answer("damage", "I'd rather not say")
    assert row["damage_details"] is None
    assert row["damage_keywords"] == []
    assert (row["reported_damage_level"], row["reported_level_confidence"]) == (None, None)


@pytest.mark.parametrize(
    ("reply", "level", "confidence"),
    [
        ("Nothing visible, I'd just like someone to check it.", 0, 1.0),  # no damage seen
        ("I can't see any damage, it just makes less power.", 0, 1.0),  # negation is the cue
        ("Looks fine to me.", 0, 1.0),  # "looks fine"
        ("There's a thin line running across one corner.", 1, 1.0),  # two minor cues agree
        ("A couple of tiny dark spots have appeared.", 1, 1.0),  # "dark" alone is no severity
        ("There's a hairline crack.", 1, 1.0),  # one minor cue
        ("There's a clear crack and part of it has gone darker.", 2, 1.0),  # three moderate cues
        ("One area looks dimmer than the rest.", 2, 1.0),  # a region gone dim
        ("It's badly cracked and a big part of it is completely dark.", 3, 1.0),  # severe
        ("Most of it is black now, it looks broken.", 3, 1.0),  # severe, two cues
        ("It's shattered, about half of it doesn't light up at all.", 3, 1.0),  # negated cue
        # The support phrase says the laptop screen is black: no severity cue for the cell.
        ("My laptop screen is black. There's a small crack near the edge.", 1, 1.0),
        # One minor cue against two severe ones: severe wins, with two votes in three.
        ("A small crack at first, now it's shattered and mostly dark.", 3, 2 / 3),
        # Two moderate cues (a part gone darker) against one minor one.
        ("A tiny crack, and part of it looks darker.", 2, 2 / 3),
        # One minor and one moderate cue: a tie, so no level.
        ("A tiny crack here and a clear crack there.", None, None),
        ("Cracked after it fell.", None, None),  # no size or extent: unclear
        ("There's no big part missing, it's fine.", None, None),  # negated cue, nothing else
        ("My screen is flickering.", None, None),  # a support phrase only
    ],
)
def test_reported_damage_level(reply: str, level: int | None, confidence: float | None) -> None:
    row = _answer("damage", reply)
    assert row["reported_damage_level"] == level
    if confidence is None:
        assert row["reported_level_confidence"] is None
    else:
        assert row["reported_level_confidence"] == pytest.approx(confidence)


def test_every_simulated_damage_phrase_reports_the_level_it_was_written_for() -> None:
    from compositional_ai.landing.generate import _DAMAGE_DETAILS
    from compositional_ai.landing.sources import load_support_phrases

    rows = []
    for level, phrases in _DAMAGE_DETAILS.items():
        for phrase in phrases:
            # The generator puts a support phrase before or after the description, or none.
            for support in ("", *load_support_phrases()):
                rows.append((level, f"{support} {phrase}".strip()))
                rows.append((level, f"{phrase} Also, {support}".strip()))
    frame = pl.DataFrame(rows, schema=["level", "text"], orient="row")
    reported, _ = reported_damage_level(pl.col("text"))
    wrong = frame.with_columns(reported=reported).filter(
        pl.col("reported").is_null() | (pl.col("reported") != pl.col("level"))
    )
    assert wrong.rows() == []


def test_full_transcript_and_schema() -> None:
    rows = _turns(
        "t9",
        [
            ("damage", "Cracked after it fell 3 times, about 71 days ago"),
            ("name", "My name is Wrenna Calloway"),
            ("email", "wrenna.c@example.org"),
            ("phone", "(555) 010-0199"),
            ("household", "with my husband"),
            ("closing", "bye"),
        ],
    )
    out = extract_slots(_frame(rows))
    assert out.schema == OUTPUT_SCHEMA
    row = out.row(0, named=True)
    assert row == {
        "transcript_id": "t9",
        "request_id": "req-t9",
        "damage_details": "Cracked after it fell 3 times, about 71 days ago",
        "damage_keywords": ["crack", "dropped"],
        # A crack of no stated size or extent reports no level.
        "reported_damage_level": None,
        "reported_level_confidence": None,
        "name": "Wrenna Calloway",
        "email": "wrenna.c@example.org",
        "phone": "(555) 010-0199",
        # The numbers in the damage answer are no age: age was never asked.
        "age": None,
        "senior_citizen": None,
        "partner": True,
        "dependents": False,
        "captured_email": True,
        "captured_phone": True,
        "captured_name": True,
        "extractor_version": EXTRACTOR_VERSION,
    }


def test_one_row_per_transcript_in_any_row_order() -> None:
    rows = _turns("b", [("age", "I'm 80")]) + _turns("a", [("age", "40"), ("name", "Ysolde Marr")])
    shuffled = _frame(rows).sample(fraction=1.0, shuffle=True, seed=3)
    out = extract_slots(shuffled)
    assert out["transcript_id"].to_list() == ["a", "b"]
    assert out["age"].to_list() == [40, 80]
    assert out["name"].to_list() == ["Ysolde Marr", None]


def test_reasked_slot_keeps_first_usable_answer() -> None:
    rows = _turns(
        "t",
        [
            ("email", "ysolde@example"),  # unusable: no dotted domain
            ("email", "ysolde@example.org"),  # the bot asks again
            ("email", "ysolde.other@example.org"),  # a later usable answer does not win
        ],
    )
    row = extract_slots(_frame(rows)).row(0, named=True)
    assert row["email"] == "ysolde@example.org"


def test_consecutive_customer_turns_answer_the_same_question() -> None:
    rows = _turns("t", [("damage", "The frame is bent.")])
    rows.append({**rows[-1], "turn_index": 2, "text": "Also some water got in."})
    row = extract_slots(_frame(rows)).row(0, named=True)
    assert row["damage_details"] == "The frame is bent. Also some water got in."
    assert row["damage_keywords"] == ["dent", "water"]


def test_bot_turn_without_slot_ends_the_question() -> None:
    rows = _turns("t", [("phone", "I'd rather not say"), (None, "fine, 555-010-0123")])
    row = extract_slots(_frame(rows)).row(0, named=True)
    assert row["phone"] is None


def test_customer_turn_before_any_question_is_ignored() -> None:
    rows = [
        {
            "transcript_id": "t",
            "request_id": "req-t",
            "turn_index": 0,
            "speaker": "customer",
            "asks": None,
            "text": "Hello, I'm 70",
        }
    ]
    rows += [{**r, "turn_index": r["turn_index"] + 1} for r in _turns("t", [("closing", None)])]
    row = extract_slots(_frame(rows)).row(0, named=True)
    assert row["age"] is None
    assert row["damage_keywords"] == []
    assert (row["captured_name"], row["captured_email"], row["captured_phone"]) == (
        False,
        False,
        False,
    )


def test_all_null_asks_column_and_empty_input() -> None:
    frame = pl.DataFrame(
        {
            "transcript_id": ["t"],
            "request_id": ["r"],
            "turn_index": [0],
            "speaker": ["bot"],
            "asks": [None],
            "text": ["Hi"],
        }
    )
    assert extract_slots(frame)["transcript_id"].to_list() == ["t"]
    empty = extract_slots(_frame([]))
    assert empty.height == 0
    assert empty.schema == OUTPUT_SCHEMA


def test_missing_column_is_an_error() -> None:
    with pytest.raises(ValueError, match="asks"):
        extract_slots(_frame([]).drop("asks"))
