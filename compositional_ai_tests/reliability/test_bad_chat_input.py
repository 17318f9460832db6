import json
from datetime import UTC, datetime

import polars as pl
import pytest

from compositional_ai.chatbot.assets import CAPTURE_LOG_SCHEMA, capture_transcripts
from compositional_ai.warehouse.landing_files import read_lines
from compositional_ai.warehouse.validation import REASONS

NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
KEY = b"test-pseudonym-key"
DROP = object()


def turns(**changes) -> list:
    base = [
        {
            "speaker": "bot",
            "text": "What is wrong?",
            "at": "2026-01-12T10:00:00Z",
            "asks": "damage",
        },
        {"speaker": "customer", "text": "A crack across the cell.", "at": "2026-01-12T10:00:30Z"},
        {
            "speaker": "bot",
            "text": "May I have your name?",
            "at": "2026-01-12T10:00:40Z",
            "asks": "name",
        },
        {"speaker": "customer", "text": "It's Ann Lee.", "at": "2026-01-12T10:01:00+01:00"},
    ]
    for key, value in changes.items():
        index, field = key.split("_", 1)
        turn = base[int(index.removeprefix("t"))]
        if value is DROP:
            del turn[field]
        else:
            turn[field] = value
    return base


def transcript(transcript_id: str = "T-X", request_id: str = "R-1", **changes) -> bytes:
    record = {"transcript_id": transcript_id, "request_id": request_id, "turns": turns()}
    record = {key: value for key, value in record.items() if value is not DROP}
    for key, value in changes.items():
        if value is DROP:
            del record[key]
        else:
            record[key] = value
    return json.dumps(record, ensure_ascii=False).encode()


def capture(tmp_path, content: bytes, **overrides):
    path = tmp_path / "chats.jsonl"
    path.write_bytes(content)
    lines = read_lines(path, batch="b", source_file="chats.jsonl")
    arguments = {
        "known_request_ids": pl.Series(["R-1", "R-2", "R-3"]),
        "pseudonym_key": KEY,
        "quarantined_request_ids": pl.Series(["R-Q"]),
        "earlier_transcript_ids": pl.Series(["T-OLD"]),
        "now": NOW,
        **overrides,
    }
    result = capture_transcripts(lines, **arguments)
    assert set(result.quarantine["reason"]) <= set(REASONS)
    return result


BAD_TRANSCRIPTS = [
    (b'{"transcript_id": "T-\xff"}', "not_utf8", "not valid UTF-8"),
    (transcript()[:60], "invalid_json", "at column"),
    (b"[]", "not_an_object", "an array"),
    (b'{"transcript_id": "T-X", "transcript_id": "T-Y"}', "duplicate_field", "transcript_id"),
    (b"", "blank_line", "empty"),
    # Missing pieces.
    (transcript(transcript_id=DROP), "missing_field", "transcript_id"),
    (transcript(turns=[]), "missing_field", "turns holds no turn"),
    (transcript(turns=turns(t1_text=DROP)), "missing_field", "turn 1 text"),
    (transcript(turns=turns(t2_at=DROP)), "missing_field", "turn 2 at"),
    # Wrong types.
    (transcript(turns="hello"), "wrong_type", "turns must be an array, got a string"),
    (transcript(turns=["hello"]), "wrong_type", "turn 0 must be an object, got a string"),
    (
        transcript(turns=turns(t1_text=42)),
        "wrong_type",
        "turn 1 text must be a string, got a number",
    ),
    (transcript(request_id=7), "wrong_type", "request_id must be a string, got a number"),
    (transcript("T X"), "invalid_identifier", "transcript_id='T X'"),
    # Turns the chatbot cannot place.
    (transcript(turns=turns(t0_speaker="agent")), "invalid_turn", "speaker 'agent' is not one of"),
    (transcript(turns=turns(t3_speaker=DROP)), "invalid_turn", "turn 3: speaker None"),
    (transcript(turns=turns(t2_asks="shoe size")), "unknown_value", "turn 2 asks for 'shoe size'"),
    # Turn timestamps.
    (transcript(turns=turns(t1_at="2026-01-12T10:00:30")), "timestamp_without_offset", "turn 1 at"),
    (transcript(turns=turns(t1_at="2099-01-12T10:00:30Z")), "timestamp_in_future", "turn 1 at"),
    (transcript(turns=turns(t1_at="noon")), "invalid_timestamp", "turn 1 at='noon'"),
    # References to requests.
    (
        transcript(request_id="R-404"),
        "unknown_request",
        "request_id R-404 is in no batch ingested so far",
    ),
    (transcript(request_id="R-Q"), "request_quarantined", "R-Q's request line was quarantined"),
    # Duplicates: of line 1, and of an earlier batch's transcript.
    (transcript("T-1", "R-3"), "duplicate_transcript", "T-1 repeats an earlier line of this batch"),
    (
        transcript("T-OLD", "R-3"),
        "duplicate_transcript",
        "T-OLD already landed in an earlier batch",
    ),
]


