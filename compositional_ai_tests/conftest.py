"""Shared fixtures: nothing reaches the network, and every test has its own data directory."""

import pytest

from compositional_ai.definitions import build_resources
from compositional_ai.demo import run_demo
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.settings import DATA_DIR_ENV, PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.summary import build_summary, write_summary


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "test-key")
    data = tmp_path_factory.mktemp("data")
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    # `make test` exports the demo's DAGSTER_HOME; no test may write to it.
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))


# Photo models train for two epochs at 32 px: the graph runs end to end in about a minute.
TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The whole demo on a small slice of the real data (3 batches, 48 + 16 photos), run once."""
    root = tmp_path_factory.mktemp("demo")
    paths = DataPaths(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(paths.dagster_home))
    mp.setenv(PSEUDONYM_KEY_ENV, "test-key")
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    landing = build_demo_landing(
        paths.landing, n_batches=3, max_train_photos=48, max_holdout_photos=16
    )
    run_demo(paths, training_run_config=TINY_TRAINING, on_step=lambda step: None)
    resources = build_resources(paths)
    summary = build_summary(resources["warehouse"], resources["model_registry"])
    write_summary(summary, paths.reports / "demo_summary.json")
    yield paths, landing, summary
    mp.undo()
