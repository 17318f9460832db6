"""The real asset graph on one tmp data directory, for tests that materialize assets."""

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from compositional_ai.definitions import ASSET_MODULES, build_resources
from compositional_ai.settings import DataPaths


class Graph:
    """One data directory: its warehouse, its MLflow store, and an instance for its runs."""

    def __init__(self, root: Path):
        self.paths = DataPaths(root)
        self.assets = [
            *dg.load_assets_from_modules(ASSET_MODULES),
            *dg.load_asset_checks_from_modules(ASSET_MODULES),
        ]
        self.resources = build_resources(self.paths)
        self.instance = dg.DagsterInstance.ephemeral()

    def run(self, selection, *, partition=None, run_config=None) -> dg.ExecuteInProcessResult:
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

    def execute(self, statement: str) -> None:
        with self.resources["warehouse"].connect("test change") as con:
            con.execute(statement)

    def versions(self, model: str) -> list[str]:
        return [v.version for v in self.resources["model_registry"].versions(model)]


def materialization_metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    """The metadata values of the one materialization of `key` in a run."""
    (event,) = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.is_step_materialization and e.asset_key == key
    ]
    return {name: getattr(value, "value", value) for name, value in event.metadata.items()}
