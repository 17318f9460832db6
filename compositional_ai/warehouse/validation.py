"""Bronze to silver: type, validate and deduplicate landed records; route the rest to quarantine.

Every bronze row ends in exactly one of the two outputs, so `bronze = silver + quarantine` holds
per batch and source; a quarantine row names a machine-readable `reason` (one of REASONS), a
`detail` for people, and the original record. Parsing JSON and CSV text is done record by record
(that is what a parser does); everything after parsing - lookups, duplicates, joins - is
vectorised polars. One bad record never stops the rest of its batch: every failure a parser can
meet is a `Rejected` with a reason.

What is accepted as it is, rather than quarantined:

- a UTF-8 byte-order mark at the start of a file or of any line, and CRLF line ends;
- a last line without a line end, when it is a complete record;
- timestamps in any UTC offset: silver stores them in UTC;
- extra fields (JSON keys, CSV columns, keys of the request's `customer` object) that the
  contract does not name. They are not interpreted: silver's `extra_fields` column lists their
  names as a JSON array (null when there are none), and their values stay in bronze, reachable
  through `source_file` and `line_number`. Silver never copies the values, because an unknown
  field can hold personal data that silver may only carry as pseudonyms.

Each CSV record is one physical line: a quoted field that contains a line break splits its
record, and both halves are quarantined (wrong_field_count or invalid_csv). That keeps one bad
quote from swallowing the records after it.
"""

import csv
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

import polars as pl

from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonymise
from compositional_ai.vision.images import UNSUPPORTED_FORMAT, ImageRejected, inspect_image

QUARANTINE_SCHEMA = {
    "batch": pl.String,
    "source": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
    "record_id": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "record": pl.String,
    "record_sha256": pl.String,
}

# Every reason a quarantine row can carry, with what it means.
REASONS = {
    # Lines of any JSONL or CSV file.
    "not_utf8": "the line, or the CSV file's header line, is not valid UTF-8",
    "blank_line": "the line holds nothing but whitespace",
    "line_too_long": "the line is longer than MAX_LINE_CHARS characters",
    "invalid_json": "the line is not one complete JSON value (NaN and Infinity are not JSON)",
    "not_an_object": "the line is valid JSON but not a JSON object",
    "duplicate_field": "a JSON object names the same field twice",
    "invalid_csv": "the line (or the header) is not well-formed CSV",
    "missing_column": "the CSV header lacks a column the contract requires",
    "duplicate_column": "the CSV header names the same column twice",
    "wrong_field_count": "the CSV row has a different number of fields than its header",
    # Fields of a record.
    "missing_field": "a required field is absent, null or empty",
    "wrong_type": "a field has the wrong JSON type, or its text is not a number / boolean",
    "invalid_identifier": "an id is not 1-64 ASCII letters, digits, '.', '_' or '-'",
    "unknown_value": "a field holds a value outside its enumeration",
    "out_of_range": "a number (or timestamp) is outside its allowed range, or is NaN / infinite",
    "inconsistent_label": "an outcome's label fields contradict each other or the quote decision",
    "invalid_timestamp": "a timestamp is not ISO 8601",
    "timestamp_without_offset": "a timestamp names no UTC offset, so its instant is unknown",
    "timestamp_in_future": "a timestamp is later than the time of validation (plus a tolerance)",
    # References between records.
    "photo_path_outside_batch": "a request's photo path is absolute, climbs with '..' or is not "
    "below photos/",
    "photo_missing": "a request names a photo file the batch does not hold",
    "photo_rejected": "a request names a photo file that was itself quarantined",
    "unknown_product": "a request names a product id that is not in the catalog",
    "unknown_customer": "a request names a customer id in no customer export",
    "customer_quarantined": "a request names a customer whose only row in the batch's customer "
    "export was quarantined",
    "unknown_request": "an outcome or transcript names a request id that no batch ingested up to "
    "its own landed",
    "request_quarantined": "an outcome or transcript names a request whose line was quarantined",
    # Duplicates.
    "duplicate_request_id": "a request id repeats an earlier line of the batch or an earlier batch",
    "duplicate_customer": "a customer id repeats an earlier row of the same export",
    "duplicate_outcome": "a request is confirmed twice, in this batch or an earlier one",
    "duplicate_product": "a product id repeats an earlier catalog row",
    "duplicate_transcript": "a transcript id repeats an earlier line of the batch or an earlier "
    "batch",
    # Chat transcripts.
    "invalid_turn": "a chat turn has no known speaker",
    # Photo files.
    "unexpected_file": "a file in photos/ is not named .png, .jpg or .jpeg",
    "wrong_extension": "a photo's bytes are not the format its name says",
    "symlink": "a file in photos/ is a symbolic link, which is never followed",
    "not_a_regular_file": "an entry in photos/ is a device, socket or FIFO",
    "empty_file": "a photo file has zero bytes",
    "too_many_bytes": "a photo file is larger than the byte limit",
    "not_an_image": "a photo file holds no decodable PNG / JPEG",
    "unsupported_format": "a photo file holds an image format other than PNG / JPEG",
    "truncated_image": "a photo file ends before its image data does",
    "too_many_pixels": "a photo's header claims more pixels than the limit (decompression bomb); "
    "it is rejected before decoding",
    # The evaluation holdout.
    "sha256_mismatch": "a holdout or synthetic photo's bytes do not match the digest listed for it",
    # synthetic photos (synthetic.csv and synthetic/)
    "invalid_digest": "a sha256 field is not 64 hexadecimal digits",
    "not_marked_synthetic": "a synthetic manifest row does not say synthetic=true",
    "unknown_parent": "a synthetic photo's parent_sha256 names no photo that landed clean in this "
    "batch or an earlier one",
    "holdout_parent": "a synthetic photo's parent is a photo of the evaluation holdout",
    "duplicate_synthetic": "a synthetic photo is listed twice, or repeats a synthetic photo of an "
    "earlier batch",
    "unlisted_synthetic": "a file in synthetic/ has no manifest row that passed validation, so its "
    "parent and generator are unknown",
}

