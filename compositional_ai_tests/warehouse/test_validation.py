import hashlib
import io
import json
import os
import struct
import zlib
from datetime import UTC, datetime

import polars as pl
import pytest
from PIL import Image

from compositional_ai.landing.formats import CUSTOMER_COLUMNS, OUTCOME_COLUMNS
from compositional_ai.warehouse import validation
from compositional_ai.warehouse.landing_files import read_files, read_lines
from compositional_ai.warehouse.validation import (
    REASONS,
    EarlierBatches,
    Validated,
    account,
    quarantined_request_ids,
    validate_batch,
    validate_catalog,
    validate_customers,
    validate_holdout,
    validate_outcomes,
    validate_photos,
    validate_requests,
)

NOW = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
KEY = b"test-pseudonym-key"
DROP = object()


def bronze(tmp_path, content: bytes, *, name: str, csv: bool = False, batch: str = "b"):
    path = tmp_path / name
    path.write_bytes(content)
    return read_lines(path, batch=batch, source_file=name, csv=csv)


def quarantined(result: Validated) -> list[tuple[int | None, str]]:
    return sorted(result.quarantine.select("line_number", "reason").rows(), key=str)


def assert_reasons_are_documented(result: Validated) -> None:
    assert set(result.quarantine["reason"]) <= set(REASONS)


# ---------------------------------------------------------------------------------------------
# Repair requests (requests.jsonl)


def request(request_id: str = "R-X", **changes) -> dict:
    record = {
        "request_id": request_id,
        "submitted_at": "2026-01-12T10:00:00+01:00",
        "channel": "online",
        "customer_id": "C1",
        "product_id": "P1",
        "photo": "photos/ok.png",
        "customer": {"name": "Ann Lee", "email": "ann@example.com", "phone": "+1 555 0100"},
    }
    for key, value in changes.items():
        if value is DROP:
            del record[key]
        else:
            record[key] = value
    return record


def line(request_id: str = "R-X", **changes) -> bytes:
    return json.dumps(request(request_id, **changes), ensure_ascii=False).encode()


def with_customer(**contact) -> dict:
    customer = {"name": "Ann Lee", "email": "ann@example.com", "phone": "+1 555 0100"}
    customer.update(contact)
    return {key: value for key, value in customer.items() if value is not DROP}


PHOTOS = pl.DataFrame(
    {
        "source_file": ["photos/ok.png", "photos/bad.png"],
        "sha256": ["a" * 64, None],
        "rejection": [None, "truncated_image"],
    }
)


def check_requests(lines: pl.DataFrame, **overrides) -> Validated:
    arguments = {
        "photos": PHOTOS,
        "product_ids": pl.Series(["P1", "P2"]),
        "customer_ids": pl.Series(["C1", "C2"]),
        "earlier_request_ids": pl.Series(["R-OLD"]),
        "pseudonym_key": KEY,
        "now": NOW,
        **overrides,
    }
    result = validate_requests(lines, **arguments)
    assert_reasons_are_documented(result)
    return result


BAD_REQUESTS = [
    # Bytes that are not UTF-8: the record is kept as hex.
    (b'{"request_id": "R-\xff"}', "not_utf8", "not valid UTF-8"),
    # A line cut in half, as a writer that crashed leaves it.
    (line()[:40], "invalid_json", "at column"),
    # NaN and Infinity are Python's JSON extensions, not JSON.
    (line()[:-1] + b', "score": NaN}', "invalid_json", "NaN is not a JSON number"),
    (line()[:-1] + b', "score": -Infinity}', "invalid_json", "-Infinity is not a JSON number"),
    # An integer longer than Python's digit limit.
    (line()[:-1] + b', "n": ' + b"9" * 5000 + b"}", "invalid_json", "integer string"),
    # Nesting deep enough to exhaust the parser's recursion.
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested too deeply"),
    # Valid JSON, but not an object.
    (b'["R-X", "online"]', "not_an_object", "an array"),
    (b"null", "not_an_object", "null"),
    (b'"R-X"', "not_an_object", "a string"),
    # The same key twice: which one is meant is unknowable.
    (b'{"request_id": "R-X", "request_id": "R-Y"}', "duplicate_field", "request_id"),
    # Whitespace only.
    (b"   \t ", "blank_line", "empty"),
    # Absent, null or empty required fields.
    (line(channel=DROP), "missing_field", "channel"),
    (line(customer=DROP, photo=None), "missing_field", "photo, customer"),
    (line(request_id=""), "missing_field", "request_id"),
    (line(customer=with_customer(name=DROP)), "missing_field", "customer.name"),
    (line(customer=with_customer(name="  ")), "missing_field", "customer.name"),
    # Wrong JSON types.
    (line(request_id=12345), "wrong_type", "request_id must be a string, got a number"),
    (line(customer_id=True), "wrong_type", "customer_id must be a string, got a boolean"),
    (line(channel=["online"]), "wrong_type", "channel must be a string, got an array"),
    (line(photo={"path": "x"}), "wrong_type", "photo must be a string, got an object"),
    (line(customer="Ann Lee"), "wrong_type", "customer must be an object"),
    (line(customer=with_customer(email=5)), "wrong_type", "customer.email must be a string"),
    (line(submitted_at=1767225600), "wrong_type", "submitted_at must be a string, got a number"),
    # Ids outside the identifier alphabet.
    (line("R 1"), "invalid_identifier", "request_id='R 1'"),
    (line(product_id="P1; drop table x"), "invalid_identifier", "product_id="),
    (line("R-" + "9" * 70), "invalid_identifier", "request_id="),
    # A value outside an enumeration.
    (line(channel="fax"), "unknown_value", "channel='fax'"),
    # Timestamps: not ISO 8601, no offset, in the future, implausibly early, off the calendar.
    (line(submitted_at="yesterday"), "invalid_timestamp", "submitted_at='yesterday'"),
    (line(submitted_at="2026-01-12T25:00:00Z"), "invalid_timestamp", "submitted_at="),
    (line(submitted_at="2026-01-12T10:00:00"), "timestamp_without_offset", "names no UTC offset"),
    (line(submitted_at="2026-01-12"), "timestamp_without_offset", "names no UTC offset"),
    (line(submitted_at="2099-01-01T00:00:00Z"), "timestamp_in_future", "is in the future"),
    (line(submitted_at="1999-12-31T23:00:00Z"), "out_of_range", "is before 2000-01-01"),
    (line(submitted_at="0001-01-01T00:30:00+01:00"), "out_of_range", "outside the calendar"),
    # Photo paths that leave the batch folder, or are not below photos/.
    (line(photo="../x.png"), "photo_path_outside_batch", "'../x.png' is not below photos/"),
    (line(photo="/etc/passwd"), "photo_path_outside_batch", "'/etc/passwd'"),
    (line(photo="photos/../../x.png"), "photo_path_outside_batch", "photos/../../x.png"),
    (line(photo="photos\\..\\..\\x.png"), "photo_path_outside_batch", "x.png"),
    (line(photo="C:\\photos\\x.png"), "photo_path_outside_batch", "x.png"),
    (line(photo="https://example.com/x.png"), "photo_path_outside_batch", "example.com"),
    (line(photo="ok.png"), "photo_path_outside_batch", "'ok.png' is not below photos/"),
    # Photos that the batch does not hold, or that were quarantined themselves.
    (line(photo="photos/nothere.png"), "photo_missing", "photos/nothere.png is not in the batch"),
    (line(photo="photos/bad.png"), "photo_rejected", "photos/bad.png was quarantined: truncated"),
    # References to unknown products and customers.
    (line(product_id="P404"), "unknown_product", "product_id P404 is not in the catalog"),
    (line(customer_id="C404"), "unknown_customer", "customer_id C404 is in no customer export"),
    # A quarantined customer row is told apart from an unknown customer.
    (line(customer_id="C-BAD"), "customer_quarantined", "customer_id C-BAD's row"),
    # Duplicates: of line 1 of this batch, and of a request of an earlier batch.
    (line("R-A"), "duplicate_request_id", "R-A repeats an earlier line of this batch"),
    (line("R-OLD"), "duplicate_request_id", "R-OLD already landed in an earlier batch"),
    # A line longer than the limit is not parsed.
    (line()[:-1] + b', "pad": "' + b"x" * 1_000_001 + b'"}', "line_too_long", "> 1000000"),
]


