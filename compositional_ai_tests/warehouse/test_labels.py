"""gold.damage_labels' rows: every label of the four origins, with who gave it."""

import polars as pl
import pytest

from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA
from compositional_ai.repair_service.served_assets import (
    all_damage_labels,
    all_inferences,
    table_columns,
)
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse.labels import (
    DAMAGE_LABEL_SCHEMA,
    agreement_with_technicians,
    damage_labels,
)
from compositional_ai.warehouse.reporting import LABEL_COLUMNS, label_columns

CONFIRMED = label_columns(
    pl.DataFrame(
        {
            "request_id": ["R1", "R2", "R3"],
            "confirmed_in_batch": ["b1", "b2", "b2"],
            "damage_level": [0, 3, 1],
            "cell_type": ["mono", "poly", "mono"],
            "inspected_at": [None, None, None],
            "technician_id": ["TECH-01", "TECH-02", "TECH-01"],
            "request_batch": ["b1", "b1", "b1"],
            "channel": ["workshop", "online", "online"],
            "photo_sha256": ["pa", "pb", "pc"],
            "customer_id": ["C1", "C2", "C3"],
        },
        schema_overrides={"inspected_at": pl.Datetime("us", "UTC")},
    )
)
INFERENCES = pl.DataFrame(
    {
        "request_id": ["R2", "R3", "R4", "R5"],
        "batch": ["b1", "b1", "b2", "b2"],
        "status": ["ok", "ok", "ok", "error"],
        "model_name": ["repair_damage_model"] * 4,
        "model_version": ["1", "1", "2", None],
        "input_sha256": ["pb", "pc", "pd", "pe"],
        "predicted_level": [3, 0, 2, None],
        "confidence": [0.9, 0.6, 0.99, None],
    }
)
CAPTURE = pl.DataFrame(
    {
        "batch": ["b1", "b1", "b2", "b2"],
        "request_id": ["R2", "R3", "R4", "R9"],
        "reported_damage_level": [3, None, 2, 1],
        "reported_level_confidence": [1.0, None, 0.75, 1.0],
        "extractor_version": ["slots-1.1"] * 4,
    }
)
REQUESTS = pl.DataFrame(
    {
        "batch": ["b1", "b1", "b1", "b2"],
        "request_id": ["R1", "R2", "R3", "R4"],
        "photo_sha256": ["pa", "pb", "pc", "pd"],
    }
)
SYNTHETIC = pl.DataFrame(
    {
        "batch": ["b2", "b2", "b2"],
        "sha256": ["sa", "sb", "sx"],
        "parent_sha256": ["pa", "pb", "p-unlabelled"],
        "generator_version": ["synth-1.0"] * 3,
    }
)


@pytest.fixture(scope="module")
def labels() -> pl.DataFrame:
    return damage_labels(
        confirmed=CONFIRMED,
        inferences=INFERENCES,
        capture_log=CAPTURE,
        requests=REQUESTS,
        synthetic=SYNTHETIC,
    )


def test_every_origin_has_its_rows_and_only_technicians_confirm(labels):
    assert labels.schema == pl.Schema(DAMAGE_LABEL_SCHEMA)
    assert labels.select("label_origin", "request_id", "photo_sha256").rows() == [
        ("technician", "R1", "pa"),
        ("synthetic", "R1", "sa"),
        ("technician", "R2", "pb"),
        ("model", "R2", "pb"),
        ("chatbot", "R2", "pb"),
        ("synthetic", "R2", "sb"),
        ("technician", "R3", "pc"),
        ("model", "R3", "pc"),
        ("model", "R4", "pd"),
        ("chatbot", "R4", "pd"),
    ]
    confirmed = labels.filter(pl.col("confirmed"))
    assert set(confirmed["label_origin"]) == {"technician"}
    assert confirmed.height == 3