# Clock skew tolerated before a timestamp counts as being in the future.
FUTURE_TOLERANCE = timedelta(minutes=5)
# Nothing in this service predates it; an earlier timestamp is a typo or a zeroed field.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
# Far above any real request or transcript line; a longer line is not parsed at all.
MAX_LINE_CHARS = 1_000_000
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
INT_PATTERN = re.compile(r"[+-]?[0-9]+")
FLOAT_PATTERN = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NON_FINITE_WORDS = {"nan", "inf", "infinity"}
# An id field in a quarantined JSON record's text: a quoted identifier, or a bare number where a
# string belongs. A pattern rather than a parser, so that broken JSON still names its record.
JSON_ID_PATTERNS = (
    r'"{field}"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})"',
    r'"{field}"\s*:\s*([0-9]{{1,64}})\s*[,}}]',
)

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Validated:
    """The clean rows of one source and the rows it quarantined."""

    clean: pl.DataFrame
    quarantine: pl.DataFrame


class Rejected(ValueError):
    """A record failed validation; `reason` is machine-readable, `detail` is for people."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, with its article: 'a string', 'null', ..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def empty_quarantine() -> pl.DataFrame:
    """A quarantine frame with no rows."""
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def quarantine_rows(rows: pl.DataFrame, source: str, reason: str | pl.Expr, detail) -> pl.DataFrame:
    """Turn bronze line rows into quarantine rows with one reason and detail."""
    if rows.is_empty():
        return empty_quarantine()
    reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return rows.select(
        pl.col("batch"),
        pl.lit(source).alias("source"),
        pl.col("source_file"),
        pl.col("line_number"),
        pl.lit(None, pl.String).alias("record_id"),
        reason_expr.alias("reason"),
        detail_expr.cast(pl.String).alias("detail"),
        pl.coalesce(pl.col("text"), pl.col("raw").bin.encode("hex")).alias("record"),
        pl.col("line_sha256").alias("record_sha256"),
    ).cast(QUARANTINE_SCHEMA)


def _csv_value(text: str | None, header: str, field: str) -> str | None:
    try:
        names = [name.strip() for name in next(csv.reader([header.lstrip("\ufeff")]))]
        values = next(csv.reader([(text or "").lstrip("\ufeff")]))
    except (csv.Error, StopIteration):
        return None
    if field not in names or len(values) <= names.index(field):
        return None
    value = values[names.index(field)].strip()
    return value if ID_PATTERN.match(value) else None


def collect_quarantine(
    parts: Iterable[pl.DataFrame], lines: pl.DataFrame, id_field: str
) -> pl.DataFrame:
    """Concatenate quarantine frames in line order, with each record's id where it can be read.

    `record_id` is the line's `id_field` (request_id, customer_id, ...), read from the text with
    a pattern for JSON and with the header for CSV, so that a line rejected as broken still
    names its record; it stays when the record text itself is withheld.
    """
    quarantine = pl.concat(parts).sort("source_file", "line_number", maintain_order=True)
    if quarantine.is_empty():
        return quarantine
    texts = quarantine.join(
        lines.select("batch", "source_file", "line_number", "text", "csv_header"),
        on=["batch", "source_file", "line_number"],
        how="left",
        maintain_order="left",
    )
    from_json = pl.select(
        pl.coalesce(
            pl.lit(texts["text"]).str.extract(pattern.format(field=re.escape(id_field)), 1)
            for pattern in JSON_ID_PATTERNS
        )
    ).to_series()
    from_csv = pl.Series(
        [
            None if header is None else _csv_value(text, header, id_field)
            for text, header in zip(texts["text"], texts["csv_header"], strict=True)
        ],
        dtype=pl.String,
    )
    record_id = pl.when(texts["csv_header"].is_null()).then(from_json).otherwise(from_csv)
    return quarantine.with_columns(texts.select(record_id.alias("record_id")).to_series())


def parse_timestamp(value: object, *, now: datetime, field: str = "timestamp") -> datetime:
    """Parse an ISO 8601 timestamp that names its UTC offset, and return it in UTC."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Rejected("missing_field", field)
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{field} must be a string, got {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise Rejected("invalid_timestamp", f"{field}={value!r}: {error}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise Rejected("timestamp_without_offset", f"{field}={value!r} names no UTC offset")
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise Rejected("out_of_range", f"{field}={value!r} is outside the calendar") from None
    if parsed < EARLIEST_TIMESTAMP:
        raise Rejected(
            "out_of_range", f"{field}={value!r} is before {EARLIEST_TIMESTAMP.date().isoformat()}"
        )
    if parsed > now + FUTURE_TOLERANCE:
        raise Rejected("timestamp_in_future", f"{field}={value!r} is in the future")
    return parsed


def identifier(record: dict, field: str) -> str:
    """The record's id field, checked to be a short ASCII identifier."""
    value = record.get(field)
    if value is None or value == "":
        raise Rejected("missing_field", field)
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{field} must be a string, got {json_type(value)}")
    if not ID_PATTERN.match(value):
        raise Rejected("invalid_identifier", f"{field}={value!r}")
    return value


def parse_lines(
    lines: pl.DataFrame, source: str, parse: Callable[[str, str | None], dict]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply `parse` to each line's text; return the parsed rows (with line keys) and rejects."""
    parsed: list[dict] = []
    rejected: list[tuple[int, str, str]] = []
    for index, (text, header) in enumerate(
        zip(lines["text"].to_list(), lines["csv_header"].to_list(), strict=True)
    ):
        try:
            if text is None:
                raise Rejected("not_utf8", "the line is not valid UTF-8")
            # A byte-order mark can start any line when files were concatenated.
            text = text.lstrip("\ufeff")
            if not text.strip():
                raise Rejected("blank_line", "the line is empty")
            if len(text) > MAX_LINE_CHARS:
                raise Rejected("line_too_long", f"{len(text)} characters > {MAX_LINE_CHARS}")
            parsed.append({"_row": index, **parse(text, header)})
        except Rejected as rejection:
            rejected.append((index, rejection.reason, rejection.detail))
    quarantine = empty_quarantine()
    if rejected:
        keys = pl.DataFrame(
            rejected,
            schema={"_row": pl.Int64, "reason": pl.String, "detail": pl.String},
            orient="row",
        )
        rows = lines.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
        rows = rows.join(keys, on="_row", maintain_order="right")
        quarantine = quarantine_rows(rows, source, pl.col("reason"), pl.col("detail"))
    if not parsed:
        return pl.DataFrame(schema={"_row": pl.Int64}), quarantine
    # Optional fields are null in many rows; inferring from every row keeps a late first value
    # from breaking the frame.
    return pl.DataFrame(parsed, infer_schema_length=None), quarantine


def _reject_constant(name: str) -> None:
    raise Rejected("invalid_json", f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise Rejected("duplicate_field", ", ".join(repeated))
    return record


def json_object(text: str) -> dict:
    """Parse one line as a JSON object, refusing NaN / Infinity and repeated keys."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except Rejected:
        raise
    except json.JSONDecodeError as error:
        raise Rejected("invalid_json", f"{error.msg} at column {error.colno}") from None
    except RecursionError:
        raise Rejected("invalid_json", "nested too deeply") from None
    except ValueError as error:
        # An integer literal longer than Python's digit limit lands here.
        raise Rejected("invalid_json", str(error)) from None
    if not isinstance(value, dict):
        raise Rejected("not_an_object", f"{json_type(value)}, not an object")
    return value


def require(record: dict, fields: Iterable[str]) -> None:
    """Reject the record when any of `fields` is absent, null or an empty string."""
    missing = [field for field in fields if record.get(field) is None or record.get(field) == ""]
    if missing:
        raise Rejected("missing_field", ", ".join(missing))


def _extra_names(names: Iterable[str]) -> str | None:
    extra = sorted(names)
    return json.dumps(extra, ensure_ascii=False) if extra else None


def _photo_path(value: object) -> str:
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"photo must be a string, got {json_type(value)}")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (formats.PHOTOS_DIR,):
        raise Rejected("photo_path_outside_batch", f"{value!r} is not below {formats.PHOTOS_DIR}/")
    return path.as_posix()


def _contact(record: dict) -> tuple[dict, list[str]]:
    customer = record.get("customer")
    if not isinstance(customer, dict):
        raise Rejected(
            "wrong_type",
            f"customer must be an object with name, email and phone, got {json_type(customer)}",
        )
    out = {}
    for name in formats.CUSTOMER_CONTACT_FIELDS:
        value = customer.get(name)
        if value is not None and not isinstance(value, str):
            raise Rejected(
                "wrong_type", f"customer.{name} must be a string, got {json_type(value)}"
            )
        out[f"contact_{name}"] = (value.strip() or None) if isinstance(value, str) else None
    if out["contact_name"] is None:
        raise Rejected("missing_field", "customer.name")
    extras = [f"customer.{key}" for key in customer if key not in formats.CUSTOMER_CONTACT_FIELDS]
    return out, extras


def _parse_request(text: str, _header: str | None, *, now: datetime) -> dict:
    record = json_object(text)
    require(record, formats.REQUEST_FIELDS)
    request_id = identifier(record, "request_id")
    channel = record["channel"]
    if not isinstance(channel, str):
        raise Rejected("wrong_type", f"channel must be a string, got {json_type(channel)}")
    if channel not in formats.CHANNELS:
        raise Rejected("unknown_value", f"channel={channel!r} is not one of {formats.CHANNELS}")
    contact, contact_extras = _contact(record)
    extras = [key for key in record if key not in formats.REQUEST_FIELDS]
    return {
        "request_id": request_id,
        "submitted_at": parse_timestamp(record["submitted_at"], now=now, field="submitted_at"),
        "channel": channel,
        "customer_id": identifier(record, "customer_id"),
        "product_id": identifier(record, "product_id"),
        "photo_file": _photo_path(record["photo"]),
        **contact,
        "extra_fields": _extra_names(extras + contact_extras),
    }


def _pseudonymise_contacts(frame: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """Replace the raw contact columns by keyed pseudonyms; raw values never leave bronze."""
    return frame.with_columns(
        pseudonymise(frame[f"contact_{kind}"].cast(pl.String), kind=kind, key=key).alias(
            f"{kind}_pseudonym"
        )
        for kind in formats.CUSTOMER_CONTACT_FIELDS
    ).drop([f"contact_{kind}" for kind in formats.CUSTOMER_CONTACT_FIELDS])


def reject_where(
    rows: pl.DataFrame,
    lines: pl.DataFrame,
    source: str,
    mask: pl.Expr,
    reason: str,
    detail: pl.Expr,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split parsed rows on `mask`; the rejected ones become quarantine rows of their lines."""
    flagged = rows.filter(mask)
    if flagged.is_empty():
        return rows, empty_quarantine()
    keep = rows.filter(~mask)
    details = flagged.select("_row", detail.cast(pl.String).alias("detail"))
    source_rows = lines.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    source_rows = source_rows.join(details, on="_row", maintain_order="right")
    return keep, quarantine_rows(source_rows, source, reason, pl.col("detail"))


def _first_of(key: str) -> pl.Expr:
    return pl.col("_row") == pl.col("_row").min().over(key)


def _line_keys(lines: pl.DataFrame, *columns: str) -> pl.DataFrame:
    return lines.with_row_index("_row").select(pl.col("_row").cast(pl.Int64), *columns)


def _ids(values: pl.Series | None) -> pl.Series:
    return pl.Series([], dtype=pl.String) if values is None else values.cast(pl.String)


REQUEST_SCHEMA = {
    "batch": pl.String,
    "request_id": pl.String,
    "submitted_at": pl.Datetime("us", "UTC"),
    "channel": pl.String,
    "customer_id": pl.String,
    "product_id": pl.String,
    "photo_file": pl.String,
    "photo_sha256": pl.String,
    "name_pseudonym": pl.String,
    "email_pseudonym": pl.String,
    "phone_pseudonym": pl.String,
    "extra_fields": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
}


def validate_requests(
    lines: pl.DataFrame,
    *,
    photos: pl.DataFrame,
    product_ids: pl.Series,
    customer_ids: pl.Series,
    earlier_request_ids: pl.Series,
    pseudonym_key: bytes,
    now: datetime,
    quarantined_customer_ids: pl.Series | None = None,
) -> Validated:
    """Validate repair requests against their photos, the catalog and the customers.

    `photos` is this batch's `photo_status`; `earlier_request_ids` are the ids already in silver
    for earlier batches, which make a repeat a cross-batch duplicate. A customer id that is not
    known but is in `quarantined_customer_ids` is reported as such rather than as unknown.
    Content checks run before the duplicate checks, so when the first copy of a request is
    rejected a corrected copy later in the batch still lands.
    """
    source = "repair_requests"
    parsed, quarantine = parse_lines(
        lines, source, lambda text, header: _parse_request(text, header, now=now)
    )
    parts = [quarantine]
    if parsed.height == 0:
        return Validated(
            pl.DataFrame(schema=REQUEST_SCHEMA), collect_quarantine(parts, lines, "request_id")
        )
    parsed = parsed.with_columns(
        pl.col("submitted_at").cast(pl.Datetime("us", "UTC")),
        pl.col("extra_fields").cast(pl.String),
    ).join(
        photos.select(
            pl.col("source_file").alias("photo_file"),
            pl.col("sha256").alias("photo_sha256"),
            pl.col("rejection").alias("photo_rejection"),
        ),
        on="photo_file",
        how="left",
    )
    known_customer = pl.col("customer_id").is_in(customer_ids.cast(pl.String).implode())
    quarantined_customer = pl.col("customer_id").is_in(_ids(quarantined_customer_ids).implode())
    checks = [
        (
            ~pl.col("product_id").is_in(product_ids.cast(pl.String).implode()),
            "unknown_product",
            pl.format("product_id {} is not in the catalog", "product_id"),
        ),
        (
            ~known_customer & quarantined_customer,
            "customer_quarantined",
            pl.format("customer_id {}'s row in the customer export was quarantined", "customer_id"),
        ),
        (
            ~known_customer,
            "unknown_customer",
            pl.format("customer_id {} is in no customer export", "customer_id"),
        ),
        (
            pl.col("photo_sha256").is_null() & pl.col("photo_rejection").is_null(),
            "photo_missing",
            pl.format("{} is not in the batch", "photo_file"),
        ),
        (
            pl.col("photo_rejection").is_not_null(),
            "photo_rejected",
            pl.format("{} was quarantined: {}", "photo_file", "photo_rejection"),
        ),
        (
            pl.col("request_id").is_in(earlier_request_ids.cast(pl.String).implode()),
            "duplicate_request_id",
            pl.format("request_id {} already landed in an earlier batch", "request_id"),
        ),
    ]
    for mask, reason, detail in checks:
        parsed, rejected = reject_where(parsed, lines, source, mask, reason, detail)
        parts.append(rejected)
    # Evaluated on the survivors only, so `first` means the first copy that passed every check.
    parsed, rejected = reject_where(
        parsed,
        lines,
        source,
        ~_first_of("request_id"),
        "duplicate_request_id",
        pl.format("request_id {} repeats an earlier line of this batch", "request_id"),
    )
    parts.append(rejected)
    clean = parsed.join(_line_keys(lines, "batch", "source_file", "line_number"), on="_row")
    clean = _pseudonymise_contacts(clean, pseudonym_key)
    return Validated(
        clean.select(list(REQUEST_SCHEMA)).cast(REQUEST_SCHEMA),
        collect_quarantine(parts, lines, "request_id"),
    )


def _csv_record(text: str, header: str | None, columns: tuple[str, ...]) -> tuple[dict, str | None]:
    """One CSV row as a dict keyed by its header, and the names of the extra columns."""
    if header is None:
        raise Rejected("not_utf8", "the file's header line is not valid UTF-8")
    try:
        names = [name.strip() for name in next(csv.reader([header.lstrip("\ufeff")], strict=True))]
    except (csv.Error, StopIteration) as error:
        raise Rejected("invalid_csv", f"header: {error}") from None
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise Rejected("duplicate_column", ", ".join(repeated))
    missing = [column for column in columns if column not in names]
    if missing:
        raise Rejected("missing_column", ", ".join(missing))
    try:
        values = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration) as error:
        raise Rejected("invalid_csv", str(error)) from None
    if len(values) != len(names):
        raise Rejected("wrong_field_count", f"{len(values)} fields, header has {len(names)}")
    record = dict(zip(names, values, strict=True))
    return record, _extra_names(name for name in names if name not in columns)


def _text(record: dict, field: str) -> str:
    value = record.get(field, "").strip()
    if value == "":
        raise Rejected("missing_field", field)
    return value


def _int(record: dict, field: str, low: int, high: int) -> int:
    value = _text(record, field)
    if not INT_PATTERN.fullmatch(value):
        raise Rejected("wrong_type", f"{field}={value!r} is not an integer")
    number = int(value)
    if not low <= number <= high:
        raise Rejected("out_of_range", f"{field}={number} is outside {low}..{high}")
    return number


def _float(
    record: dict, field: str, low: float, high: float, *, required: bool = False
) -> float | None:
    value = record.get(field, "").strip()
    if value == "":
        if required:
            raise Rejected("missing_field", field)
        return None
    if value.lower().lstrip("+-") in NON_FINITE_WORDS:
        raise Rejected("out_of_range", f"{field}={value!r} is not a finite number")
    if not FLOAT_PATTERN.fullmatch(value):
        raise Rejected("wrong_type", f"{field}={value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise Rejected("out_of_range", f"{field}={value!r} is not a finite number")
    if not low <= number <= high:
        raise Rejected("out_of_range", f"{field}={number} is outside {low}..{high}")
    return number


TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f"}


def _bool(record: dict, field: str) -> bool:
    value = _text(record, field).lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise Rejected("wrong_type", f"{field}={value!r} is not a boolean")


def _choice(record: dict, field: str, allowed: Iterable[str]) -> str:
    value = _text(record, field)
    allowed = tuple(allowed)
    if value not in allowed:
        raise Rejected("unknown_value", f"{field}={value!r} is not one of {allowed}")
    return value


CONTRACTS = ("Month-to-month", "One year", "Two year")
PAYMENT_METHODS = (
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
)
MAX_TENURE_MONTHS = 1200


def _parse_customer(text: str, header: str | None) -> dict:
    record, extras = _csv_record(text, header, formats.CUSTOMER_COLUMNS)
    return {
        "customer_id": identifier(record, "customer_id"),
        "contact_name": record["name"].strip() or None,
        "contact_email": record["email"].strip() or None,
        "contact_phone": record["phone"].strip() or None,
        "gender": _choice(record, "gender", ("female", "male")),
        "senior_citizen": _bool(record, "senior_citizen"),
        "partner": _bool(record, "partner"),
        "dependents": _bool(record, "dependents"),
        "tenure_months": _int(record, "tenure_months", 0, MAX_TENURE_MONTHS),
        "contract": _choice(record, "contract", CONTRACTS),
        "paperless_billing": _bool(record, "paperless_billing"),
        "payment_method": _choice(record, "payment_method", PAYMENT_METHODS),
        "monthly_charges": _float(record, "monthly_charges", 0, 100_000),
        "total_charges": _float(record, "total_charges", 0, 10_000_000),
        "churn": _bool(record, "churn"),
        **{service: _bool(record, service) for service in formats.SERVICE_COLUMNS},
        "extra_fields": extras,
    }


CUSTOMER_SCHEMA = {
    "batch": pl.String,
    "customer_id": pl.String,
    "name_pseudonym": pl.String,
    "email_pseudonym": pl.String,
    "phone_pseudonym": pl.String,
    "gender": pl.String,
    "senior_citizen": pl.Boolean,
    "partner": pl.Boolean,
    "dependents": pl.Boolean,
    "tenure_months": pl.Int64,
    "contract": pl.String,
    "paperless_billing": pl.Boolean,
    "payment_method": pl.String,
    "monthly_charges": pl.Float64,
    "total_charges": pl.Float64,
    "churn": pl.Boolean,
    **{service: pl.Boolean for service in formats.SERVICE_COLUMNS},
    "extra_fields": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
}


def validate_customers(lines: pl.DataFrame, *, pseudonym_key: bytes) -> Validated:
    """Validate a CRM export; a customer listed twice in one file keeps its first good row."""
    source = "customers"
    parsed, quarantine = parse_lines(lines, source, _parse_customer)
    if parsed.height == 0:
        return Validated(
            pl.DataFrame(schema=CUSTOMER_SCHEMA),
            collect_quarantine([quarantine], lines, "customer_id"),
        )
    parsed, duplicates = reject_where(
        parsed,
        lines,
        source,
        ~_first_of("customer_id"),
        "duplicate_customer",
        pl.format("customer_id {} repeats an earlier row", "customer_id"),
    )
    clean = parsed.join(_line_keys(lines, "batch", "source_file", "line_number"), on="_row")
    clean = _pseudonymise_contacts(clean, pseudonym_key)
    return Validated(
        clean.select(list(CUSTOMER_SCHEMA)).cast(CUSTOMER_SCHEMA),
        collect_quarantine([quarantine, duplicates], lines, "customer_id"),
    )


LABEL_FIELDS = ("damage_level", "defect_probability", "cell_type")


def _parse_outcome(text: str, header: str | None, *, now: datetime) -> dict:
    record, extras = _csv_record(text, header, formats.OUTCOME_COLUMNS)
    request_id = identifier(record, "request_id")
    accepted = _bool(record, "quote_accepted")
    out = {
        "request_id": request_id,
        "technician_id": record["technician_id"].strip() or None,
        "inspected_at": None,
        "quote_accepted": accepted,
        "damage_level": None,
        "defect_probability": None,
        "cell_type": None,
        "extra_fields": extras,
    }
    if not accepted:
        labelled = [name for name in LABEL_FIELDS if record[name].strip()]
        if labelled:
            raise Rejected(
                "inconsistent_label",
                f"quote_accepted=false, so no inspection, but {', '.join(labelled)} is filled",
            )
        return out
    level = _int(record, "damage_level", 0, len(formats.DAMAGE_LEVELS) - 1)
    probability = _float(record, "defect_probability", 0.0, 1.0)
    if probability is not None and round(probability * 3) != level:
        raise Rejected(
            "inconsistent_label", f"defect_probability={probability} but damage_level={level}"
        )
    if out["technician_id"] is None:
        raise Rejected("missing_field", "technician_id")
    out.update(
        inspected_at=parse_timestamp(record["inspected_at"], now=now, field="inspected_at"),
        damage_level=level,
        defect_probability=level / 3 if probability is None else probability,
        cell_type=_choice(record, "cell_type", formats.CELL_TYPES),
    )
    return out


OUTCOME_SCHEMA = {
    "batch": pl.String,
    "request_id": pl.String,
    "technician_id": pl.String,
    "inspected_at": pl.Datetime("us", "UTC"),
    "quote_accepted": pl.Boolean,
    "damage_level": pl.Int64,
    "defect_probability": pl.Float64,
    "cell_type": pl.String,
    "extra_fields": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
}


def _request_checks(
    known_request_ids: pl.Series, quarantined_request_ids: pl.Series | None
) -> list[tuple[pl.Expr, str, pl.Expr]]:
    """Checks that a record names a landed request; a quarantined one is told apart."""
    known = pl.col("request_id").is_in(known_request_ids.cast(pl.String).implode())
    quarantined = pl.col("request_id").is_in(_ids(quarantined_request_ids).implode())
    return [
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
    ]


def validate_outcomes(
    lines: pl.DataFrame,
    *,
    known_request_ids: pl.Series,
    earlier_outcome_ids: pl.Series,
    now: datetime,
    quarantined_request_ids: pl.Series | None = None,
) -> Validated:
    """Validate technician outcomes; each must confirm a landed request, once.

    An outcome for a request that is not in `known_request_ids` is `request_quarantined` when
    its id is in `quarantined_request_ids` (see `quarantined_request_ids()`), else
    `unknown_request`.
    """
    source = "technician_outcomes"
    parsed, quarantine = parse_lines(
        lines, source, lambda text, header: _parse_outcome(text, header, now=now)
    )
    parts = [quarantine]
    if parsed.height == 0:
        return Validated(
            pl.DataFrame(schema=OUTCOME_SCHEMA), collect_quarantine(parts, lines, "request_id")
        )
    parsed = parsed.with_columns(
        pl.col("inspected_at").cast(pl.Datetime("us", "UTC")),
        pl.col("extra_fields").cast(pl.String),
    )
    checks = [
        (
            pl.col("request_id").is_in(earlier_outcome_ids.cast(pl.String).implode()),
            "duplicate_outcome",
            pl.format("request_id {} was confirmed in an earlier batch", "request_id"),
        ),
        *_request_checks(known_request_ids, quarantined_request_ids),
    ]
    for mask, reason, detail in checks:
        parsed, rejected = reject_where(parsed, lines, source, mask, reason, detail)
        parts.append(rejected)
    parsed, rejected = reject_where(
        parsed,
        lines,
        source,
        ~_first_of("request_id"),
        "duplicate_outcome",
        pl.format("request_id {} repeats an earlier line of this batch", "request_id"),
    )
    parts.append(rejected)
    clean = parsed.join(_line_keys(lines, "batch", "source_file", "line_number"), on="_row")
    return Validated(
        clean.select(list(OUTCOME_SCHEMA)).cast(OUTCOME_SCHEMA),
        collect_quarantine(parts, lines, "request_id"),
    )


def quarantined_ids(quarantine: pl.DataFrame, source: str) -> pl.Series:
    """The distinct record ids of one source's rows in a quarantine frame or table."""
    return (
        quarantine.filter(pl.col("source") == source)["record_id"]
        .drop_nulls()
        .unique()
        .sort()
        .cast(pl.String)
    )


def quarantined_request_ids(quarantine: pl.DataFrame) -> pl.Series:
    """The request ids whose request lines a quarantine frame holds."""
    return quarantined_ids(quarantine, "repair_requests").alias("request_id")


PHOTO_SCHEMA = {
    "batch": pl.String,
    "source_file": pl.String,
    "sha256": pl.String,
    "format": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "size_bytes": pl.Int64,
    "content": pl.Binary,
}
PHOTO_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096


def _check_photo(row: dict, max_bytes: int, max_pixels: int) -> tuple[str, int, int]:
    """The format, width and height of one landed photo file, or a rejection."""
    name = PurePosixPath(row["source_file"]).name
    file_type = row.get("file_type") or "file"
    if file_type == "symlink":
        target = row.get("link_target")
        to = f" to {target}" if target else ""
        raise Rejected("symlink", f"{name} is a symbolic link{to}; links are not followed")
    if file_type == "special":
        raise Rejected("not_a_regular_file", f"{name} is not a regular file")
    expected = PHOTO_SUFFIXES.get(PurePosixPath(name).suffix.lower())
    if expected is None:
        raise Rejected("unexpected_file", f"{name} is not a .png, .jpg or .jpeg photo")
    if row["size_bytes"] == 0:
        raise Rejected("empty_file", f"{name} has zero bytes")
    # Checked on the landed size: bronze keeps no content above its own limit.
    if row["size_bytes"] > max_bytes:
        raise Rejected(
            "too_many_bytes", f"{name} has {row['size_bytes']} bytes > limit {max_bytes}"
        )
    if file_type == "oversized":
        raise Rejected(
            "too_many_bytes", f"{name} has {row['size_bytes']} bytes, more than bronze keeps"
        )
    try:
        info = inspect_image(row["content"] or b"", max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageRejected as rejection:
        if rejection.reason == UNSUPPORTED_FORMAT:
            raise Rejected(
                "wrong_extension",
                f"{name} is named as a {expected} file but is not one: {rejection.detail}",
            ) from None
        raise Rejected(rejection.reason, f"{name}: {rejection.detail}") from None
    if info.format != expected:
        raise Rejected("wrong_extension", f"{name} holds a {info.format} image, not {expected}")
    return info.format, info.width, info.height


def _file_record(row: dict) -> str:
    """What stands in a quarantine row for a file's bytes, which stay in bronze."""
    if (row.get("file_type") or "file") == "symlink":
        return f"<symbolic link to {row.get('link_target')}, not followed>"
    return f"<{row['size_bytes']} bytes, kept in bronze>"


def validate_photos(
    files: pl.DataFrame,
    *,
    max_bytes: int = MAX_PHOTO_BYTES,
    max_pixels: int = MAX_PHOTO_PIXELS,
    source: str = "repair_photos",
) -> Validated:
    """Check each landed photo file: its type, name and size, and that it really is an image.

    Image dimensions come from the file header before anything is decoded, so a decompression
    bomb is rejected (too_many_pixels) without allocating its canvas. `source` names the photo
    source in the quarantine rows.
    """
    clean, rejected = [], []
    for row in files.iter_rows(named=True):
        try:
            fmt, width, height = _check_photo(row, max_bytes, max_pixels)
            clean.append(
                {
                    **row,
                    "sha256": row["file_sha256"],
                    "format": fmt,
                    "width": width,
                    "height": height,
                }
            )
        except Rejected as rejection:
            rejected.append({**row, "reason": rejection.reason, "detail": rejection.detail})
    clean_frame = pl.DataFrame(
        [{name: row.get(name) for name in PHOTO_SCHEMA} for row in clean], schema=PHOTO_SCHEMA
    )
    quarantine = empty_quarantine()
    if rejected:
        quarantine = pl.DataFrame(
            [
                {
                    "batch": row["batch"],
                    "source": source,
                    "source_file": row["source_file"],
                    "line_number": None,
                    "record_id": None,
                    "reason": row["reason"],
                    "detail": row["detail"],
                    "record": _file_record(row),
                    "record_sha256": row["file_sha256"],
                }
                for row in rejected
            ],
            schema=QUARANTINE_SCHEMA,
        )
    return Validated(clean_frame, quarantine)


def photo_status(validated: Validated) -> pl.DataFrame:
    """Every landed photo with its sha256 when clean, or its rejection reason when not."""
    ok = validated.clean.select("source_file", "sha256", pl.lit(None, pl.String).alias("rejection"))
    bad = validated.quarantine.select(
        "source_file", pl.lit(None, pl.String).alias("sha256"), pl.col("reason").alias("rejection")
    )
    return pl.concat([ok, bad])


def _digest(record: dict, field: str) -> str:
    value = _text(record, field).lower()
    if not SHA256_PATTERN.fullmatch(value):
        raise Rejected("invalid_digest", f"{field}={value[:80]!r} is not 64 hexadecimal digits")
    return value


def _synthetic_path(value: str) -> str:
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (formats.SYNTHETIC_DIR,):
        raise Rejected(
            "photo_path_outside_batch", f"{value!r} is not below {formats.SYNTHETIC_DIR}/"
        )
    return path.as_posix()


def _parse_synthetic(text: str, header: str | None) -> dict:
    record, extras = _csv_record(text, header, formats.SYNTHETIC_COLUMNS)
    if not _bool(record, "synthetic"):
        raise Rejected("not_marked_synthetic", "synthetic=false in the synthetic manifest")
    return {
        "photo": _synthetic_path(_text(record, "photo")),
        "listed_sha256": _digest(record, "sha256"),
        "parent_sha256": _digest(record, "parent_sha256"),
        "generator_version": _text(record, "generator_version"),
        "transforms": record["transforms"].strip() or None,
        "extra_fields": extras,
    }


SYNTHETIC_SCHEMA = {
    "batch": pl.String,
    "source_file": pl.String,
    "sha256": pl.String,
    "format": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "size_bytes": pl.Int64,
    "content": pl.Binary,
    "synthetic": pl.Boolean,
    "generator_version": pl.String,
    "parent_sha256": pl.String,
    "transforms": pl.String,
    "extra_fields": pl.String,
    "manifest_file": pl.String,
    "manifest_line": pl.Int64,
}


def _digests(values: pl.Series | None) -> pl.Series:
    return _ids(values).str.to_lowercase()


def validate_synthetic(
    files: pl.DataFrame,
    manifest: pl.DataFrame,
    *,
    known_photo_shas: pl.Series,
    holdout_shas: pl.Series | None = None,
    earlier_synthetic_shas: pl.Series | None = None,
    max_bytes: int = MAX_PHOTO_BYTES,
    max_pixels: int = MAX_PHOTO_PIXELS,
) -> dict[str, Validated]:
    """Validate a batch's synthetic photos against their manifest, their parents and the holdout.

    A synthetic photo reaches silver only as one file and one manifest row that agree: the file
    is a readable photo whose sha256 the row lists, the row says synthetic=true, and its parent
    is a clean photo of this batch or an earlier one (`known_photo_shas`) and not a holdout
    photo. Returns one `Validated` per bronze source, sharing the clean rows: synthetic_photos
    (the files) and synthetic_manifest (the manifest lines).
    """
    checked = validate_photos(
        files, max_bytes=max_bytes, max_pixels=max_pixels, source="synthetic_photos"
    )
    source = "synthetic_manifest"
    parsed, quarantine = parse_lines(manifest, source, _parse_synthetic)
    parts = [quarantine]
    clean = pl.DataFrame(schema=SYNTHETIC_SCHEMA)
    if parsed.height:
        status = photo_status(checked)
        parsed = parsed.with_columns(
            pl.col("transforms").cast(pl.String), pl.col("extra_fields").cast(pl.String)
        ).join(
            status.select(
                pl.col("source_file").alias("photo"),
                pl.col("sha256").alias("file_sha256"),
                "rejection",
            ),
            on="photo",
            how="left",
        )
        holdout = _digests(holdout_shas).implode()
        checks = [
            (
                pl.col("file_sha256").is_null() & pl.col("rejection").is_null(),
                "photo_missing",
                pl.format("{} is not in the batch", "photo"),
            ),
            (
                pl.col("rejection").is_not_null(),
                "photo_rejected",
                pl.format("{} was quarantined: {}", "photo", "rejection"),
            ),
            (
                pl.col("file_sha256") != pl.col("listed_sha256"),
                "sha256_mismatch",
                pl.format("{} does not match its listed sha256", "photo"),
            ),
            (
                pl.col("parent_sha256").is_in(holdout),
                "holdout_parent",
                pl.format("{}'s parent {} is a holdout photo", "photo", "parent_sha256"),
            ),
            (
                ~pl.col("parent_sha256").is_in(_digests(known_photo_shas).implode()),
                "unknown_parent",
                pl.format("{}'s parent {} is no landed photo", "photo", "parent_sha256"),
            ),
            (
                pl.col("listed_sha256").is_in(_digests(earlier_synthetic_shas).implode()),
                "duplicate_synthetic",
                pl.format("{} already landed in an earlier batch", "photo"),
            ),
        ]
        for mask, reason, detail in checks:
            parsed, rejected = reject_where(parsed, manifest, source, mask, reason, detail)
            parts.append(rejected)
        parsed, rejected = reject_where(
            parsed,
            manifest,
            source,
            ~_first_of("listed_sha256"),
            "duplicate_synthetic",
            pl.format("{} repeats an earlier row of this manifest", "photo"),
        )
        parts.append(rejected)
        rows = parsed.join(_line_keys(manifest, "source_file", "line_number"), on="_row").select(
            pl.col("photo").alias("source_file"),
            pl.lit(True).alias("synthetic"),
            "generator_version",
            "parent_sha256",
            "transforms",
            "extra_fields",
            pl.col("source_file").alias("manifest_file"),
            pl.col("line_number").alias("manifest_line"),
        )
        clean = checked.clean.join(rows, on="source_file", how="inner")
        clean = clean.select(list(SYNTHETIC_SCHEMA)).cast(SYNTHETIC_SCHEMA)
    unlisted = files.join(checked.clean.select("source_file"), on="source_file", how="semi").join(
        clean.select("source_file"), on="source_file", how="anti"
    )
    file_quarantine = checked.quarantine
    if unlisted.height:
        file_quarantine = pl.concat(
            [
                file_quarantine,
                unlisted.select(
                    "batch",
                    pl.lit("synthetic_photos").alias("source"),
                    "source_file",
                    pl.lit(None, pl.Int64).alias("line_number"),
                    pl.lit(None, pl.String).alias("record_id"),
                    pl.lit("unlisted_synthetic").alias("reason"),
                    pl.format(
                        "{} has no valid row in {}", "source_file", pl.lit(formats.SYNTHETIC_FILE)
                    ).alias("detail"),
                    pl.format("<{} bytes, kept in bronze>", "size_bytes").alias("record"),
                    pl.col("file_sha256").alias("record_sha256"),
                ).cast(QUARANTINE_SCHEMA),
            ]
        ).sort("source_file")
    return {
        "synthetic_photos": Validated(clean, file_quarantine),
        "synthetic_manifest": Validated(clean, collect_quarantine(parts, manifest, "sha256")),
    }


@dataclass(frozen=True)
class EarlierBatches:
    """What silver already holds for the batches ordered before the one being validated."""

    customer_ids: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))
    request_ids: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))
    outcome_ids: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))
    # The record_id of their silver.quarantine rows whose source is repair_requests.
    quarantined_request_ids: pl.Series = field(
        default_factory=lambda: pl.Series([], dtype=pl.String)
    )


