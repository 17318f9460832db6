"""The blocking check that keeps malformed predictions out of training."""

from datetime import UTC, datetime

import polars as pl
import pytest

from compositional_ai.repair_service.assets import (
    INFERENCE_LOG_SCHEMA,
    prediction_problems,
    predictions_valid,
)


def _log(**overrides) -> pl.DataFrame:
    row = {
        "request_id": "R1",
        "batch": "b1",
        "source": "batch",
        "client_request_id": None,
        "status": "ok",
        "error": None,
        "model_name": "repair_damage_model",
        "model_version": "1",
        "input_sha256": "a",
        "product_id": "P1",
        "predicted_level": 2,
        "probabilities": [0.1, 0.2, 0.6, 0.1],
        "confidence": 0.6,
        "quote_usd": 100.0,
        "latency_ms": 3.0,
        "inferred_at": datetime(2026, 1, 12, tzinfo=UTC),
    }
    row.update(overrides)
    return pl.DataFrame([row], schema=INFERENCE_LOG_SCHEMA)


@pytest.mark.parametrize(
    ("log", "problem"),
    [
        (_log(predicted_level=None), "null_predictions"),  # a row without a grade
        (_log(model_version=None), "null_predictions"),  # a row that names no model version
        (_log(predicted_level=7), "levels_out_of_range"),  # a grade outside 0..3
        (_log(probabilities=[0.5, 0.6, 0.0, 0.0]), "probabilities_not_summing_to_one"),
        (_log(probabilities=[0.5, 0.5]), "wrong_probability_count"),  # a 2-class model served
        (_log().drop("quote_usd"), "schema_mismatches"),  # a column gone from the log
    ],
)
def test_each_problem_fails_the_check(log, problem):
    result = predictions_valid(log)

    assert result.passed is False
    assert result.metadata[problem].value == 1


def test_a_sound_log_passes_and_failed_requests_are_not_predictions():
    log = pl.concat(
        [
            _log(),
            _log(
                request_id="R2",
                status="415",
                predicted_level=None,
                probabilities=None,
                model_version=None,
            ),
        ]
    )

    assert set(prediction_problems(log).values()) == {0}
    assert predictions_valid(log).passed is True
