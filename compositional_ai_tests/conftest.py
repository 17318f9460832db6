"""Shared fixtures: nothing reaches the network, and every test has its own data directory."""

import pytest

from compositional_ai.settings import DATA_DIR_ENV, PSEUDONYM_KEY_ENV


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "test-key")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path_factory.mktemp("data")))
