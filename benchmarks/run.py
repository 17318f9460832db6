"""`make bench`: every benchmark in turn, a closing table, and benchmarks/results/latest.json.

Each benchmark measures in child processes of its own and prints one line per figure as it
finishes. A benchmark that fails is reported as not measured, with its error, the suite goes
on, and the command exits with 1 at the end (a missed goal is a finding, not a failure: exit 0).
latest.json holds, for each of P1..P5, {value, unit, baseline, ratio} (ratio = value /
baseline) and everything else the benchmark measured, plus the machine before and after. The
figures so far go to results/partial.json after every benchmark, and to latest.json only when
the whole suite has run, so a run of some of them (--only), or a suite that was stopped, leaves
the last whole suite's figures in latest.json.

    python -m benchmarks.run                 # P1..P5
    python -m benchmarks.run --only P3,P4
"""

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from benchmarks import p1_graph, p2_incremental, p3_transforms, p4_inference, p5_service
from benchmarks.common import (
    LATEST,
    RESULTS_DIR,
    Figure,
    Goal,
    Result,
    machine,
    print_result,
    render_table,
    results_payload,
    run_cli,
    write_json,
)

PARTIAL = RESULTS_DIR / "partial.json"

BENCHMARKS: dict[str, tuple[str, Callable[[], Result]]] = {
    "P1": ("the whole graph vs a plain script", p1_graph.run),
    "P2": ("one new batch vs a full recompute", p2_incremental.run),
    "P3": ("bronze -> silver -> gold vs pandas", p3_transforms.run),
    "P4": ("batch CV inference vs bare torch", p4_inference.run),
    "P5": ("the repair service under load", p5_service.run),
}


def failed(key: str, title: str, error: BaseException) -> Result:
    """A benchmark that could not finish, as a result: not measured, with the error."""
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"
    return Result(
        key=key,
        title=title,
        headline=Figure(title, None, "", note=f"not measured: {reason}"),
        goals=[Goal("benchmark ran", None, reason)],
        findings=[traceback.format_exception_only(error)[-1].strip()],
    )


def chosen_benchmarks(text: str) -> list[str]:
    """An argparse type: benchmark keys, comma separated, each once, in the suite's order."""
    named = {key.strip().upper() for key in text.split(",") if key.strip()}
    if not named:
        raise argparse.ArgumentTypeError(f"name at least one of {', '.join(BENCHMARKS)}")
    unknown = sorted(named - set(BENCHMARKS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"no benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return [key for key in BENCHMARKS if key in named]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and write their results; 1 when one of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", type=chosen_benchmarks, default=list(BENCHMARKS), help="e.g. P1,P3"
    )
    args = parser.parse_args(argv)
    chosen = args.only
    failures = []
    started = machine()
    print(f"compositional-ai benchmarks on {started['cpus']} CPUs, load {started['load_average']}")
    results = []
    for key in chosen:
        title, run = BENCHMARKS[key]
        print(f"\n-- {key}: {title} ...", flush=True)
        began = time.perf_counter()
        try:
            result = run()
        except Exception as error:
            result = failed(key, title, error)
            failures.append(key)
        result.settings["benchmark_seconds"] = round(time.perf_counter() - began, 1)
        print_result(result)
        results.append(result)
        # After every benchmark, so a long suite that is stopped keeps what it measured.
        write_json(PARTIAL, results_payload(results, started, machine()))
    target = PARTIAL
    if chosen == list(BENCHMARKS):
        target = LATEST
        PARTIAL.replace(LATEST)
    print("\n" + render_table(results))
    print(f"\nMachine-readable: {target}")
    if failures:
        print(f"Not measured, they failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
