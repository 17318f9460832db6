"""The ELPV solar-cell images and their labels, and the fixed stratified holdout drawn from them.

The elpv-dataset package ships 2,624 electroluminescence images (300x300, 8-bit grayscale) of
solar cells with a defect probability in {0, 1/3, 2/3, 1} and the cell type (mono or poly). The
demo treats `damage_level = round(defect_probability * 3)` as the technician's label.
"""

from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

# The holdout is fixed across demo builds, so its seed does not follow the build seed.
HOLDOUT_SEED = 20180924
HOLDOUT_FRACTION = 0.25
STRATUM_COLUMNS = ("damage_level", "cell_type")
ELPV_COLUMNS = ("photo_file", "source_path", "defect_probability", "damage_level", "cell_type")

_LABEL_LINE = (
    r"^\s*images/(?<photo_file>\S+\.png)\s+(?<probability>[0-9.]+)\s+(?<cell_type>\w+)\s*$"
)


def elpv_data_dir() -> Path:
    """Return the installed elpv-dataset data folder (holding labels.csv and images/)."""
    return Path(str(resources.files("elpv_dataset") / "data"))


def load_elpv_labels(data_dir: Path | None = None) -> pl.DataFrame:
    """Load the ELPV labels, one row per image, sorted by photo file name (ELPV_COLUMNS)."""
    data_dir = data_dir or elpv_data_dir()
    # labels.csv separates its columns by runs of spaces, which the CSV reader cannot collapse,
    # so each line is read whole and split with a regular expression.
    lines = pl.read_csv(
        data_dir / "labels.csv",
        has_header=False,
        new_columns=["line"],
        separator="\x1f",
        quote_char=None,
        schema_overrides={"line": pl.String},
    )
    parts = lines.select(pl.col("line").str.extract_groups(_LABEL_LINE).alias("parts")).unnest(
        "parts"
    )
    unparsed = parts.filter(pl.col("photo_file").is_null()).height
    if unparsed:
        raise ValueError(f"{unparsed} lines of {data_dir / 'labels.csv'} do not parse")
    images = str(data_dir / "images")
    probability = pl.col("probability").cast(pl.Float64)
    return (
        parts.select(
            pl.col("photo_file"),
            (pl.lit(images + "/") + pl.col("photo_file")).alias("source_path"),
            probability.alias("defect_probability"),
            (probability * 3).round(0).cast(pl.Int64).alias("damage_level"),
            pl.col("cell_type"),
        )
        .sort("photo_file")
        .select(ELPV_COLUMNS)
    )


def apportion(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over strata proportionally to `sizes`, each within one of its exact share.

    Largest remainders win the leftover units; ties go to the larger stratum, then the earlier.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if not 0 <= total <= int(sizes.sum()):
        raise ValueError(f"cannot draw {total} rows from {int(sizes.sum())}")
    if total == 0:
        return np.zeros_like(sizes)
    exact = sizes * total / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    leftover = total - int(quotas.sum())
    order = np.lexsort((np.arange(sizes.size), -sizes, -(exact - quotas)))
    quotas[order[:leftover]] += 1
    return quotas


def stratified_sample(labels: pl.DataFrame, n: int, seed: int) -> pl.Series:
    """Mark `n` rows, stratified by (damage_level, cell_type), as a boolean mask over `labels`.

    Each stratum contributes its proportional share rounded by largest remainder (see
    `apportion`); within a stratum the rows are drawn at random, deterministically for a seed and
    independent of the row order of `labels`.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(labels.height)
    keys[labels["photo_file"].arg_sort().to_numpy()] = rng.random(labels.height)
    strata = labels.group_by(STRATUM_COLUMNS).len().sort(STRATUM_COLUMNS)
    strata = strata.with_columns(
        pl.Series("quota", apportion(strata["len"].to_numpy(), n), dtype=pl.Int64)
    )
    ranked = (
        labels.select(STRATUM_COLUMNS)
        .with_columns(pl.Series("key", keys))
        .with_columns(pl.col("key").rank("ordinal").over(STRATUM_COLUMNS).alias("rank"))
        .join(
            strata.select(*STRATUM_COLUMNS, "quota"),
            on=STRATUM_COLUMNS,
            how="left",
            maintain_order="left",
        )
    )
    return (ranked["rank"] <= ranked["quota"]).alias("selected")


def stratified_holdout(
    labels: pl.DataFrame, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED
) -> pl.Series:
    """Mark the fixed evaluation holdout: round(fraction * n) rows, stratified, deterministic."""
    return stratified_sample(labels, round(fraction * labels.height), seed).alias("holdout")
