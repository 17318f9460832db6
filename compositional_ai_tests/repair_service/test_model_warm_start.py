"""A new batch's retraining continues the models' previous versions on what is new.

The real graph on a tmp warehouse and MLflow store: four batches, the seed model after the
first, a retraining after the third (from scratch: nothing to continue) and after the fourth
(continuing the third's versions on the new rows and as many replayed ones).
"""

import dagster as dg
import polars as pl
import pytest
import torch

from compositional_ai import jobs
from compositional_ai.defect_detection.assets import DEFECT_MODEL
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.repair_service.warm_start import PAIRS_ARTIFACT
from compositional_ai.settings import PSEUDONYM_KEY_ENV
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai_tests.graph import Graph, materialization_metadata

TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}
# A floor under the rows a warm start trains on, below this test's training sets' size.
MIN_ROWS = 20
RETRAINING = {**TINY_TRAINING, "warm_start_min_rows": MIN_ROWS}
SEED_OP = "repair__repair_damage_model"
NEXT_OP = "feedback__repair_damage_model_next"
DETECTOR_OP = "defect_detection__defect_detector"
NEXT_MODEL = dg.AssetKey(["feedback", "repair_damage_model_next"])
DETECTOR = dg.AssetKey(["defect_detection", "defect_detector"])
# Each model is (asset, registered name, its training-set table, its label column).
MODELS = {
    NEXT_OP: (NEXT_MODEL, REPAIR_MODEL, "feedback.repair_feedback_training_set", "damage_level"),
    DETECTOR_OP: (DETECTOR, DEFECT_MODEL, "defect_detection.defect_training_set", "defective"),
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PSEUDONYM_KEY_ENV, "warm-test-key")
        landing = build_demo_landing(
            root / "landing", n_batches=4, max_train_photos=80, max_holdout_photos=12
        )
        graph = Graph(root)

        def run(selection, *, partition=None, training=None, ops=(NEXT_OP, DETECTOR_OP)):
            config = {"ops": {op: {"config": training} for op in ops}} if training else {}
            result = graph.run(selection, partition=partition, run_config=config)
            assert result.success
            return result

        run(jobs.REFERENCE_ASSETS)
        graph.instance.add_dynamic_partitions(landing_batches.name, list(landing.batches))
        run(jobs.BATCH_ASSETS, partition=landing.batches[0])
        run(jobs.SEED_MODEL_ASSETS, training=TINY_TRAINING, ops=(SEED_OP,))
        # The first batch is the workshop's; each online batch's labels arrive with the next.
        for batch in landing.batches[1:3]:
            run(jobs.BATCH_ASSETS, partition=batch)
        first = run(jobs.RETRAINING_ASSETS, training=RETRAINING)
        # What each model's training set holds before the last batch arrives.
        before = {op: graph.sql(f"select * from {MODELS[op][2]}") for op in MODELS}
        run(jobs.BATCH_ASSETS, partition=landing.batches[3])
        second = run(jobs.RETRAINING_ASSETS, training=RETRAINING)
        yield run, graph, first, second, before


@pytest.mark.slow
@pytest.mark.parametrize("op", list(MODELS))
def test_the_first_retraining_starts_from_scratch(graph, op):
    _, _, first, _, _ = graph
    asset, _, _, _ = MODELS[op]
    found = materialization_metadata(first, asset)
    assert found["warm_started_from"] == "none"
    assert found["warm_start_reason"] == (
        f"{asset.to_user_string()} has no promoted version to continue"
    )
    assert found["trained_on_rows"] == found["training_rows"]


@pytest.mark.slow
@pytest.mark.parametrize("op", list(MODELS))
def test_the_next_retraining_continues_on_the_new_rows_and_a_replay(graph, op):
    _, graph, first, second, before = graph
    registry = graph.resources["model_registry"]
    asset, model_name, training_table, label = MODELS[op]
    parent, child = materialization_metadata(first, asset), materialization_metadata(second, asset)
    current = graph.sql(f"select * from {training_table}")
    learned = set(before[op].select("photo_sha256", pl.col(label).cast(pl.Int64)).iter_rows())
    rows = list(current.select("photo_sha256", pl.col(label).cast(pl.Int64)).iter_rows())
    new = sum(pair not in learned for pair in rows)
    assert 0 < new <= len(rows) / 2, (new, len(rows))

    assert child["warm_started_from"] == parent["model_version"]
    assert child["model_version"] != parent["model_version"]
    assert child["training_rows"] == len(rows)
    assert child["trained_on_rows"] == new + min(len(rows) - new, max(new, MIN_ROWS - new))
    assert child["trained_on_rows"] < child["training_rows"]
    assert child["warm_start_reason"].startswith(f"continues v{parent['model_version']} on {new}")
    # MLflow records it too, and the pairs the version now knows: the whole current set.
    version = registry.versions(model_name)[int(child["model_version"]) - 1]
    params = registry.run_params(version.run_id)
    assert params["warm_started_from"] == parent["model_version"]
    assert int(params["fine_tune_rows"]) == child["trained_on_rows"]
    pairs = registry.run_frame(version.run_id, PAIRS_ARTIFACT)
    assert set(pairs.iter_rows()) == set(rows)
    # The weights moved from the parent's, and the architecture is the parent's.
    old = registry.load_torch(model_name, parent["model_version"])
    new_model = registry.load_torch(model_name, child["model_version"])
    old_state, new_state = old.state_dict(), new_model.state_dict()
    assert old_state.keys() == new_state.keys()
    assert any(not torch.equal(old_state[k], new_state[k]) for k in old_state)


@pytest.mark.slow
def test_warm_start_off_trains_the_whole_set_again(graph):
    run, _, _, second, _ = graph
    result = run(
        dg.AssetSelection.assets(NEXT_MODEL),
        training={**RETRAINING, "warm_start": False},
        ops=(NEXT_OP,),
    )
    found = materialization_metadata(result, NEXT_MODEL)
    assert found["reused_version"] is False
    assert found["warm_start_reason"] == "warm start is off"
    assert found["trained_on_rows"] == found["training_rows"]
    assert found["model_version"] != materialization_metadata(second, NEXT_MODEL)["model_version"]


@pytest.mark.slow
def test_the_recommender_reuses_its_version_when_nothing_changed(graph):
    run, graph_, _, second, _ = graph
    registry = graph_.resources["model_registry"]
    recommender = dg.AssetKey(["recommendation", "service_recommender"])
    trained = materialization_metadata(second, recommender)
    count = len(registry.versions("service_recommender"))
    again = materialization_metadata(run(dg.AssetSelection.assets(recommender)), recommender)
    assert trained["reused_version"] is False
    assert again["reused_version"] is True
    assert again["model_version"] == trained["model_version"]
    assert again["training_fingerprint"] == trained["training_fingerprint"]
    assert again["hit_rate_at_3"] == trained["hit_rate_at_3"]
    assert len(registry.versions("service_recommender")) == count
    version = registry.versions("service_recommender")[-1]
    assert version.tags["training_fingerprint"] == trained["training_fingerprint"]
    assert version.aliases == ("champion",)
