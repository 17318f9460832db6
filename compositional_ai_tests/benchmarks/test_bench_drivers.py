"""How P1, P2, P4, P5 and the suite turn measurements into figures, goals and findings."""

import argparse
import cProfile
import json
import pstats
import sqlite3

import pytest

from benchmarks import p1_graph, p2_incremental, p3_transforms, p4_inference, p5_service, run
from benchmarks.common import Figure, Result
from compositional_ai.repair_service.vision_models import VisionTrainingConfig
from compositional_ai.vision.images import STORED_IMAGE_SIZE


def _outcome(tables: dict, predictions: str = "abc") -> dict:
    return {"tables": tables, "predictions": predictions}


@pytest.mark.parametrize(
    ("graph", "plain", "problems"),
    [
        (_outcome({"a.b": 3}), _outcome({"a.b": 3}), []),
        (_outcome({"a.b": 3}), _outcome({"a.b": 2}), ["a.b: graph 3 rows, plain 2"]),
        # A table only one side wrote.
        (_outcome({"a.b": 3, "c.d": 1}), _outcome({"a.b": 3}), ["c.d: graph 1 rows, plain None"]),
        # Same rows, different predictions: the models were not the same.
        (
            _outcome({"a.b": 3}),
            _outcome({"a.b": 3}, "xyz"),
            ["the inference logs hold different predictions"],
        ),
    ],
)
def test_p1_compares_the_two_warehouses(graph, plain, problems):
    assert p1_graph.compare(graph, plain) == problems


@pytest.mark.parametrize(
    ("label", "plain"),
    [
        ("reference data: product catalog and evaluation holdout", "reference data"),
        ("landing batch 2026-01-12", "landing batch 2026-01-12"),
        ("seed repair model from the workshop archive", "seed repair model"),
        ("retraining on the inference logs", "retraining"),
    ],
)
def test_p1_matches_run_demos_steps_to_the_plain_scripts(label, plain):
    assert p1_graph._plain_label(label) == plain


def test_p1_profile_groups_find_sqlite_time():
    def work():
        for _ in range(20):
            with sqlite3.connect(":memory:") as con:
                con.execute("create table t (x)")
                con.commit()

    profiler = cProfile.Profile()
    profiler.runcall(work)
    groups = p1_graph.profile_groups(pstats.Stats(profiler))
    assert groups["SQLite calls (Dagster run/event storage)"] > 0
    assert groups["DuckDB connect"] == 0
    assert groups["profiled total"] >= groups["SQLite calls (Dagster run/event storage)"]


def test_p1_training_presets_are_the_tests_and_the_demos():
    assert p1_graph.TRAINING["demo"] == {}
    assert VisionTrainingConfig(**p1_graph.TRAINING["tiny"]).epochs == 2


@pytest.mark.parametrize(
    ("stale", "note"),
    [
        ([], "all updated"),
        (["gold/repair_volume_weekly"], "not re-materialized: gold/repair_volume_weekly"),
    ],
)
def test_p2_says_which_downstream_assets_were_left_stale(stale, note):
    assert p2_incremental._stale_note(stale) == note


def test_p2_counts_the_retraining_steps_that_rebuild_gold_and_the_training_sets(tmp_path):
    from compositional_ai.definitions import build_definitions
    from compositional_ai.settings import DataPaths

    defs = build_definitions(DataPaths(tmp_path))
    graph = defs.resolve_asset_graph()
    steps = {node.name: 1.0 for node in defs.resolve_job_def("retraining_job").graph.nodes}
    rebuilt = {
        "__".join(key.path)
        for key in graph.get_all_asset_keys()
        if key.path[0] == "gold" or graph.get(key).tags.get("role") == "training_set"
    } & set(steps)
    assert {"gold__damage_labels", "feedback__repair_feedback_training_set"} <= rebuilt
    assert p2_incremental.rebuilt_from_history(steps) == len(rebuilt)
    steps["gold__damage_labels"] = 2.5
    assert p2_incremental.rebuilt_from_history(steps) == len(rebuilt) + 1.5


def test_p4_demo_size_is_the_trainings_default():
    assert p4_inference.DEMO_IMAGE_SIZE == VisionTrainingConfig().image_size
    assert p4_inference.DEMO_WIDTH == VisionTrainingConfig().width


def test_p4_demo_size_is_the_size_silver_stores():
    # Otherwise every inference run would decode the photos again (photo_pixels' fallback).
    assert p4_inference.DEMO_IMAGE_SIZE == STORED_IMAGE_SIZE


def test_p4_result_compares_the_asset_path_with_the_bare_loop():
    report = {
        "images": 100,
        "threads": 1,
        "repeats": 3,
        "batch_size": 128,
        "seconds": {
            "assess": 1.0,
            "bare_loop": 0.5,
            "predict_proba": 0.52,
            "silver_decode": 0.45,
            "decode_each_run": 1.5,
        },
        "probabilities_agree": True,
    }
    result = p4_inference.result(report)
    assert result.headline.value == 100.0 and result.headline.baseline == 200.0
    assert result.headline.ratio == pytest.approx(0.5)
    met = {goal.text: goal.met for goal in result.goals}
    assert met == {
        "asset path >= 0.9x a bare torch loop over the same tensors": False,
        "model path (predict_proba) >= 0.9x the bare loop": True,
        "the asset path logs the probabilities the bare loop computes": True,
    }
    # 0.48 s of the 1.0 s are outside predict_proba.
    assert "48%" in result.findings[0]
    before = {figure.name: figure for figure in result.figures}
    assert before["decoding the bytes in every run (the path before)"].ratio == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("acknowledged", "rows", "lost"),
    [
        (["a", "b"], {"a": 1, "b": 1}, (0, 0)),
        (["a", "b"], {"a": 1}, (1, 0)),  # b was answered 200 but never logged
        (["a"], {"a": 2}, (0, 1)),  # a was logged twice
        (["a"], {"a": 1, "z": 1}, (0, 0)),  # rows of requests not answered 200 do not count
    ],
)
def test_p5_counts_lost_and_doubled_rows(acknowledged, rows, lost):
    assert p5_service.lost_rows(acknowledged, rows) == lost


