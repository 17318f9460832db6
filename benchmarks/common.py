"""What every benchmark shares: figures and goals, measured child processes, results, versions.

A benchmark measures its subjects in child processes (`run_measured`), so each figure comes
with that process's own wall time and peak resident memory (from `wait4`, which reports the
child's rusage and nothing else). A child reports what it measured inside as one JSON line
prefixed with RESULT_PREFIX on stdout (`emit`).
"""

import argparse
import json
import math
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
LATEST = RESULTS_DIR / "latest.json"
RESULT_PREFIX = "BENCH-RESULT "
LOW_MEMORY_BYTES = int(1.5 * 1024**3)
# How long a stopped child may take to clean up after itself before it is killed.
CHILD_STOP_S = 10.0
# The demo's public pseudonym key (the Makefile's default), for runs that do not set one.
DEMO_PSEUDONYM_KEY = "demo-only-not-a-secret"
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
}
PACKAGES = (
    "compositional-ai",
    "dagster",
    "duckdb",
    "polars",
    "pyarrow",
    "pandas",
    "numpy",
    "torch",
    "mlflow",
    "scikit-learn",
    "pillow",
    "fastapi",
    "uvicorn",
)


@dataclass(frozen=True)
class Figure:
    """One measured number, and the number it is compared with (if any)."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    comparison: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline, or None when either is missing or the baseline is zero."""
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def line(self) -> str:
        """The figure as one printed line: name, value, unit, and the ratio to its comparison."""
        text = f"{self.name:<44} {format_number(self.value):>12} {self.unit:<7}"
        if self.baseline is not None:
            text += f" | {self.comparison or 'baseline'} {format_number(self.baseline)}"
            text += f" {self.unit} | ratio {format_number(self.ratio)}x"
        if self.note:
            text += f"  ({self.note})"
        return text

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class Goal:
    """One goal of the brief and whether the run met it (None: not measured)."""

    text: str
    met: bool | None
    measured: str = ""


@dataclass
class Result:
    """A benchmark's outcome: its headline figure, every figure, the goals, the settings."""

    key: str
    title: str
    headline: Figure
    figures: list[Figure] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        """True when every goal is met, False when one is missed, None when none was measured."""
        known = [goal.met for goal in self.goals if goal.met is not None]
        if not known:
            return None
        return all(known)

    def to_json(self) -> dict:
        return {
            "value": self.headline.value,
            "unit": self.headline.unit,
            "baseline": self.headline.baseline,
            "ratio": self.headline.ratio,
            "title": self.title,
            "headline": self.headline.name,
            "comparison": self.headline.comparison,
            "note": self.headline.note,
            "met": self.met,
            "goals": [asdict(goal) for goal in self.goals],
            "figures": [figure.to_json() for figure in self.figures],
            "settings": self.settings,
            "findings": self.findings,
        }


