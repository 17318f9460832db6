"""Silver: typed, validated, deduplicated and pseudonymised; every rejected row is quarantined."""

import time
from datetime import UTC, datetime

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonym_key_from_env
from compositional_ai.resources.warehouse import COLUMNS_KEY, EMPTY_IS_NORMAL_KEY, Warehouse
from compositional_ai.vision.images import STORED_IMAGE_SIZE, decode_gray
from compositional_ai.warehouse import validation
from compositional_ai.warehouse.lookups import (
    column_values,
    holdout_shas,
    quarantined_record_ids,
)
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.privacy import withhold_personal_records

TABLE = {"role": "table"}
BATCH_METADATA = {"partition_column": "batch"}
# Tables that are empty for a sound batch: their empty partitions are not warned about.
EMPTY_IS_NORMAL = {**BATCH_METADATA, EMPTY_IS_NORMAL_KEY: True}
CONSERVATION_CHECK = "bronze_rows_accounted_for"
HAS_ROWS_CHECK = "partition_has_rows"
PER_BATCH_TABLES = ("repair_photos", "repair_requests", "customers", "technician_outcomes")
HOLDOUT_ORIGIN_CHECK = "holdout_labels_technician_only"


def has_rows(table: str, rows: int, batch: str) -> AssetCheckResult:
    """A warning, not a failure: an empty partition is written, but a person should know."""
    return AssetCheckResult(
        check_name=HAS_ROWS_CHECK,
        asset_key=AssetKey(["silver", table]),
        passed=rows > 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"rows": rows, "batch": batch},
    )


def conservation(
    bronze_rows: dict[str, int], validated: dict[str, validation.Validated]
) -> AssetCheckResult:
    """Check that every bronze row of every source is in silver or in quarantine, once."""
    figures = {}
    for source, landed in bronze_rows.items():
        clean = validated[source].clean.height
        quarantined = validated[source].quarantine.height
        figures[source] = {
            "bronze": landed,
            "silver": clean,
            "quarantine": quarantined,
            "unaccounted": landed - clean - quarantined,
        }
    passed = all(figure["unaccounted"] == 0 for figure in figures.values())
    return AssetCheckResult(
        check_name=CONSERVATION_CHECK,
        asset_key=AssetKey(["silver", "quarantine"]),
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            f"{source}_{name}": value
            for source, figure in figures.items()
            for name, value in figure.items()
        },
    )


PIXELS_SCHEMA = {
    "batch": pl.String,
    "sha256": pl.String,
    "image_size": pl.Int64,
    "pixels": pl.Binary,
}


def decoded_pixels(photos: pl.DataFrame, size: int = STORED_IMAGE_SIZE) -> pl.DataFrame:
    """One row per distinct clean photo: its grayscale pixels at `size` x `size`, row-major
    uint8 bytes, decoded once so that inference and training do not decode it again."""
    unique = photos.select("batch", "sha256", "content").unique("sha256", keep="first")
    unique = unique.sort("sha256")
    pixels = decode_gray(unique["content"].to_list(), size)
    return pl.DataFrame(
        {
            "batch": unique["batch"],
            "sha256": unique["sha256"],
            "image_size": pl.Series([size] * unique.height, dtype=pl.Int64),
            "pixels": pl.Series([row.tobytes() for row in pixels], dtype=pl.Binary),
        },
        schema=PIXELS_SCHEMA,
    )


