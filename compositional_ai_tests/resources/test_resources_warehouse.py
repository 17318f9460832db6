import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from compositional_ai.lib.locking import (
    InterProcessLock,
    LockTimeoutError,
    lock_path_for,
    read_holder,
)
from compositional_ai.resources import Warehouse, WarehouseIOManager
from compositional_ai.resources.warehouse import (
    COLUMNS_KEY,
    EMPTY_IS_NORMAL_KEY,
    HOLD_FOR_RUN,
    HOLD_TAG,
    PARTITION_ROWS_KEY,
    PREVIEW_KEY,
    TABLE_ROWS_KEY,
    columns_of,
    partition_column_of,
    partition_row_counts,
    table_of,
)

BATCHES = dg.DynamicPartitionsDefinition(name="batches")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "wh" / "warehouse.duckdb"


@pytest.fixture
def io_manager(database: Path) -> WarehouseIOManager:
    return WarehouseIOManager(path=str(database), lock_timeout_s=10)


@pytest.fixture
def instance() -> dg.DagsterInstance:
    ephemeral = dg.DagsterInstance.ephemeral()
    ephemeral.add_dynamic_partitions("batches", ["b1", "b2", "b3"])
    return ephemeral


def sql(database: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(database)) as con:
        return con.execute(query).fetchall()


def run(assets, io_manager, instance, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, instance=instance, resources={"io_manager": io_manager}, **kwargs)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    return "\n".join(
        event.step_failure_data.error.to_string() for event in result.get_step_failure_events()
    )


def only_materialization(result: dg.ExecuteInProcessResult, node: str) -> dg.AssetMaterialization:
    (materialization,) = result.asset_materializations_for_node(node)
    return materialization


