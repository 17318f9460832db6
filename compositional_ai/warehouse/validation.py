"""Bronze to silver: type, validate and deduplicate landed records; route the rest to quarantine.

Every bronze row ends in exactly one of the two outputs, so `bronze = silver + quarantine` holds
per batch. Parsing JSON and CSV text is done record by record (that is what a parser does);
everything after parsing - lookups, duplicates, joins - is vectorised polars.
"""

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

import polars as pl

from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonymise

QUARANTINE_SCHEMA = {
    "batch": pl.String,
    "source": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
    "reason": pl.String,
    "detail": pl.String,
    "record": pl.String,
    "record_sha256": pl.String,
}

# Clock skew tolerated before a timestamp counts as being in the future.
FUTURE_TOLERANCE = timedelta(minutes=5)
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


def empty_quarantine() -> pl.DataFrame:
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
        reason_expr.alias("reason"),
        detail_expr.cast(pl.String).alias("detail"),
        pl.coalesce(pl.col("text"), pl.col("raw").bin.encode("hex")).alias("record"),
        pl.col("line_sha256").alias("record_sha256"),
    ).cast(QUARANTINE_SCHEMA)


def parse_timestamp(value: object, *, now: datetime) -> datetime:
    """Parse an ISO 8601 timestamp that names its UTC offset, and return it in UTC."""
    if not isinstance(value, str) or not value.strip():
        raise Rejected("invalid_timestamp", f"expected an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as error:
        raise Rejected("invalid_timestamp", str(error)) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise Rejected("timestamp_without_offset", f"{value!r} names no UTC offset")
    parsed = parsed.astimezone(UTC)
    if parsed > now + FUTURE_TOLERANCE:
        raise Rejected("timestamp_in_future", f"{value!r} is after {now.isoformat()}")
    return parsed


def identifier(record: dict, field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{field} must be a string, got {type(value).__name__}")
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
            text = text.lstrip("\ufeff")
            if not text.strip():
                raise Rejected("blank_line")
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
        rows = rows.join(keys, on="_row")
        quarantine = quarantine_rows(rows, source, pl.col("reason"), pl.col("detail"))
    return pl.DataFrame(parsed) if parsed else pl.DataFrame(
        {"_row": []}, schema={"_row": pl.Int64}
    ), quarantine


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise Rejected("invalid_json", f"{error.msg} at column {error.colno}") from None
    if not isinstance(value, dict):
        raise Rejected("not_an_object", f"a JSON {type(value).__name__}, not an object")
    return value


def require(record: dict, fields: Iterable[str]) -> None:
    missing = [field for field in fields if record.get(field) in (None, "")]
    if missing:
        raise Rejected("missing_field", ", ".join(missing))


def _extras(record: dict, known: Iterable[str]) -> str | None:
    extra = {key: value for key, value in record.items() if key not in set(known)}
    return json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else None


def _photo_path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Rejected("wrong_type", "photo must be a non-empty string")
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (formats.PHOTOS_DIR,):
        raise Rejected("photo_path_outside_batch", f"{value!r} is not below {formats.PHOTOS_DIR}/")
    return path.as_posix()


def _contact(record: dict) -> dict:
    customer = record.get("customer")
    if not isinstance(customer, dict):
        raise Rejected("wrong_type", "customer must be an object with name, email and phone")
    out = {}
    for field in formats.CUSTOMER_CONTACT_FIELDS:
        value = customer.get(field)
        if value is not None and not isinstance(value, str):
            raise Rejected("wrong_type", f"customer.{field} must be a string")
        out[f"contact_{field}"] = value or None
    if out["contact_name"] is None:
        raise Rejected("missing_field", "customer.name")
    return out


def _parse_request(text: str, _header: str | None, *, now: datetime) -> dict:
    record = json_object(text)
    require(record, [f for f in formats.REQUEST_FIELDS if f != "customer"])
    channel = record.get("channel")
    if channel not in formats.CHANNELS:
        raise Rejected("unknown_channel", f"{channel!r} is not one of {formats.CHANNELS}")
    return {
        "request_id": identifier(record, "request_id"),
        "submitted_at": parse_timestamp(record["submitted_at"], now=now),
        "channel": channel,
        "customer_id": identifier(record, "customer_id"),
        "product_id": identifier(record, "product_id"),
        "photo_file": _photo_path(record["photo"]),
        **_contact(record),
        "extra_fields": _extras(record, formats.REQUEST_FIELDS),
    }


def _pseudonymise_contacts(frame: pl.DataFrame, key: bytes) -> pl.DataFrame:
    """Replace the raw contact columns by keyed pseudonyms; raw values never leave bronze."""
    return frame.with_columns(
        pseudonymise(frame[f"contact_{kind}"], kind=kind, key=key).alias(f"{kind}_pseudonym")
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
    source_rows = source_rows.join(details, on="_row")
    return keep, quarantine_rows(source_rows, source, reason, pl.col("detail"))


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
) -> Validated:
    """Validate repair requests against their photos, the catalog and the customers.

    `photos` is this batch's silver photos (source_file, sha256); `earlier_request_ids` are the
    ids already landed in earlier batches, which make a repeat a cross-batch duplicate.
    """
    source = "repair_requests"
    parsed, quarantine = parse_lines(
        lines, source, lambda text, header: _parse_request(text, header, now=now)
    )
    parts = [quarantine]
    if parsed.height == 0:
        clean = pl.DataFrame(schema=REQUEST_SCHEMA)
        return Validated(clean, pl.concat(parts))
    parsed = parsed.with_columns(pl.col("submitted_at").dt.replace_time_zone("UTC"))
    first = pl.col("_row") == pl.col("_row").min().over("request_id")
    checks = [
        (~first, "duplicate_request_id", pl.lit("repeats an earlier line of this batch")),
        (
            pl.col("request_id").is_in(earlier_request_ids.implode()),
            "duplicate_request_id",
            pl.lit("already landed in an earlier batch"),
        ),
        (
            ~pl.col("product_id").is_in(product_ids.implode()),
            "unknown_product",
            pl.format("product_id {} is not in the catalog", "product_id"),
        ),
        (
            ~pl.col("customer_id").is_in(customer_ids.implode()),
            "unknown_customer",
            pl.format("customer_id {} is in no customer export", "customer_id"),
        ),
    ]
    for mask, reason, detail in checks:
        parsed, rejected = reject_where(parsed, lines, source, mask, reason, detail)
        parts.append(rejected)
    photo_files = photos.select(
        pl.col("source_file").alias("photo_file"),
        pl.col("sha256").alias("photo_sha256"),
        pl.col("rejection").alias("photo_rejection"),
    )
    parsed = parsed.join(photo_files, on="photo_file", how="left")
    parsed, rejected = reject_where(
        parsed,
        lines,
        source,
        pl.col("photo_sha256").is_null() & pl.col("photo_rejection").is_null(),
        "photo_missing",
        pl.format("{} is not in the batch", "photo_file"),
    )
    parts.append(rejected)
    parsed, rejected = reject_where(
        parsed,
        lines,
        source,
        pl.col("photo_rejection").is_not_null(),
        "photo_rejected",
        pl.format("{}: {}", "photo_file", "photo_rejection"),
    )
    parts.append(rejected)
    line_keys = lines.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), "batch", "source_file", "line_number"
    )
    clean = _pseudonymise_contacts(parsed.join(line_keys, on="_row"), pseudonym_key)
    return Validated(clean.select(list(REQUEST_SCHEMA)).cast(REQUEST_SCHEMA), pl.concat(parts))


