"""Gold transforms: labels join the photo they confirm; BI figures count what they say."""

from datetime import UTC, datetime

import polars as pl

from compositional_ai.warehouse import reporting

REQUESTS = pl.DataFrame(
    {
        "request_id": ["R1", "R2", "R3", "R4"],
        "batch": ["b0", "b1", "b1", "b2"],
        "channel": ["workshop", "online", "online", "online"],
        "photo_sha256": ["a", "b", "c", "d"],
        "customer_id": ["C1", "C2", "C3", "C2"],
        "product_id": ["P1", "P1", "P2", "P2"],
        "submitted_at": [
            datetime(2026, 1, 5, tzinfo=UTC),
            datetime(2026, 1, 12, tzinfo=UTC),
            datetime(2026, 1, 13, tzinfo=UTC),
            datetime(2026, 1, 19, tzinfo=UTC),
        ],
    }
)
OUTCOMES = pl.DataFrame(
    {
        "request_id": ["R1", "R2", "R3"],
        "batch": ["b0", "b2", "b2"],
        "quote_accepted": [True, True, False],
        "damage_level": [3, 1, None],
        "cell_type": ["mono", "poly", None],
        "inspected_at": [datetime(2026, 1, 6, tzinfo=UTC)] * 3,
        "technician_id": ["T1", "T2", None],
    }
)


def test_confirmed_labels_are_accepted_inspections_with_their_photo():
    labels = reporting.confirmed_labels(REQUESTS, OUTCOMES)

    assert labels.select("request_id", "photo_sha256", "damage_level", "defective").rows() == [
        ("R1", "a", 3, True),
        ("R2", "b", 1, False),
    ]
    assert labels["confirmed_in_batch"].to_list() == ["b0", "b2"]
    assert labels["request_batch"].to_list() == ["b0", "b1"]


def test_repair_volume_counts_requests_quotes_and_acceptance_per_week_and_line():
    catalog = pl.DataFrame({"product_id": ["P1", "P2"], "product_line": ["TVs", "Laptops"]})
    log = pl.DataFrame(
        {
            "request_id": ["R2", "R3", "R4"],
            "status": ["ok", "ok", "ok"],
            "quote_usd": [100.0, 300.0, 50.0],
        }
    )

    weekly = reporting.repair_volume_weekly(REQUESTS, catalog, OUTCOMES, log)

    rows = {(str(r["week"]), r["product_line"]): r for r in weekly.iter_rows(named=True)}
    assert set(rows) == {
        ("2026-01-12", "TVs"),
        ("2026-01-12", "Laptops"),
        ("2026-01-19", "Laptops"),
    }
    tvs = rows[("2026-01-12", "TVs")]
    assert (tvs["requests"], tvs["accepted"], tvs["acceptance_rate"]) == (1, 1, 1.0)
    laptops = rows[("2026-01-12", "Laptops")]
    assert (laptops["decided"], laptops["accepted"], laptops["acceptance_rate"]) == (1, 0, 0.0)
    # R4 has no decision yet: counted as a request, not in the acceptance rate.
    later = rows[("2026-01-19", "Laptops")]
    assert (later["requests"], later["decided"], later["acceptance_rate"]) == (1, 0, None)


def test_latest_customer_profile_wins():
    customers = pl.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2"],
            "batch": ["b0", "b2", "b1"],
            "line_number": [2, 2, 3],
            "tenure_months": [1, 9, 4],
        }
    ).with_columns(
        *(
            pl.lit(False).alias(c)
            for c in ("senior_citizen", "partner", "dependents", "paperless_billing")
        ),
        *(pl.lit("x").alias(c) for c in ("gender", "contract", "payment_method")),
        *(pl.lit(True).alias(c) for c in reporting.formats.SERVICE_COLUMNS),
    )

    latest = reporting.latest_customers(customers)

    assert latest.select("customer_id", "tenure_months", "last_seen_batch").rows() == [
        ("C1", 9, "b2"),
        ("C2", 4, "b1"),
    ]


def test_quarantine_summary_counts_by_source_and_reason():
    one = pl.DataFrame(
        {
            "batch": ["b1", "b1", "b2"],
            "source": ["customers"] * 3,
            "reason": ["wrong_type", "wrong_type", "out_of_range"],
        }
    )
    two = pl.DataFrame(
        {"batch": ["b2"], "source": ["chat_transcripts"], "reason": ["invalid_json"]}
    )

    summary = reporting.quarantine_summary(one, two)

    assert summary.rows() == [
        ("chat_transcripts", "invalid_json", 1, 1),
        ("customers", "out_of_range", 1, 1),
        ("customers", "wrong_type", 2, 1),
    ]
