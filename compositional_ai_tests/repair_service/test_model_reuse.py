"""A photo model trains once per training set and settings: a re-run reuses its version.

The real seed-model asset on a tmp warehouse and a tmp MLflow store: materializing it again on
the same rows registers nothing new and keeps the promotion decision; other settings train anew.
"""

import dagster as dg
import pytest

from compositional_ai import jobs
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.repair_service.assets import REPAIR_MODEL
from compositional_ai.resources.model_registry import FINGERPRINT_TAG
from compositional_ai.settings import PSEUDONYM_KEY_ENV
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai_tests.graph import Graph, materialization_metadata

TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}
SEED_OP = "repair__repair_damage_model"
SEED_MODEL = dg.AssetKey(["repair", "repair_damage_model"])


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PSEUDONYM_KEY_ENV, "reuse-test-key")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        landing = build_demo_landing(
            root / "landing", n_batches=2, max_train_photos=32, max_holdout_photos=12
        )
        graph = Graph(root)

        def run(selection, *, partition=None, training=None):
            config = {"ops": {SEED_OP: {"config": training}}} if training else {}
            result = graph.run(selection, partition=partition, run_config=config)
            assert result.success
            return result

        run(jobs.REFERENCE_ASSETS)
        graph.instance.add_dynamic_partitions(landing_batches.name, list(landing.batches))
        run(jobs.BATCH_ASSETS, partition=landing.batches[0])
        yield run, graph.resources["model_registry"]


def model_metadata(result: dg.ExecuteInProcessResult) -> dict:
    return materialization_metadata(result, SEED_MODEL)


@pytest.mark.slow
def test_the_same_training_set_and_settings_reuse_the_registered_version(graph):
    run, registry = graph
    first = model_metadata(run(jobs.SEED_MODEL_ASSETS, training=TINY_TRAINING))
    again = model_metadata(run(jobs.SEED_MODEL_ASSETS, training=TINY_TRAINING))
    versions = registry.versions(REPAIR_MODEL)

    assert first["reused_version"] is False
    # The holdout figures travel with the asset: the plot inline, the per-class table beside it.
    assert first["confusion_matrix_plot"].startswith("![repair_damage_model v1: confusion")
    assert "](data:image/png;base64,iVBORw0KGgo" in first["confusion_matrix_plot"]
    table = first["per_class"].splitlines()
    assert table[0] == "| class | precision | recall | F1 | holdout cells |"
    supports = [int(row.rsplit("|", 2)[1]) for row in table[2:]]
    assert len(supports) == 4
    assert sum(supports) == first["holdout_size"] == 12
    assert again["reused_version"] is True
    assert again["model_version"] == first["model_version"]
    assert again["training_fingerprint"] == first["training_fingerprint"]
    assert [v.version for v in versions] == [first["model_version"]]
    (only,) = versions
    assert only.tags[FINGERPRINT_TAG] == first["training_fingerprint"]
    # The decision made when it was trained stands: still the champion, decided once.
    assert only.aliases == ("champion",)
    assert only.tags["promotion"] == "champion"

    other = model_metadata(run(jobs.SEED_MODEL_ASSETS, training={**TINY_TRAINING, "epochs": 1}))
    assert other["reused_version"] is False
    assert other["model_version"] != first["model_version"]
    assert other["training_fingerprint"] != first["training_fingerprint"]
    assert len(registry.versions(REPAIR_MODEL)) == 2
