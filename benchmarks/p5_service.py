"""P5: the repair service under load on loopback: latency, throughput, and lost log rows.

Set-up, in a folder of its own: a product catalog, and an MLflow registry whose champion is a
DamageCNN at the demo's size (seeded weights, one short training epoch). The service runs in its
own process through its production entry point (`server.serve` on 127.0.0.1, default
ServiceConfig), and the load generator in another:

- sequential: one connection sends SEQUENTIAL_REQUESTS one after another (the warm-up, and the
  service time of a request with nothing queued before it);
- closed loop: CONNECTIONS keep-alive connections send REQUESTS assessments (multipart, a real
  ELPV photo each) as fast as the service answers; this gives req/s and its latency;
- paced: the same connections send PACED_REQUESTS at PACED_RATE req/s, each timed from the
  moment it was due, so a slow answer also delays (and is charged to) the requests behind it.

Latency is the client's: from sending the request to reading the whole answer. After the load,
the service is stopped with SIGINT (it closes its log segments) and the served log is read back:
a lost row is an assessment answered 200 whose row is not in the `assessments` stream (or whose
request is not in `requests`).

    python -m benchmarks.p5_service
    python -m benchmarks.p5_service --requests 2000 --paced 500
"""

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.common import (
    REPO,
    Figure,
    Goal,
    Result,
    bench_env,
    emit,
    non_negative_int,
    percentile,
    positive_int,
    report_standalone,
    run_cli,
    run_measured,
    stop_child,
    wait_for,
)

MODULE = "benchmarks.p5_service"
REQUESTS = 10_000
CONNECTIONS = 16
PACED_RATE = 100.0
PACED_REQUESTS = 2_000
# A warm-up that also shows one request's service time with nothing queued before it.
SEQUENTIAL_REQUESTS = 300
PHOTOS = 64
GOAL_P99_MS = 50.0
GOAL_RATE = 100.0
STARTUP_TIMEOUT_S = 180.0
BOUNDARY = "cai-bench-boundary-7f3a"
CATALOG_CSV = (
    "product_id,product_line,title,list_price_usd,rating\n"
    "P0001,Solar,Mono panel 400 W,200.00,4.5\n"
    "P0002,Solar,Poly panel 300 W,150.00,4.1\n"
)
CLIENT_PREFIX = "bench-"


def server_unavailable() -> str | None:
    """Why the repair service cannot be measured here, or None when it can."""
    try:
        from compositional_ai.repair_service import server
    except ImportError as error:
        return f"compositional_ai.repair_service.server does not import: {error}"
    if not hasattr(server, "serve"):
        return "compositional_ai.repair_service.server has no serve(host, port, paths)"
    return None


# Set-up and the service process.


def prepare(root: Path) -> str:
    """Write the catalog and register a demo-size champion under `root`; return its version."""
    import numpy as np

    from benchmarks.p4_inference import DEMO_IMAGE_SIZE, DEMO_WIDTH
    from compositional_ai.landing import formats
    from compositional_ai.repair_service.assets import REPAIR_MODEL
    from compositional_ai.resources.model_registry import CHAMPION, ModelRegistry
    from compositional_ai.settings import DataPaths
    from compositional_ai.vision.training import TrainConfig, fit

    paths = DataPaths(root)
    paths.reference.mkdir(parents=True, exist_ok=True)
    (paths.reference / formats.CATALOG_FILE).write_text(CATALOG_CSV, encoding="utf-8")
    registry = ModelRegistry(
        tracking_uri=f"sqlite:///{paths.mlflow / 'mlflow.db'}",
        artifact_root=str(paths.mlflow / "artifacts"),
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), dtype=np.uint8)
    config = TrainConfig(
        image_size=DEMO_IMAGE_SIZE,
        width=DEMO_WIDTH,
        epochs=1,
        batch_size=8,
        val_fraction=0.0,
        num_threads=1,
    )
    model = fit(images, np.arange(32) % 4, num_classes=4, config=config).model
    with registry.training_run(
        REPAIR_MODEL,
        dagster_run_id="benchmark-p5",
        asset_key="repair/repair_damage_model",
        params={},
    ):
        version = registry.log_torch_model(model, REPAIR_MODEL)
    registry.set_alias(REPAIR_MODEL, version, CHAMPION)
    return version


