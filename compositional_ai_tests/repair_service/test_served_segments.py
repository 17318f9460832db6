"""A closed served segment becomes partition rows: every call once, a re-delivery only once."""

from datetime import UTC, datetime

import polars as pl

from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.served_assets import read_segment
from compositional_ai.resources.landing import LandingArea


def outcome(status: str, *, cell_type: str | None, second: int) -> dict:
    return {
        "request_id": "srv-1",
        "technician_id": "T9",
        "inspected_at": "2026-03-02T10:00:00+00:00",
        "quote_accepted": True,
        "damage_level": 2,
        "defect_probability": None,
        "cell_type": cell_type,
        "model_version": "2",
        "predicted_level": 3,
        "status": status,
        "error": None if status == "ok" else "invalid_outcome",
        "latency_ms": 1.5,
        "recorded_at": datetime(2026, 3, 2, 10, 0, second, tzinfo=UTC).isoformat(),
    }


def closed_segment(root, stream: str, records: list[dict]) -> str:
    with served_log.ServedLog(root, stream, segment_field="batch") as log:
        segment = log.append_many(records)
    return segment


def test_a_failed_outcome_call_does_not_hide_the_corrected_one(tmp_path):
    landing = LandingArea(root=str(tmp_path))
    failed = outcome("invalid_outcome", cell_type=None, second=1)
    corrected = outcome("ok", cell_type="poly", second=2)
    # The failed call twice (a re-delivered line), then the call that succeeded.
    segment = closed_segment(
        landing.served, served_log.OUTCOMES_STREAM, [failed, failed, corrected]
    )

    rows = read_segment(landing, served_log.OUTCOMES_STREAM, segment, served_log.OUTCOME_LOG_SCHEMA)

    assert rows["status"].to_list() == ["invalid_outcome", "ok"]
    accepted = rows.filter(pl.col("status") == "ok")
    assert accepted.select("request_id", "cell_type", "damage_level").rows() == [
        ("srv-1", "poly", 2)
    ]


def test_a_re_delivered_assessment_keeps_its_first_row(tmp_path):
    landing = LandingArea(root=str(tmp_path))
    schema = {"request_id": pl.String, "status": pl.String, "batch": pl.String}
    first = {"request_id": "srv-1", "status": "ok"}
    records = [first, {"request_id": "srv-2", "status": "ok"}, {**first, "status": "again"}]
    segment = closed_segment(landing.served, served_log.ASSESSMENTS_STREAM, records)

    rows = read_segment(landing, served_log.ASSESSMENTS_STREAM, segment, schema)

    assert rows.select("request_id", "status").rows() == [("srv-1", "ok"), ("srv-2", "ok")]
