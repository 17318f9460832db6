"""End to end: a landing batch full of bad input, run through the real bronze, silver and chatbot
assets, and read back from the warehouse with SQL. Every landed row must be in silver or in a
quarantine table, with the reason a user sees."""

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from PIL import Image

from compositional_ai import jobs
from compositional_ai.chatbot import assets as chatbot_assets
from compositional_ai.definitions import build_resources
from compositional_ai.landing.formats import CUSTOMER_COLUMNS, OUTCOME_COLUMNS
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.warehouse import bronze, silver
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.silver import CONSERVATION_CHECK

pytestmark = pytest.mark.slow

# Batch keys with a space, quotes, a comma and non-ASCII letters: each must work as a folder
# name, a Dagster partition key and a bound SQL value.
BATCH_A = "2026-01-05"
BATCH_B = '2026-01-12 o\'brien, "zürich"'
BATCH_EMPTY = "2026-01-19 empty"
BATCH_WIRING = "2026-01-26 wiring"
BATCH_ASSETS = dg.AssetSelection.groups("bronze", "silver", "chatbot") - jobs.REFERENCE_ASSETS
# The modules that define the landing-to-silver assets and the chatbot capture; the rest of the
# graph (models, feedback) reads from them and plays no part in accounting for landed rows.
INGEST_MODULES = [bronze, silver, chatbot_assets]


def png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), 100).save(buffer, "PNG")
    return buffer.getvalue()


def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buffer, image_format)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def request(request_id, customer_id="C-1", photo="photos/b1.png", **changes) -> bytes:
    record = {
        "request_id": request_id,
        "submitted_at": "2026-01-12T10:00:00+01:00",
        "channel": "online",
        "customer_id": customer_id,
        "product_id": "P1",
        "photo": photo,
        "customer": {"name": "Ann Lee", "email": "ann@example.com", "phone": "555 0100"},
        **changes,
    }
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


CUSTOMER = dict.fromkeys(CUSTOMER_COLUMNS, "false") | {
    "name": "Bo Chan",
    "email": "bo@example.com",
    "phone": "555 0199",
    "gender": "male",
    "tenure_months": "12",
    "contract": "One year",
    "payment_method": "Mailed check",
    "monthly_charges": "20.5",
    "total_charges": "246.0",
}


def customer(customer_id, **changes) -> bytes:
    values = CUSTOMER | {"customer_id": customer_id} | changes
    return ",".join(values[column] for column in CUSTOMER_COLUMNS).encode()


def outcome(request_id, accepted="true", level="2", probability="0.6666666666666666", **changes):
    values = {
        "request_id": request_id,
        "technician_id": "TECH-01" if accepted == "true" else "",
        "inspected_at": "2026-01-20T09:00:00Z" if accepted == "true" else "",
        "quote_accepted": accepted,
        "damage_level": level if accepted == "true" else "",
        "defect_probability": probability if accepted == "true" else "",
        "cell_type": "mono" if accepted == "true" else "",
        **changes,
    }
    return ",".join(values[column] for column in OUTCOME_COLUMNS).encode()


def chat(transcript_id, request_id, speaker="customer") -> bytes:
    turns = [
        {
            "speaker": "bot",
            "text": "What is wrong?",
            "at": "2026-01-12T08:55:00Z",
            "asks": "damage",
        },
        {"speaker": speaker, "text": "It has a crack.", "at": "2026-01-12T08:56:00Z"},
    ]
    return json.dumps(
        {"transcript_id": transcript_id, "request_id": request_id, "turns": turns}
    ).encode()


CUSTOMER_HEADER = ",".join(CUSTOMER_COLUMNS).encode()
OUTCOME_HEADER = ",".join(OUTCOME_COLUMNS).encode()

