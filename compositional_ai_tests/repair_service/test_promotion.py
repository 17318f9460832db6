"""Champion and challenger: a new repair-model version serves only if it is not worse."""

import mlflow
import pytest
from dagster import build_asset_context

from compositional_ai.repair_service.assets import REPAIR_MODEL, promote_if_not_worse
from compositional_ai.resources.model_registry import CHAMPION, ModelRegistry
from compositional_ai.vision.model import DamageCNN


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=str(tmp_path / "artifacts"),
    )


def _register(registry, accuracy):
    with registry.training_run(
        REPAIR_MODEL, dagster_run_id="test-run", asset_key="repair/x", params={}
    ):
        mlflow.log_metric("four_class_accuracy", accuracy)
        return registry.log_torch_model(DamageCNN(4, width=2, image_size=16), REPAIR_MODEL)


@pytest.mark.parametrize(
    ("second", "champion_after"),
    [
        (0.71, "2"),  # better: promoted
        (0.695, "2"),  # worse, but within the 0.01 tolerance: promoted
        (0.60, "1"),  # worse beyond the tolerance: stays a challenger
    ],
)
def test_only_a_challenger_that_is_not_worse_is_promoted(registry, second, champion_after):
    context = build_asset_context()
    first = _register(registry, 0.70)
    assert promote_if_not_worse(context, registry, first, {"four_class_accuracy": 0.70})["promoted"]

    version = _register(registry, second)
    decision = promote_if_not_worse(context, registry, version, {"four_class_accuracy": second})

    assert registry.version_by_alias(REPAIR_MODEL, CHAMPION).version == champion_after
    assert decision["promoted"] is (champion_after == "2")
    assert decision["champion_before"] == "1"
    tags = mlflow.MlflowClient(registry.tracking_uri).get_model_version(REPAIR_MODEL, version).tags
    assert tags["promotion"] == ("champion" if champion_after == "2" else "challenger")
    assert tags["champion_metric"] == "0.700000"
    assert f"{second:.4f}" in tags["promotion_reason"]
