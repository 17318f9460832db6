"""The code location loads, and its graph has the shape the platform promises."""

import pytest
from dagster import AssetKey

from compositional_ai.definitions import build_definitions
from compositional_ai.settings import DataPaths

ROLES = {"table", "feature_set", "training_set", "model", "inference_log", "report"}
INFERENCE_LOG = AssetKey(["repair", "repair_inference_log"])


@pytest.fixture(scope="module")
def asset_graph(tmp_path_factory):
    defs = build_definitions(DataPaths(tmp_path_factory.mktemp("defs")))
    return defs.resolve_asset_graph()


def test_every_asset_has_a_schema_prefix_and_a_role(asset_graph):
    for key in asset_graph.get_all_asset_keys():
        node = asset_graph.get(key)
        assert len(key.path) == 2, f"{key} must be schema/table"
        assert node.tags.get("role") in ROLES, f"{key} has role {node.tags.get('role')!r}"


@pytest.mark.parametrize(
    "downstream",
    [
        # The recommender learns from the repair service's assessments.
        AssetKey(["recommendation", "service_recommender"]),
        # The defect detector learns from photos the repair service labelled.
        AssetKey(["defect_detection", "defect_detector"]),
        # The repair model's next version learns from its own confirmed predictions.
        AssetKey(["feedback", "repair_damage_model_next"]),
    ],
)
def test_the_inference_log_feeds_the_models(asset_graph, downstream):
    upstream = asset_graph.upstream_key_iterator(downstream)
    seen, frontier = set(), list(upstream)
    while frontier:
        key = frontier.pop()
        if key not in seen:
            seen.add(key)
            frontier.extend(asset_graph.get(key).parent_keys)
    assert INFERENCE_LOG in seen
    assert asset_graph.get(INFERENCE_LOG).tags["role"] == "inference_log"


def test_the_inference_log_names_the_seed_model_as_upstream(asset_graph):
    parents = asset_graph.get(INFERENCE_LOG).parent_keys
    assert AssetKey(["repair", "repair_damage_model"]) in parents


def test_the_graph_is_the_one_the_module_exposes():
    from compositional_ai.definitions import defs

    assert {job.name for job in defs.jobs} == {
        "reference_job",
        "batch_job",
        "seed_model_job",
        "retraining_job",
        "loop_replay_job",
    }
    assert {sensor.name for sensor in defs.sensors} == {
        "landing_batch_sensor",
        "inference_partition_sensor",
        "served_log_sensor",
    }


# Which jobs run their steps in one process and keep the warehouse open for the whole run:
# ingestion (short steps), and not training (minutes of compute between warehouse accesses).
RUN_SHAPE = {
    "reference_job": ("in_process", True),
    "batch_job": ("in_process", True),
    "seed_model_job": ("in_process", False),
    "retraining_job": ("multiprocess", False),
    "loop_replay_job": ("multiprocess", False),
}


@pytest.mark.parametrize("job_name", sorted(RUN_SHAPE))
def test_only_ingestion_runs_hold_the_warehouse(tmp_path, job_name):
    from compositional_ai.resources.warehouse import HOLD_FOR_RUN, HOLD_TAG

    job = build_definitions(DataPaths(tmp_path)).resolve_job_def(job_name)
    executor, held = RUN_SHAPE[job_name]
    assert job.executor_def.name == executor
    assert (job.tags.get(HOLD_TAG) == HOLD_FOR_RUN) is held