def format_number(value: float | None) -> str:
    """A figure for people: three significant digits, thousands separated, '-' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (the smallest value with at least q % at or below it)."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="inverted_cdf"))


def bench_env(**overrides: str) -> dict[str, str]:
    """The environment of a child process: telemetry off, the repository importable."""
    env = dict(os.environ)
    env.update(TELEMETRY_OFF)
    env.setdefault("COMPOSITIONAL_AI_PSEUDONYM_KEY", DEMO_PSEUDONYM_KEY)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(overrides)
    return env


@dataclass(frozen=True)
class Measured:
    """A finished child process: wall time, CPU time, peak RSS, and the JSON it reported.

    CPU time (user + system, its own and its waited-for children's) moves less than wall time
    when other work shares the machine.
    """

    wall_s: float
    max_rss_bytes: int
    report: dict
    stderr_tail: str
    cpu_s: float = 0.0


class ChildFailed(RuntimeError):
    """A measured child process exited with an error; the message carries its stderr tail."""


class MemoryCapExceeded(ChildFailed):
    """A measured child process grew past its RSS cap and was stopped."""


def available_memory_bytes() -> int:
    """The machine's MemAvailable: what can be allocated without swapping or evicting."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def current_rss_bytes(pid: int) -> int:
    """A live process's resident set size (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_measured(
    module: str,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 3600.0,
    rss_cap_bytes: int | None = None,
    code: str | None = None,
) -> Measured:
    """Run `python -m module args` (or `python -c code args`) and return its wall time, peak
    RSS and reported JSON.

    With `rss_cap_bytes`, the child is killed (MemoryCapExceeded) as soon as it holds more, or
    as soon as the machine has less than LOW_MEMORY_BYTES available (it is shared).
    """
    command = [sys.executable, *(("-c", code) if code else ("-m", module)), *args]
    capped, done = threading.Event(), threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env or bench_env(), cwd=REPO)

        def watch() -> None:
            deadline = time.monotonic() + timeout_s
            while not done.wait(0.2):
                over = rss_cap_bytes is not None and (
                    current_rss_bytes(child.pid) > rss_cap_bytes
                    or available_memory_bytes() < LOW_MEMORY_BYTES
                )
                if over:
                    capped.set()
                if (over or time.monotonic() > deadline) and not done.is_set():
                    # A plain kill: Popen.poll() here would reap the child under wait4's feet.
                    os.kill(child.pid, signal.SIGKILL)
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            status, usage = wait_for(child.pid)
        except BaseException:
            # Interrupted or stopped while the child works: it goes too, before the folders
            # it writes to are removed, and removes its own first (SIGTERM; SIGKILL if it
            # has not ended within CHILD_STOP_S).
            stop_child(child)
            raise
        finally:
            done.set()
            watcher.join()
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    tail = "\n".join(stderr.strip().splitlines()[-25:])
    if capped.is_set():
        raise MemoryCapExceeded(
            f"{module} passed its RSS cap of {mib(rss_cap_bytes):,.0f} MiB (or the machine "
            f"ran low on memory) after {wall:.0f} s and was stopped"
        )
    if child.returncode != 0:
        raise ChildFailed(f"{' '.join(command)} exited with {child.returncode}:\n{tail}")
    reports = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    report = json.loads(reports[-1][len(RESULT_PREFIX) :]) if reports else {}
    return Measured(wall, usage.ru_maxrss * 1024, report, tail, usage.ru_utime + usage.ru_stime)


def stop_child(child: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Stop a child and reap it: `signum` first, SIGKILL if it is still there after
    CHILD_STOP_S. A further Ctrl-C or SIGTERM meanwhile does not cut the wait short."""
    if child.poll() is None:
        child.send_signal(signum)
    deadline = time.monotonic() + CHILD_STOP_S
    while True:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
        except subprocess.TimeoutExpired:
            child.kill()
            deadline = math.inf
        except (KeyboardInterrupt, SystemExit):
            continue


def wait_for(pid: int) -> tuple[int, "resource.struct_rusage"]:
    """wait4 for a child: its exit status and its own rusage (ru_maxrss in KiB on Linux).

    It waits in slices of at most 0.2 s, so that Ctrl-C or SIGTERM sent to this process alone
    take effect at once: the kernel may hand the signal to another thread, and a main thread
    blocked in one long wait4 would run the handler only when the child ends. A pidfd wakes
    the wait the moment the child exits, so its wall time stays exact.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    try:
        while True:
            if pidfd is None:
                time.sleep(0.01)
            else:
                select.select([pidfd], [], [], 0.2)
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited:
                return status, usage
    finally:
        if pidfd is not None:
            os.close(pidfd)


def emit(report: dict) -> None:
    """Report a child's measurements to the parent that runs it (one prefixed JSON line)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(report) + "\n")
    sys.stdout.flush()


def fsync_latency_ms(folder: Path, samples: int = 20) -> float:
    """Median milliseconds of a small write plus fsync in `folder`: what a SQLite commit waits."""
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    with tempfile.NamedTemporaryFile(dir=folder) as probe:
        for _ in range(samples):
            started = time.perf_counter()
            probe.write(b"x" * 512)
            probe.flush()
            os.fsync(probe.fileno())
            times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def self_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def package_versions() -> dict[str, str]:
    """The installed version of each package in PACKAGES."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict:
    """Where and when the figures were taken: CPU count, memory, load, versions."""
    total_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        total_kib = int(first[1])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(total_kib / 1024**2, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "versions": package_versions(),
    }


def mib(value: float) -> float:
    """Bytes in MiB."""
    return value / 1024**2


def write_json(path: Path, payload: dict) -> None:
    """Write `payload` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def results_payload(results: Sequence[Result], started: dict, finished: dict) -> dict:
    """latest.json: for each benchmark {value, unit, baseline, ratio, ...}, and the machine."""
    return {
        **{result.key: result.to_json() for result in results},
        "machine": {"start": started, "end": finished},
    }


def render_table(results: Sequence[Result]) -> str:
    """The suite's closing table: one row per benchmark, headline figure against its goals."""
    header = (
        f"{'':<3} {'figure':<52} {'value':>10} {'unit':<6} {'baseline':>10} {'ratio':>8}  goals"
    )
    rows = [header, "-" * len(header)]
    for result in results:
        figure = result.headline
        verdict = {True: "met", False: "MISSED", None: "not measured"}[result.met]
        rows.append(
            f"{result.key:<3} {figure.name[:52]:<52} {format_number(figure.value):>10} "
            f"{figure.unit:<6} {format_number(figure.baseline):>10} "
            f"{format_number(figure.ratio):>8}  {verdict}"
        )
        for goal in result.goals:
            mark = {True: "ok  ", False: "MISS", None: "n/a "}[goal.met]
            rows.append(
                f"{'':<4}  {mark} {goal.text}" + (f": {goal.measured}" if goal.measured else "")
            )
    return "\n".join(rows)


def print_result(result: Result) -> None:
    """Print a benchmark's figures, one line each, then its goals and findings."""
    print(f"\n== {result.key}: {result.title}")
    for figure in result.figures:
        print(f"{result.key} {figure.line()}")
    for goal in result.goals:
        mark = {True: "met", False: "MISSED", None: "not measured"}[goal.met]
        print(
            f"{result.key} goal {goal.text}: {mark}"
            + (f" ({goal.measured})" if goal.measured else "")
        )
    for finding in result.findings:
        print(f"{result.key} finding: {finding}")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not above zero")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number, zero or above."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below zero")
    return value


def work_folder(text: str) -> Path:
    """An argparse type: an existing folder this process can write in."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no folder")
    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write in {text}: {error.strerror}") from None
    return folder


def _stop(signum: int, _frame) -> None:
    print(f"benchmarks: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def run_cli(main: Callable[[], object]) -> None:
    """Run a benchmark's command line: Ctrl-C or SIGTERM stop it cleanly, with one line.

    SIGTERM becomes SystemExit, so the same clean-up runs as for Ctrl-C: measured children are
    stopped and reaped (`stop_child`: each removes its own folders first), the repair service
    too, and then the temporary folders are removed.
    """
    signal.signal(signal.SIGTERM, _stop)
    try:
        main()
    except KeyboardInterrupt:
        print("benchmarks: interrupted; children stopped, temporary data removed", file=sys.stderr)
        raise SystemExit(130) from None


def report_standalone(run: Callable[[], Result]) -> Result:
    """Run one benchmark on its own: print its figures and write results/<key>.json."""
    started = machine()
    result = run()
    print_result(result)
    write_json(
        RESULTS_DIR / f"{result.key.lower()}.json",
        {result.key: result.to_json(), "machine": {"start": started, "end": machine()}},
    )
    return result