def _phase(latencies: list[float], elapsed_s: float) -> dict:
    return {
        "requests": len(latencies),
        "rate": None,
        "elapsed_s": elapsed_s,
        "latencies_ms": latencies,
        "statuses": {"200": len(latencies)},
        "acknowledged": [f"bench-closed-{i:06d}" for i in range(len(latencies))],
    }


def test_p5_result_explains_a_closed_loop_p99_with_littles_law():
    phases = {"closed": _phase([100.0] * 99 + [400.0], elapsed_s=100 / 160)}
    rows = {
        "assessments": {f"bench-closed-{i:06d}": 1 for i in range(100)},
        "requests": {f"bench-closed-{i:06d}": 1 for i in range(100)},
        "server_latency_ms": {"closed": [5.0] * 100, "paced": []},
    }
    result = p5_service._result(phases, rows, {})
    assert result.headline.value == 100.0
    met = {goal.text: goal.met for goal in result.goals}
    assert met["p99 <= 50 ms (closed loop)"] is False
    assert met[">= 100 req/s (closed loop)"] is True
    assert met["zero lost log rows"] is True
    assert "16 / throughput = 100 ms" in result.findings[0]


def test_p5_multipart_bodies_name_every_form_field():
    head, tail = p5_service._bodies([b"\x89PNG fake"])[0]
    body = head + b"bench-x" + tail
    for name in ("product_id", "name", "email", "phone", "photo", "client_request_id"):
        assert f'name="{name}"'.encode() in body
    assert body.endswith(f"--{p5_service.BOUNDARY}--\r\n".encode())


def test_p5_without_a_server_is_not_measured():
    result = p5_service.not_measured("no server module")
    assert result.met is None and result.headline.value is None


def test_a_benchmark_that_fails_is_reported_not_measured():
    result = run.failed("P2", "one new batch", RuntimeError("boom\nlast line"))
    assert result.met is None
    assert "last line" in result.headline.note
    assert set(run.BENCHMARKS) == {"P1", "P2", "P3", "P4", "P5"}


@pytest.mark.parametrize(
    ("text", "chosen"),
    [("P3,p1", ["P1", "P3"]), ("P4,P4", ["P4"]), (" P2 , ", ["P2"])],
)
def test_only_names_each_benchmark_once_in_the_suites_order(text, chosen):
    assert run.chosen_benchmarks(text) == chosen


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "name at least one"), (",", "name at least one"), ("P9", "no benchmark P9")],
)
def test_only_refuses_what_names_no_benchmark(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        run.chosen_benchmarks(text)


def test_a_suite_with_a_failed_benchmark_exits_1_and_a_partial_run_keeps_latest(
    monkeypatch, tmp_path, capsys
):
    def boom():
        raise RuntimeError("no data")

    monkeypatch.setitem(run.BENCHMARKS, "P4", ("batch CV inference", boom))
    monkeypatch.setattr(run, "LATEST", tmp_path / "latest.json")
    monkeypatch.setattr(run, "PARTIAL", tmp_path / "partial.json")
    assert run.main(["--only", "P4"]) == 1
    assert (tmp_path / "partial.json").exists() and not (tmp_path / "latest.json").exists()
    assert "Not measured, they failed: P4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0", "not above zero"),
        ("1000,abc", "not a whole number"),
        ("1000", "not a whole number of batches"),
        ("1000000,300000", "300,000 rows is not a whole number of batches"),
    ],
)
def test_p3_sizes_are_whole_batches(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        p3_transforms.row_counts(text)
    assert p3_transforms.row_counts("10000000,1000000,1000000") == (1_000_000, 10_000_000)


def _quick_suite(monkeypatch, tmp_path, interrupt_at=None):
    def fake(key):
        def measure():
            if key == interrupt_at:
                raise KeyboardInterrupt
            return Result(key, "fake", Figure("time", 2.0, "s", 4.0, "baseline"))

        return measure

    for key, (title, _) in list(run.BENCHMARKS.items()):
        monkeypatch.setitem(run.BENCHMARKS, key, (title, fake(key)))
    monkeypatch.setattr(run, "LATEST", tmp_path / "latest.json")
    monkeypatch.setattr(run, "PARTIAL", tmp_path / "partial.json")
    (tmp_path / "latest.json").write_text('{"from": "the last whole suite"}')


def test_only_a_whole_suite_replaces_latest(monkeypatch, tmp_path):
    _quick_suite(monkeypatch, tmp_path)
    assert run.main([]) == 0
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert set(latest) == {*run.BENCHMARKS, "machine"}
    assert latest["P3"]["ratio"] == 0.5
    assert not (tmp_path / "partial.json").exists()


def test_a_stopped_suite_leaves_latest_and_keeps_what_it_measured(monkeypatch, tmp_path):
    _quick_suite(monkeypatch, tmp_path, interrupt_at="P3")
    with pytest.raises(KeyboardInterrupt):
        run.main([])
    assert json.loads((tmp_path / "latest.json").read_text()) == {"from": "the last whole suite"}
    assert set(json.loads((tmp_path / "partial.json").read_text())) == {"P1", "P2", "machine"}