def validate_batch(
    *,
    photos: pl.DataFrame,
    requests: pl.DataFrame,
    customers: pl.DataFrame,
    outcomes: pl.DataFrame,
    product_ids: pl.Series,
    earlier: EarlierBatches,
    pseudonym_key: bytes,
    now: datetime,
) -> dict[str, Validated]:
    """Validate one landing batch's four bronze sources, each against the others and `earlier`.

    Returns one `Validated` per source, keyed as silver names them: repair_photos,
    repair_requests, customers, technician_outcomes.
    """
    checked_photos = validate_photos(photos)
    checked_customers = validate_customers(customers, pseudonym_key=pseudonym_key)
    checked_requests = validate_requests(
        requests,
        photos=photo_status(checked_photos),
        product_ids=product_ids,
        customer_ids=pl.concat(
            [earlier.customer_ids.cast(pl.String), checked_customers.clean["customer_id"]]
        ),
        earlier_request_ids=earlier.request_ids,
        pseudonym_key=pseudonym_key,
        now=now,
        quarantined_customer_ids=quarantined_ids(checked_customers.quarantine, "customers"),
    )
    quarantined_requests = pl.concat(
        [
            earlier.quarantined_request_ids.cast(pl.String),
            quarantined_request_ids(checked_requests.quarantine),
        ]
    )
    checked_outcomes = validate_outcomes(
        outcomes,
        known_request_ids=pl.concat(
            [earlier.request_ids.cast(pl.String), checked_requests.clean["request_id"]]
        ),
        earlier_outcome_ids=earlier.outcome_ids,
        now=now,
        quarantined_request_ids=quarantined_requests,
    )
    return {
        "repair_photos": checked_photos,
        "repair_requests": checked_requests,
        "customers": checked_customers,
        "technician_outcomes": checked_outcomes,
    }


