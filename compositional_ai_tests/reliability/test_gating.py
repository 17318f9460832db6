"""Blocking checks gate what comes after them.

The checks first, as functions, on tables of figures; then the real assets on a tmp warehouse and
a tmp MLflow store: a validation that loses a row stops the batch before the chatbot log and the
inference log, a training set that holds a holdout photo stops the next repair model, and so does
a self-label share over the ceiling. Each failing check carries the figures that made it fail.
"""

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from compositional_ai import jobs
from compositional_ai.definitions import ASSET_MODULES, build_resources
from compositional_ai.feedback import assets as feedback_assets
from compositional_ai.feedback.assets import (
    NO_HOLDOUT_LEAKAGE,
    SELF_LABEL_CEILING,
    SELF_LABEL_SHARE,
    no_holdout_photos,
    self_label_share_within_ceiling,
)
from compositional_ai.landing import formats
from compositional_ai.landing.generate import LandingSummary, build_demo_landing
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.warehouse import validation
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.silver import CONSERVATION_CHECK, conservation

TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}
TRAINING_SET = dg.AssetKey(["feedback", "repair_feedback_training_set"])
NEXT_MODEL = dg.AssetKey(["feedback", "repair_damage_model_next"])
CATALOG = dg.AssetSelection.assets(["bronze", "product_catalog"], ["silver", "product_catalog"])
FEEDBACK = dg.AssetSelection.assets(TRAINING_SET, NEXT_MODEL)
# Dagster's words when a blocking check fails: the run says which check on which asset.
BLOCKED_TRAINING = (
    "1 blocking asset check failed with ERROR severity:\nfeedback/repair_feedback_training_set: {}"
)
BLOCKED_DOWNSTREAM = [
    dg.AssetKey(["chatbot", "chatbot_capture_log"]),
    dg.AssetKey(["chatbot", "chat_quarantine"]),
    dg.AssetKey(["repair", "repair_inference_log"]),
]


def rows(n: int) -> pl.DataFrame:
    return pl.DataFrame({"row": list(range(n))}, schema={"row": pl.Int64})


def validated(clean: int, quarantined: int) -> validation.Validated:
    return validation.Validated(rows(clean), rows(quarantined))


# --- the checks as functions ------------------------------------------------------------------

CONSERVATION_CASES = [
    # every bronze row is in silver or quarantine: passes
    ({"repair_requests": (16, 15, 1), "customers": (15, 15, 0)}, True, {}),
    # validation lost one customer row: the check names the source and the missing row
    (
        {"repair_requests": (16, 15, 1), "customers": (15, 14, 0)},
        False,
        {"customers_unaccounted": 1, "repair_requests_unaccounted": 0},
    ),
    # a row both in silver and in quarantine is counted twice: negative, still a failure
    ({"technician_outcomes": (15, 15, 1)}, False, {"technician_outcomes_unaccounted": -1}),
    # an empty batch accounts for itself
    ({"repair_photos": (0, 0, 0)}, True, {"repair_photos_unaccounted": 0}),
]


@pytest.mark.parametrize(("figures", "passed", "expected"), CONSERVATION_CASES)
def test_conservation_fails_when_a_bronze_row_is_not_accounted_for(figures, passed, expected):
    bronze = {source: landed for source, (landed, _, _) in figures.items()}
    outcome = {source: validated(clean, held) for source, (_, clean, held) in figures.items()}
    result = conservation(bronze, outcome)
    metadata = {key: value.value for key, value in result.metadata.items()}
    assert result.passed is passed
    assert result.check_name == CONSERVATION_CHECK
    assert result.severity == dg.AssetCheckSeverity.ERROR
    for source, (landed, clean, held) in figures.items():
        assert metadata[f"{source}_bronze"] == landed
        assert metadata[f"{source}_silver"] == clean
        assert metadata[f"{source}_quarantine"] == held
    assert expected.items() <= metadata.items()