@pytest.mark.parametrize(("bad", "reason", "fragment"), BAD_REQUESTS)
def test_a_bad_request_line_is_quarantined_and_its_batch_survives(tmp_path, bad, reason, fragment):
    content = line("R-A") + b"\n" + bad + b"\n" + line("R-B") + b"\n"
    lines = bronze(tmp_path, content, name="requests.jsonl")
    result = check_requests(lines, quarantined_customer_ids=pl.Series(["C-BAD"]))
    assert quarantined(result) == [(2, reason)]
    row = result.quarantine.row(0, named=True)
    assert fragment in row["detail"]
    assert (row["batch"], row["source"], row["source_file"]) == (
        "b",
        "repair_requests",
        "requests.jsonl",
    )
    assert row["record"] == (bad.decode() if reason != "not_utf8" else bad.hex())
    assert row["record_sha256"] == lines["line_sha256"][1]
    assert result.clean.select("request_id", "line_number").rows() == [("R-A", 1), ("R-B", 3)]


GOOD_REQUESTS = [
    # A byte-order mark at the start of a line (files concatenated by a tool).
    (b"\xef\xbb\xbf" + line(), "submitted_at", datetime(2026, 1, 12, 9, tzinfo=UTC)),
    # Other time zones are stored in UTC.
    (
        line(submitted_at="2026-01-12T15:30:00+05:30"),
        "submitted_at",
        datetime(2026, 1, 12, 10, tzinfo=UTC),
    ),
    (
        line(submitted_at="2026-01-12T05:00:00-05:00"),
        "submitted_at",
        datetime(2026, 1, 12, 10, tzinfo=UTC),
    ),
    (
        line(submitted_at="2026-01-12T10:00:00Z"),
        "submitted_at",
        datetime(2026, 1, 12, 10, tzinfo=UTC),
    ),
    (
        line(submitted_at=" 2026-01-12 10:00:00+00:00 "),
        "submitted_at",
        datetime(2026, 1, 12, 10, tzinfo=UTC),
    ),
    # Within the clock-skew tolerance of now.
    (
        line(submitted_at="2026-02-01T12:04:00Z"),
        "submitted_at",
        datetime(2026, 2, 1, 12, 4, tzinfo=UTC),
    ),
    # Extra fields are accepted; silver lists their names, never their values.
    (line(priority="high"), "extra_fields", '["priority"]'),
    (line(customer=with_customer(address="1 Main St")), "extra_fields", '["customer.address"]'),
    (line(zeta=1, alpha=None), "extra_fields", '["alpha", "zeta"]'),
    # A Windows separator inside photos/ names the same file.
    (line(photo="photos\\ok.png"), "photo_file", "photos/ok.png"),
    (line(photo="photos/./ok.png"), "photo_file", "photos/ok.png"),
    # Optional contact fields may be empty or absent.
    (line(customer=with_customer(email="", phone=DROP)), "email_pseudonym", None),
]


@pytest.mark.parametrize(("good", "column", "value"), GOOD_REQUESTS)
def test_tolerated_request_variants_land_in_silver(tmp_path, good, column, value):
    lines = bronze(tmp_path, line("R-A") + b"\n" + good + b"\n", name="requests.jsonl")
    result = check_requests(lines)
    assert result.quarantine.height == 0
    assert result.clean["line_number"].to_list() == [1, 2]
    assert result.clean[column][1] == value


def test_extra_field_values_never_reach_silver(tmp_path):
    secret = "Flat 3, 1 Main Street"
    good = line(home_address=secret, customer=with_customer(address=secret))
    result = check_requests(bronze(tmp_path, good + b"\n", name="requests.jsonl"))
    assert result.clean.height == 1
    cells = [str(value) for value in result.clean.row(0)]
    assert not any(secret in cell or "Ann Lee" in cell or "ann@example" in cell for cell in cells)
    assert result.clean["extra_fields"][0] == '["customer.address", "home_address"]'


def test_a_file_with_bom_crlf_and_no_final_line_end_is_read_whole(tmp_path):
    content = b"\xef\xbb\xbf" + line("R-A") + b"\r\n" + line("R-B") + b"\r\n" + line("R-C")
    result = check_requests(bronze(tmp_path, content, name="requests.jsonl"))
    assert result.quarantine.height == 0
    assert result.clean.select("request_id", "line_number").rows() == [
        ("R-A", 1),
        ("R-B", 2),
        ("R-C", 3),
    ]


def test_a_partial_last_line_is_quarantined_and_the_rest_lands(tmp_path):
    content = line("R-A") + b"\n" + line("R-B") + b"\n" + line("R-C")[:30]
    result = check_requests(bronze(tmp_path, content, name="requests.jsonl"))
    assert quarantined(result) == [(3, "invalid_json")]
    assert result.clean["request_id"].to_list() == ["R-A", "R-B"]


@pytest.mark.parametrize(
    "content",
    [
        b"",  # a zero-byte file
        b"\xef\xbb\xbf",  # a BOM and nothing else
    ],
)
def test_an_empty_requests_file_gives_no_rows(tmp_path, content):
    result = check_requests(bronze(tmp_path, content, name="requests.jsonl"))
    assert (result.clean.height, result.quarantine.height) == (0, 0)
    assert result.clean.schema == pl.Schema(validation.REQUEST_SCHEMA)


def test_when_the_first_copy_is_rejected_a_corrected_copy_lands(tmp_path):
    content = b"\n".join(
        [
            line("R-A", product_id="P404"),  # first copy names an unknown product
            line("R-A"),  # the corrected copy
            line("R-A"),  # an exact repeat of the corrected copy
        ]
    )
    result = check_requests(bronze(tmp_path, content, name="requests.jsonl"))
    assert quarantined(result) == [(1, "unknown_product"), (3, "duplicate_request_id")]
    assert result.clean.select("request_id", "line_number").rows() == [("R-A", 2)]