def account(bronze: pl.DataFrame, validated: Validated, *, keys: Iterable[str]) -> dict[str, int]:
    """Count how a source's bronze rows were accounted for, matching rows by `keys`.

    `missing` bronze rows are in neither output, `repeated` ones in both or twice, and `foreign`
    output rows match no bronze row; all three are 0 when every landed row is accounted for.
    """
    keys = list(keys)
    landed = bronze.select(keys).with_columns(pl.col(keys).cast(pl.String))
    out = pl.concat(
        [
            validated.clean.select(keys).with_columns(pl.col(keys).cast(pl.String)),
            validated.quarantine.select(keys).with_columns(pl.col(keys).cast(pl.String)),
        ]
    )
    seen = out.group_by(keys).len()
    matched = landed.join(seen, on=keys, how="left", nulls_equal=True)
    return {
        "bronze": bronze.height,
        "silver": validated.clean.height,
        "quarantine": validated.quarantine.height,
        "missing": int(matched["len"].is_null().sum()),
        "repeated": int((matched["len"] > 1).sum()),
        "foreign": out.join(landed, on=keys, how="anti", nulls_equal=True).height,
    }


CATALOG_SCHEMA = {
    "product_id": pl.String,
    "product_line": pl.String,
    "title": pl.String,
    "list_price_usd": pl.Float64,
    "rating": pl.Float64,
    "source_file": pl.String,
    "line_number": pl.Int64,
}