# Batch B, line by line: (line as landed, reason it is quarantined for or None, detail fragment).
# requests.jsonl starts with a BOM and ends with a partial line; its first lines end in CRLF.
REQUESTS_B = [
    (b"\xef\xbb\xbf" + request("R-B1", "C-B1"), None, None),  # BOM + CRLF, clean
    (request("R-B2", photo="photos/b2.png"), None, None),  # customer C-1 from batch A
    (request("R-B2", photo="photos/b2.png"), "duplicate_request_id", "repeats an earlier line"),
    (request("R-A1"), "duplicate_request_id", "already landed in an earlier batch"),
    (request("R-B5", product_id="P404"), "unknown_product", "P404 is not in the catalog"),
    (request("R-B6", "C-404"), "unknown_customer", "C-404 is in no customer export"),
    (request("R-B7", channel=None), "missing_field", "channel"),
    (request(123), "wrong_type", "request_id must be a string, got a number"),
    (request("R-B9", submitted_at="2026-01-12T10:00:00"), "timestamp_without_offset", "offset"),
    (
        request("R-B10", photo="photos/b10.png", submitted_at="2026-01-12T15:30:00+05:30"),
        None,
        None,
    ),
    (
        request("R-B11", submitted_at="2099-01-01T00:00:00Z"),
        "timestamp_in_future",
        "is in the future",
    ),
    (request("R-B12", photo="../a1.png"), "photo_path_outside_batch", "'../a1.png'"),
    (request("R-B13", photo="/etc/passwd"), "photo_path_outside_batch", "'/etc/passwd'"),
    (request("R-B14", photo="photos/nothere.png"), "photo_missing", "is not in the batch"),
    (request("R-B15", photo="photos/cut.png"), "photo_rejected", "cut.png was quarantined"),
    (request("R-B16", photo="photos/bomb.png"), "photo_rejected", "too_many_pixels"),
    (request("R-B17", photo="photos/zero.png"), "photo_rejected", "empty_file"),
    (request("R-B18", photo="photos/link.png"), "photo_rejected", "symlink"),
    (request("R-B19", photo="photos/jpeg.png"), "photo_rejected", "wrong_extension"),
    (request("R-B20")[:45], "invalid_json", "at column"),  # a half-written line
    (b'{"request_id": "R-B21", "note": "caf\xe9"}', "not_utf8", "not valid UTF-8"),  # Latin-1
    (request("R-B22")[:-1] + b', "score": NaN}', "invalid_json", "NaN is not a JSON number"),
    (request("R-B23", photo="photos/b23.png", priority="high"), None, None),  # an extra field
    (b'{"request_id": "R-B24", "request_id": "R-B25"}', "duplicate_field", "request_id"),
    (b"  ", "blank_line", "empty"),
    (request("R-B26", channel="fax"), "unknown_value", "channel='fax'"),
    (b"[1, 2]", "not_an_object", "an array"),
    (request("R-B28")[:70], "invalid_json", "at column"),  # the partial last line, no LF
]

CUSTOMERS_B = [
    (customer("C-B1"), None, None),
    (customer("C-B1"), "duplicate_customer", "C-B1 repeats an earlier row"),
    (customer("C-B3", tenure_months="-3"), "out_of_range", "tenure_months=-3 is outside"),
    (customer("C-B4", tenure_months="64 months"), "wrong_type", "'64 months' is not an integer"),
    (customer("C-B5", monthly_charges="NaN"), "out_of_range", "not a finite number"),
    (customer("C-B6").rsplit(b",", 2)[0], "wrong_field_count", "23 fields, header has 25"),
]

OUTCOMES_B = [
    (outcome("R-A1"), None, None),
    (outcome("R-A2", accepted="false"), None, None),
    (outcome("R-A1"), "duplicate_outcome", "repeats an earlier line of this batch"),
    (outcome("R-B1", level="7"), "out_of_range", "damage_level=7 is outside 0..3"),
    (outcome("R-ZZZ"), "unknown_request", "R-ZZZ is in no batch ingested so far"),
    (outcome("R-B2", inspected_at="2026-01-20 09:00"), "timestamp_without_offset", "offset"),
    (outcome("R-B10", level="3", probability="0.0"), "inconsistent_label", "damage_level=3"),
    (outcome("R-B23", quote_accepted="perhaps"), "wrong_type", "'perhaps' is not a boolean"),
]