def test_a_repeat_of_an_earlier_batch_is_quarantined_every_time(tmp_path):
    content = line("R-OLD") + b"\n" + line("R-OLD") + b"\n"
    result = check_requests(bronze(tmp_path, content, name="requests.jsonl"))
    assert result.quarantine.select("line_number", "detail").rows() == [
        (1, "request_id R-OLD already landed in an earlier batch"),
        (2, "request_id R-OLD already landed in an earlier batch"),
    ]


def test_optional_fields_first_set_after_a_hundred_rows_do_not_break_the_batch(tmp_path):
    # polars infers a column's type from the first rows; a late first value must still fit.
    lines = [line(f"R-{i}", customer=with_customer(email=None)) for i in range(150)]
    lines[130] = line("R-130", priority="high")
    result = check_requests(bronze(tmp_path, b"\n".join(lines), name="requests.jsonl"))
    assert (result.clean.height, result.quarantine.height) == (150, 0)
    assert result.clean["extra_fields"].drop_nulls().to_list() == ['["priority"]']
    assert result.clean["email_pseudonym"].null_count() == 149


def test_contacts_are_pseudonymised_with_the_key(tmp_path):
    result = check_requests(bronze(tmp_path, line("R-A") + b"\n", name="requests.jsonl"))
    other = check_requests(
        bronze(tmp_path, line("R-A") + b"\n", name="requests.jsonl"), pseudonym_key=b"other"
    )
    assert len(result.clean["name_pseudonym"][0]) == 20
    assert result.clean["name_pseudonym"][0] != other.clean["name_pseudonym"][0]
    assert not {"contact_name", "contact_email", "contact_phone"} & set(result.clean.columns)


def test_many_bad_lines_in_one_batch_each_get_their_own_reason(tmp_path):
    bads = [bad for bad, _, _ in BAD_REQUESTS]
    content = b"\n".join([line("R-A"), *bads, line("R-B")])
    result = check_requests(
        bronze(tmp_path, content, name="requests.jsonl"),
        quarantined_customer_ids=pl.Series(["C-BAD"]),
    )
    expected = [(i + 2, reason) for i, (_, reason, _) in enumerate(BAD_REQUESTS)]
    assert sorted(result.quarantine.select("line_number", "reason").rows()) == expected
    assert result.clean.select("request_id", "line_number").rows() == [
        ("R-A", 1),
        ("R-B", len(BAD_REQUESTS) + 2),
    ]


# ---------------------------------------------------------------------------------------------
# Customer exports (customers.csv)

CUSTOMER = {
    "customer_id": "C1",
    "name": "Ann Lee",
    "email": "ann@example.com",
    "phone": "555-0100",
    "gender": "female",
    "senior_citizen": "false",
    "partner": "true",
    "dependents": "false",
    "tenure_months": "12",
    "contract": "One year",
    "paperless_billing": "true",
    "payment_method": "Mailed check",
    "monthly_charges": "20.5",
    "total_charges": "246.0",
    "churn": "false",
    "phone_service": "true",
    "multiple_lines": "false",
    "internet_dsl": "true",
    "internet_fiber": "false",
    "online_security": "false",
    "online_backup": "false",
    "device_protection": "false",
    "tech_support": "false",
    "streaming_tv": "false",
    "streaming_movies": "false",
}
CUSTOMER_HEADER = ",".join(CUSTOMER_COLUMNS).encode()


def customer_row(customer_id: str = "C9", **changes) -> bytes:
    values = {**CUSTOMER, "customer_id": customer_id, **changes}
    fields = [values[column] for column in CUSTOMER_COLUMNS]
    return ",".join(f'"{v}"' if "," in v else v for v in fields).encode()


BAD_CUSTOMERS = [
    # Not UTF-8 (a Latin-1 export).
    (customer_row(name="Ren\xe9e").replace(b"\xc3\xa9", b"\xe9"), "not_utf8", "not valid UTF-8"),
    # Malformed CSV: text after a closing quote.
    (customer_row().replace(b"Ann Lee", b'"Ann"Lee'), "invalid_csv", "expected after"),
    # One field too few, one too many.
    (customer_row().rsplit(b",", 1)[0], "wrong_field_count", "24 fields, header has 25"),
    (customer_row() + b",extra", "wrong_field_count", "26 fields, header has 25"),
    (b"", "blank_line", "empty"),
    # Missing values.
    (customer_row(customer_id=""), "missing_field", "customer_id"),
    (customer_row(tenure_months=""), "missing_field", "tenure_months"),
    (customer_row(churn=" "), "missing_field", "churn"),
    # Wrongly typed values.
    (customer_row(tenure_months="64 months"), "wrong_type", "tenure_months='64 months'"),
    (customer_row(tenure_months="12.0"), "wrong_type", "is not an integer"),
    (customer_row(tenure_months="1_000"), "wrong_type", "is not an integer"),
    (customer_row(tenure_months="١٢"), "wrong_type", "is not an integer"),
    (customer_row(senior_citizen="maybe"), "wrong_type", "senior_citizen='maybe' is not a boolean"),
    (
        customer_row(monthly_charges="20,50"),
        "wrong_type",
        "monthly_charges='20,50' is not a number",
    ),
    (customer_row(monthly_charges="$20"), "wrong_type", "is not a number"),
    # Out-of-range values, NaN and infinity.
    (customer_row(tenure_months="-3"), "out_of_range", "tenure_months=-3 is outside 0..1200"),
    (customer_row(tenure_months="5000"), "out_of_range", "tenure_months=5000 is outside"),
    (customer_row(monthly_charges="-5"), "out_of_range", "monthly_charges=-5.0 is outside"),
    (customer_row(monthly_charges="NaN"), "out_of_range", "'NaN' is not a finite number"),
    (customer_row(monthly_charges="inf"), "out_of_range", "'inf' is not a finite number"),
    (customer_row(total_charges="-Infinity"), "out_of_range", "is not a finite number"),
    (customer_row(total_charges="1e400"), "out_of_range", "'1e400' is not a finite number"),
    # Values outside an enumeration.
    (customer_row(contract="Weekly"), "unknown_value", "contract='Weekly'"),
    (customer_row(gender="F"), "unknown_value", "gender='F'"),
    # An id outside the identifier alphabet.
    (customer_row(customer_id="C 9"), "invalid_identifier", "customer_id='C 9'"),
    # The same customer twice in one export.
    (customer_row("C1"), "duplicate_customer", "customer_id C1 repeats an earlier row"),
]


@pytest.mark.parametrize(("bad", "reason", "fragment"), BAD_CUSTOMERS)
def test_a_bad_customer_row_is_quarantined_and_the_export_survives(tmp_path, bad, reason, fragment):
    content = b"\n".join([CUSTOMER_HEADER, customer_row("C1"), bad, customer_row("C2")]) + b"\n"
    result = validate_customers(
        bronze(tmp_path, content, name="c.csv", csv=True), pseudonym_key=KEY
    )
    assert_reasons_are_documented(result)
    assert quarantined(result) == [(3, reason)]
    assert fragment in result.quarantine["detail"][0]
    assert result.clean.select("customer_id", "line_number").rows() == [("C1", 2), ("C2", 4)]


