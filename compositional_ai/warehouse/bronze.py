"""Bronze: each landed source exactly as it arrived, one row per line or file, with its origin."""

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from compositional_ai.landing import formats
from compositional_ai.resources.landing import LandingArea
from compositional_ai.resources.warehouse import EMPTY_IS_NORMAL_KEY
from compositional_ai.warehouse.landing_files import (
    batch_folder,
    read_files,
    read_lines,
    read_unexpected,
    ready_manifest,
)
from compositional_ai.warehouse.partitions import landing_batches

TABLE = {"role": "table"}
# Optional sources and files outside the contract are empty for a sound batch: no warning.
OPTIONAL_SOURCE = {"partition_column": "batch", EMPTY_IS_NORMAL_KEY: True}
UNREAD_FILES_CHECK = "no_unread_files"


def manifest_mismatches(frame: pl.DataFrame, manifest: dict, files: list[str]) -> list[str]:
    """The files read whose sha256 differs from the lander's `_READY` manifest."""
    expected = manifest.get("files", {})
    read = dict(frame.select("source_file", "file_sha256").unique().iter_rows())
    return [name for name in files if name in read and expected.get(name) != read[name]]


def _read_metadata(batch: str, frame: pl.DataFrame, mismatched: list[str]) -> dict:
    read = dict(frame.select("source_file", "file_sha256").unique().iter_rows())
    return {
        "batch": batch,
        "files": MetadataValue.json(read),
        "manifest_mismatches": MetadataValue.json(mismatched),
    }


def _manifest_metadata(
    context: AssetExecutionContext, frame: pl.DataFrame, manifest: dict, files: list[str]
) -> None:
    """Compare what was read with the lander's manifest; a mismatch is reported, not hidden."""
    mismatched = manifest_mismatches(frame, manifest, files)
    if mismatched:
        context.log.warning(
            f"batch {context.partition_key}: {mismatched} differ from the _READY manifest"
        )
    context.add_output_metadata(_read_metadata(context.partition_key, frame, mismatched))