def _parse_product(text: str, header: str | None) -> dict:
    record, _extras = _csv_record(text, header, formats.CATALOG_COLUMNS)
    return {
        "product_id": identifier(record, "product_id"),
        "product_line": _text(record, "product_line"),
        "title": _text(record, "title"),
        "list_price_usd": _float(record, "list_price_usd", 0.01, 1_000_000, required=True),
        "rating": _float(record, "rating", 0.0, 5.0),
    }


def validate_catalog(lines: pl.DataFrame) -> Validated:
    """Validate the product catalog; a product id listed twice keeps its first good row."""
    source = "product_catalog"
    parsed, quarantine = parse_lines(lines, source, _parse_product)
    if parsed.height == 0:
        return Validated(
            pl.DataFrame(schema=CATALOG_SCHEMA),
            collect_quarantine([quarantine], lines, "product_id"),
        )
    parsed, duplicates = reject_where(
        parsed,
        lines,
        source,
        ~_first_of("product_id"),
        "duplicate_product",
        pl.format("product_id {} repeats an earlier row", "product_id"),
    )
    clean = parsed.join(_line_keys(lines, "source_file", "line_number"), on="_row")
    clean = clean.select(list(CATALOG_SCHEMA)).cast(CATALOG_SCHEMA)
    return Validated(clean, collect_quarantine([quarantine, duplicates], lines, "product_id"))