CHATS_B = [
    (chat("T-B1", "R-B1"), None, None),
    (chat("T-B1", "R-B1"), "duplicate_transcript", "repeats an earlier line"),
    (chat("T-X", "R-ZZZ"), "unknown_request", "R-ZZZ is in no batch ingested so far"),
    (chat("T-B3", "R-B2", speaker="agent"), "invalid_turn", "speaker 'agent'"),
    (b'"hello"', "not_an_object", "a string"),
    (chat("T-B2", "R-B2"), None, None),
]

# photos/ of batch B: (file name, bytes or "link", reason or None).
PHOTOS_B = [
    ("b1.png", png(), None),
    ("b2.png", png(9), None),
    ("b10.png", png(10), None),
    ("b23.png", png(11), None),
    ("cut.png", png(64)[:60], "truncated_image"),
    ("bomb.png", png_claiming(50_000, 50_000), "too_many_pixels"),
    ("zero.png", b"", "empty_file"),
    ("link.png", "link", "symlink"),
    ("jpeg.png", encoded("JPEG"), "wrong_extension"),
    ("gif.png", encoded("GIF"), "wrong_extension"),
    ("anim.gif", encoded("GIF"), "unexpected_file"),
    ("notes.txt", b"see the photos", "unexpected_file"),
    ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x13" * 64, "not_an_image"),
]

# Batch "wiring": references to rows that were quarantined, told apart from unknown ones.
REQUESTS_WIRING = [
    (request("R-W1", "C-W-BAD", photo="photos/w.png"), "customer_quarantined", "C-W-BAD's row"),
    (request("R-W2", photo="photos/w.png", channel="fax"), "unknown_value", "channel='fax'"),
    (request("R-W3", photo="photos/w.png"), None, None),
]
CUSTOMERS_WIRING = [(customer("C-W-BAD", tenure_months="-1"), "out_of_range", "tenure_months")]
OUTCOMES_WIRING = [
    (outcome("R-W2"), "request_quarantined", "R-W2's request line was quarantined"),
    (outcome("R-B5"), "request_quarantined", "R-B5's request line"),  # quarantined in batch B
    (outcome("R-W3"), None, None),
]
CHATS_WIRING = [(chat("T-W2", "R-W2"), "request_quarantined", "R-W2's request line")]


def write_batch(root: Path, batch: str, files: dict[str, bytes], photos: dict) -> None:
    folder = root / "batches" / batch
    (folder / "photos").mkdir(parents=True)
    digests = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    for name, data in photos.items():
        if data == "link":
            (folder / "photos" / name).symlink_to(root / "outside.png")
        else:
            (folder / "photos" / name).write_bytes(data)
            digests[f"photos/{name}"] = hashlib.sha256(data).hexdigest()
    (folder / "_READY").write_text(json.dumps({"batch_id": batch, "files": digests}))


def joined(cases, *, header: bytes | None = None, end: bytes = b"\n") -> bytes:
    lines = [line for line, _, _ in cases]
    if header is not None:
        lines = [header, *lines]
    return end.join(lines) + end


def write_landing(root: Path) -> None:
    reference = root / "reference"
    (reference / "holdout" / "photos").mkdir(parents=True)
    (reference / "catalog.csv").write_bytes(
        b"product_id,product_line,title,list_price_usd,rating\n"
        b'P1,Batteries,"AA, 40-count",20.99,4.8\nP2,Cameras,Cam,289.99,\n'
    )
    holdout = png(12)
    (reference / "holdout" / "photos" / "h1.png").write_bytes(holdout)
    (reference / "holdout" / "labels.csv").write_text(
        "photo_file,sha256,defect_probability,damage_level,cell_type\n"
        f"h1.png,{hashlib.sha256(holdout).hexdigest()},0.0,0,poly\n"
    )
    (root / "outside.png").write_bytes(png())
    write_batch(
        root,
        BATCH_A,
        {
            "requests.jsonl": request("R-A1", photo="photos/a1.png")
            + b"\n"
            + request("R-A2", "C-2", photo="photos/a2.png")
            + b"\n",
            "customers.csv": CUSTOMER_HEADER + b"\n" + customer("C-1") + b"\n" + customer("C-2"),
            "outcomes.csv": OUTCOME_HEADER + b"\n",
            "chats.jsonl": chat("T-A1", "R-A1") + b"\n",
        },
        {"a1.png": png(), "a2.png": png(9)},
    )
    requests_b = joined(REQUESTS_B[:3], end=b"\r\n") + joined(REQUESTS_B[3:])
    write_batch(
        root,
        BATCH_B,
        {
            "requests.jsonl": requests_b.removesuffix(b"\n"),
            "customers.csv": b"\xef\xbb\xbf"
            + joined(CUSTOMERS_B, header=CUSTOMER_HEADER, end=b"\r\n"),
            "outcomes.csv": joined(OUTCOMES_B, header=OUTCOME_HEADER),
            "chats.jsonl": joined(CHATS_B),
        },
        {name: data for name, data, _ in PHOTOS_B},
    )
    empty = root / "batches" / BATCH_EMPTY
    empty.mkdir()
    (empty / "_READY").write_text("")
    write_batch(
        root,
        BATCH_WIRING,
        {
            "requests.jsonl": joined(REQUESTS_WIRING),
            "customers.csv": joined(CUSTOMERS_WIRING, header=CUSTOMER_HEADER),
            "outcomes.csv": joined(OUTCOMES_WIRING, header=OUTCOME_HEADER),
            "chats.jsonl": joined(CHATS_WIRING),
        },
        {"w.png": png()},
    )


