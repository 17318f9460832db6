"""Reads of already-written warehouse tables that validation needs across batches, and the
holdout photos no training data may descend from."""

import polars as pl

from compositional_ai.resources.warehouse import Warehouse

EXISTS_SQL = (
    "select count(*) as n from information_schema.tables "
    "where table_schema = $schema and table_name = $table"
)


def table_exists(warehouse: Warehouse, schema: str, table: str) -> bool:
    found = warehouse.query(EXISTS_SQL, {"schema": schema, "table": table}, purpose="lookup")
    return bool(found["n"][0])


def column_values(
    warehouse: Warehouse,
    schema: str,
    table: str,
    column: str,
    *,
    batches_before: str | None,
    include_batch: bool = False,
) -> pl.Series:
    """Distinct values of one column in the batches ordered before `batches_before`.

    Batches order by their key, which for the demo's ISO-date keys is landing order.
    """
    if not table_exists(warehouse, schema, table):
        return pl.Series(column, [], dtype=pl.String)
    comparison = "<=" if include_batch else "<"
    # Identifiers cannot be bound parameters; these come from code constants, not from data.
    sql = (
        f'select distinct "{column}" as value from "{schema}"."{table}" '
        f"where batch {comparison} $batch"
    )
    frame = warehouse.query(sql, {"batch": batches_before}, purpose=f"lookup {schema}.{table}")
    return frame["value"].cast(pl.String).alias(column)


def quarantined_record_ids(
    warehouse: Warehouse, source: str, *, batches_before: str | None
) -> pl.Series:
    """The record ids of one source's rows in silver.quarantine, for the batches before one."""
    found = warehouse.query(
        "select count(*) as n from information_schema.columns where table_schema = 'silver' "
        "and table_name = 'quarantine' and column_name = 'record_id'",
        purpose="lookup",
    )
    if not found["n"][0]:
        return pl.Series("record_id", [], dtype=pl.String)
    frame = warehouse.query(
        "select distinct record_id from silver.quarantine "
        "where source = $source and batch < $batch and record_id is not null",
        {"source": source, "batch": batches_before},
        purpose="lookup silver.quarantine",
    )
    return frame["record_id"].cast(pl.String)


def holdout_shas(warehouse: Warehouse) -> pl.Series:
    """The sha256 of every evaluation holdout photo in silver, none before the holdout landed."""
    if not table_exists(warehouse, "silver", "holdout_photos"):
        return pl.Series("sha256", [], dtype=pl.String)
    frame = warehouse.query(
        "select distinct sha256 from silver.holdout_photos", purpose="lookup holdout photos"
    )
    return frame["sha256"].cast(pl.String)
