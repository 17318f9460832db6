"""Served inferences as partitions: closed segments of the service's log, one partition each.

The repair service appends every assessment and every technician outcome to segment files under
`landing/served/<stream>/`; a segment that is closed never changes again, so it can become a
partition. Served rows share the batch inference log's schema and its downstream path; the
`source` column says which they were.
"""

import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    sensor,
)

from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA
from compositional_ai.resources.landing import LandingArea
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.warehouse import labels
from compositional_ai.warehouse.lookups import table_exists
from compositional_ai.warehouse.reporting import LABEL_COLUMNS, label_columns

served_assessment_segments = DynamicPartitionsDefinition(name="served_assessment_segment")
served_outcome_segments = DynamicPartitionsDefinition(name="served_outcome_segment")

SERVED_INFERENCE_LOG = AssetKey(["repair", "served_inference_log"])
SERVED_OUTCOMES = AssetKey(["repair", "served_outcomes"])

# Each served stream that becomes partitions: its partitions, the asset it feeds, its schema.
STREAMS = {
    served_log.ASSESSMENTS_STREAM: (served_assessment_segments, SERVED_INFERENCE_LOG),
    served_log.OUTCOMES_STREAM: (served_outcome_segments, SERVED_OUTCOMES),
}


# What makes a served record a re-delivery of an earlier one. An assessment's request id is new
# for every call; an outcome's is the assessment it confirms, shared by every call made for that
# assessment (a 422, then the corrected call that succeeds), so only an identical record repeats.
DEDUPLICATE_ON = {
    served_log.ASSESSMENTS_STREAM: ["request_id"],
    served_log.OUTCOMES_STREAM: None,
}


def read_segment(landing: LandingArea, stream: str, segment: str, schema: dict) -> pl.DataFrame:
    """The rows of one closed segment, each call once: a re-delivered record keeps its first row."""
    path = (
        served_log.stream_dir(landing.served, stream)
        / served_log.CLOSED_DIR
        / (segment + served_log.SEGMENT_SUFFIX)
    )
    if not path.is_file():
        raise FileNotFoundError(f"served {stream} segment {segment!r} is not closed at {path}")
    frame = served_log.read_frame([path], schema)
    return frame.unique(DEDUPLICATE_ON[stream], keep="first", maintain_order=True)


