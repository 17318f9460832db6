"""The DuckDB warehouse as a Dagster resource and IO manager.

Every access opens a short-lived connection under the inter-process lock on the warehouse file,
so parallel steps, backfills, sensors and the webserver take turns instead of failing to open the
file; a step that waits too long fails with an error naming the file and the holder. The IO
manager holds the lock only around the DuckDB work, never while an asset computes, except in a
run tagged `HOLD_TAG`: there both resources keep the file open (`hold_warehouse`) from the run's
start to its end, for jobs made of many short reads and writes (see compositional_ai.jobs).

Assets stored here have two-part keys, schema/table. A partitioned asset names its partition
column in its definition metadata ("partition_column", default "batch"); writing replaces the run's
partitions in one transaction. An input may name the columns it reads in its metadata
("columns"), so that a step needing a table's keys does not load its blobs.
"""

from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
import polars as pl

from compositional_ai.lib.tables import (
    DEFAULT_LOCK_TIMEOUT_S,
    connect_warehouse,
    hold_warehouse,
    markdown_preview,
    read_frame,
    validate_frame,
    write_frame,
)

PARTITION_COLUMN_KEY = "partition_column"
DEFAULT_PARTITION_COLUMN = "batch"
TABLE_ROWS_KEY = "table_rows"
PREVIEW_KEY = "preview"
PARTITION_ROWS_KEY = "partition_rows"
EMPTY_IS_NORMAL_KEY = "empty_is_normal"
COLUMNS_KEY = "columns"
# A run with this tag (value HOLD_FOR_RUN) keeps the warehouse open for its whole length.
HOLD_TAG = "compositional_ai/warehouse"
HOLD_FOR_RUN = "held for the run"


@contextmanager
def held_for_run(
    context: dg.InitResourceContext, path: str, lock_timeout_s: float
) -> Iterator[None]:
    """Hold the warehouse while the block runs if the run asks for it (HOLD_TAG), else nothing.

    Opening the file costs 10-15 ms and closing it after a write checkpoints it; an ingestion
    run makes about 50 such accesses in a few seconds, so holding the file is cheaper, and
    other processes wait only that long. Runs that compute for minutes between accesses (model
    training) must not hold it.
    """
    run = context.run
    if run is None or run.tags.get(HOLD_TAG) != HOLD_FOR_RUN:
        yield
        return
    with hold_warehouse(
        path, purpose=f"{run.job_name} run {run.run_id}", lock_timeout_s=lock_timeout_s
    ):
        yield


class HeldForTaggedRuns:
    """For the warehouse's resources (which have `path` and `lock_timeout_s`): in a run tagged
    HOLD_TAG, the file stays open from the resource's set-up to its teardown."""

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Generator[Any, None, None]:
        with held_for_run(context, self.path, self.lock_timeout_s):
            with super().yield_for_execution(context) as resource:
                yield resource


class Warehouse(HeldForTaggedRuns, dg.ConfigurableResource):
    """The DuckDB warehouse file, reached through short-lived connections under a lock."""

    path: str
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S

    @contextmanager
    def connect(self, purpose: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection held only inside the with-block; purpose is shown to anyone who waits."""
        with connect_warehouse(
            self.path, purpose=purpose, lock_timeout_s=self.lock_timeout_s
        ) as con:
            yield con

    def query(
        self,
        sql: str,
        params: Sequence[object] | Mapping[str, object] | None = None,
        *,
        purpose: str = "query",
    ) -> pl.DataFrame:
        """Run one SQL statement with bound parameters and return its result as a polars frame."""
        with self.connect(purpose) as con:
            return con.execute(sql, params).pl()


def table_of(asset_key: dg.AssetKey) -> tuple[str, str]:
    """The (schema, table) an asset is stored as; its key must have exactly two parts."""
    if len(asset_key.path) != 2:
        raise ValueError(
            f"asset {asset_key.to_user_string()} cannot be stored in the warehouse: its key has "
            f"{len(asset_key.path)} part(s), and the warehouse needs exactly two, schema/table "
            f'(e.g. key_prefix=["silver"])'
        )
    return asset_key.path[0], asset_key.path[-1]


def partition_column_of(definition_metadata: Mapping[str, Any] | None) -> str:
    """The partition column an asset declares in its metadata, or the default."""
    value = (definition_metadata or {}).get(PARTITION_COLUMN_KEY, DEFAULT_PARTITION_COLUMN)
    if isinstance(value, dg.MetadataValue):
        value = value.value
    if not isinstance(value, str) or not value:
        raise ValueError(f"metadata {PARTITION_COLUMN_KEY!r} must be a column name, got {value!r}")
    return value


def columns_of(input_metadata: Mapping[str, Any] | None) -> list[str] | None:
    """The columns an input reads (its "columns" metadata), or None for every column."""
    value = (input_metadata or {}).get(COLUMNS_KEY)
    if isinstance(value, dg.MetadataValue):
        value = value.value
    if value is None:
        return None
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(name, str) and name for name in value)
    ):
        raise ValueError(f"metadata {COLUMNS_KEY!r} must be a list of column names, got {value!r}")
    return list(value)


def _flag(metadata: Mapping[str, Any] | None) -> bool:
    """Whether the metadata marks an empty output as normal."""
    value = (metadata or {}).get(EMPTY_IS_NORMAL_KEY)
    if isinstance(value, dg.MetadataValue):
        value = value.value
    return bool(value)


def _describe_keys(keys: Sequence[str], shown: int = 3) -> str:
    listed = ", ".join(keys[:shown])
    return listed + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def table_schema_of(frame: pl.DataFrame) -> dg.TableSchema:
    """The frame's columns and polars types as a Dagster table schema."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=str(dtype)) for name, dtype in frame.schema.items()]
    )