LEAKAGE_CASES = [
    # no training photo is a holdout photo
    (["a", "b", "c"], ["h1", "h2"], 0),
    # one holdout photo slipped in
    (["a", "h1", "c"], ["h1", "h2"], 1),
    # the same holdout photo twice counts as two leaked rows
    (["h2", "h2", "c"], ["h1", "h2"], 2),
    # an empty training set leaks nothing
    ([], ["h1"], 0),
]


@pytest.mark.parametrize(("training", "holdout", "leaked"), LEAKAGE_CASES)
def test_no_holdout_photos_counts_every_leaked_row(training, holdout, leaked):
    frame = pl.DataFrame({"photo_sha256": training}, schema={"photo_sha256": pl.String})
    result = no_holdout_photos(frame, pl.DataFrame({"sha256": holdout}))
    assert result.passed is (leaked == 0)
    assert result.metadata["leaked_rows"].value == leaked
    assert result.metadata["training_rows"].value == len(training)


SHARE_CASES = [
    # technicians only
    (["technician"] * 4, 0.0, True),
    # exactly at the ceiling passes
    (["technician"] * 3 + ["model"], 0.25, True),
    # one model label in three is over it
    (["technician"] * 2 + ["model"], 1 / 3, False),
    # the share self_label_max_share=0.5 allows at most
    (["technician"] * 2 + ["model"] * 2, 0.5, False),
    # an empty set has no self-labels
    ([], 0.0, True),
]


@pytest.mark.parametrize(("origins", "share", "passed"), SHARE_CASES)
def test_self_label_share_is_checked_against_the_ceiling(origins, share, passed):
    frame = pl.DataFrame({"label_origin": origins}, schema={"label_origin": pl.String})
    result = self_label_share_within_ceiling(frame)
    assert result.passed is passed
    assert result.metadata["self_label_share"].value == pytest.approx(share)
    assert result.metadata["ceiling"].value == SELF_LABEL_CEILING


# --- the real assets ----------------------------------------------------------------------------


class Graph:
    """One data directory: its warehouse, its MLflow store, and an instance for its runs."""

    def __init__(self, root: Path):
        self.paths = DataPaths(root)
        # Checks defined apart from their assets run only when handed to materialize() too.
        self.assets = [
            *dg.load_assets_from_modules(ASSET_MODULES),
            *dg.load_asset_checks_from_modules(ASSET_MODULES),
        ]
        self.resources = build_resources(self.paths)
        self.instance = dg.DagsterInstance.ephemeral()
        self.landing: LandingSummary | None = None
        self.conservation: dict[str, dg.AssetCheckEvaluation] = {}

    def run(
        self, selection, *, partition: str | None = None, run_config: dict | None = None
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets,
            selection=selection,
            partition_key=partition,
            instance=self.instance,
            resources=self.resources,
            run_config=run_config or {},
            raise_on_error=False,
        )

    def sql(self, query: str, *params) -> pl.DataFrame:
        with duckdb.connect(str(self.paths.warehouse), read_only=True) as con:
            return con.execute(query, list(params)).pl()

    def tables(self) -> set[str]:
        found = self.sql(
            "select table_schema || '.' || table_name as name from information_schema.tables"
        )
        return set(found["name"].to_list())

    def versions(self) -> list[str]:
        return [
            version.version for version in self.resources["model_registry"].versions(REPAIR_MODEL)
        ]


def evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (found,) = [check for check in result.get_asset_check_evaluations() if check.check_name == name]
    return found


def figures(check: dg.AssetCheckEvaluation) -> dict:
    return {key: value.value for key, value in check.metadata.items()}


def failure_messages(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        event.step_key: event.event_specific_data.error.message
        for event in result.all_events
        if event.is_step_failure
    }