def _parse_holdout_label(text: str, header: str | None) -> dict:
    record, _extras = _csv_record(text, header, formats.HOLDOUT_COLUMNS)
    level = _int(record, "damage_level", 0, len(formats.DAMAGE_LEVELS) - 1)
    # Without the optional column the labels are the experts' (the landing contract).
    origin = record.get(formats.HOLDOUT_ORIGIN_COLUMN, "").strip() or formats.TECHNICIAN
    if origin not in formats.LABEL_ORIGINS:
        raise Rejected(
            "unknown_value",
            f"{formats.HOLDOUT_ORIGIN_COLUMN}={origin!r} is not one of {formats.LABEL_ORIGINS}",
        )
    return {
        "photo_file": _text(record, "photo_file"),
        "label_sha256": _text(record, "sha256").lower(),
        "damage_level": level,
        "defect_probability": _float(record, "defect_probability", 0.0, 1.0),
        "cell_type": _choice(record, "cell_type", formats.CELL_TYPES),
        "label_origin": origin,
    }


HOLDOUT_SCHEMA = {
    "photo_file": pl.String,
    "sha256": pl.String,
    "damage_level": pl.Int64,
    "defect_probability": pl.Float64,
    "cell_type": pl.String,
    "content": pl.Binary,
    "label_origin": pl.String,
}


