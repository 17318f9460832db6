"""P3's generator and its two implementations of bronze -> silver -> gold, on small data."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from benchmarks import p3_transforms as p3
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA


def test_the_generated_log_has_the_inference_logs_columns():
    assert list(p3.INFERENCE_LOG_COLUMNS) == list(INFERENCE_LOG_SCHEMA)


def test_a_batch_is_seeded_text_as_landed():
    catalog = p3.catalog_frame()
    first = p3.bronze_batch(0, 2_000, catalog)
    assert first.equals(p3.bronze_batch(0, 2_000, catalog))
    assert not first.equals(p3.bronze_batch(0, 2_000, catalog, seed=p3.SEED + 1))
    assert first.height == 2_000
    assert set(first.schema.values()) == {pl.String}


def test_a_batch_holds_retries_and_every_fault():
    frame = p3.bronze_batch(3, 20_000, p3.catalog_frame())
    retried = frame.filter(pl.col("request_id").is_duplicated() & (pl.col("request_id") != ""))
    assert retried["request_id"].n_unique() == pytest.approx(20_000 * p3.RETRY_SHARE, rel=0.1)
    assert (frame["batch"] == p3.batch_key(3)).all()
    assert (frame["product_id"] == p3.UNKNOWN_PRODUCT).sum() > 0
    assert (frame["predicted_level"] == "7").sum() > 0
    assert (frame["predicted_level"] == "two").sum() > 0
    assert (frame["inferred_at"] == "last tuesday").sum() > 0
    assert (~frame["inferred_at"].str.contains(p3.TIMESTAMP_PATTERN)).sum() > 0


BASE = {
    "request_id": "r-1",
    "batch": "2026-01-05",
    "source": "batch",
    "client_request_id": None,
    "status": "ok",
    "error": None,
    "model_name": "repair_damage_model",
    "model_version": "1",
    "input_sha256": "ab" * 32,
    "product_id": "P0001",
    "predicted_level": "2",
    "probabilities": "[0.1,0.2,0.6,0.1]",
    "confidence": "0.6",
    "quote_usd": "120.5",
    "latency_ms": "4.2",
    "inferred_at": "2026-01-06T10:00:00.000000+01:00",
}

# Each case: the fields that differ from BASE, and the reason silver gives (None: clean).
CASES = [
    ({}, None),  # a complete, valid assessment
    ({"request_id": ""}, "missing_request_id"),
    ({"inferred_at": "2026-01-06T10:00:00.000000"}, "invalid_timestamp"),  # no UTC offset
    ({"inferred_at": "last tuesday"}, "invalid_timestamp"),
    ({"inferred_at": "2026-01-06T10:00:00Z"}, "invalid_timestamp"),  # the contract spells +00:00
    ({"product_id": "P9999"}, "unknown_product"),
    ({"predicted_level": "7"}, "invalid_level"),
    ({"predicted_level": "two"}, "invalid_level"),
    ({"confidence": "1.7"}, "invalid_confidence"),
    ({"confidence": None}, "invalid_confidence"),
    ({"probabilities": "[0.5,0.5,0.0]"}, "invalid_probabilities"),  # three levels, not four
    ({"probabilities": "[0.5,x,0.0,0.5]"}, "invalid_probabilities"),
    # A failed call has no grade, and needs none.
    (
        {
            "status": "503",
            "error": "503 log_unavailable",
            "predicted_level": None,
            "probabilities": None,
            "confidence": None,
            "quote_usd": None,
        },
        None,
    ),
    # Only ok rows are graded: a failed call's leftover level is not checked.
    ({"status": "422", "predicted_level": "9"}, None),
]


def _write_bronze(root, rows: list[dict]) -> None:
    (root / "bronze").mkdir(parents=True)
    pl.DataFrame(rows, schema=dict.fromkeys(p3.INFERENCE_LOG_COLUMNS, pl.String)).write_parquet(
        root / "bronze" / "2026-01-05.parquet"
    )
    p3.catalog_frame().write_parquet(root / "catalog.parquet")


def _quarantine(out) -> dict[int, str]:
    frame = pl.read_parquet(out / "quarantine" / "*.parquet")
    return dict(zip(frame["line"].to_list(), frame["reason"].to_list(), strict=True))


@pytest.mark.parametrize("implementation", sorted(p3.IMPLEMENTATIONS))
def test_silver_rejects_each_fault_with_its_reason(tmp_path, implementation):
    rows = [{**BASE, "request_id": f"r-{i}", **change} for i, (change, _) in enumerate(CASES)]
    _write_bronze(tmp_path / "data", rows)
    counts = p3.IMPLEMENTATIONS[implementation](tmp_path / "data", tmp_path / "out", 1)
    expected = {line: reason for line, (_, reason) in enumerate(CASES) if reason}
    assert _quarantine(tmp_path / "out") == expected
    assert counts["silver_rows"] + counts["quarantined"] == len(CASES)


@pytest.mark.parametrize("implementation", sorted(p3.IMPLEMENTATIONS))
def test_the_latest_clean_delivery_of_a_request_wins(tmp_path, implementation):
    rows = [
        {**BASE, "request_id": "a", "inferred_at": "2026-01-06T10:00:00.000000+00:00"},
        {**BASE, "request_id": "a", "inferred_at": "2026-01-06T10:00:30.000000+00:00"},
        # The retry of b is later but broken: it does not displace the clean original.
        {**BASE, "request_id": "b", "inferred_at": "2026-01-06T11:00:00.000000+00:00"},
        {
            **BASE,
            "request_id": "b",
            "inferred_at": "2026-01-06T11:00:30.000000+00:00",
            "predicted_level": "7",
        },
    ]
    _write_bronze(tmp_path / "data", rows)
    p3.IMPLEMENTATIONS[implementation](tmp_path / "data", tmp_path / "out", 1)
    assert _quarantine(tmp_path / "out") == {0: "duplicate_delivery", 3: "invalid_level"}
    silver = pl.read_parquet(tmp_path / "out" / "silver" / "*.parquet").sort("request_id")
    assert silver["request_id"].to_list() == ["a", "b"]
    assert silver["inferred_at"].dt.second().to_list() == [30, 0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("p3")
    info = p3.write_bronze(root / "data", 12_000, batch_rows=4_000)
    outputs = {}
    for name, implementation in p3.IMPLEMENTATIONS.items():
        outputs[name] = (root / name, implementation(root / "data", root / name, 3))
    return root, info, outputs


def test_every_implementation_writes_the_same_gold(generated):
    root, _, outputs = generated
    for name in outputs:
        assert p3.gold_differences(root / "polars", root / name) == [], name


def test_every_bronze_row_is_in_silver_or_the_quarantine(generated):
    _, info, outputs = generated
    for _, counts in outputs.values():
        assert counts["silver_rows"] + counts["quarantined"] == info["rows"]
    weekly, reasons = p3.gold_frames(generated[0] / "polars")
    assert weekly["assessments"].sum() == outputs["polars"][1]["silver_rows"]
    assert reasons["rows"].sum() == outputs["polars"][1]["quarantined"]
    assert set(reasons["reason"]) <= set(p3.REASONS)


def test_gold_differences_notices_a_changed_value(generated, tmp_path):
    root, _, _ = generated
    changed = tmp_path / "changed"
    (changed / "gold").mkdir(parents=True)
    weekly, reasons = p3.gold_frames(root / "polars")
    weekly.with_columns(pl.col("quoted_usd") * 1.001).write_parquet(
        changed / "gold" / "weekly.parquet"
    )
    reasons.write_parquet(changed / "gold" / "quarantine.parquet")
    differences = p3.gold_differences(root / "polars", changed)
    assert len(differences) == 1 and differences[0].startswith("weekly.quoted_usd:")


def test_data_size_counts_the_first_batches(generated):
    _, info, _ = generated
    two = p3.data_size(info, 2)
    assert two["rows"] == 8_000
    assert two["bytes_in_memory"] == sum(b["bytes_in_memory"] for b in info["batches"][:2])


EDGE_STAMPS = [
    "2026-01-06T10:00:00+01:00",  # no fraction
    "2026-01-06T10:00:00.5+01:00",  # one digit: half a second
    "2026-01-06T10:00:00.000001-08:00",
    "2026-01-06T00:30:00.123456+05:45",  # the offset's minutes count
    "2026-01-06T00:30:00-00:00",
    "2026-01-01T00:00:00+14:00",  # back into the previous year
    "2026-12-31T23:59:59.999999-12:00",  # on into the next year
    "2024-02-29T12:00:00+00:00",  # a leap day
    "2026-02-29T12:00:00+00:00",  # not one
    "2026-01-06T24:00:00+00:00",
    "2026-01-06T23:59:60+01:00",  # a leap second
    "2026-01-06T10:00:00+23:59",
    "2026-01-06T10:00:00+24:00",  # no such offset
    "2026-01-06T10:00:00-14:60",
    "2026-13-01T10:00:00+00:00",
]


def test_utc_instant_gives_the_instants_of_the_full_format_parse():
    rng = np.random.default_rng(11)
    seconds = rng.integers(0, 10 * 365 * 86400, 2_000)
    fraction = [("." + f"{value:06d}"[: rng.integers(1, 7)]) * bool(value % 3) for value in seconds]
    hours = rng.integers(-23, 24, seconds.size)
    minutes = rng.integers(0, 60, seconds.size)
    seeded = [
        f"{(datetime(2020, 1, 1) + timedelta(seconds=int(s))):%Y-%m-%dT%H:%M:%S}{f}"
        f"{'-' if h < 0 else '+'}{abs(h):02d}:{m:02d}"
        for s, f, h, m in zip(seconds, fraction, hours, minutes, strict=True)
    ]
    stamps = pl.DataFrame({"stamp": EDGE_STAMPS + seeded})
    assert stamps["stamp"].str.contains(p3.TIMESTAMP_PATTERN).all()
    parsed = stamps.select(
        fast=p3.utc_instant(pl.col("stamp")),
        full=pl.col("stamp").str.to_datetime(
            p3.TIMESTAMP_FORMAT, time_unit="us", time_zone="UTC", strict=False
        ),
    )
    differ = parsed.with_columns(stamps["stamp"]).filter(pl.col("fast").ne_missing(pl.col("full")))
    assert differ.is_empty(), differ
    # The edge cases hold both kinds: instants, and stamps that name none.
    edge = parsed.head(len(EDGE_STAMPS))
    assert 0 < edge["full"].null_count() < len(EDGE_STAMPS)
    assert parsed["fast"][3] == datetime(2026, 1, 5, 18, 45, 0, 123456, tzinfo=UTC)
