"""The `landing` resource: the folder where deployments drop batches and reference files."""

from pathlib import Path

from dagster import ConfigurableResource

from compositional_ai.landing import formats


class LandingArea(ConfigurableResource):
    """A landing folder with `batches/<batch>/` and `reference/` below it."""

    root: str

    @property
    def batches(self) -> Path:
        return Path(self.root) / "batches"

    @property
    def reference(self) -> Path:
        return Path(self.root) / "reference"

    @property
    def served(self) -> Path:
        return Path(self.root) / "served"

    def ready_batches(self) -> list[str]:
        """The batch folders whose `_READY` marker exists, in name order."""
        if not self.batches.is_dir():
            return []
        return sorted(
            folder.name
            for folder in self.batches.iterdir()
            if folder.is_dir()
            and not folder.name.startswith(".")
            and (folder / formats.READY_MARKER).is_file()
        )