def expected_quarantine(source: str, file_name: str, cases, first_line: int) -> list[tuple]:
    """(source, file, line number, reason, detail fragment) of each case that is quarantined."""
    return [
        (source, file_name, number, reason, fragment)
        for number, (_, reason, fragment) in enumerate(cases, start=first_line)
        if reason is not None
    ]


class Pipeline:
    """The landing tree, the warehouse and one Dagster instance shared by the tests below."""

    def __init__(self, root: Path):
        self.paths = DataPaths(root)
        self.assets = dg.load_assets_from_modules(INGEST_MODULES)
        self.resources = build_resources(self.paths)
        self.instance = dg.DagsterInstance.ephemeral()
        self.checks: dict[str, list] = {}

    def run(self, selection, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            self.assets,
            selection=selection,
            partition_key=partition_key,
            instance=self.instance,
            resources=self.resources,
        )
        assert result.success
        self.checks.setdefault(partition_key, []).extend(result.get_asset_check_evaluations())
        return result

    def sql(self, query: str, *params) -> pl.DataFrame:
        with duckdb.connect(str(self.paths.warehouse), read_only=True) as con:
            return con.execute(query, list(params)).pl()

    def silver_snapshot(self, batch: str) -> dict[str, pl.DataFrame]:
        tables = [
            "repair_requests",
            "repair_photos",
            "customers",
            "technician_outcomes",
            "quarantine",
        ]
        return {
            table: self.sql(f"select * from silver.{table} where batch = ? order by all", batch)
            for table in tables
        }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability") / "data"
    write_landing(root / "landing")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PSEUDONYM_KEY_ENV, "reliability-test-key")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DAGSTER_DISABLE_TELEMETRY", "true")
        run = Pipeline(root)
        run.run(jobs.REFERENCE_ASSETS)
        run.instance.add_dynamic_partitions(
            landing_batches.name, [BATCH_A, BATCH_B, BATCH_EMPTY, BATCH_WIRING]
        )
        for batch in (BATCH_A, BATCH_B, BATCH_EMPTY):
            run.run(BATCH_ASSETS, batch)
        run.first_b = run.silver_snapshot(BATCH_B)
        # The same partition again: silver must come out the same, with no duplicates.
        run.run(BATCH_ASSETS, BATCH_B)
        yield run


def test_every_bad_line_of_batch_b_is_quarantined_with_its_reason(pipeline):
    rows = pipeline.sql(
        "select source, source_file, line_number, reason, detail from silver.quarantine "
        "where batch = ? and source <> 'repair_photos' order by source, line_number",
        BATCH_B,
    )
    expected = sorted(
        expected_quarantine("customers", "customers.csv", CUSTOMERS_B, 2)
        + expected_quarantine("repair_requests", "requests.jsonl", REQUESTS_B, 1)
        + expected_quarantine("technician_outcomes", "outcomes.csv", OUTCOMES_B, 2)
    )
    assert rows.select("source", "source_file", "line_number", "reason").rows() == [
        row[:4] for row in expected
    ]
    for (source, _, number, _, fragment), detail in zip(expected, rows["detail"], strict=True):
        assert fragment in detail, (source, number, detail)