def _line_source_asset(name: str, file_name: str, *, csv: bool, optional: bool = False):
    @asset(
        name=name,
        key_prefix="bronze",
        group_name="bronze",
        partitions_def=landing_batches,
        tags=TABLE,
        metadata={
            "partition_column": "batch",
            "landing_file": file_name,
            EMPTY_IS_NORMAL_KEY: optional,
        },
    )
    def _bronze_lines(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
        folder = batch_folder(landing.batches, context.partition_key)
        frame = read_lines(
            folder / file_name, batch=context.partition_key, source_file=file_name, csv=csv
        )
        if not optional and not (folder / file_name).is_file():
            context.log.warning(f"batch {context.partition_key} has no {file_name}")
        _manifest_metadata(context, frame, ready_manifest(folder), [file_name])
        context.log.info(f"batch {context.partition_key}: {frame.height} lines of {file_name}")
        return frame

    _bronze_lines.__doc__ = f"Every line of each batch's {file_name}, as landed."
    return _bronze_lines


repair_requests = _line_source_asset("repair_requests", formats.REQUESTS_FILE, csv=False)
chat_transcripts = _line_source_asset("chat_transcripts", formats.CHATS_FILE, csv=False)
customers = _line_source_asset("customers", formats.CUSTOMERS_FILE, csv=True)
technician_outcomes = _line_source_asset("technician_outcomes", formats.OUTCOMES_FILE, csv=True)
synthetic_manifest = _line_source_asset(
    "synthetic_manifest", formats.SYNTHETIC_FILE, csv=True, optional=True
)


@multi_asset(
    outs={
        "repair_photos": AssetOut(
            key_prefix="bronze",
            tags=TABLE,
            metadata={"partition_column": "batch"},
            description="Every file in each batch's photos folder, bytes and sha256 included.",
        ),
        "unread_files": AssetOut(
            key_prefix="bronze",
            tags=TABLE,
            metadata=OPTIONAL_SOURCE,
            description="Every file in a batch folder outside the landing contract (a misspelt "
            "requests file, notes, a photo beside photos/), bytes included; nothing downstream "
            "reads them, and the no_unread_files check warns while any are there.",
        ),
    },
    group_name="bronze",
    partitions_def=landing_batches,
    check_specs=[
        AssetCheckSpec(
            UNREAD_FILES_CHECK,
            asset=["bronze", "unread_files"],
            description="The batch holds only files of the landing contract.",
        )
    ],
    can_subset=False,
)
def batch_files(context: AssetExecutionContext, landing: LandingArea):
    """The batch folder's files, in one walk: the photos, and whatever the contract does not
    define (kept so that it can be seen and recovered, never read further)."""
    batch = context.partition_key
    folder = batch_folder(landing.batches, batch)
    photos = read_files(folder / formats.PHOTOS_DIR, batch=batch, relative_to=folder)
    manifest = ready_manifest(folder)
    mismatched = manifest_mismatches(photos, manifest, photos["source_file"].to_list())
    if mismatched:
        context.log.warning(f"batch {batch}: {mismatched} differ from the _READY manifest")
    context.log.info(f"batch {batch}: {photos.height} photo files")
    yield Output(
        photos,
        output_name="repair_photos",
        metadata=_read_metadata(batch, photos, mismatched),
    )
    unread = read_unexpected(folder, batch=batch)
    names = unread["source_file"].to_list()
    if names:
        context.log.warning(
            f"batch {batch}: {len(names)} file(s) outside the landing contract are kept in "
            f"bronze.unread_files and not read further: {names[:10]}"
        )
    yield Output(unread, output_name="unread_files", metadata={"batch": batch, "rows": len(names)})
    yield AssetCheckResult(
        check_name=UNREAD_FILES_CHECK,
        asset_key=AssetKey(["bronze", "unread_files"]),
        passed=not names,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{len(names)} landed file(s) are outside the landing contract and are not read"
            if names
            else "every landed file is part of the landing contract"
        ),
        metadata={
            "batch": batch,
            "count": len(names),
            "unread_files": MetadataValue.json(names[:100]),
        },
    )


@asset(
    key_prefix="bronze",
    group_name="bronze",
    partitions_def=landing_batches,
    tags=TABLE,
    metadata=OPTIONAL_SOURCE,
)
def synthetic_photos(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """Every file in each batch's synthetic folder, bytes and sha256 included."""
    folder = batch_folder(landing.batches, context.partition_key)
    frame = read_files(
        folder / formats.SYNTHETIC_DIR, batch=context.partition_key, relative_to=folder
    )
    _manifest_metadata(context, frame, ready_manifest(folder), frame["source_file"].to_list())
    context.log.info(f"batch {context.partition_key}: {frame.height} synthetic photo files")
    return frame


@asset(key_prefix="bronze", group_name="bronze", tags=TABLE)
def product_catalog(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """The product catalog's lines, as landed in the reference folder."""
    path = landing.reference / formats.CATALOG_FILE
    frame = read_lines(path, batch="reference", source_file=formats.CATALOG_FILE, csv=True)
    context.log.info(f"{frame.height} catalog lines")
    return frame


@asset(key_prefix="bronze", group_name="bronze", tags=TABLE)
def holdout_labels(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """The evaluation holdout's label lines, as landed."""
    path = landing.reference / formats.HOLDOUT_DIR / formats.HOLDOUT_LABELS_FILE
    frame = read_lines(path, batch="reference", source_file="holdout/labels.csv", csv=True)
    context.log.info(f"{frame.height} holdout label lines")
    return frame


@asset(key_prefix="bronze", group_name="bronze", tags=TABLE)
def holdout_photos(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """The evaluation holdout's photo files, bytes and sha256 included."""
    folder = landing.reference / formats.HOLDOUT_DIR
    frame = read_files(folder / formats.PHOTOS_DIR, batch="reference", relative_to=folder)
    context.log.info(f"{frame.height} holdout photos")
    return frame
