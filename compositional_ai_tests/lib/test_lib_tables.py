import datetime as dt
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from compositional_ai.lib.tables import (
    EmptySchemaError,
    MissingColumnError,
    MissingTableError,
    PartitionMismatchError,
    SchemaMismatchError,
    can_store,
    connect_warehouse,
    hold_warehouse,
    markdown_preview,
    quote_identifier,
    read_frame,
    table_columns,
    validate_frame,
    write_frame,
)


@pytest.fixture
def con(tmp_path: Path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    connection.execute("SET TimeZone = 'UTC'")
    yield connection
    connection.close()


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def batch_frame(batch: str, values: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"batch": [batch] * len(values), "value": values})


def write_batch(con, batch: str, values: list[int]):
    return write_frame(
        con,
        "silver",
        "t",
        batch_frame(batch, values),
        partition_column="batch",
        partition_values=[batch],
    )


class Untouchable:
    """A stand-in connection that fails the test on any use."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the database was touched ({name})")


class FailingInsert:
    """A connection whose INSERT fails after the DDL and DELETE of the write have run."""

    def __init__(self, con):
        self._con = con

    def __getattr__(self, name: str):
        return getattr(self._con, name)

    def execute(self, sql: str, *args):
        if sql.startswith("INSERT"):
            raise duckdb.IOException("simulated: disk full during insert")
        return self._con.execute(sql, *args)


def test_partitioned_write_replaces_only_its_partitions(con):
    first = write_batch(con, "b1", [1, 2])
    write_batch(con, "b2", [3])
    again = write_batch(con, "b1", [10, 20, 30])
    assert (first.created_table, first.rows_written, first.rows_replaced) == (True, 2, 0)
    assert (again.created_table, again.rows_written, again.rows_replaced) == (False, 3, 2)
    assert again.table_rows == 4
    assert rows(con, "SELECT batch, value FROM silver.t ORDER BY value") == [
        ("b2", 3),
        ("b1", 10),
        ("b1", 20),
        ("b1", 30),
    ]


def test_one_write_replaces_several_partitions(con):
    write_batch(con, "b1", [1])
    write_batch(con, "b2", [2])
    write_batch(con, "b3", [3])
    frame = pl.concat([batch_frame("b1", [11]), batch_frame("b2", [22, 23])])
    stats = write_frame(
        con, "silver", "t", frame, partition_column="batch", partition_values=["b1", "b2"]
    )
    assert (stats.rows_written, stats.rows_replaced, stats.table_rows) == (3, 2, 4)
    assert rows(con, "SELECT value FROM silver.t ORDER BY value") == [(3,), (11,), (22,), (23,)]


def test_unpartitioned_write_replaces_all_rows_and_keeps_the_table(con):
    write_frame(con, "gold", "t", pl.DataFrame({"a": [1, 2, 3]}))
    stats = write_frame(con, "gold", "t", pl.DataFrame({"a": [7], "b": ["new"]}))
    assert (stats.rows_written, stats.rows_replaced, stats.table_rows) == (1, 3, 1)
    assert stats.added_columns == ("b",)
    assert rows(con, "SELECT a, b FROM gold.t") == [(7, "new")]


def test_new_columns_are_added_and_older_rows_read_null(con):
    write_batch(con, "b1", [1])
    frame = batch_frame("b2", [2]).with_columns(extra=pl.lit("x"))
    stats = write_frame(
        con, "silver", "t", frame, partition_column="batch", partition_values=["b2"]
    )
    assert stats.added_columns == ("extra",)
    assert rows(con, "SELECT batch, extra FROM silver.t ORDER BY batch") == [
        ("b1", None),
        ("b2", "x"),
    ]


def test_columns_missing_from_the_frame_are_written_null(con):
    write_frame(con, "gold", "t", pl.DataFrame({"a": [1], "b": ["kept?"]}))
    write_frame(con, "gold", "t", pl.DataFrame({"a": [2]}))
    assert rows(con, "SELECT a, b FROM gold.t") == [(2, None)]
    assert list(table_columns(con, "gold", "t")) == ["a", "b"]


def test_narrower_types_are_stored_in_wider_columns(con):
    write_frame(con, "gold", "t", pl.DataFrame({"n": [1], "f": [1.5]}))
    frame = pl.DataFrame(
        {"n": pl.Series([2], dtype=pl.Int16), "f": pl.Series([2.5], dtype=pl.Float32)}
    )
    write_frame(con, "gold", "t", frame)
    assert table_columns(con, "gold", "t") == {"n": "BIGINT", "f": "DOUBLE"}
    assert rows(con, "SELECT n, f FROM gold.t") == [(2, 2.5)]


def test_type_mismatch_names_table_column_and_both_types_and_keeps_contents(con):
    write_batch(con, "b1", [1, 2])
    frame = pl.DataFrame({"batch": ["b1"], "value": ["not a number"], "extra": [1.0]})
    with pytest.raises(SchemaMismatchError) as raised:
        write_frame(con, "silver", "t", frame, partition_column="batch", partition_values=["b1"])
    message = str(raised.value)
    assert "silver.t" in message and "'value'" in message
    assert "BIGINT" in message and "VARCHAR" in message
    assert rows(con, "SELECT batch, value FROM silver.t ORDER BY value") == [("b1", 1), ("b1", 2)]
    assert list(table_columns(con, "silver", "t")) == ["batch", "value"]


def test_failure_after_delete_rolls_everything_back(con):
    write_batch(con, "b1", [1, 2])
    write_batch(con, "b2", [3])
    frame = batch_frame("b1", [9]).with_columns(extra=pl.lit(True))
    with pytest.raises(duckdb.IOException, match="simulated"):
        write_frame(
            FailingInsert(con),
            "silver",
            "t",
            frame,
            partition_column="batch",
            partition_values=["b1"],
        )
    assert rows(con, "SELECT batch, value FROM silver.t ORDER BY value") == [
        ("b1", 1),
        ("b1", 2),
        ("b2", 3),
    ]
    assert list(table_columns(con, "silver", "t")) == ["batch", "value"]
    # The connection is usable again: the failed transaction is over.
    write_batch(con, "b1", [5])
    assert rows(con, "SELECT count(*) FROM silver.t") == [(2,)]


def test_failed_first_write_leaves_no_table(con):
    with pytest.raises(duckdb.IOException):
        write_frame(FailingInsert(con), "gold", "t", pl.DataFrame({"a": [1]}))
    assert table_columns(con, "gold", "t") == {}


def test_column_that_holds_only_nulls_takes_the_first_real_type(con):
    write_frame(con, "gold", "t", pl.DataFrame({"a": [1], "later": [None]}))
    assert table_columns(con, "gold", "t")["later"] == "VARCHAR"
    stats = write_frame(con, "gold", "t", pl.DataFrame({"a": [2], "later": [dt.date(2024, 5, 1)]}))
    assert stats.retyped_columns == ("later",)
    assert table_columns(con, "gold", "t")["later"] == "DATE"
    # An untyped all-null column fits whatever is stored.
    write_frame(con, "gold", "t", pl.DataFrame({"a": [3], "later": [None]}))
    assert rows(con, "SELECT a, later FROM gold.t") == [(3, None)]


def test_zero_row_frame_creates_the_table_and_empties_the_partition(con):
    write_batch(con, "b1", [1, 2])
    write_batch(con, "b2", [3])
    empty = batch_frame("b1", []).cast({"value": pl.Int64})
    stats = write_frame(
        con, "silver", "t", empty, partition_column="batch", partition_values=["b1"]
    )
    assert (stats.rows_written, stats.rows_replaced, stats.table_rows) == (0, 2, 1)
    fresh = write_frame(con, "gold", "empty", pl.DataFrame({"a": [], "b": []}))
    assert (fresh.created_table, fresh.table_rows) == (True, 0)
    assert read_frame(con, "gold", "empty").shape == (0, 2)


def test_zero_column_frame_raises_before_touching_the_database():
    with pytest.raises(EmptySchemaError):
        write_frame(Untouchable(), "gold", "t", pl.DataFrame())


@pytest.mark.parametrize(
    ("frame", "values", "error"),
    [
        # a row of a partition that is not being written
        (batch_frame("b1", [1]).vstack(batch_frame("b9", [2])), ["b1"], PartitionMismatchError),
        # a row without a partition value
        (pl.DataFrame({"batch": [None, "b1"], "value": [1, 2]}), ["b1"], PartitionMismatchError),
        # the frame lacks the partition column
        (pl.DataFrame({"value": [1]}), ["b1"], PartitionMismatchError),
        # no partitions named
        (batch_frame("b1", [1]), [], ValueError),
        # one string where a sequence of keys belongs
        (batch_frame("b1", [1]), "b1", TypeError),
    ],
)
def test_partition_errors_are_raised_before_writing(frame, values, error):
    with pytest.raises(error):
        write_frame(
            Untouchable(), "s", "t", frame, partition_column="batch", partition_values=values
        )


def test_partition_error_names_the_stray_values():
    frame = batch_frame("b1", [1]).vstack(batch_frame("b9", [2]))
    with pytest.raises(PartitionMismatchError, match=r"\['b9'\]"):
        validate_frame(frame, partition_column="batch", partition_values=["b1"])


def test_identifiers_with_quotes_and_spaces_and_hostile_values(con):
    schema, table = 'my "schema"', "table; DROP TABLE x --"
    key = "b'1\"; DELETE FROM t; --"
    frame = pl.DataFrame({"part col": [key, key], 'say "hi"': [1, 2], "select": ["a", "b"]})
    write_frame(con, schema, table, frame, partition_column="part col", partition_values=[key])
    write_frame(con, schema, table, frame, partition_column="part col", partition_values=[key])
    back = read_frame(con, schema, table, partition_column="part col", partition_values=[key])
    assert_frame_equal(back, frame)
    picked = read_frame(con, schema, table, columns=['say "hi"'])
    assert picked.columns == ['say "hi"'] and picked.height == 2
    assert quote_identifier('a"b') == '"a""b"'


def test_nested_binary_and_timezone_columns_round_trip(con):
    berlin = pl.Series(
        [dt.datetime(2024, 3, 31, 1, 30), dt.datetime(2024, 10, 27, 2, 30), None]
    ).dt.replace_time_zone("Europe/Berlin", ambiguous="earliest")
    frame = pl.DataFrame(
        {
            "blob": [b"\x00\xff\x10", b"", None],
            "tags": [["a", "b"], [], None],
            "point": [{"x": 1.0, "label": "p"}, None, {"x": -2.5, "label": None}],
            "nested": [[{"k": [1, 2]}], None, [{"k": []}]],
            "at": berlin,
            "day": [dt.date(2024, 1, 1), None, dt.date(1970, 1, 1)],
            "price": pl.Series([Decimal("1.50"), None, Decimal("-3.25")], dtype=pl.Decimal(10, 2)),
            "kind": pl.Series(["x", "y", None], dtype=pl.Categorical),
        }
    )
    write_frame(con, "gold", "types", frame)
    back = read_frame(con, "gold", "types")
    # Instants are kept; they read back in the session time zone (UTC); categories as strings.
    expected = frame.with_columns(
        pl.col("at").dt.convert_time_zone("UTC"), pl.col("kind").cast(pl.String)
    )
    assert_frame_equal(back, expected)
    # A second write of the same frame meets the stored types and is accepted.
    write_frame(con, "gold", "types", frame)
    assert_frame_equal(read_frame(con, "gold", "types"), expected)


def test_read_missing_table_says_what_to_materialize(con):
    with pytest.raises(MissingTableError) as raised:
        read_frame(con, "gold", "x")
    assert str(raised.value) == "gold.x does not exist yet: materialize asset gold/x first"


def test_read_unknown_column_names_it(con):
    write_frame(con, "gold", "t", pl.DataFrame({"a": [1]}))
    with pytest.raises(MissingColumnError, match="nope"):
        read_frame(con, "gold", "t", columns=["a", "nope"])


def test_read_partitions_and_columns(con):
    for batch, values in (("b1", [1]), ("b2", [2, 3]), ("b3", [4])):
        write_batch(con, batch, values)
    back = read_frame(
        con,
        "silver",
        "t",
        partition_column="batch",
        partition_values=["b2", "b3"],
        columns=["value"],
    )
    assert sorted(back["value"].to_list()) == [2, 3, 4]
    assert back.columns == ["value"]
    empty = read_frame(con, "silver", "t", partition_column="batch", partition_values=["zz"])
    assert empty.shape == (0, 2)


@pytest.mark.parametrize(
    ("stored", "incoming", "fits"),
    [
        ("BIGINT", "BIGINT", True),  # same type
        ("BIGINT", "INTEGER", True),  # wider signed integer
        ("INTEGER", "BIGINT", False),  # narrower integer loses values
        ("BIGINT", "UINTEGER", True),  # unsigned fits a wider signed
        ("BIGINT", "UBIGINT", False),  # unsigned 64 does not fit signed 64
        ("UBIGINT", "TINYINT", False),  # negative values do not fit unsigned
        ("DOUBLE", "INTEGER", True),  # 32-bit integers are exact in a double
        ("DOUBLE", "BIGINT", False),  # 64-bit integers are not
        ("FLOAT", "SMALLINT", True),  # 16-bit integers are exact in a float
        ("FLOAT", "INTEGER", False),  # 32-bit integers are not
        ("DOUBLE", "FLOAT", True),  # wider float
        ("FLOAT", "DOUBLE", False),  # narrower float
        ("TIMESTAMP", "DATE", True),  # a date is midnight
        ("DATE", "TIMESTAMP", False),  # a timestamp is not a date
        ("TIMESTAMP", "TIMESTAMP_MS", True),  # finer timestamp unit
        ("TIMESTAMP", "TIMESTAMP_NS", False),  # nanoseconds would be cut
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP", False),  # naive is not an instant
        ("DECIMAL(12,3)", "DECIMAL(10,2)", True),  # more digits on both sides
        ("DECIMAL(10,3)", "DECIMAL(10,2)", False),  # one integer digit fewer
        ("VARCHAR", "BIGINT", False),  # no silent stringification
        ("BIGINT[]", "INTEGER[]", False),  # nested types must match exactly
        ("STRUCT(a BIGINT)", "STRUCT(a BIGINT)", True),  # identical nested types
    ],
)
def test_can_store(stored, incoming, fits):
    assert can_store(stored, incoming) is fits


def test_markdown_preview_escapes_and_truncates():
    frame = pl.DataFrame(
        {
            "a|b": ["x|y", "line\nbreak", "z" * 100, None, "e", "f", "g"],
            "raw": [b"\x00\x01", None, b"0123456789", b"", b"", b"", b""],
        }
    )
    lines = markdown_preview(frame, cell_width=20).splitlines()
    assert lines[0] == "| a\\|b | raw |"
    assert lines[1] == "| --- | --- |"
    assert lines[2] == "| x\\|y | 2 bytes: 0x0001 |"
    assert lines[3] == "| line break | null |"
    assert lines[4] == "| " + "z" * 19 + "… | 10 bytes: 0x3031323… |"
    assert len(lines) == 2 + 5 + 2
    assert lines[-1] == "_first 5 of 7 rows_"


def test_markdown_preview_of_no_rows():
    text = markdown_preview(pl.DataFrame({"a": []}))
    assert text == "| a |\n| --- |\n\n_no rows_"


# Writes a large partition through a connection that reports when the INSERT starts and ends;
# with "pause-at-commit" it also stops just before COMMIT, to be killed there.
KILLED_WRITER = r"""
import sys
import time
import duckdb
import numpy as np
import polars as pl
from compositional_ai.lib.tables import write_frame