def partition_row_counts(
    frame: pl.DataFrame, partition_column: str, keys: Sequence[str]
) -> dict[str, int]:
    """Rows per partition key in the frame, with 0 for keys it has no rows for."""
    counts = frame.get_column(partition_column).cast(pl.String).value_counts()
    found = dict(zip(counts[partition_column].to_list(), counts["count"].to_list(), strict=True))
    return {key: int(found.get(key, 0)) for key in keys}


class WarehouseIOManager(HeldForTaggedRuns, dg.ConfigurableIOManager):
    """Stores polars frames as warehouse tables: asset schema/table, partitions replaced whole."""

    path: str
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        """Write the asset's frame, replacing the run's partitions (or the whole table)."""
        schema, table = table_of(context.asset_key)
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"asset {schema}/{table} returned {type(obj).__name__}; the warehouse IO manager "
                f"stores polars DataFrames"
            )
        partition_column: str | None = None
        keys: list[str] | None = None
        purpose = f"materialize {schema}/{table}"
        if context.has_asset_partitions:
            partition_column = partition_column_of(context.definition_metadata)
            keys = list(context.asset_partition_keys)
            purpose += f" (partitions {_describe_keys(keys)})"
        # Checked before the lock is taken: a frame that cannot be written never touches the file.
        validate_frame(obj, partition_column=partition_column, partition_values=keys)
        with connect_warehouse(
            self.path,
            purpose=f"{purpose}, run {context.run_id}",
            lock_timeout_s=self.lock_timeout_s,
        ) as con:
            stats = write_frame(
                con, schema, table, obj, partition_column=partition_column, partition_values=keys
            )
        if stats.rows_written == 0:
            scope = f"partitions {_describe_keys(keys)} of " if keys else ""
            # A table that is empty when all is well (a quarantine, files outside the contract)
            # says so in its metadata, and its empty partitions are not worth a warning; so
            # does an output that the asset knows to be empty for a reason (an inference log
            # of a batch without online requests).
            expected = _flag(context.definition_metadata) or _flag(context.output_metadata)
            log = context.log.info if expected else context.log.warning
            log(f"{purpose}: the asset returned no rows, so {scope}{schema}.{table} is now empty")
        metadata: dict[str, Any] = {
            "dagster/row_count": dg.MetadataValue.int(stats.rows_written),
            "dagster/column_schema": dg.MetadataValue.table_schema(table_schema_of(obj)),
            "dagster/table_name": dg.MetadataValue.text(f"{schema}.{table}"),
            PREVIEW_KEY: dg.MetadataValue.md(markdown_preview(obj)),
            TABLE_ROWS_KEY: dg.MetadataValue.int(stats.table_rows),
        }
        if keys is not None and partition_column is not None and len(keys) > 1:
            # Dagster gives every partition of a run the same metadata, so the split is spelled out.
            metadata[PARTITION_ROWS_KEY] = dg.MetadataValue.json(
                partition_row_counts(obj, partition_column, keys)
            )
        if stats.added_columns:
            metadata["added_columns"] = dg.MetadataValue.text(", ".join(stats.added_columns))
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """Read the upstream table (only the input's "columns", when it names them): the mapped
        partitions when partitioned, else every row."""
        schema, table = table_of(context.asset_key)
        columns = columns_of(context.definition_metadata)
        upstream = context.upstream_output
        purpose = f"load {schema}/{table}"
        if context.has_asset_partitions:
            partition_column = partition_column_of(
                upstream.definition_metadata if upstream is not None else None
            )
            keys = list(context.asset_partition_keys)
            with connect_warehouse(
                self.path,
                purpose=f"{purpose} (partitions {_describe_keys(keys)})",
                lock_timeout_s=self.lock_timeout_s,
            ) as con:
                return read_frame(
                    con,
                    schema,
                    table,
                    partition_column=partition_column,
                    partition_values=keys,
                    columns=columns,
                )
        with connect_warehouse(
            self.path, purpose=purpose, lock_timeout_s=self.lock_timeout_s
        ) as con:
            return read_frame(con, schema, table, columns=columns)