def materialized(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {event.asset_key for event in result.all_events if event.is_step_materialization}


def landed_rows(batch_dir: Path, file_name: str) -> int:
    """Data rows of a landing CSV, counted from the file (its header line excluded)."""
    return len((batch_dir / file_name).read_bytes().splitlines()) - 1


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Three batches through bronze, silver and the inference log, with the seed model between
    the first and the second, and gold's confirmed labels over all three."""
    root = tmp_path_factory.mktemp("gating")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PSEUDONYM_KEY_ENV, "gating-test-key")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DAGSTER_DISABLE_TELEMETRY", "true")
        landing = build_demo_landing(
            root / "landing", n_batches=3, max_train_photos=48, max_holdout_photos=16
        )
        graph = Graph(root)
        graph.landing = landing
        assert graph.run(jobs.REFERENCE_ASSETS).success
        graph.instance.add_dynamic_partitions(landing_batches.name, list(landing.batches))
        for index, batch in enumerate(landing.batches):
            result = graph.run(jobs.BATCH_ASSETS, partition=batch)
            assert result.success, batch
            graph.conservation[batch] = evaluation(result, CONSERVATION_CHECK)
            if index == 0:
                seed = graph.run(
                    jobs.SEED_MODEL_ASSETS,
                    run_config={"ops": {"repair__repair_damage_model": {"config": TINY_TRAINING}}},
                )
                assert seed.success
        assert graph.run(dg.AssetSelection.assets(["gold", "confirmed_labels"])).success
        yield graph


def feedback_config(**policy) -> dict:
    return {
        "ops": {
            "feedback__repair_feedback_training_set": {"config": policy},
            "feedback__repair_damage_model_next": {"config": TINY_TRAINING},
        }
    }


@pytest.mark.slow
def test_every_batch_of_the_loop_passed_conservation(loop):
    for batch, check in loop.conservation.items():
        unaccounted = {k: v for k, v in figures(check).items() if k.endswith("_unaccounted")}
        assert check.passed, batch
        assert set(unaccounted.values()) == {0}, batch


@pytest.mark.slow
def test_a_lost_silver_row_stops_the_batch_before_its_logs(loop, tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "gating-test-key")
    (tmp_path / "landing").symlink_to(loop.paths.landing, target_is_directory=True)
    graph = Graph(tmp_path)
    batch = loop.landing.batches[0]
    real = validation.validate_customers

    def loses_last_row(*args, **kwargs) -> validation.Validated:
        # The bug the check exists for: a validation step that drops a row without quarantining.
        result = real(*args, **kwargs)
        return validation.Validated(result.clean.head(result.clean.height - 1), result.quarantine)

    monkeypatch.setattr(validation, "validate_customers", loses_last_row)
    assert graph.run(CATALOG).success
    graph.instance.add_dynamic_partitions(landing_batches.name, [batch])
    result = graph.run(jobs.BATCH_ASSETS, partition=batch)

    check = evaluation(result, CONSERVATION_CHECK)
    landed = landed_rows(loop.paths.batches / batch, formats.CUSTOMERS_FILE)
    held = loop.sql(
        "select count(*) as n from silver.quarantine where batch = ? and source = 'customers'",
        batch,
    )["n"][0]
    assert not result.success
    assert not check.passed
    assert {
        key: value for key, value in figures(check).items() if key.startswith("customers_")
    } == {
        "customers_bronze": landed,
        "customers_silver": landed - held - 1,
        "customers_quarantine": held,
        "customers_unaccounted": 1,
    }
    others = {k: v for k, v in figures(check).items() if k.endswith("_unaccounted")}
    assert others == {**dict.fromkeys(others, 0), "customers_unaccounted": 1}
    messages = failure_messages(result)
    assert list(messages) == ["silver_batch"]
    assert f"silver/quarantine: {CONSERVATION_CHECK}" in messages["silver_batch"]
    assert "blocking asset check failed" in messages["silver_batch"]
    # Dagster blocks what comes after the check, not the asset it checks: silver is written,
    # short by the lost row, and nothing downstream of it runs.
    assert not (set(BLOCKED_DOWNSTREAM) & materialized(result))
    assert not ({"chatbot.chatbot_capture_log", "repair.repair_inference_log"} & graph.tables())
    silver = graph.sql("select count(*) as n from silver.customers where batch = ?", batch)
    assert silver["n"][0] == landed - held - 1