def _csv_record(text: str, header: str | None, columns: tuple[str, ...]) -> dict:
    if header is None:
        raise Rejected("not_utf8", "the file's header line is not valid UTF-8")
    names = next(csv.reader([header.lstrip("\ufeff")]))
    missing = [column for column in columns if column not in names]
    if missing:
        raise Rejected("missing_column", ", ".join(missing))
    try:
        values = next(csv.reader([text]))
    except csv.Error as error:
        raise Rejected("invalid_csv", str(error)) from None
    if len(values) != len(names):
        raise Rejected("wrong_field_count", f"{len(values)} fields, header has {len(names)}")
    record = dict(zip(names, values, strict=True))
    record["extra_fields"] = _extras(record, columns)
    return record


def _int(record: dict, field: str, low: int, high: int) -> int:
    value = record.get(field, "").strip()
    try:
        number = int(value)
    except ValueError:
        raise Rejected("wrong_type", f"{field}={value!r} is not an integer") from None
    if not low <= number <= high:
        raise Rejected("out_of_range", f"{field}={number} is outside {low}..{high}")
    return number


def _float(record: dict, field: str, low: float, high: float) -> float | None:
    value = record.get(field, "").strip()
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise Rejected("wrong_type", f"{field}={value!r} is not a number") from None
    if not low <= number <= high or number != number:
        raise Rejected("out_of_range", f"{field}={number} is outside {low}..{high}")
    return number


TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f"}