@multi_asset(
    outs={
        "repair_photos": AssetOut(key_prefix="silver", tags=TABLE, metadata=BATCH_METADATA),
        "repair_requests": AssetOut(key_prefix="silver", tags=TABLE, metadata=BATCH_METADATA),
        "customers": AssetOut(key_prefix="silver", tags=TABLE, metadata=BATCH_METADATA),
        "technician_outcomes": AssetOut(key_prefix="silver", tags=TABLE, metadata=BATCH_METADATA),
        "quarantine": AssetOut(key_prefix="silver", tags=TABLE, metadata=EMPTY_IS_NORMAL),
        "photo_pixels": AssetOut(
            key_prefix="silver",
            tags=TABLE,
            metadata=BATCH_METADATA,
            description="Each clean photo decoded once to grayscale pixels at the models' size, "
            "read by inference and training instead of decoding the photo again.",
        ),
        "synthetic_photos": AssetOut(
            key_prefix="silver",
            tags=TABLE,
            metadata=EMPTY_IS_NORMAL,
            description="Synthetic photos, each marked synthetic=true with its generator version "
            "and its parent's sha256; never a label of their own.",
        ),
    },
    ins={
        "bronze_photos": AssetIn(key=["bronze", "repair_photos"]),
        "bronze_requests": AssetIn(key=["bronze", "repair_requests"]),
        "bronze_customers": AssetIn(key=["bronze", "customers"]),
        "bronze_outcomes": AssetIn(key=["bronze", "technician_outcomes"]),
        "bronze_synthetic_photos": AssetIn(key=["bronze", "synthetic_photos"]),
        "bronze_synthetic_manifest": AssetIn(key=["bronze", "synthetic_manifest"]),
        "catalog": AssetIn(key=["silver", "product_catalog"]),
    },
    partitions_def=landing_batches,
    group_name="silver",
    check_specs=[
        AssetCheckSpec(
            CONSERVATION_CHECK,
            asset=AssetKey(["silver", "quarantine"]),
            blocking=True,
            description="Per batch, bronze rows = silver rows + quarantined rows, per source.",
        ),
        *(
            AssetCheckSpec(
                HAS_ROWS_CHECK,
                asset=AssetKey(["silver", table]),
                description="Warns when a batch leaves this table's partition empty.",
            )
            for table in PER_BATCH_TABLES
        ),
    ],
    can_subset=False,
)
def silver_batch(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    bronze_photos: pl.DataFrame,
    bronze_requests: pl.DataFrame,
    bronze_customers: pl.DataFrame,
    bronze_outcomes: pl.DataFrame,
    bronze_synthetic_photos: pl.DataFrame,
    bronze_synthetic_manifest: pl.DataFrame,
    catalog: pl.DataFrame,
):
    """Validate one landing batch into silver tables and one quarantine table."""
    batch = context.partition_key
    key = pseudonym_key_from_env()
    now = datetime.now(UTC)
    earlier = validation.EarlierBatches(
        customer_ids=column_values(
            warehouse, "silver", "customers", "customer_id", batches_before=batch
        ),
        request_ids=column_values(
            warehouse, "silver", "repair_requests", "request_id", batches_before=batch
        ),
        outcome_ids=column_values(
            warehouse, "silver", "technician_outcomes", "request_id", batches_before=batch
        ),
        quarantined_request_ids=quarantined_record_ids(
            warehouse, "repair_requests", batches_before=batch
        ),
    )
    validated = validation.validate_batch(
        photos=bronze_photos,
        requests=bronze_requests,
        customers=bronze_customers,
        outcomes=bronze_outcomes,
        product_ids=catalog["product_id"],
        earlier=earlier,
        pseudonym_key=key,
        now=now,
    )
    # A synthetic photo's parent is a photo that landed clean, here or in an earlier batch.
    synthetic = validation.validate_synthetic(
        bronze_synthetic_photos,
        bronze_synthetic_manifest,
        known_photo_shas=pl.concat(
            [
                column_values(warehouse, "silver", "repair_photos", "sha256", batches_before=batch),
                validated["repair_photos"].clean["sha256"],
            ]
        ),
        holdout_shas=holdout_shas(warehouse),
        earlier_synthetic_shas=column_values(
            warehouse, "silver", "synthetic_photos", "sha256", batches_before=batch
        ),
    )
    quarantine = withhold_personal_records(
        pl.concat([result.quarantine for result in (*validated.values(), *synthetic.values())])
    )
    bronze_rows = {
        "repair_photos": bronze_photos.height,
        "repair_requests": bronze_requests.height,
        "customers": bronze_customers.height,
        "technician_outcomes": bronze_outcomes.height,
        "synthetic_photos": bronze_synthetic_photos.height,
        "synthetic_manifest": bronze_synthetic_manifest.height,
    }
    check = conservation(bronze_rows, {**validated, **synthetic})
    for name, result in validated.items():
        context.log.info(
            f"batch {batch}: {name} {bronze_rows[name]} landed -> {result.clean.height} silver, "
            f"{result.quarantine.height} quarantined"
        )
        yield Output(result.clean, output_name=name)
        yield has_rows(name, result.clean.height, batch)
    # Decoded here, from the photos already in memory, rather than by a step that reads them back.
    started = time.perf_counter()
    pixels = decoded_pixels(validated["repair_photos"].clean)
    yield Output(
        pixels,
        output_name="photo_pixels",
        metadata={
            "image_size": STORED_IMAGE_SIZE,
            "photos": pixels.height,
            "decode_seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        },
    )
    marked = synthetic["synthetic_photos"].clean
    context.log.info(
        f"batch {batch}: {bronze_synthetic_photos.height} synthetic photo files and "
        f"{bronze_synthetic_manifest.height} manifest rows landed -> {marked.height} silver"
    )
    yield Output(
        marked,
        output_name="synthetic_photos",
        metadata={
            "generator_versions": MetadataValue.json(
                sorted(marked["generator_version"].unique().to_list())
            ),
            "parents": marked["parent_sha256"].n_unique(),
        },
    )
    reasons = (
        quarantine.group_by("source", "reason").len().sort("source", "reason")
        if quarantine.height
        else quarantine.select("source", "reason")
    )
    yield Output(
        quarantine,
        output_name="quarantine",
        metadata={f"{row[0]}/{row[1]}": row[2] for row in reasons.iter_rows()}
        if quarantine.height
        else {},
    )
    yield check


@asset(
    key_prefix="silver",
    group_name="silver",
    tags=TABLE,
    ins={"bronze_catalog": AssetIn(key=["bronze", "product_catalog"])},
)
def product_catalog(context: AssetExecutionContext, bronze_catalog: pl.DataFrame) -> pl.DataFrame:
    """The product catalog, typed; unparsable listings are counted in the metadata."""
    result = validation.validate_catalog(bronze_catalog)
    if result.quarantine.height:
        context.log.warning(f"{result.quarantine.height} catalog lines rejected")
    context.add_output_metadata(
        {
            "rejected_lines": result.quarantine.height,
            "rejections": result.quarantine.group_by("reason").len().to_dicts()
            if result.quarantine.height
            else [],
        }
    )
    return result.clean


# The holdout as the steps that keep it out of training sets read it: which photos it holds and
# whose labels they carry, without the photos themselves.
HOLDOUT_IDENTITIES = AssetIn(
    key=["silver", "holdout_photos"], metadata={COLUMNS_KEY: ["sha256", "label_origin"]}
)


def holdout_origin_check(holdout: pl.DataFrame) -> AssetCheckResult:
    """Check that every label the holdout scores models against is a technician's (expert's)."""
    by_origin = dict(holdout.group_by("label_origin").len().sort("label_origin").iter_rows())
    others = holdout.filter(pl.col("label_origin") != formats.TECHNICIAN).height
    return AssetCheckResult(
        check_name=HOLDOUT_ORIGIN_CHECK,
        asset_key=AssetKey(["silver", "holdout_photos"]),
        passed=others == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "holdout_rows": holdout.height,
            "non_technician_rows": others,
            "rows_by_origin": MetadataValue.json(by_origin),
        },
    )


@asset(
    key_prefix="silver",
    group_name="silver",
    tags=TABLE,
    ins={
        "labels": AssetIn(key=["bronze", "holdout_labels"]),
        "photos": AssetIn(key=["bronze", "holdout_photos"]),
    },
    check_specs=[
        AssetCheckSpec(
            HOLDOUT_ORIGIN_CHECK,
            asset=AssetKey(["silver", "holdout_photos"]),
            blocking=True,
            description="Evaluation (holdout scoring) uses technician labels only: no model, "
            "chatbot or synthetic label.",
        )
    ],
)
def holdout_photos(context: AssetExecutionContext, labels: pl.DataFrame, photos: pl.DataFrame):
    """The fixed evaluation holdout: photos with their expert labels, used only for evaluation."""
    result = validation.validate_holdout(labels, photos)
    if result.quarantine.height:
        context.log.warning(f"{result.quarantine.height} holdout labels rejected")
    yield Output(
        result.clean,
        metadata={
            "rejected_labels": result.quarantine.height,
            "by_level": MetadataValue.json(
                result.clean.group_by("damage_level").len().sort("damage_level").to_dicts()
            ),
        },
    )
    yield holdout_origin_check(result.clean)
