"""The `model_registry` resource: MLflow tracking and model registry on a local store."""

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
from dagster import ConfigurableResource
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

EXPERIMENT = "compositional_ai"
CHAMPION = "champion"
# A digest of the training set and settings a version was trained with: a re-run reuses it.
FINGERPRINT_TAG = "training_fingerprint"
# Which asset trained a version: a photo model's next version continues the one it trained.
ASSET_TAG = "dagster_asset_key"

# MLflow infers a model's pip requirements by inspecting the environment, which is slow and warns
# about torch's local "+cpu" label; the project's own requirements are stated instead.
PIP_REQUIREMENTS = ["compositional-ai"]


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version and where it came from."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's advice about formats and type hints we chose deliberately."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint is inferred as AnyType.*")
        warnings.filterwarnings("ignore", message=".*pickle or cloudpickle format.*")
        yield


def frame_digest(frame: pl.DataFrame, columns: list[str]) -> str:
    """A content digest of a training set, independent of row order."""
    rows = frame.select(columns).sort(columns).write_csv()
    return hashlib.sha256(rows.encode()).hexdigest()[:16]


class NoChampionError(LookupError):
    """Raised when a model is asked for by alias before any version carries it."""


class ModelRegistry(ConfigurableResource):
    """MLflow tracking server and model registry (a SQLite store and an artifact folder)."""

    tracking_uri: str
    artifact_root: str
    experiment: str = EXPERIMENT

    def setup_for_execution(self, context) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")

    def _activate(self) -> MlflowClient:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(self.experiment) is None:
            try:
                mlflow.create_experiment(
                    self.experiment, artifact_location=Path(self.artifact_root).resolve().as_uri()
                )
            except MlflowException:
                # Another process created it between the lookup and the create.
                pass
        mlflow.set_experiment(self.experiment)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def training_run(
        self, model_name: str, *, dagster_run_id: str, asset_key: str, params: dict[str, Any]
    ) -> Iterator[mlflow.ActiveRun]:
        """Open one MLflow run for one trained model, tagged with the Dagster run and asset."""
        self._activate()
        tags = {
            "dagster_run_id": dagster_run_id,
            "dagster_asset_key": asset_key,
            "model_name": model_name,
        }
        with mlflow.start_run(run_name=f"{model_name}-{dagster_run_id[:8]}", tags=tags) as run:
            mlflow.log_params({key: str(value)[:500] for key, value in params.items()})
            yield run

    def log_torch_model(self, model, model_name: str) -> str:
        """Log a torch module in the active run and register it; return the new version."""
        # Pickle format: the registry is the project's own local store, trusted like its code.
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            serialization_format="pickle",
            pip_requirements=PIP_REQUIREMENTS,
        )
        return str(info.registered_model_version)

    def log_sklearn_model(self, model, model_name: str) -> str:
        """Log a scikit-learn estimator in the active run and register it; return the version."""
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            serialization_format="cloudpickle",
            pip_requirements=PIP_REQUIREMENTS,
        )
        return str(info.registered_model_version)

    def run_url(self, run_id: str) -> str:
        experiment = self._activate().get_run(run_id).info.experiment_id
        return f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}"

    def version_by_alias(self, model_name: str, alias: str = CHAMPION) -> RegisteredVersion:
        """Return the version carrying `alias`, or raise NoChampionError naming what to run."""
        client = self._activate()
        try:
            version = client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            raise NoChampionError(
                f"no version of {model_name!r} carries the alias {alias!r} in {self.tracking_uri}:"
                " materialize the model asset first"
            ) from None
        return self._describe(client, version)

    def has_alias(self, model_name: str, alias: str = CHAMPION) -> bool:
        try:
            self.version_by_alias(model_name, alias)
        except NoChampionError:
            return False
        return True

    def set_alias(self, model_name: str, version: str, alias: str = CHAMPION) -> None:
        self._activate().set_registered_model_alias(model_name, alias, version)

    def record_decision(self, model_name: str, version: str, tags: dict[str, str]) -> None:
        """Record a promotion decision on the model version and on the run that trained it."""
        client = self._activate()
        registered = client.get_model_version(model_name, version)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
            if registered.run_id:
                client.set_tag(registered.run_id, key, value)

    def versions(self, model_name: str) -> list[RegisteredVersion]:
        """Every registered version of a model, oldest first (empty when none)."""
        client = self._activate()
        found = client.search_model_versions("name = :name".replace(":name", repr(model_name)))
        # Search results leave aliases out; each version is read again to get them.
        described = [
            self._describe(client, client.get_model_version(version.name, version.version))
            for version in found
        ]
        return sorted(described, key=lambda version: int(version.version))

    def model_names(self) -> list[str]:
        """The name of every registered model, sorted."""
        client = self._activate()
        return sorted(model.name for model in client.search_registered_models(max_results=1000))

    def version_tagged(self, model_name: str, key: str, value: str) -> RegisteredVersion | None:
        """The newest version of `model_name` whose tag `key` equals `value`, or None."""
        return self.version_with_tags(model_name, {key: value})

    def version_with_tags(self, model_name: str, tags: dict[str, str]) -> RegisteredVersion | None:
        """The newest version of `model_name` carrying every one of `tags`, or None."""
        client = self._activate()
        wanted = " and ".join(f"tags.{key} = {value!r}" for key, value in tags.items())
        found = client.search_model_versions(f"name = {model_name!r} and {wanted}")
        if not found:
            return None
        newest = max(found, key=lambda version: int(version.version))
        return self._describe(client, client.get_model_version(newest.name, newest.version))

    def tag_version(self, model_name: str, version: str, tags: dict[str, str]) -> None:
        """Set tags on one registered version."""
        client = self._activate()
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)

    def run_params(self, run_id: str) -> dict[str, str]:
        """The parameters logged by one run."""
        return dict(self._activate().get_run(run_id).data.params)

    def log_frame(self, frame: pl.DataFrame, name: str) -> None:
        """Log a frame as a Parquet artifact of the active run."""
        with tempfile.TemporaryDirectory(prefix="cai-artifact-") as folder:
            path = Path(folder) / name
            frame.write_parquet(path)
            mlflow.log_artifact(str(path))

    def run_frame(self, run_id: str, name: str) -> pl.DataFrame | None:
        """A Parquet artifact of a run as a frame, or None when the run logged none by `name`."""
        client = self._activate()
        if name not in {item.path for item in client.list_artifacts(run_id)}:
            return None
        with tempfile.TemporaryDirectory(prefix="cai-artifact-") as folder:
            path = client.download_artifacts(run_id, name, folder)
            return pl.read_parquet(path)

    def load_torch(self, model_name: str, version: str):
        self._activate()
        return mlflow.pytorch.load_model(f"models:/{model_name}/{version}", map_location="cpu")

    def load_sklearn(self, model_name: str, version: str):
        self._activate()
        return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")

    @staticmethod
    def _describe(client: MlflowClient, version) -> RegisteredVersion:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        return RegisteredVersion(
            name=version.name,
            version=str(version.version),
            run_id=version.run_id or "",
            aliases=tuple(version.aliases or ()),
            metrics=dict(metrics),
            tags=dict(version.tags or {}),
        )