def validate_holdout(labels: pl.DataFrame, photos: pl.DataFrame) -> Validated:
    """Join the holdout labels to their photos; a label whose photo is missing or altered is
    quarantined, since evaluating on the wrong image would be silently wrong."""
    source = "holdout"
    parsed, quarantine = parse_lines(labels, source, _parse_holdout_label)
    if parsed.height == 0:
        return Validated(
            pl.DataFrame(schema=HOLDOUT_SCHEMA),
            collect_quarantine([quarantine], labels, "photo_file"),
        )
    photo_files = photos.select(
        pl.col("source_file").str.replace(r"^photos/", "").alias("photo_file"),
        pl.col("file_sha256").alias("sha256"),
        "content",
    )
    parsed = parsed.join(photo_files, on="photo_file", how="left")
    parsed, missing = reject_where(
        parsed,
        labels,
        source,
        pl.col("sha256").is_null(),
        "photo_missing",
        pl.format("{} is not in the holdout folder", "photo_file"),
    )
    parsed, altered = reject_where(
        parsed,
        labels,
        source,
        pl.col("sha256") != pl.col("label_sha256"),
        "sha256_mismatch",
        pl.format("{} does not match its recorded digest", "photo_file"),
    )
    clean = parsed.select(list(HOLDOUT_SCHEMA)).cast(HOLDOUT_SCHEMA)
    return Validated(
        clean, collect_quarantine([quarantine, missing, altered], labels, "photo_file")
    )
