"""Polars frames in and out of DuckDB tables: one transaction per write, evolving schemas.

A write creates the schema and table when missing, adds columns the frame brings (older rows read
NULL), writes NULL into columns the frame lacks, and replaces either the named partitions or all
rows. A column type that the stored column cannot hold without loss is refused, unless the stored
column holds nothing but NULLs, in which case it takes the new type. Everything happens in one
transaction, so a failed or killed write leaves the previous contents as they were.

`connect_warehouse` is the one way to open the file: a short-lived connection under the
inter-process lock (see compositional_ai.lib.locking). `hold_warehouse` keeps the file open
for a run of short steps, so that their connections cost nothing to open and close.

Identifiers are always quoted; values are always bound parameters. Column types in DDL are the
type names DuckDB itself reports for the frame, which it renders with nested names quoted.
"""

import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from compositional_ai.lib.locking import InterProcessLock

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 900.0
# A process that opened the file without our lock (the duckdb CLI, a notebook) holds DuckDB's
# own lock on it, and DuckDB refuses every other process at once; we poll for it to let go.
FOREIGN_LOCK_POLL_S = 0.05
FOREIGN_LOCK_ERROR = "Could not set lock on file"

# A frame column that is NULL in every row (pl.Null) carries no type; it is created with this one,
# fits any stored column, and a stored column holding only NULLs takes the next real type.
NULL_COLUMN_TYPE = "VARCHAR"

_SIGNED = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_UNSIGNED = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")
_FLOAT_EXACT_BITS = {"FLOAT": 24, "DOUBLE": 53}
_TIMESTAMPS = ("TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP")
_DECIMAL = re.compile(r"DECIMAL\((\d+),\s*(\d+)\)")


def _integer_bits(type_name: str) -> tuple[int, bool] | None:
    if type_name in _SIGNED:
        return 8 << _SIGNED.index(type_name), True
    if type_name in _UNSIGNED:
        return 8 << _UNSIGNED.index(type_name), False
    return None


class WarehouseTableError(Exception):
    """A table write or read that cannot be carried out as asked."""


class EmptySchemaError(WarehouseTableError):
    """The frame has no columns, so there is no table to write."""


class SchemaMismatchError(WarehouseTableError):
    """A frame column has a type that the stored column cannot hold."""

    def __init__(self, schema: str, table: str, column: str, stored: str, incoming: str):
        self.schema, self.table, self.column = schema, table, column
        self.stored, self.incoming = stored, incoming
        super().__init__(
            f"{schema}.{table}: column {column!r} is stored as {stored}, and the frame's "
            f"{incoming} cannot be stored in it; cast the column in the asset, or drop the "
            f"column or table so that it is created again"
        )

    def __reduce__(self):
        return type(self), (self.schema, self.table, self.column, self.stored, self.incoming)


class PartitionMismatchError(WarehouseTableError):
    """The frame holds rows outside the partitions being written."""


class MissingTableError(WarehouseTableError):
    """The table has never been written."""

    def __init__(self, schema: str, table: str):
        self.schema, self.table = schema, table
        super().__init__(
            f"{schema}.{table} does not exist yet: materialize asset {schema}/{table} first"
        )

    def __reduce__(self):
        return type(self), (self.schema, self.table)


class MissingColumnError(WarehouseTableError):
    """A read names columns that the table does not have."""


