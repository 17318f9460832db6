"""The benchmarks' shared parts: figures and ratios, goals, measured child processes, results."""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.common import (
    REPO,
    ChildFailed,
    Figure,
    Goal,
    MemoryCapExceeded,
    Result,
    bench_env,
    format_number,
    non_negative_int,
    percentile,
    positive_int,
    render_table,
    results_payload,
    run_measured,
    work_folder,
)


@pytest.mark.parametrize(
    ("value", "baseline", "ratio"),
    [
        (12.0, 10.0, 1.2),  # slower than the baseline
        (1.0, 4.0, 0.25),  # faster
        (None, 4.0, None),  # not measured
        (3.0, None, None),  # nothing to compare with
        (3.0, 0.0, None),  # a zero baseline has no ratio rather than infinity
    ],
)
def test_a_figures_ratio_is_value_over_baseline(value, baseline, ratio):
    figure = Figure("f", value, "s", baseline, "b")
    assert figure.ratio == (pytest.approx(ratio) if ratio is not None else None)


def test_a_figures_line_names_its_comparison_and_ratio():
    line = Figure("graph", 115.0, "s", 100.0, "plain script", note="shared machine").line()
    assert "graph" in line and "plain script 100.0 s" in line
    assert "ratio 1.15x" in line and "(shared machine)" in line


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (float("nan"), "-"),
        (0, "0"),
        (12345.6, "12,346"),  # thousands separated, no decimals
        (123.45, "123.5"),
        (1.2345, "1.23"),
        (0.012345, "0.0123"),  # three significant digits below 1
    ],
)
def test_numbers_are_formatted_for_people(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 99, 5.0),  # one value is every percentile
        (list(range(1, 101)), 99, 99.0),  # nearest rank: 99 of 100 values are <= 99
        (list(range(1, 101)), 50, 50.0),
        (list(range(1, 11)), 99, 10.0),  # with 10 values, p99 is the largest
        ([3.0, 1.0, 2.0], 50, 2.0),  # order does not matter
    ],
)
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 99)


@pytest.mark.parametrize(
    ("goals", "met"),
    [
        ([True, True], True),
        ([True, False], False),  # one missed goal misses the benchmark
        ([None, True], True),  # goals not measured do not count
        ([None, None], None),  # nothing measured
    ],
)
def test_a_result_is_met_when_every_measured_goal_is(goals, met):
    result = Result("P9", "t", Figure("f", 1.0, "s"), goals=[Goal(str(g), g) for g in goals])
    assert result.met is met


def test_latest_json_has_value_unit_baseline_ratio_for_each_benchmark():
    results = [
        Result(
            "P1", "graph", Figure("graph", 120.0, "s", 100.0, "plain"), goals=[Goal("g", False)]
        ),
        Result("P5", "service", Figure("p99", None, "ms", note="not measured: no server")),
    ]
    payload = json.loads(json.dumps(results_payload(results, {"date": "a"}, {"date": "b"})))
    assert payload["P1"]["value"] == 120.0 and payload["P1"]["unit"] == "s"
    assert payload["P1"]["baseline"] == 100.0
    assert payload["P1"]["ratio"] == pytest.approx(1.2)
    assert payload["P1"]["met"] is False
    assert payload["P5"]["value"] is None and payload["P5"]["ratio"] is None
    assert payload["machine"] == {"start": {"date": "a"}, "end": {"date": "b"}}


def test_the_closing_table_shows_each_benchmark_and_its_goals():
    results = [
        Result("P4", "cv", Figure("assess", 150.0, "img/s", 300.0), goals=[Goal("ratio", False)]),
        Result("P5", "svc", Figure("p99", None, "ms"), goals=[Goal("p99", None, "no server")]),
    ]
    table = render_table(results)
    assert "P4" in table and "MISSED" in table and "0.5" in table
    assert "not measured" in table and "n/a  p99: no server" in table


def test_a_child_reports_its_json_wall_time_and_peak_rss():
    code = (
        "from benchmarks.common import emit\n"
        "block = bytearray(64 * 1024 * 1024)\n"
        "emit({'answer': 42, 'size': len(block)})\n"
    )
    measured = run_measured("selftest", code=code, timeout_s=60)
    assert measured.report == {"answer": 42, "size": 64 * 1024 * 1024}
    assert measured.max_rss_bytes > 64 * 1024 * 1024
    assert measured.wall_s > 0


def test_a_failing_child_raises_with_its_error_output():
    with pytest.raises(ChildFailed, match="exited with 3") as raised:
        run_measured("selftest", code="import sys; sys.stderr.write('boom'); sys.exit(3)")
    assert "boom" in str(raised.value)


def test_a_child_over_its_memory_cap_is_stopped():
    code = "import time\nblocks = [bytearray(512 * 1024 * 1024)]\ntime.sleep(30)\n"
    with pytest.raises(MemoryCapExceeded, match="RSS cap"):
        run_measured("selftest", code=code, rss_cap_bytes=200 * 1024 * 1024, timeout_s=60)


def test_an_interrupted_wait_stops_the_child(tmp_path):
    """Ctrl-C or SIGTERM in the parent while a measured child works: the child goes too."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import os, pathlib, time\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )

    def interrupt_once_started():
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_measured("selftest", code=code, timeout_s=120)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("0", "not above zero"), ("-5", "not above zero"), ("abc", "not a whole number")],
)
def test_counts_must_be_whole_numbers_above_zero(text, problem):
    with pytest.raises(argparse.ArgumentTypeError, match=problem):
        positive_int(text)
    assert positive_int("12") == 12


def test_a_count_that_may_be_zero_must_not_be_below_it():
    assert non_negative_int("0") == non_negative_int("00") == 0
    assert non_negative_int("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="below zero"):
        non_negative_int("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number"):
        non_negative_int("x")


def test_a_work_folder_must_exist_and_take_files(tmp_path):
    assert work_folder(str(tmp_path)) == tmp_path
    with pytest.raises(argparse.ArgumentTypeError, match="not an existing folder"):
        work_folder(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="not an existing folder"):
        work_folder(str(tmp_path / "file"))
    with pytest.raises(argparse.ArgumentTypeError, match="empty path"):
        work_folder("")


def test_sigterm_stops_a_benchmark_command_with_one_line(tmp_path):
    """A stopped command runs its clean-up (here: a finally block) and says so in one line."""
    marker = tmp_path / "cleaned"
    code = (
        "import os, pathlib, signal, time\n"
        "from benchmarks.common import run_cli\n"
        "def main():\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        f"        pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "run_cli(main)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=bench_env(),
    )
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM
    assert marker.read_text() == "yes"
    assert err.strip() == "benchmarks: stopped by SIGTERM"