@pytest.mark.parametrize(
    ("header", "reason", "fragment"),
    [
        # A column the contract requires is absent: every row says which.
        (CUSTOMER_HEADER.replace(b",tenure_months", b""), "missing_column", "tenure_months"),
        # The same column twice.
        (CUSTOMER_HEADER.replace(b"gender", b"name"), "duplicate_column", "name"),
        # A header that is not UTF-8 makes no row readable.
        (CUSTOMER_HEADER.replace(b"name", b"n\xe4me"), "not_utf8", "header line"),
        # A header that is malformed CSV.
        (CUSTOMER_HEADER.replace(b"name", b'"na"me'), "invalid_csv", "header"),
    ],
)
def test_a_bad_csv_header_quarantines_every_row_of_its_file(tmp_path, header, reason, fragment):
    content = b"\n".join([header, customer_row("C1"), customer_row("C2")])
    result = validate_customers(
        bronze(tmp_path, content, name="c.csv", csv=True), pseudonym_key=KEY
    )
    assert quarantined(result) == [(2, reason), (3, reason)]
    assert all(fragment in detail for detail in result.quarantine["detail"])
    assert result.clean.height == 0


@pytest.mark.parametrize(
    ("content", "column", "values"),
    [
        # A spreadsheet export: BOM and CRLF.
        (
            b"\xef\xbb\xbf" + CUSTOMER_HEADER + b"\r\n" + customer_row("C1") + b"\r\n",
            "customer_id",
            ["C1"],
        ),
        # Columns in another order.
        (
            b",".join(reversed(CUSTOMER_HEADER.split(b",")))
            + b"\n"
            + b",".join(reversed(customer_row("C1").split(b","))),
            "tenure_months",
            [12],
        ),
        # Header names padded with spaces.
        (CUSTOMER_HEADER.replace(b",", b", ") + b"\n" + customer_row("C1"), "customer_id", ["C1"]),
        # An extra column is kept by name only.
        (
            CUSTOMER_HEADER + b",loyalty_tier\n" + customer_row("C1") + b",gold",
            "extra_fields",
            ['["loyalty_tier"]'],
        ),
        # Empty optional charges (a new customer) are null.
        (CUSTOMER_HEADER + b"\n" + customer_row("C1", total_charges=""), "total_charges", [None]),
        # Booleans in other spellings.
        (CUSTOMER_HEADER + b"\n" + customer_row("C1", partner="Yes"), "partner", [True]),
        # When the first row of a customer is bad, a later good row lands.
        (
            b"\n".join(
                [CUSTOMER_HEADER, customer_row("C1", tenure_months="x"), customer_row("C1")]
            ),
            "line_number",
            [3],
        ),
    ],
)
def test_tolerated_customer_variants_land_in_silver(tmp_path, content, column, values):
    result = validate_customers(
        bronze(tmp_path, content, name="c.csv", csv=True), pseudonym_key=KEY
    )
    assert result.clean[column].to_list() == values


def test_customer_contacts_never_reach_silver(tmp_path):
    content = CUSTOMER_HEADER + b"\n" + customer_row("C1")
    result = validate_customers(
        bronze(tmp_path, content, name="c.csv", csv=True), pseudonym_key=KEY
    )
    cells = [str(value) for value in result.clean.row(0)]
    assert not any("Ann" in cell or "ann@" in cell or "0100" in cell for cell in cells)


# ---------------------------------------------------------------------------------------------
# Technician outcomes (outcomes.csv)

OUTCOME_HEADER = ",".join(OUTCOME_COLUMNS).encode()


def outcome(
    request_id: str = "R-9",
    technician_id: str = "TECH-01",
    inspected_at: str = "2026-01-20T09:00:00+00:00",
    quote_accepted: str = "true",
    damage_level: str = "2",
    defect_probability: str = "0.6666666666666666",
    cell_type: str = "mono",
) -> bytes:
    return ",".join(
        [
            request_id,
            technician_id,
            inspected_at,
            quote_accepted,
            damage_level,
            defect_probability,
            cell_type,
        ]
    ).encode()


DECLINED = outcome("R-2", "", "", "false", "", "", "")

BAD_OUTCOMES = [
    (outcome(damage_level="7"), "out_of_range", "damage_level=7 is outside 0..3"),
    (outcome(damage_level="-1"), "out_of_range", "damage_level=-1 is outside 0..3"),
    (outcome(damage_level="2.0"), "wrong_type", "damage_level='2.0' is not an integer"),
    (outcome(damage_level=""), "missing_field", "damage_level"),
    (outcome(defect_probability="1.5"), "out_of_range", "defect_probability=1.5 is outside"),
    (outcome(defect_probability="nan"), "out_of_range", "is not a finite number"),
    (outcome(defect_probability="0.0"), "inconsistent_label", "defect_probability=0.0 but"),
    # A declined quote had no inspection, so it carries no label.
    (outcome(quote_accepted="false"), "inconsistent_label", "quote_accepted=false"),
    (outcome(quote_accepted="perhaps"), "wrong_type", "quote_accepted='perhaps'"),
    (outcome(technician_id=""), "missing_field", "technician_id"),
    (outcome(inspected_at=""), "missing_field", "inspected_at"),
    (outcome(inspected_at="2026-01-20 09:00"), "timestamp_without_offset", "inspected_at="),
    (outcome(inspected_at="2099-01-20T09:00:00Z"), "timestamp_in_future", "inspected_at="),
    (outcome(inspected_at="20/01/2026"), "invalid_timestamp", "inspected_at='20/01/2026'"),
    (outcome(cell_type="thin-film"), "unknown_value", "cell_type='thin-film'"),
    (outcome(request_id="R 9"), "invalid_identifier", "request_id='R 9'"),
    (outcome(request_id=""), "missing_field", "request_id"),
    (outcome() + b",x", "wrong_field_count", "8 fields, header has 7"),
    # References: a request never landed, and one whose line was quarantined.
    (outcome("R-404"), "unknown_request", "request_id R-404 is in no batch ingested so far"),
    (outcome("R-Q"), "request_quarantined", "request_id R-Q's request line was quarantined"),
    # Duplicates: of line 2 of this file, and of an outcome of an earlier batch.
    (outcome("R-1"), "duplicate_outcome", "R-1 repeats an earlier line of this batch"),
    (outcome("R-DONE"), "duplicate_outcome", "R-DONE was confirmed in an earlier batch"),
]


def check_outcomes(lines: pl.DataFrame, **overrides) -> Validated:
    arguments = {
        "known_request_ids": pl.Series(["R-1", "R-2", "R-9", "R-DONE"]),
        "earlier_outcome_ids": pl.Series(["R-DONE"]),
        "now": NOW,
        "quarantined_request_ids": pl.Series(["R-Q"]),
        **overrides,
    }
    result = validate_outcomes(lines, **arguments)
    assert_reasons_are_documented(result)
    return result


@pytest.mark.parametrize(("bad", "reason", "fragment"), BAD_OUTCOMES)
def test_a_bad_outcome_row_is_quarantined_and_the_file_survives(tmp_path, bad, reason, fragment):
    content = b"\n".join([OUTCOME_HEADER, outcome("R-1"), bad, DECLINED]) + b"\n"
    result = check_outcomes(bronze(tmp_path, content, name="o.csv", csv=True))
    assert quarantined(result) == [(3, reason)]
    assert fragment in result.quarantine["detail"][0]
    assert result.clean.select("request_id", "line_number").rows() == [("R-1", 2), ("R-2", 4)]