@dataclass(frozen=True)
class WriteStats:
    """What one write_frame call did."""

    rows_written: int
    rows_replaced: int
    table_rows: int
    created_table: bool
    added_columns: tuple[str, ...]
    retyped_columns: tuple[str, ...]


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, with embedded quotes doubled."""
    if not name:
        raise ValueError("an identifier cannot be empty")
    return '"' + name.replace('"', '""') + '"'


def qualified_name(schema: str, table: str) -> str:
    """schema.table, both quoted."""
    return f"{quote_identifier(schema)}.{quote_identifier(table)}"


def can_store(stored: str, incoming: str) -> bool:
    """Whether values of DuckDB type `incoming` fit a column of type `stored` without loss."""
    if stored == incoming:
        return True
    stored_int, incoming_int = _integer_bits(stored), _integer_bits(incoming)
    if incoming_int is not None:
        bits, signed = incoming_int
        if stored_int is not None:
            stored_bits, stored_signed = stored_int
            if signed and not stored_signed:
                return False
            return stored_bits > bits or (stored_bits == bits and signed == stored_signed)
        # Integers fit a float whose significand holds every value of the integer type.
        magnitude_bits = bits - 1 if signed else bits
        return stored in _FLOAT_EXACT_BITS and magnitude_bits <= _FLOAT_EXACT_BITS[stored]
    if incoming == "FLOAT":
        return stored == "DOUBLE"
    if incoming == "DATE" or incoming in _TIMESTAMPS:
        ladder = ("DATE", *_TIMESTAMPS)
        return stored in _TIMESTAMPS and ladder.index(stored) > ladder.index(incoming)
    stored_dec, incoming_dec = _DECIMAL.fullmatch(stored), _DECIMAL.fullmatch(incoming)
    if stored_dec and incoming_dec:
        stored_p, stored_s = map(int, stored_dec.groups())
        incoming_p, incoming_s = map(int, incoming_dec.groups())
        return stored_s >= incoming_s and stored_p - stored_s >= incoming_p - incoming_s
    return False


def validate_frame(
    frame: pl.DataFrame,
    *,
    partition_column: str | None = None,
    partition_values: Sequence[str] | None = None,
) -> None:
    """Check a frame can be written as asked, without touching any database."""
    if frame.width == 0:
        raise EmptySchemaError(
            "the frame has no columns, so there is no table to write; return at least one column"
        )
    if partition_column is None:
        if partition_values is not None:
            raise ValueError("partition_values were given without a partition_column")
        return
    if isinstance(partition_values, str):
        raise TypeError("partition_values must be a sequence of strings, not one string")
    if partition_values is None or len(partition_values) == 0:
        raise ValueError(f"writing by partition column {partition_column!r} needs partition_values")
    if partition_column not in frame.columns:
        raise PartitionMismatchError(
            f"the frame has no partition column {partition_column!r}; its columns are "
            f"{frame.columns}"
        )
    keys = frame.get_column(partition_column).cast(pl.String)
    outside = keys.filter(~keys.is_in(list(partition_values)) | keys.is_null()).unique()
    if outside.len() > 0:
        shown = sorted(outside.drop_nulls().to_list())[:5]
        nulls = " and NULL" if outside.null_count() else ""
        raise PartitionMismatchError(
            f"the frame has rows whose {partition_column!r} is outside the partitions being "
            f"written ({list(partition_values)[:5]}): {shown}{nulls}"
        )


def table_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, str]:
    """The table's columns and their DuckDB types, in table order; empty if there is no table."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND lower(table_schema) = lower(?) "
        "AND lower(table_name) = lower(?) ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return dict(rows)


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether schema.table exists (a table or a view)."""
    (count,) = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND lower(table_schema) = lower(?) "
        "AND lower(table_name) = lower(?)",
        [schema, table],
    ).fetchone()
    return count > 0


def count_rows(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> int:
    """The number of rows in schema.table."""
    row = con.execute(f"SELECT count(*) FROM {qualified_name(schema, table)}").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def connect_warehouse(
    path: str | Path, *, purpose: str, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a DuckDB file, open only while its inter-process lock is held."""
    database = Path(path).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    with InterProcessLock(database, timeout_s=lock_timeout_s, purpose=purpose):
        con = open_duckdb(database, timeout_s=lock_timeout_s)
        try:
            # Time-zone-aware columns read back in UTC, whatever the machine's zone.
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