def _bool(record: dict, field: str) -> bool:
    value = record.get(field, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise Rejected("wrong_type", f"{field}={value!r} is not a boolean")


def _choice(record: dict, field: str, allowed: Iterable[str]) -> str:
    value = record.get(field, "").strip()
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


def _parse_customer(text: str, header: str | None) -> dict:
    record = _csv_record(text, header, formats.CUSTOMER_COLUMNS)
    return {
        "customer_id": identifier(record, "customer_id"),
        "contact_name": record["name"].strip() or None,
        "contact_email": record["email"].strip() or None,
        "contact_phone": record["phone"].strip() or None,
        "gender": _choice(record, "gender", ("female", "male")),
        "senior_citizen": _bool(record, "senior_citizen"),
        "partner": _bool(record, "partner"),
        "dependents": _bool(record, "dependents"),
        "tenure_months": _int(record, "tenure_months", 0, 1200),
        "contract": _choice(record, "contract", CONTRACTS),
        "paperless_billing": _bool(record, "paperless_billing"),
        "payment_method": _choice(record, "payment_method", PAYMENT_METHODS),
        "monthly_charges": _float(record, "monthly_charges", 0, 100_000),
        "total_charges": _float(record, "total_charges", 0, 10_000_000),
        "churn": _bool(record, "churn"),
        **{service: _bool(record, service) for service in formats.SERVICE_COLUMNS},
        "extra_fields": record["extra_fields"],
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
    """Validate a CRM export; a customer listed twice in one file keeps its first row."""
    source = "customers"
    parsed, quarantine = parse_lines(lines, source, _parse_customer)
    if parsed.height == 0:
        return Validated(pl.DataFrame(schema=CUSTOMER_SCHEMA), quarantine)
    first = pl.col("_row") == pl.col("_row").min().over("customer_id")
    parsed, duplicates = reject_where(
        parsed, lines, source, ~first, "duplicate_customer", pl.lit("repeats an earlier row")
    )
    line_keys = lines.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), "batch", "source_file", "line_number"
    )
    clean = _pseudonymise_contacts(parsed.join(line_keys, on="_row"), pseudonym_key)
    return Validated(
        clean.select(list(CUSTOMER_SCHEMA)).cast(CUSTOMER_SCHEMA),
        pl.concat([quarantine, duplicates]),
    )


def _parse_outcome(text: str, header: str | None, *, now: datetime) -> dict:
    record = _csv_record(text, header, formats.OUTCOME_COLUMNS)
    accepted = _bool(record, "quote_accepted")
    out = {
        "request_id": identifier(record, "request_id"),
        "technician_id": record["technician_id"].strip() or None,
        "inspected_at": None,
        "quote_accepted": accepted,
        "damage_level": None,
        "defect_probability": None,
        "cell_type": None,
        "extra_fields": record["extra_fields"],
    }
    if not accepted:
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
        inspected_at=parse_timestamp(record["inspected_at"], now=now),
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


def validate_outcomes(
    lines: pl.DataFrame,
    *,
    known_request_ids: pl.Series,
    earlier_outcome_ids: pl.Series,
    now: datetime,
) -> Validated:
    """Validate technician outcomes; each must confirm a landed request, once."""
    source = "technician_outcomes"
    parsed, quarantine = parse_lines(
        lines, source, lambda text, header: _parse_outcome(text, header, now=now)
    )
    parts = [quarantine]
    if parsed.height == 0:
        return Validated(pl.DataFrame(schema=OUTCOME_SCHEMA), pl.concat(parts))
    parsed = parsed.with_columns(
        pl.col("inspected_at").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )
    first = pl.col("_row") == pl.col("_row").min().over("request_id")
    checks = [
        (~first, "duplicate_outcome", pl.lit("repeats an earlier line of this batch")),
        (
            pl.col("request_id").is_in(earlier_outcome_ids.implode()),
            "duplicate_outcome",
            pl.lit("the request was confirmed in an earlier batch"),
        ),
        (
            ~pl.col("request_id").is_in(known_request_ids.implode()),
            "unknown_request",
            pl.format("request_id {} was never landed", "request_id"),
        ),
    ]
    for mask, reason, detail in checks:
        parsed, rejected = reject_where(parsed, lines, source, mask, reason, detail)
        parts.append(rejected)
    line_keys = lines.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), "batch", "source_file", "line_number"
    )
    clean = parsed.join(line_keys, on="_row")
    return Validated(clean.select(list(OUTCOME_SCHEMA)).cast(OUTCOME_SCHEMA), pl.concat(parts))


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