class Reporting:
    def __init__(self, con):
        self._con = con
    def __getattr__(self, name):
        return getattr(self._con, name)
    def execute(self, sql, *args):
        if not sql.startswith("INSERT"):
            return self._con.execute(sql, *args)
        print("insert-start", flush=True)
        result = self._con.execute(sql, *args)
        print("insert-done", flush=True)
        return result
    def commit(self):
        if sys.argv[3] == "pause-at-commit":
            print("commit-start", flush=True)
            time.sleep(60)
        return self._con.commit()

n = int(sys.argv[2])
rng = np.random.default_rng(0)
# Random values do not compress, so the insert writes a lot and takes a while.
frame = pl.DataFrame(
    {"batch": ["old"] * n, "value": rng.integers(0, 2**62, n), "note": rng.random(n)}
).with_columns(pl.col("note").cast(pl.String))
con = duckdb.connect(sys.argv[1])
con.execute("SET threads = 1")
write_frame(Reporting(con), "silver", "t", frame, partition_column="batch",
            partition_values=["old"])
print("committed", flush=True)
"""


def _on_disk(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())


@pytest.mark.parametrize(
    "moment",
    [
        # while the INSERT is writing row groups to the file
        "mid-insert",
        # after every row is inserted, just before COMMIT
        "pause-at-commit",
    ],
)
def test_killed_write_leaves_previous_contents(tmp_path: Path, moment: str):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as setup:
        write_batch(setup, "old", [1, 2, 3])
        write_batch(setup, "other", [4])
    before = _on_disk(path)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path), "2000000", moment],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "insert-start"
        if moment == "mid-insert":
            # Data reaching the file shows the insert is under way; it is killed right then.
            while _on_disk(path) < before + 512 * 1024 and child.poll() is None:
                time.sleep(0.005)
        else:
            assert child.stdout.readline().strip() == "insert-done"
            assert child.stdout.readline().strip() == "commit-start"
            assert _on_disk(path) > before + 512 * 1024
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        remaining = child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert "committed" not in remaining
    if moment == "mid-insert":
        assert "insert-done" not in remaining, "the insert finished before the kill; make it larger"
    with duckdb.connect(str(path)) as after:
        assert rows(after, "SELECT batch, value FROM silver.t ORDER BY value") == [
            ("old", 1),
            ("old", 2),
            ("old", 3),
            ("other", 4),
        ]
        write_batch(after, "old", [7])
        assert rows(after, "SELECT count(*) FROM silver.t") == [(2,)]


@pytest.mark.parametrize(
    "error",
    [
        # raised in a step process, these travel back to the run as pickles
        SchemaMismatchError("s", "t", "c", "BIGINT", "VARCHAR"),
        MissingTableError("gold", "x"),
    ],
)
def test_errors_survive_pickling(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)


# Holds the warehouse at argv[1], commits one partition through connect_warehouse, says so, and
# waits inside the hold to be killed.
KILLED_HOLDER = r"""
import sys
import time
import polars as pl
from compositional_ai.lib.tables import connect_warehouse, hold_warehouse, write_frame

