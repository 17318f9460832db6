"""The label origins through the whole demo graph: synthetic photos from landing to gold with
their marker, chatbot labels from the chats, and gold.damage_labels holding all four origins."""

import duckdb
import polars as pl
import pytest

from compositional_ai.landing.synthetic import GENERATOR_VERSION
from compositional_ai.summary import render

pytestmark = pytest.mark.slow


def sql(paths, query: str) -> pl.DataFrame:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(query).pl()


def test_synthetic_photos_reach_silver_with_their_marker(demo):
    paths, landing, _ = demo
    silver = sql(
        paths,
        "select batch, source_file, sha256, synthetic, generator_version, parent_sha256 "
        "from silver.synthetic_photos order by sha256",
    )
    truth = landing.synthetic.sort("sha256")
    assert silver.height == truth.height > 0
    assert silver["sha256"].to_list() == truth["sha256"].to_list()
    assert silver["parent_sha256"].to_list() == truth["parent_sha256"].to_list()
    assert silver["batch"].to_list() == truth["batch_id"].to_list()
    assert silver["synthetic"].all()
    assert silver["generator_version"].unique().to_list() == [GENERATOR_VERSION]
    # Every landed synthetic file and manifest line is in silver or in quarantine.
    for source in ("synthetic_photos", "synthetic_manifest"):
        landed = sql(paths, f"select count(*) as n from bronze.{source}")["n"][0]
        held = sql(paths, f"select count(*) as n from silver.quarantine where source = '{source}'")[
            "n"
        ][0]
        assert landed == silver.height + held, source
    # No synthetic photo descends from a holdout photo, and none is one.
    holdout = set(sql(paths, "select sha256 from silver.holdout_photos")["sha256"])
    assert not holdout & (set(silver["parent_sha256"]) | set(silver["sha256"]))


def test_gold_damage_labels_hold_every_origin_with_its_provenance(demo):
    paths, landing, _ = demo
    labels = sql(paths, "select * from gold.damage_labels")
    counts = dict(labels.group_by("label_origin").len().iter_rows())

    def request_ids(origin: str) -> set[str]:
        return set(labels.filter(pl.col("label_origin") == origin)["request_id"])

    # Technician labels are the landed outcomes and, once the service has recorded outcomes
    # (the served-loop tests share this demo), those too; model labels are every prediction.
    landed = set(sql(paths, "select request_id from gold.confirmed_labels")["request_id"])
    served = set()
    if sql(
        paths,
        "select count(*) as n from information_schema.tables where table_name = 'served_outcomes'",
    )["n"][0]:
        served = set(sql(paths, "select request_id from repair.served_outcomes")["request_id"])
    assert landed <= request_ids("technician") <= landed | served
    predicted = set(
        sql(paths, "select request_id from repair.repair_inference_log where status = 'ok'")[
            "request_id"
        ]
    )
    assert predicted <= request_ids("model")
    assert counts["chatbot"] > 0 and counts["synthetic"] > 0
    assert labels.filter(pl.col("confirmed"))["label_origin"].unique().to_list() == ["technician"]
    # A synthetic label is its parent's technician label, the expert label the parent carries.
    synthetic = labels.filter(pl.col("label_origin") == "synthetic").join(
        landing.synthetic, left_on="photo_sha256", right_on="sha256"
    )
    assert synthetic.height == counts["synthetic"]
    assert (synthetic["damage_level"] == synthetic["damage_level_right"]).all()
    assert (synthetic["request_id"] == synthetic["parent_request_id"]).all()
    # A chatbot label is what the simulated customer said, read back by the extractor.
    chats = labels.filter(pl.col("label_origin") == "chatbot").join(
        landing.chat_truth, on="request_id"
    )
    assert chats.height == counts["chatbot"]
    assert (chats["damage_level"] == chats["described_level"]).all()
    model = labels.filter(pl.col("label_origin") == "model")
    assert model["confidence"].is_not_null().all() and model["model_version"].is_not_null().all()


def test_the_training_sets_keep_their_origin_and_the_default_policy_admits_technicians(demo):
    paths, _, _ = demo
    for table in ("feedback.repair_feedback_training_set", "defect_detection.defect_training_set"):
        origins = sql(paths, f"select distinct label_origin from {table}")
        assert origins["label_origin"].to_list() == ["technician"], table
    lineage = sql(
        paths,
        "select distinct label_origin from gold.prediction_lineage "
        "where consumed_by in ('repair_damage_model', 'defect_detector')",
    )
    assert lineage["label_origin"].to_list() == ["technician"]


def test_the_summary_counts_labels_by_origin(demo):
    _, _, summary = demo
    labels = summary["labels"]
    assert set(labels["by_origin"]) == {"technician", "model", "chatbot", "synthetic"}
    assert (
        labels["by_origin"]["technician"]["rows"] == labels["by_origin"]["technician"]["confirmed"]
    )
    assert labels["by_origin"]["synthetic"]["confirmed"] == 0
    agreement = labels["agreement_with_technicians"]["chatbot"]
    assert 0.0 < agreement["agreement"] <= 1.0 and agreement["compared"] > 0
    assert "Damage labels by origin" in render(summary)
