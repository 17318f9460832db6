"""The chatbot's capture log: the slots it filled from each transcript, pseudonymised."""

from datetime import UTC, datetime

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetOut, MetadataValue, Output, multi_asset

from compositional_ai.chatbot.extractor import extract_slots
from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonym_key_from_env, pseudonymise
from compositional_ai.resources.warehouse import EMPTY_IS_NORMAL_KEY
from compositional_ai.warehouse import validation
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.privacy import withhold_personal_records

TURN_SCHEMA = {
    "_row": pl.Int64,
    "transcript_id": pl.String,
    "request_id": pl.String,
    "turn_index": pl.Int64,
    "speaker": pl.String,
    "asks": pl.String,
    "text": pl.String,
}

CAPTURE_LOG_SCHEMA = {
    "batch": pl.String,
    "transcript_id": pl.String,
    "request_id": pl.String,
    "damage_details": pl.String,
    "damage_keywords": pl.List(pl.String),
    # The damage level the customer reported (extractor.DAMAGE_LEVEL_CUES), the chatbot's label.
    "reported_damage_level": pl.Int64,
    "reported_level_confidence": pl.Float64,
    "name_pseudonym": pl.String,
    "email_pseudonym": pl.String,
    "phone_pseudonym": pl.String,
    "captured_name": pl.Boolean,
    "captured_email": pl.Boolean,
    "captured_phone": pl.Boolean,
    "age": pl.Int64,
    "senior_citizen": pl.Boolean,
    "partner": pl.Boolean,
    "dependents": pl.Boolean,
    "extractor_version": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
}


def _parse_turn(index: int, turn: object, now: datetime) -> dict:
    if not isinstance(turn, dict):
        raise validation.Rejected(
            "wrong_type", f"turn {index} must be an object, got {validation.json_type(turn)}"
        )
    speaker, said = turn.get("speaker"), turn.get("text")
    if speaker not in formats.SPEAKERS:
        raise validation.Rejected(
            "invalid_turn", f"turn {index}: speaker {speaker!r} is not one of {formats.SPEAKERS}"
        )
    if said is None:
        raise validation.Rejected("missing_field", f"turn {index} text")
    if not isinstance(said, str):
        raise validation.Rejected(
            "wrong_type", f"turn {index} text must be a string, got {validation.json_type(said)}"
        )
    validation.parse_timestamp(turn.get("at"), now=now, field=f"turn {index} at")
    # Only bot turns name a slot; `asks` on a customer turn is an extra field and is ignored.
    asks = turn.get("asks") if speaker == "bot" else None
    if asks is not None and asks not in formats.CHAT_SLOTS:
        raise validation.Rejected(
            "unknown_value", f"turn {index} asks for {asks!r}, not one of {formats.CHAT_SLOTS}"
        )
    return {"turn_index": index, "speaker": speaker, "asks": asks, "text": said}


def _parse_transcript(text: str, _header: str | None, *, now: datetime | None = None) -> dict:
    """One transcript line: ids, and turns that each have a speaker, a text and a timestamp.

    Keys the contract does not name, in the transcript or its turns, are ignored.
    """
    now = datetime.now(UTC) if now is None else now
    record = validation.json_object(text)
    validation.require(record, formats.CHAT_FIELDS)
    transcript_id = validation.identifier(record, "transcript_id")
    request_id = validation.identifier(record, "request_id")
    turns = record["turns"]
    if not isinstance(turns, list):
        raise validation.Rejected(
            "wrong_type", f"turns must be an array, got {validation.json_type(turns)}"
        )
    if not turns:
        raise validation.Rejected("missing_field", "turns holds no turn")
    return {
        "transcript_id": transcript_id,
        "request_id": request_id,
        "turns": [_parse_turn(index, turn, now) for index, turn in enumerate(turns)],
    }