@pytest.mark.slow
def test_the_next_model_trains_when_both_feedback_checks_pass(loop):
    before = loop.versions()
    result = loop.run(FEEDBACK, run_config=feedback_config())
    confirmed = loop.sql("select count(*) as n from gold.confirmed_labels")["n"][0]
    assert result.success
    assert figures(evaluation(result, NO_HOLDOUT_LEAKAGE)) == {
        "leaked_rows": 0,
        "training_rows": confirmed,
    }
    assert figures(evaluation(result, SELF_LABEL_SHARE)) == {
        "self_label_share": 0.0,
        "ceiling": SELF_LABEL_CEILING,
    }
    assert NEXT_MODEL in materialized(result)
    assert len(loop.versions()) == len(before) + 1


@pytest.mark.slow
def test_a_holdout_photo_in_the_training_set_stops_the_next_model(loop, monkeypatch):
    before = loop.versions()
    holdout_sha = loop.sql("select min(sha256) as sha from silver.holdout_photos")["sha"][0]
    real = feedback_assets.feedback_training_rows

    def leaks_one_holdout_photo(*args, **kwargs) -> pl.DataFrame:
        # The bug the check exists for: a training-set change that lets a holdout photo in.
        training = real(*args, **kwargs)
        leaked = training.head(1).with_columns(
            pl.lit("R-LEAKED").alias("request_id"), pl.lit(holdout_sha).alias("photo_sha256")
        )
        return pl.concat([training, leaked])

    monkeypatch.setattr(feedback_assets, "feedback_training_rows", leaks_one_holdout_photo)
    result = loop.run(FEEDBACK, run_config=feedback_config())

    confirmed = loop.sql("select count(*) as n from gold.confirmed_labels")["n"][0]
    check = evaluation(result, NO_HOLDOUT_LEAKAGE)
    assert not result.success
    assert not check.passed
    assert figures(check) == {"leaked_rows": 1, "training_rows": confirmed + 1}
    assert evaluation(result, SELF_LABEL_SHARE).passed
    (failed_step, message), *others = failure_messages(result).items()
    assert (failed_step, others) == (
        f"feedback__repair_feedback_training_set_{NO_HOLDOUT_LEAKAGE}",
        [],
    )
    assert BLOCKED_TRAINING.format(NO_HOLDOUT_LEAKAGE) in message
    # The training set is written for people to inspect; the model that would learn from it is
    # neither trained nor registered.
    assert materialized(result) == {TRAINING_SET}
    assert loop.versions() == before


@pytest.mark.slow
def test_a_self_label_share_over_the_ceiling_stops_the_next_model(loop):
    before = loop.versions()
    # With no confidence floor every unconfirmed prediction is confident enough, so the policy's
    # share of 0.5 fills up to as many self-labels as there are confirmed labels.
    policy = {"self_label_max_share": 0.5, "self_label_min_confidence": 0.0}
    confirmed = loop.sql("select count(*) as n from gold.confirmed_labels")["n"][0]
    unconfirmed = loop.sql(
        "select count(*) as n from repair.repair_inference_log where status = 'ok' "
        "and request_id not in (select request_id from gold.confirmed_labels)"
    )["n"][0]
    self_labels = min(unconfirmed, confirmed)
    expected_share = self_labels / (confirmed + self_labels)
    assert expected_share > SELF_LABEL_CEILING

    result = loop.run(FEEDBACK, run_config=feedback_config(**policy))

    check = evaluation(result, SELF_LABEL_SHARE)
    assert not result.success
    assert not check.passed
    assert figures(check) == {
        "self_label_share": pytest.approx(expected_share),
        "ceiling": SELF_LABEL_CEILING,
    }
    assert figures(evaluation(result, NO_HOLDOUT_LEAKAGE)) == {
        "leaked_rows": 0,
        "training_rows": confirmed + self_labels,
    }
    (failed_step, message), *others = failure_messages(result).items()
    assert (failed_step, others) == (
        f"feedback__repair_feedback_training_set_{SELF_LABEL_SHARE}",
        [],
    )
    assert BLOCKED_TRAINING.format(SELF_LABEL_SHARE) in message
    # The training set is written for people to inspect; the model that would learn from it is
    # neither trained nor registered.
    assert materialized(result) == {TRAINING_SET}
    assert loop.versions() == before
