"""The whole graph on a small slice of the real data: every layer fills, and the models learn
from the inference log."""

import json
import shutil

import duckdb
import pytest
from dagster import DagsterInstance


def _sql(paths, query):
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(query).fetchall()


pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "schema",
    [
        "bronze",
        "silver",
        "gold",
        "repair",
        "chatbot",
        "feedback",
        "defect_detection",
        "recommendation",
    ],
)
def test_every_layer_holds_rows(demo, schema):
    paths, _, summary = demo
    tables = {
        name: rows for name, rows in summary["tables"].items() if name.startswith(f"{schema}.")
    }
    assert tables, f"no {schema} tables"
    # Quarantines and files outside the landing contract are empty when the data is sound.
    healthy_empty = ("quarantine", "unread_files")
    empty = [
        name
        for name, rows in tables.items()
        if rows == 0 and not any(part in name for part in healthy_empty)
    ]
    assert empty == []


def test_every_landed_request_is_in_silver_or_quarantine(demo):
    paths, landing, _ = demo
    landed = sum(n for name, n in landing.counts.items() if name.endswith("requests.jsonl"))
    silver = _sql(paths, "select count(*) from silver.repair_requests")[0][0]
    quarantined = _sql(
        paths, "select count(*) from silver.quarantine where source = 'repair_requests'"
    )[0][0]
    assert silver + quarantined == landed
    assert quarantined >= 1  # the generator injects faulty request lines


def test_the_inference_log_names_the_model_version_that_made_each_row(demo):
    paths, _, _ = demo
    versions = _sql(paths, "select distinct model_version from repair.repair_inference_log")
    assert versions == [("1",)]
    online = _sql(paths, "select count(*) from silver.repair_requests where channel = 'online'")
    logged = _sql(paths, "select count(*) from repair.repair_inference_log")
    assert logged == online


def test_training_sets_were_built_from_the_inference_log(demo):
    paths, _, _ = demo
    consumed = _sql(
        paths,
        "select count(*) from feedback.repair_feedback_training_set "
        "where inference_batch is not null and model_version = '1'",
    )[0][0]
    assert consumed > 0
    recommended = _sql(
        paths,
        "select count(*) from recommendation.recommendation_training_set "
        "where predicted_damage_level is not null",
    )[0][0]
    assert recommended > 0


def test_no_raw_contact_leaves_bronze(demo):
    paths, landing, _ = demo
    emails = landing.chat_truth["email"].drop_nulls().to_list()
    for schema, table in _sql(
        paths,
        "select table_schema, table_name from information_schema"
        ".tables where table_schema <> 'bronze'",
    ):
        text = str(_sql(paths, f'select * from "{schema}"."{table}"'))
        leaked = [email for email in emails if email in text]
        assert leaked == [], f"{schema}.{table} holds raw e-mails"


def test_the_registry_holds_every_model_and_the_summary_says_so(demo):
    paths, _, summary = demo
    written = json.loads((paths.reports / "demo_summary.json").read_text())
    models = written["models"]
    assert models["repair_damage_model"]["versions"] == ["1", "2"]
    assert models["defect_detector"]["versions"] == ["1"]
    assert models["service_recommender"]["versions"] == ["1"]
    seed_metrics = models["repair_damage_model"]["metrics"]["1"]
    assert 0.0 <= seed_metrics["four_class_accuracy"] <= 1.0
    assert seed_metrics["holdout_size"] == 16
    assert set(written) >= {"tables", "quarantine", "models"}
    assert sum(written["quarantine"].values()) >= 1


def test_the_lineage_follows_a_version_through_the_loop(demo):
    from compositional_ai.definitions import build_resources
    from compositional_ai.feedback.lineage import lineage_of

    paths, _, _ = demo
    chain = lineage_of(build_resources(paths)["warehouse"], "repair_damage_model", "1")

    made = sum(row["n"] for row in chain["predictions"])
    logged = _sql(paths, "select count(*) from repair.repair_inference_log where status = 'ok'")
    assert made == logged[0][0]
    confirmed = _sql(
        paths,
        "select count(*) from gold.confirmed_labels l join repair.repair_inference_log p "
        "using (request_id)",
    )[0][0]
    assert chain["labels"]["confirmed"] == confirmed > 0
    assert chain["labels"]["self_labelled"] == 0  # the default policy admits no self-labels
    consumers = {(row["consumed_by"], row["consumed_by_version"]) for row in chain["consumers"]}
    assert ("repair_damage_model", "2") in consumers
    assert ("defect_detector", "1") in consumers
    assert ("service_recommender", "1") in consumers