with hold_warehouse(sys.argv[1], purpose="demo run batch_job [w1]"):
    with connect_warehouse(sys.argv[1], purpose="materialize silver/t") as con:
        write_frame(con, "silver", "t", pl.DataFrame({"batch": ["w1"], "value": [11]}),
                    partition_column="batch", partition_values=["w1"])
    print("committed", flush=True)
    time.sleep(60)
"""

# Tries to open the warehouse at argv[1] for at most 0.5 s and prints what happened.
WAITING_READER = r"""
import sys
from compositional_ai.lib.locking import LockTimeoutError
from compositional_ai.lib.tables import connect_warehouse

try:
    with connect_warehouse(sys.argv[1], purpose="query", lock_timeout_s=0.5) as con:
        print("opened", con.execute("SELECT 1").fetchone()[0])
except LockTimeoutError as error:
    print("waited:", error)
"""


def _other_process(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )


def test_connections_inside_a_hold_share_one_open_file(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    wal = path.with_name(path.name + ".wal")
    with hold_warehouse(path, purpose="demo run"):
        for batch, values in (("w1", [1, 2]), ("w2", [3])):
            with connect_warehouse(path, purpose="materialize silver/t") as con:
                write_batch(con, batch, values)
            # Closing the step's connection did not close the file, so nothing checkpointed
            # the write out of the log yet.
            assert wal.exists() and wal.stat().st_size > 0
        with connect_warehouse(path, purpose="load silver/t") as con:
            assert rows(con, "SELECT sum(value) FROM silver.t") == [(6,)]
    # The end of the hold closes the file, checkpointing it.
    assert not wal.exists()
    with duckdb.connect(str(path)) as after:
        assert rows(after, "SELECT batch, value FROM silver.t ORDER BY value") == [
            ("w1", 1),
            ("w1", 2),
            ("w2", 3),
        ]


def test_another_process_waits_for_the_whole_hold_and_then_opens(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    with hold_warehouse(path, purpose="demo run batch_job [w1]"):
        reader = _other_process(WAITING_READER, str(path))
        waited, _ = reader.communicate(timeout=60)
    assert waited.startswith("waited:") and "demo run batch_job [w1]" in waited
    reader = _other_process(WAITING_READER, str(path))
    opened, _ = reader.communicate(timeout=60)
    assert opened.strip() == "opened 1"


def test_a_failed_write_inside_a_hold_undoes_only_itself(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    with hold_warehouse(path, purpose="demo run"):
        with connect_warehouse(path, purpose="first") as con:
            write_batch(con, "w1", [1])
        with pytest.raises(SchemaMismatchError):
            with connect_warehouse(path, purpose="second") as con:
                frame = pl.DataFrame({"batch": ["w1"], "value": ["not a number"]})
                write_frame(
                    con, "silver", "t", frame, partition_column="batch", partition_values=["w1"]
                )
    with duckdb.connect(str(path)) as after:
        assert rows(after, "SELECT batch, value FROM silver.t") == [("w1", 1)]


def test_a_write_committed_inside_a_killed_hold_survives(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    holder = _other_process(KILLED_HOLDER, str(path))
    try:
        assert holder.stdout.readline().strip() == "committed"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert holder.returncode == -signal.SIGKILL
    with connect_warehouse(path, purpose="after the kill", lock_timeout_s=5) as con:
        assert rows(con, "SELECT batch, value FROM silver.t") == [("w1", 11)]


# Opens the warehouse at argv[1] read-only with plain DuckDB (no lock of ours), as the duckdb
# command line or a notebook would, says so, holds it for argv[2] seconds and closes it.
RAW_READER = r"""
import sys
import time
import duckdb