def test_quarantine_finds_each_original_record_in_bronze(pipeline):
    rows = pipeline.sql(
        "select q.line_number, q.record_id, q.record, b.raw from silver.quarantine q "
        "join bronze.repair_requests b on b.batch = q.batch and b.source_file = q.source_file "
        "and b.line_number = q.line_number and b.line_sha256 = q.record_sha256 "
        "where q.batch = ? and q.source = 'repair_requests' order by q.line_number",
        BATCH_B,
    )
    quarantined = [
        (number, bad)
        for number, (bad, reason, _) in enumerate(REQUESTS_B, start=1)
        if reason is not None
    ]
    # Every quarantined line is found in bronze by its digest, byte for byte as landed.
    assert [(number, raw) for number, _, _, raw in rows.rows()] == quarantined
    # Request lines carry personal data, so silver withholds their text but names the record.
    assert rows["record"].null_count() == rows.height
    record_ids = dict(zip(rows["line_number"], rows["record_id"], strict=True))
    assert (record_ids[4], record_ids[8], record_ids[20], record_ids[21]) == (
        "R-A1",
        "123",
        "R-B20",
        None,
    )
    outcomes = pipeline.sql(
        "select line_number, record_id, record from silver.quarantine "
        "where batch = ? and source = 'technician_outcomes' order by line_number",
        BATCH_B,
    )
    # Outcome lines hold no personal data: their text is kept.
    assert outcomes.rows()[1] == (5, "R-B1", OUTCOMES_B[3][0].decode())


def test_every_bad_photo_of_batch_b_is_quarantined(pipeline):
    rows = pipeline.sql(
        "select source_file, reason from silver.quarantine "
        "where batch = ? and source = 'repair_photos' order by source_file",
        BATCH_B,
    )
    assert rows.rows() == sorted(
        (f"photos/{name}", reason) for name, _, reason in PHOTOS_B if reason is not None
    )
    clean = pipeline.sql(
        "select source_file from silver.repair_photos where batch = ? order by 1", BATCH_B
    )
    assert clean["source_file"].to_list() == sorted(
        f"photos/{name}" for name, _, reason in PHOTOS_B if reason is None
    )


def test_the_clean_rows_of_batch_b_reach_silver(pipeline):
    requests = pipeline.sql(
        "select request_id, line_number, submitted_at, extra_fields from silver.repair_requests "
        "where batch = ? order by line_number",
        BATCH_B,
    )
    assert requests.select("request_id", "line_number").rows() == [
        ("R-B1", 1),
        ("R-B2", 2),
        ("R-B10", 10),
        ("R-B23", 23),
    ]
    assert str(requests["submitted_at"][2]) == "2026-01-12 10:00:00+00:00"
    assert requests["extra_fields"].to_list() == [None, None, None, '["priority"]']
    customers = pipeline.sql(
        "select customer_id, line_number from silver.customers where batch = ?", BATCH_B
    )
    assert customers.rows() == [("C-B1", 2)]
    outcomes = pipeline.sql(
        "select request_id, quote_accepted from silver.technician_outcomes where batch = ? "
        "order by line_number",
        BATCH_B,
    )
    assert outcomes.rows() == [("R-A1", True), ("R-A2", False)]


def test_chat_transcripts_of_batch_b_are_captured_or_quarantined(pipeline):
    log = pipeline.sql(
        "select transcript_id, line_number from chatbot.chatbot_capture_log where batch = ? "
        "order by line_number",
        BATCH_B,
    )
    assert log.rows() == [("T-B1", 1), ("T-B2", 6)]
    rows = pipeline.sql(
        "select line_number, reason, detail from chatbot.chat_quarantine where batch = ? "
        "order by line_number",
        BATCH_B,
    )
    expected = [
        (number, reason, fragment)
        for number, (_, reason, fragment) in enumerate(CHATS_B, start=1)
        if reason is not None
    ]
    assert rows.select("line_number", "reason").rows() == [(n, r) for n, r, _ in expected]
    for (_, _, detail), (_, _, fragment) in zip(rows.rows(), expected, strict=True):
        assert fragment in detail


