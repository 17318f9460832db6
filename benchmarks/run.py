"""`make bench`: every benchmark in turn, a closing table, and benchmarks/results/latest.json.

Each benchmark measures in child processes of its own and prints one line per figure as it
finishes. A benchmark that fails is reported as not measured, with its error, and the suite
goes on. latest.json holds, for each of P1..P5, {value, unit, baseline, ratio} (ratio =
value / baseline) and everything else the benchmark measured, plus the machine before and after.

    python -m benchmarks.run                 # P1..P5
    python -m benchmarks.run --only P3,P4
"""

import argparse
import time
import traceback
from collections.abc import Callable

from benchmarks import p1_graph, p2_incremental, p3_transforms, p4_inference, p5_service
from benchmarks.common import (
    LATEST,
    Figure,
    Goal,
    Result,
    machine,
    print_result,
    render_table,
    results_payload,
    write_json,
)

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


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmarks and write latest.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="e.g. P1,P3")
    args = parser.parse_args(argv)
    chosen = [key.strip().upper() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in chosen if key not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
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
        result.settings["benchmark_seconds"] = round(time.perf_counter() - began, 1)
        print_result(result)
        results.append(result)
        # Written after every benchmark, so a long suite that is stopped keeps what it measured.
        write_json(LATEST, results_payload(results, started, machine()))
    print("\n" + render_table(results))
    print(f"\nMachine-readable: {LATEST}")


if __name__ == "__main__":
    main()