def test_the_gating_checks_ran_and_an_empty_partition_warned(demo):
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    paths, _, _ = demo
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(paths.dagster_home))
    try:
        instance = DagsterInstance.get()
        checks = {
            (
                key.asset_key.to_user_string(),
                key.name,
            ): instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
            for key in [
                AssetCheckKey(AssetKey(["repair", "repair_inference_log"]), "predictions_valid"),
                AssetCheckKey(AssetKey(["silver", "quarantine"]), "bronze_rows_accounted_for"),
                AssetCheckKey(AssetKey(["silver", "technician_outcomes"]), "partition_has_rows"),
            ]
        }
    finally:
        mp.undo()
    assert all(record is not None for record in checks.values()), checks
    evaluations = {k: r.event.dagster_event.event_specific_data for k, r in checks.items()}
    assert evaluations[("repair/repair_inference_log", "predictions_valid")].passed
    assert evaluations[("silver/quarantine", "bronze_rows_accounted_for")].passed


def test_the_lineage_command_prints_the_chain_and_refuses_an_unknown_version(
    demo, monkeypatch, capsys
):
    from compositional_ai import cli

    paths, _, _ = demo
    monkeypatch.setenv("COMPOSITIONAL_AI_DATA", str(paths.root))
    cli.main(["lineage", "repair_damage_model@1"])
    printed = capsys.readouterr().out
    logged = _sql(paths, "select count(*) from repair.repair_inference_log where status = 'ok'")
    assert f"repair_damage_model@1 made {logged[0][0]} predictions:" in printed
    assert " in the batch inference log, batch 20" in printed
    assert "learned from by repair_damage_model@2" in printed

    with pytest.raises(SystemExit) as refused:
        cli.main(["lineage", "repair_damage_model@99"])
    assert "repair_damage_model@99 is not a registered model version" in str(refused.value)
    assert "repair_damage_model@1, repair_damage_model@2" in str(refused.value)

    with pytest.raises(SystemExit) as unknown:
        cli.main(["lineage", "nosuch@9"])
    assert str(unknown.value) == (
        "no model named 'nosuch' is registered (registered models: defect_detector, "
        "repair_damage_model, service_recommender)"
    )


def test_make_demo_again_with_nothing_new_says_so(demo, tmp_path, monkeypatch, capsys):
    from compositional_ai import cli

    paths, _, _ = demo
    again = tmp_path / "again"
    shutil.copytree(paths.root, again)
    monkeypatch.setenv("COMPOSITIONAL_AI_DATA", str(again))
    monkeypatch.setenv("DAGSTER_HOME", str(again / "dagster_home"))
    runs_before = len(DagsterInstance.from_config(str(again / "dagster_home")).get_runs())
    cli.main(["demo"])
    printed = capsys.readouterr().out
    assert (
        "Nothing new since the last run: no landing batch to ingest, nothing to retrain" in printed
    )
    assert "Materialized" not in printed
    assert "landing batch 20" not in printed
    # One run, the reference data's; no batch, seed or retraining run.
    runs = DagsterInstance.from_config(str(again / "dagster_home")).get_runs()
    assert len(runs) == runs_before + 1
    assert runs[0].job_name == "reference_job"


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        (
            [
                "reference",
                "landing batch 2026-01-05",
                "seed repair model",
                "landing batch 2026-01-12",
            ]
            + ["retraining on the inference logs"],
            "Materialized the reference data, 2 landing batches, the seed repair model and a "
            "retraining of the models",
        ),
        (
            ["reference", "landing batch 2026-01-19"],
            "Materialized the reference data, 1 landing batch",
        ),
        (
            ["reference", "retraining on the inference logs"],
            "Materialized the reference data, a retraining of the models",
        ),
    ],
)
def test_the_demo_says_what_it_materialized(steps, said):
    from compositional_ai import cli

    batches = sum(step.startswith("landing batch") for step in steps)
    assert cli._ran(steps, batches) == said
