"""gold.prediction_lineage follows the inference logs that exist when it is read."""

import polars as pl

from compositional_ai.feedback.lineage import create_lineage_view, lineage_of
from compositional_ai.lib.tables import write_frame
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA
from compositional_ai.resources.warehouse import Warehouse


def _log(source: str, request_ids: list[str]) -> pl.DataFrame:
    n = len(request_ids)
    return pl.DataFrame(
        {
            "request_id": request_ids,
            "batch": ["b1"] * n,
            "source": [source] * n,
            "status": ["ok"] * n,
            "model_name": ["repair_damage_model"] * n,
            "model_version": ["1"] * n,
            "predicted_level": [2] * n,
            "confidence": [0.9] * n,
        }
    ).with_columns(
        pl.lit(None).cast(dtype).alias(name)
        for name, dtype in INFERENCE_LOG_SCHEMA.items()
        if name
        not in {
            "request_id",
            "batch",
            "source",
            "status",
            "model_name",
            "model_version",
            "predicted_level",
            "confidence",
        }
    )


def test_served_predictions_count_even_when_the_view_is_older_than_their_table(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    with warehouse.connect("set-up") as con:
        for schema in ("repair", "gold", "feedback"):
            con.execute(f"create schema {schema}")
        write_frame(con, "repair", "repair_inference_log", _log("batch", ["r1", "r2"]))
        write_frame(
            con,
            "gold",
            "confirmed_labels",
            pl.DataFrame({"request_id": ["r1"], "damage_level": [2]}),
        )
        write_frame(
            con,
            "feedback",
            "model_training_rows",
            pl.DataFrame(
                {
                    "request_id": ["r1"],
                    "model_name": ["m"],
                    "model_version": ["2"],
                    "label_origin": ["technician"],
                }
            ),
        )
    # Made during the demo, before the service's first segment was ingested.
    create_lineage_view(warehouse)
    with warehouse.connect("the service's first segment") as con:
        write_frame(con, "repair", "served_inference_log", _log("served", ["s1", "s2", "s3"]))
    chain = lineage_of(warehouse, "repair_damage_model", "1")
    by_source = {row["source"]: row["n"] for row in chain["predictions"]}
    assert by_source == {"batch": 2, "served": 3}
    assert chain["labels"]["confirmed"] == 1