def test_outcomes_are_typed_and_in_utc(tmp_path):
    content = b"\n".join(
        [
            OUTCOME_HEADER + b",notes",
            outcome("R-1", inspected_at="2026-01-20T10:30:00+01:30", defect_probability="")
            + b",ok",
            outcome("R-2", "TECH-02", "", "false", "", "", "") + b",",
        ]
    )
    result = check_outcomes(bronze(tmp_path, content, name="o.csv", csv=True))
    assert result.quarantine.height == 0
    assert result.clean.select(
        "request_id", "technician_id", "inspected_at", "damage_level", "defect_probability"
    ).rows() == [
        ("R-1", "TECH-01", datetime(2026, 1, 20, 9, 0, tzinfo=UTC), 2, 2 / 3),
        ("R-2", "TECH-02", None, None, None),
    ]
    assert result.clean["extra_fields"].to_list() == ['["notes"]', '["notes"]']


def test_without_quarantined_ids_an_outcome_is_unknown(tmp_path):
    content = OUTCOME_HEADER + b"\n" + outcome("R-Q")
    result = check_outcomes(
        bronze(tmp_path, content, name="o.csv", csv=True), quarantined_request_ids=None
    )
    assert quarantined(result) == [(2, "unknown_request")]


def test_an_outcomes_file_with_only_declined_quotes_is_typed(tmp_path):
    result = check_outcomes(
        bronze(tmp_path, OUTCOME_HEADER + b"\n" + DECLINED, name="o.csv", csv=True)
    )
    assert result.clean.schema == pl.Schema(validation.OUTCOME_SCHEMA)
    assert result.clean["quote_accepted"].to_list() == [False]


# ---------------------------------------------------------------------------------------------
# Which record a quarantine row is for


@pytest.mark.parametrize(
    ("bad", "record_id"),
    [
        (line("R-1", channel="fax"), "R-1"),  # a parsed record
        (line("R-2")[:40], "R-2"),  # a line cut short still names its request
        (line(12345), "12345"),  # a number where a string belongs
        (line("R 1"), None),  # an id outside the alphabet names nothing
        (line("R-3")[:18], None),  # cut inside the id: a prefix would name the wrong request
        (b'{"customer_id": "C1"}', None),  # no request id at all
        (b'{"request_id": "R-\xff"}', None),  # not UTF-8: nothing is read from it
        (b'{"other": {"request_id": "R-N"}}', "R-N"),  # a pattern, not a parser: nesting counts
    ],
)
def test_a_quarantined_request_line_names_its_request(tmp_path, bad, record_id):
    result = check_requests(bronze(tmp_path, bad + b"\n", name="requests.jsonl"))
    assert result.quarantine["record_id"].to_list() == [record_id]


@pytest.mark.parametrize(
    ("bad", "record_id"),
    [
        (customer_row("C-7", tenure_months="-1"), "C-7"),  # a typed row
        (customer_row("C-8").rsplit(b",", 3)[0], "C-8"),  # a row with too few fields
        (customer_row("C 9", tenure_months="-1"), None),  # an id outside the alphabet
        (b"", None),  # a blank line
    ],
)
def test_a_quarantined_csv_row_names_its_record_through_the_header(tmp_path, bad, record_id):
    content = b"\xef\xbb\xbf" + CUSTOMER_HEADER + b"\r\n" + bad + b"\r\n"
    result = validate_customers(
        bronze(tmp_path, content, name="c.csv", csv=True), pseudonym_key=KEY
    )
    assert result.quarantine["record_id"].to_list() == [record_id]


def test_quarantined_request_ids_come_from_request_rows_only():
    frame = pl.DataFrame(
        {
            "source": ["repair_requests", "technician_outcomes", "repair_requests"],
            "record_id": ["R-2", "R-9", "R-1"],
        }
    )
    assert quarantined_request_ids(frame).to_list() == ["R-1", "R-2"]


# ---------------------------------------------------------------------------------------------
# Photo files (photos/)


def png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "JPEG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "GIF")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg())
    start = data.index(b"\xff\xc0")
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BAD_PHOTOS = [
    # A zero-byte file.
    ("empty.png", b"", "empty_file", "empty.png has zero bytes"),
    # A PNG cut short, as an interrupted upload leaves it.
    ("cut.png", png(64, 64)[:60], "truncated_image", "cut.png: PNG data ends early"),
    ("sig.png", b"\x89PNG", "truncated_image", "only 4 bytes of an image signature"),
    # Not an image at all, and an image signature followed by garbage.
    ("text.png", b"hello, I am not a photo", "not_an_image", "no PNG or JPEG signature"),
    ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image", "IHDR"),
    # Headers claiming huge canvases are rejected before decoding.
    ("bomb.png", png_claiming(50_000, 50_000), "too_many_pixels", "50000 x 50000 = 2500000000"),
    ("bomb.jpg", jpeg_claiming(60_000, 60_000), "too_many_pixels", "60000 x 60000"),
    ("wide.png", png_claiming(1, 0), "not_an_image", "1 x 0 pixels"),
    # A file with a misleading extension.
    ("really_jpeg.png", jpeg(), "wrong_extension", "really_jpeg.png holds a JPEG image, not PNG"),
    ("really_png.jpg", png(), "wrong_extension", "really_png.jpg holds a PNG image, not JPEG"),
    ("really_gif.png", gif(), "wrong_extension", "named as a PNG file but is not one: GIF"),
    # Names that are not photos at all.
    ("anim.gif", gif(), "unexpected_file", "anim.gif is not a .png, .jpg or .jpeg photo"),
    ("notes.txt", b"see attached", "unexpected_file", "notes.txt"),
    ("photo", png(), "unexpected_file", "photo is not a .png"),
    (".DS_Store", b"\x00\x00\x00\x01Bud1", "unexpected_file", ".DS_Store"),
]


def photo_files(tmp_path, files: dict[str, bytes]) -> pl.DataFrame:
    folder = tmp_path / "batch" / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return read_files(folder, batch="b", relative_to=tmp_path / "batch")


@pytest.mark.parametrize(("name", "data", "reason", "fragment"), BAD_PHOTOS)
def test_a_bad_photo_is_quarantined_and_the_good_ones_survive(
    tmp_path, name, data, reason, fragment
):
    files = photo_files(tmp_path, {"a.png": png(), name: data, "z.jpg": jpeg()})
    result = validate_photos(files)
    assert_reasons_are_documented(result)
    assert result.quarantine.select("source_file", "reason", "line_number").rows() == [
        (f"photos/{name}", reason, None)
    ]
    assert fragment in result.quarantine["detail"][0]
    assert result.quarantine["record"][0] == f"<{len(data)} bytes, kept in bronze>"
    assert result.clean.select("source_file", "format", "width").rows() == [
        ("photos/a.png", "PNG", 8),
        ("photos/z.jpg", "JPEG", 8),
    ]