def serve(root: Path, port: int) -> None:
    """The service's own entry point on loopback, until SIGINT."""
    from compositional_ai.repair_service import server
    from compositional_ai.settings import DataPaths

    server.serve("127.0.0.1", port, DataPaths(root))


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until /healthz answers 200; raises if the process dies or time runs out."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the repair service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the repair service did not become healthy in {timeout_s:.0f} s")


# The load generator.


def _bodies(photos: list[bytes]) -> list[tuple[bytes, bytes]]:
    """For each photo, the multipart body before and after the client_request_id value."""
    parts = []
    for index, photo in enumerate(photos):
        fields = {
            "product_id": "P0001" if index % 2 else "P0002",
            "name": f"Bench Customer {index}",
            "email": f"bench{index}@example.com",
            "phone": f"555-01{index:02d}",
        }
        disposition = '--{}\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'
        head = b"".join(
            disposition.format(BOUNDARY, name, value).encode() for name, value in fields.items()
        )
        head += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="photo"; '
            f'filename="cell{index}.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        head += photo + f"\r\n--{BOUNDARY}\r\n".encode()
        head += b'Content-Disposition: form-data; name="client_request_id"\r\n\r\n'
        parts.append((head, f"\r\n--{BOUNDARY}--\r\n".encode()))
    return parts