def open_duckdb(database: Path, *, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Open the file read-write, waiting up to timeout_s for a process outside our lock."""
    started = time.monotonic()
    logged = False
    while True:
        try:
            return duckdb.connect(str(database))
        except duckdb.IOException as error:
            waited = time.monotonic() - started
            if FOREIGN_LOCK_ERROR not in str(error):
                raise
            if not logged:
                logged = True
                logger.warning("waiting for another process to close %s: %s", database, error)
            if waited >= timeout_s:
                error.add_note(
                    f"waited {waited:.1f} s for that process to close {database}; it opened the "
                    f"file without compositional-ai's lock (close it, or query through "
                    f"Warehouse.query or the compositional-ai command)"
                )
                raise
            time.sleep(min(FOREIGN_LOCK_POLL_S, max(0.0, timeout_s - waited)))


@contextmanager
def hold_warehouse(
    path: str | Path, *, purpose: str, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Keep the DuckDB file open, under its lock, in this thread until the block ends.

    Opening the file starts a DuckDB instance (10-15 ms) and closing it after a write
    checkpoints it, so a run of many short reads and writes spends much of its time there.
    While one connection stays open, DuckDB hands every `connect_warehouse` of this thread a
    connection to the same instance (about 0.1 ms) and checkpoints only when its log grows
    large. The lock is re-entrant in its thread, so those calls pass it; other threads and
    processes wait for the whole block. Hold the file for runs of short steps, not for long
    computations. Each write keeps its own transaction, so a failure or a kill inside the block
    loses only the write it interrupts.
    """
    database = Path(path).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    with InterProcessLock(database, timeout_s=lock_timeout_s, purpose=purpose):
        anchor = open_duckdb(database, timeout_s=lock_timeout_s)
        try:
            yield
        finally:
            anchor.close()


def _prepared(frame: pl.DataFrame) -> pl.DataFrame:
    # Categories become strings: DuckDB would store them as ENUMs fixed to this frame's categories,
    # and the next frame's categories would be a different type.
    categorical = [
        name for name, dtype in frame.schema.items() if isinstance(dtype, pl.Categorical | pl.Enum)
    ]
    return frame.with_columns(pl.col(categorical).cast(pl.String)) if categorical else frame


def _incoming_types(
    con: duckdb.DuckDBPyConnection, view: str, frame: pl.DataFrame
) -> dict[str, str | None]:
    described = con.execute(f"DESCRIBE SELECT * FROM {quote_identifier(view)}").fetchall()
    null_columns = {name for name, dtype in frame.schema.items() if dtype == pl.Null}
    return {row[0]: (None if row[0] in null_columns else row[1]) for row in described}


def _column_is_all_null(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, column: str
) -> bool:
    row = con.execute(
        f"SELECT count({quote_identifier(column)}) FROM {qualified_name(schema, table)}"
    ).fetchone()
    return row is not None and row[0] == 0


def _write_in_transaction(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    view: str,
    frame: pl.DataFrame,
    partition_column: str | None,
    partition_values: Sequence[str] | None,
) -> WriteStats:
    target = qualified_name(schema, table)
    incoming = _incoming_types(con, view, frame)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
    stored = table_columns(con, schema, table)
    created = not stored
    added: list[str] = []
    retyped: list[str] = []
    # The type each frame column ends up stored as, once the table is created or evolved.
    final: dict[str, str] = {}
    if created:
        final = {name: kind or NULL_COLUMN_TYPE for name, kind in incoming.items()}
        definitions = ", ".join(f"{quote_identifier(name)} {kind}" for name, kind in final.items())
        con.execute(f"CREATE TABLE {target} ({definitions})")
    else:
        # DuckDB matches column names case-insensitively, and so does this.
        stored_by_key = {name.lower(): (name, kind) for name, kind in stored.items()}
        for name, kind in incoming.items():
            match = stored_by_key.get(name.lower())
            if match is None:
                added.append(name)
                final[name] = kind or NULL_COLUMN_TYPE
            elif kind is None or can_store(match[1], kind):
                final[name] = match[1]
            elif _column_is_all_null(con, schema, table, match[0]):
                retyped.append(match[0])
                final[name] = kind
            else:
                raise SchemaMismatchError(schema, table, match[0], match[1], kind)
        for name in added:
            con.execute(f"ALTER TABLE {target} ADD COLUMN {quote_identifier(name)} {final[name]}")
        for name in retyped:
            con.execute(
                f"ALTER TABLE {target} ALTER COLUMN {quote_identifier(name)} "
                f"SET DATA TYPE {final[name]}"
            )
    if partition_column is None:
        deleted = con.execute(f"DELETE FROM {target}").fetchone()
    else:
        deleted = con.execute(
            f"DELETE FROM {target} WHERE CAST({quote_identifier(partition_column)} AS VARCHAR) "
            "IN (SELECT unnest(CAST(? AS VARCHAR[])))",
            [list(partition_values or ())],
        ).fetchone()
    # Frame columns without a type (NULL in every row) are inserted as NULLs of the stored type.
    selected = ", ".join(
        quote_identifier(name)
        if kind is not None
        else f"CAST(NULL AS {final[name]}) AS {quote_identifier(name)}"
        for name, kind in incoming.items()
    )
    inserted = con.execute(
        f"INSERT INTO {target} BY NAME SELECT {selected} FROM {quote_identifier(view)}"
    ).fetchone()
    return WriteStats(
        rows_written=int(inserted[0]) if inserted else 0,
        rows_replaced=int(deleted[0]) if deleted else 0,
        table_rows=count_rows(con, schema, table),
        created_table=created,
        added_columns=tuple(added),
        retyped_columns=tuple(retyped),
    )


def write_frame(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    frame: pl.DataFrame,
    *,
    partition_column: str | None = None,
    partition_values: Sequence[str] | None = None,
) -> WriteStats:
    """Replace the given partitions (or all rows) of schema.table with the frame, atomically."""
    validate_frame(frame, partition_column=partition_column, partition_values=partition_values)
    # Quoting raises on an empty schema or table name, before the database is touched.
    qualified_name(schema, table)
    prepared = _prepared(frame)
    view = f"write_frame_{uuid.uuid4().hex}"
    con.register(view, prepared.to_arrow())
    try:
        con.begin()
        try:
            stats = _write_in_transaction(
                con, schema, table, view, prepared, partition_column, partition_values
            )
            con.commit()
        except BaseException as error:
            try:
                con.rollback()
            except duckdb.Error as rollback_error:
                error.add_note(f"the rollback failed too: {rollback_error}")
            raise
    finally:
        con.unregister(view)
    return stats


def read_frame(
    con: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    *,
    partition_column: str | None = None,
    partition_values: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Rows of schema.table (optionally only some partitions and columns) as a polars frame."""
    stored = table_columns(con, schema, table)
    if not stored:
        raise MissingTableError(schema, table)
    stored_by_key = {name.lower(): name for name in stored}
    wanted = list(stored) if columns is None else list(columns)
    if not wanted:
        raise ValueError("columns, when given, must name at least one column")
    unknown = [name for name in wanted if name.lower() not in stored_by_key]
    if partition_column is not None and partition_column.lower() not in stored_by_key:
        unknown.append(partition_column)
    if unknown:
        raise MissingColumnError(
            f"{schema}.{table} has no column(s) {unknown}; it has {list(stored)}"
        )
    selected = ", ".join(quote_identifier(name) for name in wanted)
    sql = f"SELECT {selected} FROM {qualified_name(schema, table)}"
    params: list[object] = []
    if partition_column is not None:
        if partition_values is None or isinstance(partition_values, str):
            raise ValueError("reading by partition column needs a sequence of partition_values")
        sql += (
            f" WHERE CAST({quote_identifier(partition_column)} AS VARCHAR) "
            "IN (SELECT unnest(CAST(? AS VARCHAR[])))"
        )
        params.append(list(partition_values))
    elif partition_values is not None:
        raise ValueError("partition_values were given without a partition_column")
    return con.execute(sql, params).pl()


def _markdown_cell(value: object, width: int) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bytes):
        text = f"{len(value)} bytes: 0x{value[:8].hex()}" + ("…" if len(value) > 8 else "")
    else:
        text = str(value)
    text = " ".join(text.split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_preview(frame: pl.DataFrame, *, rows: int = 5, cell_width: int = 60) -> str:
    """A markdown table of the first rows of a frame, for asset metadata."""
    header = [_markdown_cell(name, cell_width) for name in frame.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    head = frame.head(rows)
    lines += [
        "| " + " | ".join(_markdown_cell(value, cell_width) for value in row) + " |"
        for row in head.rows()
    ]
    summary = f"first {head.height} of {frame.height} rows" if frame.height else "no rows"
    return "\n".join(lines) + f"\n\n_{summary}_"