def test_a_decompression_bomb_is_rejected_without_decoding(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("Pillow must not open the bomb")

    monkeypatch.setattr("compositional_ai.vision.images.Image.open", refuse)
    result = validate_photos(photo_files(tmp_path, {"bomb.png": png_claiming(50_000, 50_000)}))
    assert result.quarantine["reason"].to_list() == ["too_many_pixels"]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("upper.PNG", png()),  # suffixes compare case-insensitively
        ("photo.jpeg", jpeg()),  # both JPEG suffixes
        ("big.png", png(300, 200)),  # any size within the limits
    ],
)
def test_good_photos_land_with_their_dimensions(tmp_path, name, data):
    result = validate_photos(photo_files(tmp_path, {name: data}))
    assert result.quarantine.height == 0
    assert result.clean["source_file"].to_list() == [f"photos/{name}"]
    assert result.clean["sha256"][0] == hashlib.sha256(data).hexdigest()


def test_photo_limits_are_parameters(tmp_path):
    files = photo_files(tmp_path, {"a.png": png(8, 8), "b.png": png(40, 40)})
    by_bytes = validate_photos(files, max_bytes=len(png(8, 8)))
    assert by_bytes.quarantine.select("source_file", "reason").rows() == [
        ("photos/b.png", "too_many_bytes")
    ]
    by_pixels = validate_photos(files, max_pixels=1000)
    assert by_pixels.quarantine.select("source_file", "reason").rows() == [
        ("photos/b.png", "too_many_pixels")
    ]
    assert "40 x 40 = 1600 pixels > limit 1000" in by_pixels.quarantine["detail"][0]


def test_an_oversized_file_is_rejected_on_its_landed_size(tmp_path):
    folder = tmp_path / "batch" / "photos"
    folder.mkdir(parents=True)
    (folder / "huge.png").write_bytes(png() + b"\x00" * 5000)
    files = read_files(folder, batch="b", relative_to=tmp_path / "batch", max_content_bytes=100)
    result = validate_photos(files, max_bytes=1000)
    assert result.quarantine.select("reason", "detail").rows() == [
        ("too_many_bytes", f"huge.png has {len(png()) + 5000} bytes > limit 1000")
    ]
    # Above what bronze keeps but within silver's limit: still rejected, never read as empty.
    generous = validate_photos(files, max_bytes=10_000)
    assert generous.quarantine.select("reason", "detail").rows() == [
        ("too_many_bytes", f"huge.png has {len(png()) + 5000} bytes, more than bronze keeps")
    ]


def test_links_and_special_files_in_photos_are_quarantined_unread(tmp_path):
    folder = tmp_path / "batch" / "photos"
    folder.mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(png())
    (folder / "ok.png").write_bytes(png())
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    (folder / "passwd.png").symlink_to("/etc/passwd")
    os.mkfifo(folder / "pipe.png")
    result = validate_photos(read_files(folder, batch="b", relative_to=tmp_path / "batch"))
    assert result.quarantine.select("source_file", "reason", "detail", "record").rows() == [
        (
            "photos/link.png",
            "symlink",
            f"link.png is a symbolic link to {tmp_path / 'outside.png'}; links are not followed",
            f"<symbolic link to {tmp_path / 'outside.png'}, not followed>",
        ),
        (
            "photos/passwd.png",
            "symlink",
            "passwd.png is a symbolic link to /etc/passwd; links are not followed",
            "<symbolic link to /etc/passwd, not followed>",
        ),
        (
            "photos/pipe.png",
            "not_a_regular_file",
            "pipe.png is not a regular file",
            "<0 bytes, kept in bronze>",
        ),
    ]
    assert result.clean["source_file"].to_list() == ["photos/ok.png"]


def test_an_empty_photos_folder_gives_typed_empty_outputs(tmp_path):
    result = validate_photos(photo_files(tmp_path, {}))
    assert result.clean.schema == pl.Schema(validation.PHOTO_SCHEMA)
    assert result.quarantine.schema == pl.Schema(validation.QUARANTINE_SCHEMA)


# ---------------------------------------------------------------------------------------------
# A whole batch, and accounting for its rows


def write_batch(tmp_path, *, requests: list[bytes], customers: list[bytes], outcomes: list[bytes]):
    batch = tmp_path / "batch"
    photos = photo_files(tmp_path, {"ok.png": png(), "cut.png": png(64, 64)[:60]})
    return {
        "photos": photos,
        "requests": read_lines_of(batch / "requests.jsonl", b"\n".join(requests), csv=False),
        "customers": read_lines_of(
            batch / "customers.csv", b"\n".join([CUSTOMER_HEADER, *customers]), csv=True
        ),
        "outcomes": read_lines_of(
            batch / "outcomes.csv", b"\n".join([OUTCOME_HEADER, *outcomes]), csv=True
        ),
    }


def read_lines_of(path, content: bytes, *, csv: bool) -> pl.DataFrame:
    path.write_bytes(content)
    return read_lines(path, batch="b", source_file=path.name, csv=csv)


def test_a_batch_tells_quarantined_references_from_unknown_ones(tmp_path):
    bronze_frames = write_batch(
        tmp_path,
        requests=[
            line("R-1", customer_id="C1"),  # clean
            line("R-2", customer_id="C-BAD"),  # its customer's row is quarantined
            line("R-3", customer_id="C-NONE"),  # its customer is nowhere
            line("R-4", photo="photos/cut.png"),  # its photo is quarantined
            line("R-5", channel="fax"),  # itself quarantined
            line("R-6")[:50],  # itself quarantined, as broken JSON that still names it
            line("R-7", customer_id="C-OLD"),  # a customer known from an earlier batch
        ],
        customers=[customer_row("C1"), customer_row("C-BAD", tenure_months="-1")],
        outcomes=[
            outcome("R-1"),  # confirms a clean request of this batch
            outcome("R-5"),  # confirms a request quarantined in this batch
            outcome("R-6"),  # confirms a request whose line is broken JSON
            outcome("R-E"),  # confirms a request quarantined in an earlier batch
            outcome("R-OLD"),  # confirms a request of an earlier batch
            outcome("R-NONE"),  # confirms a request never landed
        ],
    )
    earlier = EarlierBatches(
        customer_ids=pl.Series(["C-OLD"]),
        request_ids=pl.Series(["R-OLD"]),
        quarantined_request_ids=pl.Series(["R-E"]),
    )
    result = validate_batch(
        **bronze_frames,
        product_ids=pl.Series(["P1"]),
        earlier=earlier,
        pseudonym_key=KEY,
        now=NOW,
    )
    assert quarantined(result["repair_requests"]) == [
        (2, "customer_quarantined"),
        (3, "unknown_customer"),
        (4, "photo_rejected"),
        (5, "unknown_value"),
        (6, "invalid_json"),
    ]
    assert result["repair_requests"].clean["request_id"].to_list() == ["R-1", "R-7"]
    assert quarantined(result["customers"]) == [(3, "out_of_range")]
    assert quarantined(result["technician_outcomes"]) == [
        (3, "request_quarantined"),
        (4, "request_quarantined"),
        (5, "request_quarantined"),
        (7, "unknown_request"),
    ]
    assert result["technician_outcomes"].clean["request_id"].to_list() == ["R-1", "R-OLD"]
    assert quarantined(result["repair_photos"]) == [(None, "truncated_image")]
    keys = {
        "repair_photos": ["source_file"],
        "repair_requests": ["source_file", "line_number"],
        "customers": ["source_file", "line_number"],
        "technician_outcomes": ["source_file", "line_number"],
    }
    frames = {
        "repair_photos": bronze_frames["photos"],
        "repair_requests": bronze_frames["requests"],
        "customers": bronze_frames["customers"],
        "technician_outcomes": bronze_frames["outcomes"],
    }
    for source, validated in result.items():
        figures = account(frames[source], validated, keys=keys[source])
        assert (figures["missing"], figures["repeated"], figures["foreign"]) == (0, 0, 0)
        assert figures["bronze"] == figures["silver"] + figures["quarantine"]