class Load:
    """Send `total` assessments over `connections` keep-alive connections; record each answer."""

    def __init__(self, port: int, photos: list[bytes], *, connections: int, prefix: str) -> None:
        self.port = port
        self.bodies = _bodies(photos)
        self.connections = connections
        self.prefix = prefix
        self._next = 0
        self._lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}
        self.acknowledged: list[str] = []

    def _take(self, total: int) -> int | None:
        with self._lock:
            if self._next >= total:
                return None
            index = self._next
            self._next += 1
            return index

    def _send(self, connection, index: int) -> int:
        head, tail = self.bodies[index % len(self.bodies)]
        client_id = f"{self.prefix}{index:06d}"
        body = head + client_id.encode() + tail
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        connection.request("POST", "/v1/assessments", body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        return answer.status

    def _worker(self, total: int, rate: float | None, started: float) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while (index := self._take(total)) is not None:
                due = started + index / rate if rate else None
                if due is not None and due > time.perf_counter():
                    time.sleep(due - time.perf_counter())
                sent = time.perf_counter()
                try:
                    status = self._send(connection, index)
                except (OSError, http.client.HTTPException):
                    status = 0
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                finished = time.perf_counter()
                client_id = f"{self.prefix}{index:06d}"
                with self._lock:
                    self.latencies_ms.append(1000 * (finished - (due if due else sent)))
                    self.statuses[client_id] = status
                    if status == 200:
                        self.acknowledged.append(client_id)
        finally:
            connection.close()

    def run(self, total: int, rate: float | None = None) -> float:
        """Send `total` requests (paced at `rate` req/s when given); return the elapsed seconds."""
        started = time.perf_counter()
        threads = [
            threading.Thread(target=self._worker, args=(total, rate, started), daemon=True)
            for _ in range(self.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started


def load_worker(port: int, requests: int, paced: int, photos: int) -> dict:
    """Both load phases against the service on `port`; the answers of each."""
    from benchmarks.p4_inference import elpv_photos

    images = elpv_photos(photos)
    phases = {}
    plan = (
        ("sequential", SEQUENTIAL_REQUESTS, None, 1),
        ("closed", requests, None, CONNECTIONS),
        ("paced", paced, PACED_RATE, CONNECTIONS),
    )
    for name, total, rate, connections in plan:
        if total <= 0:
            continue
        load = Load(port, images, connections=connections, prefix=f"{CLIENT_PREFIX}{name}-")
        elapsed = load.run(total, rate)
        counts: dict[str, int] = {}
        for status in load.statuses.values():
            counts[str(status)] = counts.get(str(status), 0) + 1
        phases[name] = {
            "requests": total,
            "rate": rate,
            "connections": connections,
            "elapsed_s": elapsed,
            "latencies_ms": load.latencies_ms,
            "statuses": counts,
            "acknowledged": load.acknowledged,
        }
    return phases


# Reading the served log back.


def served_rows(root: Path) -> dict[str, dict[str, int]]:
    """Per stream, how many rows each benchmark client_request_id has (status ok only)."""
    import polars as pl

    from compositional_ai.repair_service import served_log
    from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA
    from compositional_ai.settings import DataPaths

    folder = DataPaths(root).served_log
    found = {}
    for stream, schema in (
        (served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA),
        (served_log.REQUESTS_STREAM, served_log.REQUEST_LOG_SCHEMA),
    ):
        frame = served_log.read_frame(served_log.all_segments(folder, stream), schema)
        if "status" in frame.columns:
            frame = frame.filter(pl.col("status") == "ok")
        counts = frame.group_by("client_request_id").len()
        found[stream] = dict(counts.iter_rows())
    assessed = served_log.read_frame(
        served_log.all_segments(folder, served_log.ASSESSMENTS_STREAM), INFERENCE_LOG_SCHEMA
    )
    found["server_latency_ms"] = {
        phase: assessed.filter(
            pl.col("client_request_id").str.starts_with(f"{CLIENT_PREFIX}{phase}-")
        )["latency_ms"].to_list()
        for phase in ("sequential", "closed", "paced")
    }
    return found


def lost_rows(acknowledged: list[str], rows: dict[str, int]) -> tuple[int, int]:
    """(acknowledged requests with no row, rows beyond one per request)."""
    missing = sum(1 for client_id in acknowledged if rows.get(client_id, 0) == 0)
    extra = sum(max(0, rows.get(client_id, 0) - 1) for client_id in acknowledged)
    return missing, extra


# Driver.


def run(requests: int = REQUESTS, paced: int = PACED_REQUESTS, photos: int = PHOTOS) -> Result:
    """Set up, serve, load and read back in a temporary folder; P5's result."""
    reason = server_unavailable()
    if reason:
        return not_measured(reason)
    with tempfile.TemporaryDirectory(prefix="cai-bench-p5-") as folder:
        return _run(Path(folder) / "data", requests, paced, photos)


def not_measured(reason: str) -> Result:
    """P5 when the service cannot be run here."""
    return Result(
        key="P5",
        title="the repair service under load",
        headline=Figure("p99 latency", None, "ms", note=f"not measured: {reason}"),
        goals=[
            Goal(f"p99 <= {GOAL_P99_MS:g} ms", None, reason),
            Goal(f">= {GOAL_RATE:g} req/s", None, reason),
            Goal("zero lost log rows", None, reason),
        ],
    )


def _run(root: Path, requests: int, paced: int, photos: int) -> Result:
    env = bench_env(COMPOSITIONAL_AI_DATA=str(root))
    prepared = run_measured(MODULE, ["--prepare", str(root)], env=env, timeout_s=600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as server_err:
        service = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--serve", str(root), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=server_err,
            env=env,
            cwd=REPO,
        )
        try:
            startup_s = wait_healthy(url, service, STARTUP_TIMEOUT_S)
            args = ["--load", str(port), "--requests", str(requests), "--paced", str(paced)]
            load = run_measured(MODULE, [*args, "--photos", str(photos)], env=env, timeout_s=3600)
            # SIGINT: the service closes its log segments, which are read back below.
            service.send_signal(signal.SIGINT)
            status, usage = wait_for(service.pid)
        except BaseException:
            # Stopped or failed on the way: the service ends, and is reaped, before its data
            # folder is removed.
            stop_child(service, signal.SIGINT)
            raise
        service.returncode = os.waitstatus_to_exitcode(status)
        server_err.seek(0)
        server_tail = server_err.read().decode("utf-8", "replace")[-2000:]
    rows = served_rows(root)
    return _result(
        load.report,
        rows,
        {
            "startup_s": startup_s,
            "server_exit": service.returncode,
            "server_max_rss_mib": usage.ru_maxrss / 1024,
            "server_stderr_tail": server_tail,
            "model_version": prepared.report.get("version"),
        },
    )


def _phase_figures(name: str, phase: dict, rows: dict) -> tuple[list[Figure], dict]:
    latencies = phase["latencies_ms"]
    ok = phase["statuses"].get("200", 0)
    missing, extra = lost_rows(phase["acknowledged"], rows["assessments"])
    missing_requests, _ = lost_rows(phase["acknowledged"], rows["requests"])
    figures = {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "rate": phase["requests"] / phase["elapsed_s"],
        "errors": phase["requests"] - ok,
        "lost": missing + missing_requests,
        "extra": extra,
    }
    if name == "paced":
        label = f"paced at {phase['rate']:g} req/s"
    elif name == "closed":
        label = f"closed loop, {phase.get('connections', CONNECTIONS)} connections"
    else:
        label = "one connection, one request at a time"
    return [
        Figure(f"{label}: p50 latency", figures["p50"], "ms"),
        Figure(f"{label}: p99 latency", figures["p99"], "ms", GOAL_P99_MS, "goal"),
        Figure(f"{label}: max latency", figures["max"], "ms"),
        Figure(
            f"{label}: throughput",
            figures["rate"],
            "req/s",
            GOAL_RATE if name != "sequential" else None,
            "goal",
        ),
        Figure(f"{label}: answers other than 200", figures["errors"], "req"),
        Figure(f"{label}: acknowledged but not logged", figures["lost"], "rows"),
        Figure(f"{label}: logged more than once", figures["extra"], "rows"),
    ], figures


def _result(phases: dict, rows: dict, service: dict) -> Result:
    figures, measured = [], {}
    for name, phase in phases.items():
        lines, measured[name] = _phase_figures(name, phase, rows)
        figures += lines
    for name, latencies in rows["server_latency_ms"].items():
        if latencies:
            figures.append(
                Figure(
                    f"{name}: p99 latency inside the service",
                    percentile(latencies, 99),
                    "ms",
                    note="the log's latency_ms: arrival until its log rows are written",
                )
            )
    closed = measured["closed"]
    headline = Figure(
        f"p99 latency, {CONNECTIONS} connections, {phases['closed']['requests']:,} requests",
        closed["p99"],
        "ms",
        note=f"{closed['rate']:.0f} req/s",
    )
    goals = [
        Goal(
            f"p99 <= {GOAL_P99_MS:g} ms (closed loop)",
            closed["p99"] <= GOAL_P99_MS,
            f"{closed['p99']:.1f} ms",
        ),
        Goal(
            f">= {GOAL_RATE:g} req/s (closed loop)",
            closed["rate"] >= GOAL_RATE,
            f"{closed['rate']:.0f} req/s",
        ),
        Goal(
            "zero lost log rows",
            all(m["lost"] == 0 and m["extra"] == 0 for m in measured.values()),
            ", ".join(
                f"{name}: {m['lost']} lost, {m['extra']} doubled" for name, m in measured.items()
            ),
        ),
    ]
    if "paced" in measured:
        paced = measured["paced"]
        goals.insert(
            1,
            Goal(
                f"p99 <= {GOAL_P99_MS:g} ms at {PACED_RATE:g} req/s offered",
                paced["p99"] <= GOAL_P99_MS,
                f"{paced['p99']:.1f} ms",
            ),
        )
    findings = []
    if closed["p99"] > GOAL_P99_MS:
        # Little's law: in a closed loop the mean latency is connections / throughput.
        floor = 1000 * CONNECTIONS / closed["rate"]
        needed = 1000 * CONNECTIONS / GOAL_P99_MS
        findings.append(
            f"with {CONNECTIONS} requests always in flight, the mean latency is "
            f"{CONNECTIONS} / throughput = {floor:.0f} ms (Little's law); a p99 under "
            f"{GOAL_P99_MS:g} ms in a closed loop needs over {needed:.0f} req/s"
        )
    return Result(
        key="P5",
        title="the repair service under load (loopback)",
        headline=headline,
        figures=figures,
        goals=goals,
        settings={
            "connections": CONNECTIONS,
            "requests": {name: phase["requests"] for name, phase in phases.items()},
            "paced_rate": PACED_RATE,
            "photos": PHOTOS,
            "service": {k: v for k, v in service.items() if k != "server_stderr_tail"},
            "statuses": {name: phase["statuses"] for name, phase in phases.items()},
            "config": "ServiceConfig defaults (2 decoders, one batch grader, 1 torch thread)",
        },
        findings=findings,
    )


def main(argv: list[str] | None = None) -> None:
    """Run P5, or one of its workers (set-up, the service, the load)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive_int, default=REQUESTS)
    parser.add_argument(
        "--paced", type=non_negative_int, default=PACED_REQUESTS, help="0 skips the paced load"
    )
    parser.add_argument("--photos", type=positive_int, default=PHOTOS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        emit({"version": prepare(args.prepare)})
    elif args.serve:
        serve(args.serve, args.port)
    elif args.load:
        emit(load_worker(args.load, args.requests, args.paced, args.photos))
    else:
        report_standalone(lambda: run(args.requests, args.paced, args.photos))


if __name__ == "__main__":
    run_cli(main)
