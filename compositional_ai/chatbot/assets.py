"""The chatbot's capture log: the slots it filled from each transcript, pseudonymised."""

import polars as pl
from dagster import AssetExecutionContext, AssetIn, AssetOut, MetadataValue, Output, multi_asset

from compositional_ai.chatbot.extractor import extract_slots
from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonym_key_from_env, pseudonymise
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


def _parse_transcript(text: str, _header: str | None) -> dict:
    record = validation.json_object(text)
    validation.require(record, ["transcript_id", "request_id"])
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise validation.Rejected("wrong_type", "turns must be a non-empty list")
    parsed = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise validation.Rejected("wrong_type", f"turn {index} is not an object")
        speaker, said = turn.get("speaker"), turn.get("text")
        if speaker not in formats.SPEAKERS or not isinstance(said, str):
            raise validation.Rejected("invalid_turn", f"turn {index} lacks a speaker or text")
        asks = turn.get("asks")
        if speaker == "bot" and asks is not None and asks not in formats.CHAT_SLOTS:
            raise validation.Rejected("unknown_value", f"turn {index} asks for {asks!r}")
        parsed.append({"turn_index": index, "speaker": speaker, "asks": asks, "text": said})
    return {
        "transcript_id": validation.identifier(record, "transcript_id"),
        "request_id": validation.identifier(record, "request_id"),
        "turns": parsed,
    }


def capture_transcripts(
    lines: pl.DataFrame, *, known_request_ids: pl.Series, pseudonym_key: bytes
) -> validation.Validated:
    """Parse, validate and slot-fill a batch of transcripts; raw contacts become pseudonyms."""
    source = "chat_transcripts"
    parsed, quarantine = validation.parse_lines(lines, source, _parse_transcript)
    if parsed.height == 0:
        return validation.Validated(pl.DataFrame(schema=CAPTURE_LOG_SCHEMA), quarantine)
    first = pl.col("_row") == pl.col("_row").min().over("transcript_id")
    parsed, duplicates = validation.reject_where(
        parsed, lines, source, ~first, "duplicate_transcript", pl.lit("repeats an earlier line")
    )
    parsed, unknown = validation.reject_where(
        parsed,
        lines,
        source,
        ~pl.col("request_id").is_in(known_request_ids.implode()),
        "unknown_request",
        pl.format("request_id {} was never landed", "request_id"),
    )
    turns = (
        parsed.select("_row", "transcript_id", "request_id", "turns")
        .explode("turns")
        .unnest("turns")
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
        pl.concat([quarantine, duplicates, unknown]),
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
            metadata={"partition_column": "batch"},
            description="Transcript lines the chatbot could not read, with the reason.",
        ),
    },
    ins={
        "transcripts": AssetIn(key=["bronze", "chat_transcripts"]),
        "requests": AssetIn(key=["silver", "repair_requests"]),
    },
    partitions_def=landing_batches,
    group_name="chatbot",
)
def chatbot_capture(
    context: AssetExecutionContext, transcripts: pl.DataFrame, requests: pl.DataFrame
):
    """Fill the chatbot's slots from one batch of transcripts."""
    result = capture_transcripts(
        transcripts,
        known_request_ids=requests["request_id"],
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
    yield Output(log, output_name="chatbot_capture_log", metadata=captured)
    yield Output(withhold_personal_records(result.quarantine), output_name="chat_quarantine")