def test_an_empty_batch_validates_to_empty_typed_tables(tmp_path):
    empty_lines = pl.DataFrame(
        schema=read_lines(tmp_path / "none", batch="b", source_file="x").schema
    )
    result = validate_batch(
        photos=read_files(tmp_path / "none", batch="b", relative_to=tmp_path),
        requests=empty_lines,
        customers=empty_lines,
        outcomes=empty_lines,
        product_ids=pl.Series(["P1"]),
        earlier=EarlierBatches(),
        pseudonym_key=KEY,
        now=NOW,
    )
    assert {name: (v.clean.height, v.quarantine.height) for name, v in result.items()} == {
        "repair_photos": (0, 0),
        "repair_requests": (0, 0),
        "customers": (0, 0),
        "technician_outcomes": (0, 0),
    }


def test_account_finds_rows_that_are_missing_repeated_or_foreign(tmp_path):
    lines = bronze(tmp_path, line("R-1") + b"\n" + line("R-2") + b"\n", name="requests.jsonl")
    result = check_requests(lines)
    keys = ["source_file", "line_number"]
    assert account(lines, result, keys=keys) == {
        "bronze": 2,
        "silver": 2,
        "quarantine": 0,
        "missing": 0,
        "repeated": 0,
        "foreign": 0,
    }
    lost = Validated(result.clean.head(1), result.quarantine)
    assert account(lines, lost, keys=keys)["missing"] == 1
    doubled = Validated(result.clean, validation.quarantine_rows(lines.head(1), "x", "r", "d"))
    assert account(lines, doubled, keys=keys)["repeated"] == 1
    stranger = Validated(
        pl.concat(
            [result.clean, result.clean.head(1).with_columns(line_number=pl.lit(9, pl.Int64))]
        ),
        result.quarantine,
    )
    assert account(lines, stranger, keys=keys)["foreign"] == 1


# ---------------------------------------------------------------------------------------------
# Reference data: the catalog and the evaluation holdout

CATALOG_HEADER = b"product_id,product_line,title,list_price_usd,rating"


@pytest.mark.parametrize(
    ("bad", "reason", "fragment"),
    [
        (b"P1,Batteries,Again,1.00,", "duplicate_product", "product_id P1 repeats"),
        (b"P3,Batteries,Free,,", "missing_field", "list_price_usd"),
        (b"P3,Batteries,Free,0,", "out_of_range", "list_price_usd=0.0 is outside"),
        (b"P3,Batteries,Starry,5.00,6", "out_of_range", "rating=6.0 is outside 0.0..5.0"),
        (b"P3,,No line,5.00,", "missing_field", "product_line"),
        (b'P3,Batteries,"Cut title', "invalid_csv", "unexpected end of data"),
    ],
)
def test_a_bad_catalog_row_is_quarantined(tmp_path, bad, reason, fragment):
    content = b"\n".join(
        [CATALOG_HEADER, b'P1,Batteries,"AA, 40-count",20.99,4.8', bad, b"P2,Cameras,Cam,289.99,"]
    )
    result = validate_catalog(bronze(tmp_path, content, name="catalog.csv", csv=True))
    assert quarantined(result) == [(3, reason)]
    assert fragment in result.quarantine["detail"][0]
    assert result.clean.select("product_id", "title", "rating").rows() == [
        ("P1", "AA, 40-count", 4.8),
        ("P2", "Cam", None),
    ]


def test_holdout_labels_need_their_exact_photo(tmp_path):
    photos = photo_files(tmp_path, {"a.png": png(), "b.png": png(9, 9)})
    digest = hashlib.sha256(png()).hexdigest()
    content = b"\n".join(
        [
            b"photo_file,sha256,defect_probability,damage_level,cell_type",
            f"a.png,{digest},0.0,0,mono".encode(),
            f"b.png,{digest},0.0,0,mono".encode(),  # the photo's bytes differ from the digest
            f"c.png,{digest},0.0,0,mono".encode(),  # no such photo
        ]
    )
    result = validate_holdout(bronze(tmp_path, content, name="labels.csv", csv=True), photos)
    assert quarantined(result) == [(3, "sha256_mismatch"), (4, "photo_missing")]
    assert result.clean["photo_file"].to_list() == ["a.png"]


# ---------------------------------------------------------------------------------------------
# Synthetic photos (synthetic.csv and synthetic/)

SYNTHETIC_HEADER = "photo,sha256,parent_sha256,synthetic,generator_version,transforms"
PARENT = "c" * 64
HOLDOUT_PARENT = "d" * 64


def synthetic_files(tmp_path, files: dict[str, bytes]) -> pl.DataFrame:
    folder = tmp_path / "batch" / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return read_files(folder, batch="b", relative_to=tmp_path / "batch")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def synthetic_row(name: str, data: bytes, **changes) -> str:
    row = {
        "photo": f"synthetic/{name}",
        "sha256": digest(data),
        "parent_sha256": PARENT,
        "synthetic": "true",
        "generator_version": "synth-1.0",
        "transforms": '"{""flip_horizontal"":true}"',
        **changes,
    }
    return ",".join(row.values())


def check_synthetic(tmp_path, files: dict[str, bytes], rows: list[str], **overrides):
    manifest = bronze(
        tmp_path,
        "\n".join([SYNTHETIC_HEADER, *rows]).encode(),
        name="synthetic.csv",
        csv=True,
    )
    photos = synthetic_files(tmp_path, files)
    arguments = {
        "known_photo_shas": pl.Series([PARENT, HOLDOUT_PARENT]),
        "holdout_shas": pl.Series([HOLDOUT_PARENT]),
        "earlier_synthetic_shas": pl.Series(["e" * 64]),
        **overrides,
    }
    result = validation.validate_synthetic(photos, manifest, **arguments)
    for validated in result.values():
        assert_reasons_are_documented(validated)
    # Every landed file and manifest line is in silver or in quarantine, exactly once.
    assert account(photos, result["synthetic_photos"], keys=["source_file"]) == {
        "bronze": photos.height,
        "silver": result["synthetic_photos"].clean.height,
        "quarantine": result["synthetic_photos"].quarantine.height,
        "missing": 0,
        "repeated": 0,
        "foreign": 0,
    }
    lines = result["synthetic_manifest"]
    assert manifest.height == lines.clean.height + lines.quarantine.height
    return result