def test_unpartitioned_asset_round_trips_and_replaces(database, io_manager, instance):
    version = {"n": 3}

    @dg.asset(key_prefix=["gold"])
    def scores() -> pl.DataFrame:
        n = version["n"]
        return pl.DataFrame({"id": list(range(n)), "score": [i / 2 for i in range(n)]})

    @dg.asset(key_prefix=["gold"])
    def score_total(scores: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame({"total": [scores["score"].sum()], "rows": [scores.height]})

    first = run([scores, score_total], io_manager, instance)
    version["n"] = 2
    second = run([scores, score_total], io_manager, instance)
    assert first.success and second.success
    assert sql(database, "SELECT id, score FROM gold.scores ORDER BY id") == [(0, 0.0), (1, 0.5)]
    assert sql(database, "SELECT total, rows FROM gold.score_total") == [(0.5, 2)]
    metadata = only_materialization(second, "gold__scores").metadata
    assert metadata["dagster/row_count"].value == 2
    assert metadata[TABLE_ROWS_KEY].value == 2
    assert metadata["dagster/table_name"].value == "gold.scores"
    schema = metadata["dagster/column_schema"].value
    assert [(c.name, c.type) for c in schema.columns] == [("id", "Int64"), ("score", "Float64")]
    assert metadata[PREVIEW_KEY].value.splitlines()[:3] == [
        "| id | score |",
        "| --- | --- |",
        "| 0 | 0.0 |",
    ]


def _partitioned_assets(seen: dict[str, list[str]]):
    @dg.asset(
        key_prefix=["silver"],
        partitions_def=BATCHES,
        metadata={"partition_column": "batch_id"},
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def requests(context: dg.AssetExecutionContext) -> pl.DataFrame:
        keys = context.partition_keys
        return pl.DataFrame(
            {
                "batch_id": [key for key in keys for _ in range(2)],
                "n": list(range(2 * len(keys))),
            }
        )

    @dg.asset(
        key_prefix=["gold"],
        partitions_def=BATCHES,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def request_counts(context: dg.AssetExecutionContext, requests: pl.DataFrame) -> pl.DataFrame:
        seen["partitioned"] = sorted(requests["batch_id"].unique().to_list())
        return requests.group_by("batch_id").agg(rows=pl.len()).rename({"batch_id": "batch"})

    @dg.asset(key_prefix=["gold"])
    def request_total(requests: pl.DataFrame) -> pl.DataFrame:
        seen["all"] = sorted(requests["batch_id"].unique().to_list())
        return pl.DataFrame({"rows": [requests.height]})

    return requests, request_counts, request_total


def test_dynamic_partitions_are_replaced_not_duplicated(database, io_manager, instance):
    seen: dict[str, list[str]] = {}
    requests, request_counts, _ = _partitioned_assets(seen)
    for key in ("b1", "b1", "b2"):
        assert run([requests, request_counts], io_manager, instance, partition_key=key).success
    assert sql(
        database, "SELECT batch_id, count(*) FROM silver.requests GROUP BY 1 ORDER BY 1"
    ) == [
        ("b1", 2),
        ("b2", 2),
    ]
    # The downstream partition read only its own upstream partition.
    assert seen["partitioned"] == ["b2"]
    # request_counts declares no partition column, so the default "batch" is used.
    assert sql(database, "SELECT batch, rows FROM gold.request_counts ORDER BY 1") == [
        ("b1", 2),
        ("b2", 2),
    ]


def test_one_run_writes_several_partitions(database, io_manager, instance):
    seen: dict[str, list[str]] = {}
    requests, request_counts, request_total = _partitioned_assets(seen)
    assert run([requests], io_manager, instance, partition_key="b1").success
    tags = {"dagster/asset_partition_range_start": "b2", "dagster/asset_partition_range_end": "b3"}
    result = run([requests, request_counts], io_manager, instance, tags=tags)
    assert result.success
    materializations = result.asset_materializations_for_node("silver__requests")
    assert sorted(m.partition for m in materializations) == ["b2", "b3"]
    assert materializations[0].metadata[PARTITION_ROWS_KEY].value == {"b2": 2, "b3": 2}
    assert materializations[0].metadata[TABLE_ROWS_KEY].value == 6
    assert seen["partitioned"] == ["b2", "b3"]
    # A second single-run backfill over the same range replaces, rather than adds.
    assert run([requests], io_manager, instance, tags=tags).success
    assert sql(
        database, "SELECT batch_id, count(*) FROM silver.requests GROUP BY 1 ORDER BY 1"
    ) == [
        ("b1", 2),
        ("b2", 2),
        ("b3", 2),
    ]
    # An unpartitioned downstream reads every partition.
    assert run([requests, request_total], io_manager, instance, selection=[request_total]).success
    assert seen["all"] == ["b1", "b2", "b3"]
    assert sql(database, "SELECT rows FROM gold.request_total") == [(6,)]


def test_failed_write_keeps_previous_contents(database, io_manager, instance):
    value: dict[str, object] = {"x": 1}

    @dg.asset(key_prefix=["gold"])
    def numbers() -> pl.DataFrame:
        return pl.DataFrame({"x": [value["x"]], "added": [True]})

    assert run([numbers], io_manager, instance).success
    value["x"] = "one"
    text = failure_text(run([numbers], io_manager, instance, raise_on_error=False))
    assert "SchemaMismatchError" in text and "gold.numbers" in text and "'x'" in text
    assert sql(database, "SELECT x, added FROM gold.numbers") == [(1, True)]


def test_schema_evolution_through_the_io_manager(database, io_manager, instance):
    columns = {"extra": False}

    @dg.asset(key_prefix=["gold"])
    def evolving() -> pl.DataFrame:
        frame = pl.DataFrame({"id": [len(columns)]})
        return frame.with_columns(extra=pl.lit("new")) if columns["extra"] else frame

    @dg.asset(key_prefix=["gold"], partitions_def=BATCHES)
    def evolving_batches(context: dg.AssetExecutionContext) -> pl.DataFrame:
        frame = pl.DataFrame({"batch": [context.partition_key]})
        return frame.with_columns(extra=pl.lit(7)) if context.partition_key == "b2" else frame

    assert run([evolving], io_manager, instance).success
    columns["extra"] = True
    result = run([evolving], io_manager, instance)
    assert only_materialization(result, "gold__evolving").metadata["added_columns"].value == "extra"
    assert sql(database, "SELECT id, extra FROM gold.evolving") == [(1, "new")]
    for key in ("b1", "b2"):
        assert run([evolving_batches], io_manager, instance, partition_key=key).success
    assert sql(database, "SELECT batch, extra FROM gold.evolving_batches ORDER BY 1") == [
        ("b1", None),
        ("b2", 7),
    ]


def test_zero_rows_are_written_with_a_warning(database, io_manager, instance):
    @dg.asset(key_prefix=["gold"], partitions_def=BATCHES)
    def maybe_empty(context: dg.AssetExecutionContext) -> pl.DataFrame:
        rows = 0 if context.partition_key == "b2" else 3
        return pl.DataFrame({"batch": [context.partition_key] * rows}, schema={"batch": pl.String})

    assert run([maybe_empty], io_manager, instance, partition_key="b1").success
    result = run([maybe_empty], io_manager, instance, partition_key="b2")
    assert (
        only_materialization(result, "gold__maybe_empty").metadata["dagster/row_count"].value == 0
    )
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == logging.WARNING and "no rows" in entry.user_message
    ]
    assert len(warnings) == 1 and "gold.maybe_empty" in warnings[0] and "b2" in warnings[0]
    assert sql(database, "SELECT batch, count(*) FROM gold.maybe_empty GROUP BY 1") == [("b1", 3)]


def test_a_table_empty_when_all_is_well_is_logged_without_a_warning(database, io_manager, instance):
    @dg.asset(key_prefix=["gold"], partitions_def=BATCHES, metadata={EMPTY_IS_NORMAL_KEY: True})
    def quiet_quarantine(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({"batch": []}, schema={"batch": pl.String})

    result = run([quiet_quarantine], io_manager, instance, partition_key="b1")
    assert result.success
    levels = [
        entry.level
        for entry in instance.all_logs(result.run_id)
        if entry.user_message and "no rows" in entry.user_message
    ]
    assert levels == [logging.INFO]


def test_an_output_marked_empty_for_a_reason_is_logged_without_a_warning(
    database, io_manager, instance
):
    @dg.asset(key_prefix=["repair"], partitions_def=BATCHES)
    def predictions(context: dg.AssetExecutionContext):
        # b1 has nothing to assess, and the asset says so; b2's empty output is unexplained.
        empty = pl.DataFrame({"batch": []}, schema={"batch": pl.String})
        marked = context.partition_key == "b1"
        return dg.Output(empty, metadata={EMPTY_IS_NORMAL_KEY: True} if marked else {})

    def levels(partition_key: str) -> list[int]:
        result = run([predictions], io_manager, instance, partition_key=partition_key)
        assert result.success
        return [
            entry.level
            for entry in instance.all_logs(result.run_id)
            if entry.user_message and "no rows" in entry.user_message
        ]

    assert levels("b1") == [logging.INFO]
    assert levels("b2") == [logging.WARNING]


def test_zero_column_frame_fails_before_the_file_exists(database, io_manager, instance):
    @dg.asset(key_prefix=["gold"])
    def nothing() -> pl.DataFrame:
        return pl.DataFrame()

    text = failure_text(run([nothing], io_manager, instance, raise_on_error=False))
    assert "EmptySchemaError" in text
    assert not database.exists() and not lock_path_for(database).exists()


@pytest.mark.parametrize(
    "key_prefix",
    [
        # one part: no schema
        None,
        # three parts: ambiguous
        ["a", "b"],
    ],
)
def test_asset_keys_need_exactly_two_parts(io_manager, instance, key_prefix):
    @dg.asset(key_prefix=key_prefix)
    def loose() -> pl.DataFrame:
        return pl.DataFrame({"a": [1]})

    text = failure_text(run([loose], io_manager, instance, raise_on_error=False))
    assert "needs exactly two, schema/table" in text


def test_only_polars_frames_are_stored(io_manager, instance):
    @dg.asset(key_prefix=["gold"])
    def wrong() -> dict:
        return {"a": [1]}

    text = failure_text(run([wrong], io_manager, instance, raise_on_error=False))
    assert "returned dict" in text


def test_missing_upstream_table_says_what_to_materialize(io_manager, instance):
    @dg.asset(key_prefix=["gold"])
    def upstream() -> pl.DataFrame:
        return pl.DataFrame({"a": [1]})

    @dg.asset(key_prefix=["gold"])
    def downstream(upstream: pl.DataFrame) -> pl.DataFrame:
        return upstream

    result = run(
        [upstream, downstream], io_manager, instance, selection=[downstream], raise_on_error=False
    )
    assert "gold.upstream does not exist yet: materialize asset gold/upstream first" in (
        failure_text(result)
    )


def test_lock_is_free_while_assets_compute(database, io_manager, instance):
    observed: dict[str, object] = {}

    @dg.asset(key_prefix=["gold"])
    def first() -> pl.DataFrame:
        return pl.DataFrame({"a": [1]})

    @dg.asset(key_prefix=["gold"])
    def second(first: pl.DataFrame) -> pl.DataFrame:
        observed["holder"] = read_holder(lock_path_for(database))
        # Another thread could take the lock right now; a held lock would time out at once.
        observed["free"] = _free_in_other_thread(database)
        return first

    assert run([first, second], io_manager, instance).success
    assert observed == {"holder": None, "free": True}


def _free_in_other_thread(database: Path) -> bool:
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with InterProcessLock(database, timeout_s=0):
                outcome.append(True)
        except LockTimeoutError:
            outcome.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(timeout=10)
    return outcome == [True]


def test_warehouse_query_binds_parameters_and_reads_utc(database):
    warehouse = Warehouse(path=str(database))
    with warehouse.connect("setup") as con:
        con.execute("CREATE TABLE t (name VARCHAR, seen TIMESTAMPTZ)")
        con.execute(
            "INSERT INTO t VALUES (?, ?)",
            ["o'brien; --", dt.datetime(2024, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
        )
    frame = warehouse.query("SELECT name, seen FROM t WHERE name = ?", ["o'brien; --"])
    assert frame["name"].to_list() == ["o'brien; --"]
    assert frame["seen"].to_list() == [dt.datetime(2024, 6, 1, 10, tzinfo=dt.UTC)]
    # The connection is closed and the lock released once the query returns.
    assert read_holder(lock_path_for(database)) is None


# Holds the warehouse through Warehouse.connect until killed.
WAREHOUSE_HOLDER = r"""
import sys
import time
from compositional_ai.resources import Warehouse

with Warehouse(path=sys.argv[1]).connect("materialize silver/repair_requests"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_timeout_names_the_file_and_holder(database, instance):
    child = subprocess.Popen(
        [sys.executable, "-c", WAREHOUSE_HOLDER, str(database)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        impatient = Warehouse(path=str(database), lock_timeout_s=0.2)
        with pytest.raises(LockTimeoutError) as raised:
            impatient.query("SELECT 1")
        message = str(raised.value)
        assert str(database) in message
        assert f"pid {child.pid} (purpose: materialize silver/repair_requests)" in message

        @dg.asset(key_prefix=["gold"])
        def blocked() -> pl.DataFrame:
            return pl.DataFrame({"a": [1]})

        manager = WarehouseIOManager(path=str(database), lock_timeout_s=0.2)
        text = failure_text(run([blocked], manager, instance, raise_on_error=False))
        assert "LockTimeoutError" in text and f"pid {child.pid}" in text
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    # The killed holder left nothing behind: the warehouse opens at once.
    assert Warehouse(path=str(database), lock_timeout_s=5).query("SELECT 42 AS x")["x"][0] == 42


# Waits for the go file, then writes its partition through connect_warehouse (what Warehouse and
# the IO manager use, without the cost of importing Dagster), holding the lock a little longer
# than the write needs; reports when it asked for, got and gave back the lock.
PARTITION_WRITER = r"""
import json
import logging
import sys
import time
from pathlib import Path
import polars as pl
from compositional_ai.lib.tables import connect_warehouse, write_frame

database, batch, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
frame = pl.DataFrame({"batch": [batch] * 1000, "n": list(range(1000))})
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
asked = time.time()
with connect_warehouse(database, purpose=f"write {batch}", lock_timeout_s=60) as con:
    got = time.time()
    write_frame(con, "silver", "parallel", frame, partition_column="batch",
                partition_values=[batch])
    time.sleep(0.4)
    gave = time.time()
print(json.dumps({"asked": asked, "got": got, "gave": gave}), flush=True)
"""


def test_parallel_writers_take_turns_and_all_succeed(database, tmp_path):
    database.parent.mkdir(parents=True)
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PARTITION_WRITER, str(database), f"b{i}", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0, 0, 0], [err for _, err in outputs]
    spans = sorted((json.loads(out) for out, _ in outputs), key=lambda span: span["got"])
    # Each held the lock alone ...
    assert all(a["gave"] <= b["got"] for a, b in zip(spans, spans[1:], strict=False))
    # ... and at least one had asked while another held it, so they really contended.
    assert any(b["asked"] < a["gave"] for a, b in zip(spans, spans[1:], strict=False))
    assert sql(database, "SELECT batch, count(*) FROM silver.parallel GROUP BY 1 ORDER BY 1") == [
        (f"b{i}", 1000) for i in range(4)
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (dg.AssetKey(["silver", "repair_requests"]), ("silver", "repair_requests")),  # schema/table
        (dg.AssetKey(['we"ird', "t t"]), ('we"ird', "t t")),  # quoting is the table layer's job
    ],
)
def test_table_of(key, expected):
    assert table_of(key) == expected


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, "batch"),  # no metadata: the default
        ({"partition_column": "batch_id"}, "batch_id"),  # declared
        ({"partition_column": dg.MetadataValue.text("day")}, "day"),  # as a metadata value
    ],
)
def test_partition_column_of(metadata, expected):
    assert partition_column_of(metadata) == expected


def test_partition_row_counts_include_empty_partitions():
    frame = pl.DataFrame({"batch": ["b1", "b1", "b3"]})
    assert partition_row_counts(frame, "batch", ["b1", "b2", "b3"]) == {"b1": 2, "b2": 0, "b3": 1}


def test_a_run_tagged_to_hold_keeps_the_warehouse_from_start_to_end(database, io_manager, instance):
    observed: dict[str, object] = {}

    @dg.asset(key_prefix=["gold"])
    def first() -> pl.DataFrame:
        return pl.DataFrame({"a": [1, 2]})

    @dg.asset(key_prefix=["gold"])
    def second(context: dg.AssetExecutionContext, first: pl.DataFrame) -> pl.DataFrame:
        observed["run_id"] = context.run.run_id
        observed["holder"] = read_holder(lock_path_for(database))
        observed["free"] = _free_in_other_thread(database)
        return first.with_columns(b=pl.col("a") * 10)

    result = run([first, second], io_manager, instance, tags={HOLD_TAG: HOLD_FOR_RUN})

    assert result.success
    holder = observed["holder"]
    assert holder is not None and holder.pid == os.getpid()
    assert holder.purpose == f"__ephemeral_asset_job__ run {observed['run_id']}"
    # Held while the asset computed, so no other thread could take it; given back at the end.
    assert observed["free"] is False
    assert read_holder(lock_path_for(database)) is None
    assert _free_in_other_thread(database)
    assert sql(database, "select a, b from gold.second order by a") == [(1, 10), (2, 20)]


def test_the_warehouse_resource_alone_holds_for_a_tagged_run(database, instance, tmp_path):
    observed: dict[str, object] = {}

    @dg.asset
    def reader(warehouse: Warehouse) -> int:
        observed["answer"] = warehouse.query("select 7 as x")["x"][0]
        observed["free"] = _free_in_other_thread(database)
        return 1

    resources = {
        "warehouse": Warehouse(path=str(database), lock_timeout_s=10),
        "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "outputs")),
    }
    for tags, free in (({HOLD_TAG: HOLD_FOR_RUN}, False), ({HOLD_TAG: "no"}, True), ({}, True)):
        observed.clear()
        assert dg.materialize([reader], instance=instance, resources=resources, tags=tags).success
        assert observed == {"answer": 7, "free": free}, tags
        assert _free_in_other_thread(database)


def test_a_held_run_that_fails_gives_the_warehouse_back(database, io_manager, instance):
    @dg.asset(key_prefix=["gold"])
    def broken() -> pl.DataFrame:
        raise RuntimeError("the asset broke")

    result = run(
        [broken], io_manager, instance, tags={HOLD_TAG: HOLD_FOR_RUN}, raise_on_error=False
    )

    assert "the asset broke" in failure_text(result)
    assert read_holder(lock_path_for(database)) is None
    assert _free_in_other_thread(database)


def test_an_input_naming_columns_reads_only_those(database, io_manager, instance):
    seen: dict[str, list[str]] = {}

    @dg.asset(key_prefix=["silver"], partitions_def=BATCHES)
    def photos(context: dg.AssetExecutionContext) -> pl.DataFrame:
        key = context.partition_key
        return pl.DataFrame(
            {
                "batch": [key, key],
                "sha256": [f"{key}-a", f"{key}-b"],
                "origin": ["technician", "model"],
                "content": [b"\x89PNG" * 1000, b"\x89PNG" * 2000],
            }
        )

    @dg.asset(
        key_prefix=["gold"],
        partitions_def=BATCHES,
        ins={"photos": dg.AssetIn(key=["silver", "photos"], metadata={COLUMNS_KEY: ["sha256"]})},
    )
    def keys_of_batch(photos: pl.DataFrame) -> pl.DataFrame:
        seen["partitioned"] = photos.columns
        return photos.with_columns(batch=pl.lit("b2"))

    @dg.asset(
        key_prefix=["gold"],
        ins={
            "photos": dg.AssetIn(
                key=["silver", "photos"], metadata={COLUMNS_KEY: ["origin", "sha256"]}
            )
        },
    )
    def every_key(photos: pl.DataFrame) -> pl.DataFrame:
        seen["all"] = photos.columns
        return photos.sort("sha256")

    for key in ("b1", "b2"):
        assert run([photos], io_manager, instance, partition_key=key).success
    assert run([photos, keys_of_batch], io_manager, instance, partition_key="b2").success
    assert run([photos, every_key], io_manager, instance, selection=[every_key]).success

    assert seen == {"partitioned": ["sha256"], "all": ["origin", "sha256"]}
    assert sql(database, "select batch, sha256 from gold.keys_of_batch order by 2") == [
        ("b2", "b2-a"),
        ("b2", "b2-b"),
    ]
    assert sql(database, "select sha256, origin from gold.every_key") == [
        ("b1-a", "technician"),
        ("b1-b", "model"),
        ("b2-a", "technician"),
        ("b2-b", "model"),
    ]


def test_an_input_naming_a_missing_column_fails_with_the_table_s_columns(
    database, io_manager, instance
):
    @dg.asset(key_prefix=["silver"])
    def photos() -> pl.DataFrame:
        return pl.DataFrame({"sha256": ["a"], "content": [b"x"]})

    @dg.asset(
        key_prefix=["gold"],
        ins={"photos": dg.AssetIn(key=["silver", "photos"], metadata={COLUMNS_KEY: ["shasum"]})},
    )
    def keys(photos: pl.DataFrame) -> pl.DataFrame:
        return photos

    assert run([photos], io_manager, instance).success
    text = failure_text(
        run([photos, keys], io_manager, instance, selection=[keys], raise_on_error=False)
    )
    assert "silver.photos has no column(s) ['shasum']" in text
    assert "['sha256', 'content']" in text


@pytest.mark.parametrize("value", ["sha256", [], [""], ["sha256", 3], {"sha256": 1}, 5])
def test_columns_metadata_must_be_a_list_of_names(value):
    with pytest.raises(ValueError, match="must be a list of column names"):
        columns_of({COLUMNS_KEY: value})


def test_columns_metadata_is_optional():
    assert columns_of(None) is None
    assert columns_of({"other": 1}) is None
    assert columns_of({COLUMNS_KEY: ("a", "b")}) == ["a", "b"]
    assert columns_of({COLUMNS_KEY: dg.MetadataValue.json(["a"])}) == ["a"]
