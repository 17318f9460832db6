"""Where compositional-ai keeps its files, read from the environment."""

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "COMPOSITIONAL_AI_DATA"
PSEUDONYM_KEY_ENV = "COMPOSITIONAL_AI_PSEUDONYM_KEY"


@dataclass(frozen=True)
class DataPaths:
    """The layout under one data directory: landing files, warehouse, MLflow store, reports."""

    root: Path

    @classmethod
    def from_env(cls) -> "DataPaths":
        return cls(Path(os.environ.get(DATA_DIR_ENV, "data")).resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def batches(self) -> Path:
        return self.landing / "batches"

    @property
    def reference(self) -> Path:
        return self.landing / "reference"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def served_log(self) -> Path:
        return self.landing / "served"