def test_a_good_synthetic_photo_reaches_silver_marked(tmp_path):
    data = png()
    result = check_synthetic(tmp_path, {"s1.png": data}, [synthetic_row("s1.png", data)])
    clean = result["synthetic_photos"].clean
    assert result["synthetic_manifest"].clean.equals(clean)
    assert clean.select(
        "source_file", "sha256", "synthetic", "generator_version", "parent_sha256", "manifest_line"
    ).rows() == [("synthetic/s1.png", digest(data), True, "synth-1.0", PARENT, 2)]
    assert clean["transforms"][0] == '{"flip_horizontal":true}'
    assert clean["content"][0] == data
    assert clean.schema == pl.Schema(validation.SYNTHETIC_SCHEMA)


def manifest_case(tmp_path, row_changes: dict, reason: str, fragment: str):
    good, bad = png(), png(9, 9)
    files = {"s1.png": good, "s2.png": bad}
    rows = [synthetic_row("s1.png", good), synthetic_row("s2.png", bad, **row_changes)]
    return files, rows, reason, fragment


BAD_SYNTHETIC_ROWS = [
    # a parent that is a holdout photo: never training data, not even transformed
    ({"parent_sha256": HOLDOUT_PARENT}, "holdout_parent", "is a holdout photo"),
    # a parent that landed nowhere
    ({"parent_sha256": "f" * 64}, "unknown_parent", "is no landed photo"),
    # a row that does not say the photo is synthetic
    ({"synthetic": "false"}, "not_marked_synthetic", "synthetic=false"),
    # a digest that is not one
    ({"parent_sha256": "abc"}, "invalid_digest", "parent_sha256='abc'"),
    # the listed digest is not the file's
    ({"sha256": "0" * 64}, "sha256_mismatch", "does not match its listed sha256"),
    # a synthetic photo that landed in an earlier batch
    ({"sha256": "e" * 64}, "sha256_mismatch", "does not match"),
    # a path outside the synthetic folder
    ({"photo": "photos/s2.png"}, "photo_path_outside_batch", "not below synthetic/"),
    # a photo the folder does not hold
    ({"photo": "synthetic/s9.png"}, "photo_missing", "synthetic/s9.png is not in the batch"),
    # no generator named
    ({"generator_version": ""}, "missing_field", "generator_version"),
]


@pytest.mark.parametrize(("changes", "reason", "fragment"), BAD_SYNTHETIC_ROWS)
def test_a_bad_synthetic_row_is_quarantined_with_its_file(tmp_path, changes, reason, fragment):
    files, rows, reason, fragment = manifest_case(tmp_path, changes, reason, fragment)
    result = check_synthetic(tmp_path, files, rows)
    assert result["synthetic_photos"].clean["source_file"].to_list() == ["synthetic/s1.png"]
    assert quarantined(result["synthetic_manifest"]) == [(3, reason)]
    detail = result["synthetic_manifest"].quarantine["detail"][0]
    assert fragment in detail
    # The file the row described has no valid row any more: it is quarantined too, unless the
    # row named a file that is not there.
    files_held = result["synthetic_photos"].quarantine
    if changes.get("photo") == "synthetic/s9.png" or changes.get("photo", "").startswith("photos"):
        assert files_held.select("source_file", "reason").rows() == [
            ("synthetic/s2.png", "unlisted_synthetic")
        ]
    else:
        assert files_held["reason"].to_list() == ["unlisted_synthetic"]
    assert files_held["record_sha256"].to_list() == [digest(files["s2.png"])]


def test_synthetic_files_and_rows_that_do_not_pair_up(tmp_path):
    good, copy, broken = png(), png(9, 9), png()[:30]
    files = {"a.png": good, "b.png": copy, "bad.png": broken, "stray.png": png(5, 5)}
    rows = [
        synthetic_row("a.png", good),
        synthetic_row("a.png", good),  # the same photo listed twice
        synthetic_row("bad.png", broken),  # a truncated file
        synthetic_row("b.png", copy, sha256="e" * 64),  # the digest of an earlier batch's photo
    ]
    result = check_synthetic(
        tmp_path, files, rows, earlier_synthetic_shas=pl.Series([digest(copy)])
    )
    assert result["synthetic_photos"].clean["source_file"].to_list() == ["synthetic/a.png"]
    assert quarantined(result["synthetic_manifest"]) == [
        (3, "duplicate_synthetic"),
        (4, "photo_rejected"),
        (5, "sha256_mismatch"),
    ]
    held = result["synthetic_photos"].quarantine.select("source_file", "reason").rows()
    assert sorted(held) == [
        ("synthetic/b.png", "unlisted_synthetic"),
        ("synthetic/bad.png", "not_an_image"),
        ("synthetic/stray.png", "unlisted_synthetic"),
    ]


def test_a_synthetic_photo_repeating_an_earlier_batch_is_a_duplicate(tmp_path):
    data = png()
    result = check_synthetic(
        tmp_path,
        {"s1.png": data},
        [synthetic_row("s1.png", data)],
        earlier_synthetic_shas=pl.Series([digest(data)]),
    )
    assert quarantined(result["synthetic_manifest"]) == [(2, "duplicate_synthetic")]
    assert result["synthetic_photos"].clean.height == 0


def test_no_synthetic_files_validate_to_empty_typed_tables(tmp_path):
    empty = pl.DataFrame(schema=read_lines(tmp_path / "none", batch="b", source_file="x").schema)
    photos = read_files(tmp_path / "none", batch="b", relative_to=tmp_path)
    result = validation.validate_synthetic(photos, empty, known_photo_shas=pl.Series([PARENT]))
    for validated in result.values():
        assert validated.clean.height == validated.quarantine.height == 0
        assert validated.clean.schema == pl.Schema(validation.SYNTHETIC_SCHEMA)


def test_a_manifest_without_files_quarantines_every_row(tmp_path):
    data = png()
    result = check_synthetic(tmp_path, {}, [synthetic_row("s1.png", data)])
    assert quarantined(result["synthetic_manifest"]) == [(2, "photo_missing")]


HOLDOUT_HEADER = b"photo_file,sha256,defect_probability,damage_level,cell_type"


@pytest.mark.parametrize(
    ("header", "cell", "origin", "reason"),
    [
        # no origin column: the contract's expert labels
        (HOLDOUT_HEADER, b"", "technician", None),
        # an explicit technician label
        (HOLDOUT_HEADER + b",label_origin", b",technician", "technician", None),
        # an empty cell is the expert label too
        (HOLDOUT_HEADER + b",label_origin", b",", "technician", None),
        # a model label lands, for the holdout's blocking check to refuse
        (HOLDOUT_HEADER + b",label_origin", b",model", "model", None),
        # an origin no one knows is quarantined
        (HOLDOUT_HEADER + b",label_origin", b",guess", None, "unknown_value"),
    ],
)
def test_holdout_labels_carry_their_origin(tmp_path, header, cell, origin, reason):
    photos = photo_files(tmp_path, {"a.png": png()})
    row = f"a.png,{digest(png())},0.0,0,mono".encode() + cell
    result = validate_holdout(
        bronze(tmp_path, header + b"\n" + row, name="labels.csv", csv=True), photos
    )
    if reason is None:
        assert result.clean["label_origin"].to_list() == [origin]
    else:
        assert quarantined(result) == [(2, reason)]