def capture_transcripts(
    lines: pl.DataFrame,
    *,
    known_request_ids: pl.Series,
    pseudonym_key: bytes,
    quarantined_request_ids: pl.Series | None = None,
    earlier_transcript_ids: pl.Series | None = None,
    now: datetime | None = None,
) -> validation.Validated:
    """Parse, validate and slot-fill a batch of transcripts; raw contacts become pseudonyms.

    A transcript for a request that is not in `known_request_ids` is `request_quarantined` when
    the id is in `quarantined_request_ids`, else `unknown_request`; one whose id is in
    `earlier_transcript_ids`, or repeats an earlier line, is `duplicate_transcript`.
    """
    source = "chat_transcripts"
    now = datetime.now(UTC) if now is None else now
    parsed, quarantine = validation.parse_lines(
        lines, source, lambda text, header: _parse_transcript(text, header, now=now)
    )
    if parsed.height == 0:
        return validation.Validated(
            pl.DataFrame(schema=CAPTURE_LOG_SCHEMA),
            validation.collect_quarantine([quarantine], lines, "transcript_id"),
        )
    parts = [quarantine]
    none = pl.Series([], dtype=pl.String)
    earlier = none if earlier_transcript_ids is None else earlier_transcript_ids.cast(pl.String)
    quarantined_ids = (
        none if quarantined_request_ids is None else quarantined_request_ids.cast(pl.String)
    )
    known = pl.col("request_id").is_in(known_request_ids.cast(pl.String).implode())
    quarantined = pl.col("request_id").is_in(quarantined_ids.implode())
    checks = [
        (
            ~known & quarantined,
            "request_quarantined",
            pl.format("request_id {}'s request line was quarantined", "request_id"),
        ),
        (
            ~known,
            "unknown_request",
            pl.format("request_id {} is in no batch ingested so far", "request_id"),
        ),
        (
            pl.col("transcript_id").is_in(earlier.implode()),
            "duplicate_transcript",
            pl.format("transcript_id {} already landed in an earlier batch", "transcript_id"),
        ),
    ]
    for mask, reason, detail in checks:
        parsed, rejected = validation.reject_where(parsed, lines, source, mask, reason, detail)
        parts.append(rejected)
    first = pl.col("_row") == pl.col("_row").min().over("transcript_id")
    parsed, duplicates = validation.reject_where(
        parsed,
        lines,
        source,
        ~first,
        "duplicate_transcript",
        pl.format("transcript_id {} repeats an earlier line of this batch", "transcript_id"),
    )
    parts.append(duplicates)
    if parsed.height == 0:
        return validation.Validated(
            pl.DataFrame(schema=CAPTURE_LOG_SCHEMA),
            validation.collect_quarantine(parts, lines, "transcript_id"),
        )
    turns = (
        parsed.select("_row", "transcript_id", "request_id", "turns")
        .explode("turns")
        .unnest("turns")
        .with_columns(pl.col("asks").cast(pl.String))
        .select(list(TURN_SCHEMA))
    )
    slots = extract_slots(turns)
    line_keys = lines.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), "batch", "source_file", "line_number"
    )
    rows = parsed.select("_row", "transcript_id").join(line_keys, on="_row")
    log = slots.join(rows, on="transcript_id")
    log = log.with_columns(
        pseudonymise(log["name"], kind="name", key=pseudonym_key).alias("name_pseudonym"),
        pseudonymise(log["email"], kind="email", key=pseudonym_key).alias("email_pseudonym"),
        pseudonymise(log["phone"], kind="phone", key=pseudonym_key).alias("phone_pseudonym"),
    )
    return validation.Validated(
        log.select(list(CAPTURE_LOG_SCHEMA)).cast(CAPTURE_LOG_SCHEMA),
        validation.collect_quarantine(parts, lines, "transcript_id"),
    )


@multi_asset(
    outs={
        "chatbot_capture_log": AssetOut(
            key_prefix="chatbot",
            tags={"role": "inference_log"},
            metadata={"partition_column": "batch"},
            description="The slots the chatbot captured from each transcript of a batch.",
        ),
        "chat_quarantine": AssetOut(
            key_prefix="chatbot",
            tags={"role": "table"},
            metadata={"partition_column": "batch", EMPTY_IS_NORMAL_KEY: True},
            description="Transcript lines the chatbot could not read, with the reason.",
        ),
    },
    ins={
        "transcripts": AssetIn(key=["bronze", "chat_transcripts"]),
        "requests": AssetIn(key=["silver", "repair_requests"]),
        "quarantine": AssetIn(key=["silver", "quarantine"]),
    },
    partitions_def=landing_batches,
    group_name="chatbot",
)
def chatbot_capture(
    context: AssetExecutionContext,
    transcripts: pl.DataFrame,
    requests: pl.DataFrame,
    quarantine: pl.DataFrame,
):
    """Fill the chatbot's slots from one batch of transcripts."""
    result = capture_transcripts(
        transcripts,
        known_request_ids=requests["request_id"],
        quarantined_request_ids=validation.quarantined_request_ids(quarantine),
        pseudonym_key=pseudonym_key_from_env(),
    )
    log = result.clean
    context.log.info(
        f"batch {context.partition_key}: {transcripts.height} transcripts -> {log.height} "
        f"captured, {result.quarantine.height} quarantined"
    )
    captured = {
        f"captured_{field}_share": MetadataValue.float(
            float(log[f"captured_{field}"].mean()) if log.height else 0.0
        )
        for field in ("name", "email", "phone")
    }
    reported = log["reported_damage_level"].drop_nulls()
    captured["reported_level_share"] = MetadataValue.float(
        reported.len() / log.height if log.height else 0.0
    )
    levels = reported.value_counts().sort("reported_damage_level")
    captured["reported_levels"] = MetadataValue.json(
        {str(level): count for level, count in levels.iter_rows()}
    )
    yield Output(log, output_name="chatbot_capture_log", metadata=captured)
    yield Output(withhold_personal_records(result.quarantine), output_name="chat_quarantine")