def validate_photos(
    files: pl.DataFrame, *, max_bytes: int = MAX_PHOTO_BYTES, max_pixels: int = MAX_PHOTO_PIXELS
) -> Validated:
    """Check each landed photo file: its name, its size, and that it really is an image."""
    from compositional_ai.vision.images import ImageRejected, inspect_image

    source = "repair_photos"
    clean, rejected = [], []
    for row in files.iter_rows(named=True):
        name = PurePosixPath(row["source_file"])
        try:
            expected = PHOTO_SUFFIXES.get(name.suffix.lower())
            if expected is None:
                raise Rejected("unexpected_file", f"{name.name} is not a .png or .jpg photo")
            if row["size_bytes"] == 0:
                raise Rejected("empty_file", f"{name.name} has zero bytes")
            info = inspect_image(row["content"], max_bytes=max_bytes, max_pixels=max_pixels)
            if info.format != expected:
                raise Rejected(
                    "wrong_extension", f"{name.name} holds a {info.format} image, not {expected}"
                )
            clean.append(
                {
                    **row,
                    "sha256": row["file_sha256"],
                    "format": info.format,
                    "width": info.width,
                    "height": info.height,
                }
            )
        except ImageRejected as rejection:
            rejected.append({**row, "reason": rejection.reason, "detail": rejection.detail})
        except Rejected as rejection:
            rejected.append({**row, "reason": rejection.reason, "detail": rejection.detail})
    clean_frame = pl.DataFrame(clean, schema={**PHOTO_SCHEMA, "file_sha256": pl.String})
    quarantine = empty_quarantine()
    if rejected:
        quarantine = (
            pl.DataFrame(rejected)
            .select(
                pl.col("batch"),
                pl.lit(source).alias("source"),
                pl.col("source_file"),
                pl.lit(None, pl.Int64).alias("line_number"),
                pl.col("reason"),
                pl.col("detail"),
                pl.format("<{} bytes, kept in bronze>", "size_bytes").alias("record"),
                pl.col("file_sha256").alias("record_sha256"),
            )
            .cast(QUARANTINE_SCHEMA)
        )
    return Validated(clean_frame.select(list(PHOTO_SCHEMA)).cast(PHOTO_SCHEMA), quarantine)


def photo_status(validated: Validated) -> pl.DataFrame:
    """Every landed photo with its sha256 when clean, or its rejection reason when not."""
    ok = validated.clean.select("source_file", "sha256", pl.lit(None, pl.String).alias("rejection"))
    bad = validated.quarantine.select(
        "source_file", pl.lit(None, pl.String).alias("sha256"), pl.col("reason").alias("rejection")
    )
    return pl.concat([ok, bad])


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
    record = _csv_record(text, header, formats.CATALOG_COLUMNS)
    require(record, ["product_id", "product_line", "title", "list_price_usd"])
    return {
        "product_id": identifier(record, "product_id"),
        "product_line": record["product_line"].strip(),
        "title": record["title"].strip(),
        "list_price_usd": _float(record, "list_price_usd", 0.01, 1_000_000),
        "rating": _float(record, "rating", 0.0, 5.0),
    }


def validate_catalog(lines: pl.DataFrame) -> Validated:
    """Validate the product catalog; a product id listed twice keeps its first row."""
    source = "product_catalog"
    parsed, quarantine = parse_lines(lines, source, _parse_product)
    if parsed.height == 0:
        return Validated(pl.DataFrame(schema=CATALOG_SCHEMA), quarantine)
    first = pl.col("_row") == pl.col("_row").min().over("product_id")
    parsed, duplicates = reject_where(
        parsed, lines, source, ~first, "duplicate_product", pl.lit("repeats an earlier row")
    )
    line_keys = lines.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), "source_file", "line_number"
    )
    clean = parsed.join(line_keys, on="_row").select(list(CATALOG_SCHEMA)).cast(CATALOG_SCHEMA)
    return Validated(clean, pl.concat([quarantine, duplicates]))


def _parse_holdout_label(text: str, header: str | None) -> dict:
    record = _csv_record(text, header, formats.HOLDOUT_COLUMNS)
    level = _int(record, "damage_level", 0, len(formats.DAMAGE_LEVELS) - 1)
    return {
        "photo_file": record["photo_file"].strip(),
        "label_sha256": record["sha256"].strip().lower(),
        "damage_level": level,
        "defect_probability": _float(record, "defect_probability", 0.0, 1.0),
        "cell_type": _choice(record, "cell_type", formats.CELL_TYPES),
    }


HOLDOUT_SCHEMA = {
    "photo_file": pl.String,
    "sha256": pl.String,
    "damage_level": pl.Int64,
    "defect_probability": pl.Float64,
    "cell_type": pl.String,
    "content": pl.Binary,
}


def validate_holdout(labels: pl.DataFrame, photos: pl.DataFrame) -> Validated:
    """Join the holdout labels to their photos; a label whose photo is missing or altered is
    quarantined, since evaluating on the wrong image would be silently wrong."""
    source = "holdout"
    parsed, quarantine = parse_lines(labels, source, _parse_holdout_label)
    if parsed.height == 0:
        return Validated(pl.DataFrame(schema=HOLDOUT_SCHEMA), quarantine)
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
    return Validated(clean, pl.concat([quarantine, missing, altered]))