@pytest.mark.parametrize(("bad", "reason", "fragment"), BAD_TRANSCRIPTS)
def test_a_bad_transcript_is_quarantined_and_the_rest_are_captured(tmp_path, bad, reason, fragment):
    content = b"\n".join([transcript("T-1", "R-1"), bad, transcript("T-2", "R-2")]) + b"\n"
    result = capture(tmp_path, content)
    assert result.quarantine.select("line_number", "reason").rows() == [(2, reason)]
    assert fragment in result.quarantine["detail"][0]
    assert result.quarantine["source"][0] == "chat_transcripts"
    assert sorted(result.clean.select("transcript_id", "line_number").rows()) == [
        ("T-1", 1),
        ("T-2", 3),
    ]


@pytest.mark.parametrize(
    "good",
    [
        # A byte-order mark at the start of the line.
        b"\xef\xbb\xbf" + transcript("T-2", "R-2"),
        # `asks` on a customer turn is not the contract's, and is ignored whatever it holds.
        transcript("T-2", "R-2", turns=turns(t1_asks={"odd": True})),
        # Keys the contract does not name are ignored.
        transcript("T-2", "R-2", channel="web", turns=turns(t0_lang="en")),
        # A bot turn without a slot (a greeting) is allowed.
        transcript("T-2", "R-2", turns=turns(t0_asks=None)),
    ],
)
def test_tolerated_transcript_variants_are_captured(tmp_path, good):
    result = capture(tmp_path, transcript("T-1", "R-1") + b"\r\n" + good + b"\r\n")
    assert result.quarantine.height == 0
    assert sorted(result.clean["transcript_id"].to_list()) == ["T-1", "T-2"]


def test_captured_contacts_are_pseudonyms(tmp_path):
    result = capture(tmp_path, transcript("T-1", "R-1") + b"\n")
    row = result.clean.row(0, named=True)
    assert row["captured_name"] is True
    assert len(row["name_pseudonym"]) == 20
    assert not any("Ann" in str(value) for value in row.values())


def test_a_batch_of_only_bad_transcripts_gives_an_empty_typed_log(tmp_path):
    content = transcript("T-1", "R-404") + b"\n" + b"{}\n"
    result = capture(tmp_path, content)
    assert result.clean.schema == pl.Schema(CAPTURE_LOG_SCHEMA)
    assert result.quarantine.select("line_number", "reason").rows() == [
        (1, "unknown_request"),
        (2, "missing_field"),
    ]


def test_without_the_optional_lookups_the_old_behaviour_holds(tmp_path):
    content = transcript("T-1", "R-Q") + b"\n" + transcript("T-OLD", "R-1") + b"\n"
    result = capture(tmp_path, content, quarantined_request_ids=None, earlier_transcript_ids=None)
    assert result.quarantine.select("line_number", "reason").rows() == [(1, "unknown_request")]
    assert result.clean["transcript_id"].to_list() == ["T-OLD"]