SOURCES = {
    # bronze table: (silver table, quarantine table, quarantine source, row key)
    "repair_requests": ("silver.repair_requests", "silver.quarantine", "repair_requests"),
    "customers": ("silver.customers", "silver.quarantine", "customers"),
    "technician_outcomes": (
        "silver.technician_outcomes",
        "silver.quarantine",
        "technician_outcomes",
    ),
    "repair_photos": ("silver.repair_photos", "silver.quarantine", "repair_photos"),
    "chat_transcripts": (
        "chatbot.chatbot_capture_log",
        "chatbot.chat_quarantine",
        "chat_transcripts",
    ),
}


@pytest.mark.parametrize("batch", [BATCH_A, BATCH_B, BATCH_EMPTY])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_bronze_row_is_in_silver_or_quarantine_exactly_once(pipeline, batch, source):
    silver, quarantine, name = SOURCES[source]
    key = "source_file" if source == "repair_photos" else "source_file, line_number"
    landed = pipeline.sql(f"select {key} from bronze.{source} where batch = ?", batch)
    accounted = pipeline.sql(
        f"select {key}, count(*) as n from ("
        f"  select {key} from {silver} where batch = ?"
        f"  union all select {key} from {quarantine} where batch = ? and source = ?"
        f") group by all order by all",
        batch,
        batch,
        name,
    )
    assert accounted.drop("n").sort(accounted.columns[:-1]).rows() == sorted(landed.rows())
    assert set(accounted["n"]) <= {1}
    if batch == BATCH_EMPTY:
        assert landed.height == 0


@pytest.mark.parametrize("batch", [BATCH_A, BATCH_B, BATCH_EMPTY])
def test_the_blocking_conservation_check_passed(pipeline, batch):
    evaluations = [e for e in pipeline.checks[batch] if e.check_name == CONSERVATION_CHECK]
    assert evaluations and all(evaluation.passed for evaluation in evaluations)
    metadata = evaluations[-1].metadata
    if batch == BATCH_B:
        assert metadata["repair_requests_bronze"].value == len(REQUESTS_B)
        assert metadata["repair_requests_silver"].value == 4
        assert metadata["repair_photos_quarantine"].value == 9
    assert all(
        value.value == 0 for name, value in metadata.items() if name.endswith("_unaccounted")
    )


def test_rematerializing_a_batch_changes_nothing(pipeline):
    again = pipeline.silver_snapshot(BATCH_B)
    for table, frame in pipeline.first_b.items():
        assert frame.height > 0, table
        assert again[table].equals(frame), table
    total = pipeline.sql("select count(*) as n from silver.quarantine where batch = ?", BATCH_B)
    assert total["n"][0] == pipeline.first_b["quarantine"].height


def test_odd_batch_names_survive_as_keys_and_sql_values(pipeline):
    batches = pipeline.sql("select distinct batch from bronze.repair_requests order by 1")
    assert batches["batch"].to_list() == [BATCH_A, BATCH_B]
    assert BATCH_B in pipeline.instance.get_dynamic_partitions(landing_batches.name)


def test_references_to_quarantined_rows_are_told_apart(pipeline):
    pipeline.run(BATCH_ASSETS, BATCH_WIRING)
    rows = pipeline.sql(
        "select source, line_number, reason from silver.quarantine where batch = ? "
        "order by source, line_number",
        BATCH_WIRING,
    )
    assert rows.rows() == sorted(
        [
            (source, number, reason)
            for source, _, number, reason, _ in (
                expected_quarantine("repair_requests", "requests.jsonl", REQUESTS_WIRING, 1)
                + expected_quarantine("customers", "customers.csv", CUSTOMERS_WIRING, 2)
                + expected_quarantine("technician_outcomes", "outcomes.csv", OUTCOMES_WIRING, 2)
            )
        ]
    )
    chats = pipeline.sql(
        "select line_number, reason from chatbot.chat_quarantine where batch = ?", BATCH_WIRING
    )
    assert chats.rows() == [(1, "request_quarantined")]