@asset(
    key_prefix="repair",
    group_name="repair_service",
    partitions_def=served_assessment_segments,
    tags={"role": "inference_log"},
    metadata={"partition_column": "batch"},
    deps=[AssetKey(["repair", "repair_damage_model"])],
)
def served_inference_log(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """Every assessment the live repair service answered, failures included, per closed segment."""
    log = read_segment(
        landing, served_log.ASSESSMENTS_STREAM, context.partition_key, INFERENCE_LOG_SCHEMA
    )
    by_status = dict(log.group_by("status").len().iter_rows())
    context.log.info(f"served segment {context.partition_key}: {log.height} rows {by_status}")
    context.add_output_metadata(
        {
            "by_status": MetadataValue.json(by_status),
            "model_versions": MetadataValue.json(
                sorted(log["model_version"].drop_nulls().unique().to_list())
            ),
        }
    )
    return log


@asset(
    key_prefix="repair",
    group_name="repair_service",
    partitions_def=served_outcome_segments,
    tags={"role": "table"},
    metadata={"partition_column": "batch"},
)
def served_outcomes(context: AssetExecutionContext, landing: LandingArea) -> pl.DataFrame:
    """Technician outcomes recorded through the service, per closed segment."""
    outcomes = read_segment(
        landing, served_log.OUTCOMES_STREAM, context.partition_key, served_log.OUTCOME_LOG_SCHEMA
    )
    context.log.info(f"served outcomes segment {context.partition_key}: {outcomes.height} rows")
    return outcomes


@sensor(
    asset_selection=AssetSelection.assets(SERVED_INFERENCE_LOG, SERVED_OUTCOMES),
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def served_log_sensor(context: SensorEvaluationContext, landing: LandingArea):
    """Turn each newly closed segment of the served log into a partition and one run.

    A segment already a partition is never requested again, and run keys make a re-delivered
    request a no-op, so restarts and repeated ticks request each segment exactly once.
    """
    requests, additions = [], []
    for stream, (partitions_def, key) in STREAMS.items():
        existing = set(context.instance.get_dynamic_partitions(partitions_def.name))
        closed = [path.stem for path in served_log.closed_segments(landing.served, stream)]
        new = [segment for segment in closed if segment not in existing]
        if new:
            additions.append(partitions_def.build_add_request(new))
            requests.extend(
                RunRequest(
                    run_key=f"served:{stream}:{segment}",
                    partition_key=segment,
                    asset_selection=[key],
                )
                for segment in new
            )
    if not requests:
        return SkipReason("no newly closed served-log segments")
    context.log.info(f"{len(requests)} new served segments")
    return SensorResult(run_requests=requests, dynamic_partitions_requests=additions)


def served_table(warehouse: Warehouse, key: AssetKey, schema: dict) -> pl.DataFrame:
    """All rows of a served table, or none with its schema when nothing was served yet."""
    table_schema, table = key.path
    if not table_exists(warehouse, table_schema, table):
        return pl.DataFrame(schema=schema)
    frame = warehouse.query(f'select * from "{table_schema}"."{table}"', purpose=f"read {key}")
    return frame.select(list(schema)).cast(schema)


def all_inferences(warehouse: Warehouse, batch_log: pl.DataFrame) -> pl.DataFrame:
    """The batch inference log and every served assessment, one schema, one downstream path."""
    served = served_table(warehouse, SERVED_INFERENCE_LOG, INFERENCE_LOG_SCHEMA)
    return pl.concat(
        [batch_log.select(list(INFERENCE_LOG_SCHEMA)).cast(INFERENCE_LOG_SCHEMA), served]
    )


def all_confirmed_labels(warehouse: Warehouse, landed: pl.DataFrame) -> pl.DataFrame:
    """Landed confirmed labels and those recorded through the service, in one frame."""
    served = label_columns(served_confirmed_labels(warehouse))
    return pl.concat([landed.select(LABEL_COLUMNS), served], how="vertical_relaxed").sort(
        "request_id"
    )


def served_confirmed_labels(warehouse: Warehouse) -> pl.DataFrame:
    """Technician outcomes recorded through the service, joined to the photo they confirm."""
    outcomes = served_table(warehouse, SERVED_OUTCOMES, served_log.OUTCOME_LOG_SCHEMA)
    assessed = served_table(warehouse, SERVED_INFERENCE_LOG, INFERENCE_LOG_SCHEMA)
    return (
        outcomes.filter(
            (pl.col("status") == "ok")
            & pl.col("quote_accepted")
            & pl.col("damage_level").is_not_null()
        )
        .select(
            "request_id",
            pl.col("batch").alias("confirmed_in_batch"),
            "damage_level",
            "cell_type",
            "inspected_at",
            "technician_id",
        )
        .join(
            assessed.filter(pl.col("status") == "ok").select(
                "request_id",
                pl.col("batch").alias("request_batch"),
                pl.col("input_sha256").alias("photo_sha256"),
            ),
            on="request_id",
        )
        .with_columns(
            pl.lit("served").alias("channel"),
            pl.lit(None, pl.String).alias("customer_id"),
        )
    )


def table_columns(
    warehouse: Warehouse, schema: str, table: str, columns: tuple[str, ...]
) -> pl.DataFrame:
    """The named columns of a warehouse table (missing ones null), or no rows when it does not
    exist yet; only those columns are read, so photo bytes stay in the warehouse."""
    if not table_exists(warehouse, schema, table):
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    present = set(
        warehouse.query(
            "select column_name from information_schema.columns "
            "where table_schema = $schema and table_name = $table",
            {"schema": schema, "table": table},
            purpose=f"columns of {schema}.{table}",
        )["column_name"].to_list()
    )
    # Identifiers come from code constants, never from data.
    selected = ", ".join(
        f'"{column}"' if column in present else f'null as "{column}"' for column in columns
    )
    return warehouse.query(
        f'select {selected} from "{schema}"."{table}"', purpose=f"read {schema}.{table}"
    )


def all_damage_labels(
    warehouse: Warehouse, landed: pl.DataFrame, inferences: pl.DataFrame
) -> pl.DataFrame:
    """Every damage label of the four origins (warehouse.labels): technician labels from landed
    and served outcomes, model labels from `inferences` (both logs, `all_inferences`), chatbot
    labels from the capture log, synthetic labels from silver's synthetic photos."""
    return labels.damage_labels(
        confirmed=all_confirmed_labels(warehouse, landed),
        inferences=inferences,
        capture_log=table_columns(
            warehouse, "chatbot", "chatbot_capture_log", labels.CAPTURE_COLUMNS
        ),
        requests=table_columns(warehouse, "silver", "repair_requests", labels.REQUEST_COLUMNS),
        synthetic=table_columns(warehouse, "silver", "synthetic_photos", labels.SYNTHETIC_COLUMNS),
    )
