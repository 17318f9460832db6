"""P1's plain script: its warehouse writes, and that it does the graph's work (same tables)."""

import shutil

import polars as pl
import pytest

from benchmarks.p1_graph import compare, predictions_digest, table_counts
from benchmarks.plain_pipeline import PlainWarehouse, run_plain
from compositional_ai_tests.conftest import TINY_TRAINING


def test_a_partitioned_table_is_created_then_appended_by_name(tmp_path):
    warehouse = PlainWarehouse(tmp_path / "w.duckdb")
    warehouse.write("silver", "t", pl.DataFrame({"batch": ["a"], "x": [1]}))
    warehouse.write("silver", "t", pl.DataFrame({"x": [2], "batch": ["b"]}))
    assert warehouse.read("silver", "t").sort("batch").rows() == [("a", 1), ("b", 2)]
    assert warehouse.read("silver", "t", batch="b")["x"].to_list() == [2]
    warehouse.close()


def test_replacing_a_table_drops_its_earlier_rows(tmp_path):
    warehouse = PlainWarehouse(tmp_path / "w.duckdb")
    warehouse.replace("gold", "t", pl.DataFrame({"x": [1, 2]}))
    warehouse.replace("gold", "t", pl.DataFrame({"x": [3]}))
    assert warehouse.read("gold", "t")["x"].to_list() == [3]
    warehouse.close()


def test_an_all_null_column_is_stored_as_text_like_the_io_manager_does(tmp_path):
    warehouse = PlainWarehouse(tmp_path / "w.duckdb")
    warehouse.write("silver", "t", pl.DataFrame({"x": [1], "note": [None]}))
    types = dict(warehouse.query("describe silver.t").select("column_name", "column_type").rows())
    assert types["note"] == "VARCHAR"
    with warehouse.connect("lib.tables writes") as con:
        assert con is warehouse.con
    warehouse.close()


@pytest.mark.slow
def test_the_plain_script_writes_what_the_graph_writes(demo, tmp_path, monkeypatch):
    """Same tables, same row counts, same predictions as run_demo on the same landing data."""
    graph_paths, _, _ = demo
    root = tmp_path / "plain"
    shutil.copytree(graph_paths.landing, root / "landing")
    monkeypatch.setenv("COMPOSITIONAL_AI_DATA", str(root))
    steps = run_plain(root, TINY_TRAINING)
    assert [label for label, _ in steps][0] == "reference data"
    assert steps[-1][0] == "retraining"
    graph = {
        "tables": table_counts(graph_paths.warehouse),
        "predictions": predictions_digest(graph_paths.warehouse),
    }
    plain = {
        "tables": table_counts(root / "warehouse.duckdb"),
        "predictions": predictions_digest(root / "warehouse.duckdb"),
    }
    assert compare(graph, plain) == []