@pytest.mark.parametrize(
    ("origin", "request_id", "expected"),
    [
        # a technician's label: who inspected, in which batch it arrived, no confidence
        (
            "technician",
            "R2",
            {"batch": "b2", "damage_level": 3, "confidence": None, "labelled_by": "TECH-02"},
        ),
        # a prediction: the model version and its confidence; the failed R5 is no label
        (
            "model",
            "R4",
            {
                "batch": "b2",
                "damage_level": 2,
                "confidence": 0.99,
                "labelled_by": "repair_damage_model@2",
                "model_version": "2",
                "defective": True,
            },
        ),
        # what the customer reported, with the extractor's confidence
        (
            "chatbot",
            "R4",
            {"damage_level": 2, "confidence": 0.75, "labelled_by": "slots-1.1"},
        ),
        # a synthetic photo inherits its parent's technician label and names its parent
        (
            "synthetic",
            "R2",
            {
                "photo_sha256": "sb",
                "parent_sha256": "pb",
                "batch": "b2",
                "request_batch": "b1",
                "damage_level": 3,
                "cell_type": "poly",
                "labelled_by": "synth-1.0",
                "confirmed": False,
            },
        ),
    ],
)
def test_each_origin_records_who_labelled(labels, origin, request_id, expected):
    row = labels.filter(
        (pl.col("label_origin") == origin) & (pl.col("request_id") == request_id)
    ).row(0, named=True)
    assert {key: row[key] for key in expected} == expected


def test_labels_need_what_they_label(labels):
    # R9's chat names a request that never landed, R3's customer reported no level, and the
    # synthetic photo whose parent no technician labelled waits for that label.
    assert "R9" not in labels["request_id"].to_list()
    assert labels.filter(
        (pl.col("label_origin") == "chatbot") & (pl.col("request_id") == "R3")
    ).is_empty()
    assert "sx" not in labels["photo_sha256"].to_list()
    assert labels.filter(pl.col("label_origin") != "synthetic")["parent_sha256"].null_count() == (
        labels.filter(pl.col("label_origin") != "synthetic").height
    )


def test_agreement_with_technicians(labels):
    assert agreement_with_technicians(labels) == {
        # R2 predicted 3 (confirmed 3), R3 predicted 0 (confirmed 1)
        "model": {"compared": 2, "agreeing": 1, "agreement": 0.5},
        # R2 reported 3 (confirmed 3); R4 has no technician label
        "chatbot": {"compared": 1, "agreeing": 1, "agreement": 1.0},
    }


def test_no_sources_no_labels():
    empty = damage_labels(
        confirmed=CONFIRMED.head(0),
        inferences=INFERENCES.head(0),
        capture_log=CAPTURE.head(0),
        requests=REQUESTS.head(0),
        synthetic=SYNTHETIC.head(0),
    )
    assert empty.height == 0
    assert empty.schema == pl.Schema(DAMAGE_LABEL_SCHEMA)
    assert agreement_with_technicians(empty)["chatbot"] == {
        "compared": 0,
        "agreeing": 0,
        "agreement": 0.0,
    }


def test_labels_are_read_from_whichever_tables_exist(tmp_path):
    warehouse = Warehouse(path=str(tmp_path / "w.duckdb"))
    with warehouse.connect("set up") as con:
        con.execute("create schema silver")
        con.execute("create schema chatbot")
        con.register("requests", REQUESTS.with_columns(pl.lit(b"x").alias("content")))
        con.execute("create table silver.repair_requests as select * from requests")
        # A capture log from before the reported level existed.
        con.register("capture", CAPTURE.drop("reported_damage_level", "reported_level_confidence"))
        con.execute("create table chatbot.chatbot_capture_log as select * from capture")
    assert table_columns(warehouse, "silver", "repair_requests", ("request_id",)).columns == [
        "request_id"
    ]
    assert table_columns(warehouse, "silver", "nowhere", ("a", "b")).shape == (0, 2)
    batch_log = INFERENCES.select(
        pl.col(name) if name in INFERENCES.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in INFERENCE_LOG_SCHEMA.items()
    )
    frame = all_damage_labels(
        warehouse, CONFIRMED.select(LABEL_COLUMNS), all_inferences(warehouse, batch_log)
    )
    # No synthetic photos yet and no reported levels: technician and model labels only.
    assert dict(frame.group_by("label_origin").len().iter_rows()) == {"technician": 3, "model": 3}