con = duckdb.connect(sys.argv[1], read_only=True)
print("open", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
print("closed", flush=True)
"""


def _raw_reader(path: Path, hold_s: float) -> subprocess.Popen:
    reader = _other_process(RAW_READER, str(path), str(hold_s))
    assert reader.stdout.readline().strip() == "open"
    return reader


def test_a_process_outside_our_lock_is_waited_for(tmp_path: Path, caplog):
    path = tmp_path / "warehouse.duckdb"
    with connect_warehouse(path, purpose="create") as con:
        write_batch(con, "w1", [1])
    reader = _raw_reader(path, 1.0)
    started = time.monotonic()
    with hold_warehouse(path, purpose="demo run", lock_timeout_s=30):
        waited = time.monotonic() - started
        with connect_warehouse(path, purpose="materialize silver/t") as con:
            write_batch(con, "w2", [2])
    assert reader.communicate(timeout=30)[0].strip() == "closed"
    # It opened only once the other process had let go, a little under a second after asking,
    # and said once, naming that process, why it waited.
    assert 0.3 < waited < 20
    waits = [
        r.getMessage() for r in caplog.records if "waiting for another process" in r.getMessage()
    ]
    assert len(waits) == 1 and f"PID {reader.pid}" in waits[0]
    with connect_warehouse(path, purpose="check") as con:
        assert rows(con, "SELECT batch, value FROM silver.t ORDER BY value") == [
            ("w1", 1),
            ("w2", 2),
        ]


def test_a_process_outside_our_lock_for_too_long_is_named(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    with connect_warehouse(path, purpose="create") as con:
        write_batch(con, "w1", [1])
    reader = _raw_reader(path, 5.0)
    try:
        with pytest.raises(duckdb.IOException) as raised:
            with connect_warehouse(path, purpose="query", lock_timeout_s=0.3):
                pass
    finally:
        reader.kill()
        reader.communicate(timeout=30)
    assert f"PID {reader.pid}" in str(raised.value)
    (note,) = raised.value.__notes__
    assert re.match(r"waited \d+\.\d s for that process to close", note)
    assert str(path) in note
