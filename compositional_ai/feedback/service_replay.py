"""The feedback-loop replay's grader over HTTP: each variant's versions answer from a real
repair service, a `compositional-ai serve` process on 127.0.0.1.

Every variant gets a data directory of its own under the replay's work folder (an MLflow store,
the product catalog, the served log), and a service process serving that store's `champion`:

- `publish` registers the new version in the variant's store and moves `champion` to it; the
  next `grade` waits until the service's `GET /v1/models` reports that version serving (the
  service follows the alias without a restart), then posts every photo of the batch to
  `POST /v1/assessments` over a few keep-alive connections, with the request's product and
  contact fields and the landing request id as `client_request_id`;
- `confirm` posts technician outcomes to `POST /v1/assessments/{id}/outcome`;
- `logged_predictions` and `recorded_labels` read the service's served log back, so a variant
  learns from what its service logged, not from the answers the replay happened to receive.

`ServiceGrader` is a context manager: leaving it, normally or by an error, stops every service
it started (SIGTERM, so each closes its log segments; SIGKILL after `stop_timeout_s`).
"""

import contextlib
import http.client
import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from compositional_ai.feedback.loop_replay import GRADED_SCHEMA, RECORDED_LABELS_SCHEMA, VARIANTS
from compositional_ai.landing.formats import CATALOG_FILE
from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA, REPAIR_MODEL
from compositional_ai.resources.model_registry import CHAMPION, ModelRegistry
from compositional_ai.settings import DATA_DIR_ENV, DataPaths

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
THROUGH = "http_service"
# The columns of a request the service's assessment form needs, beside its photo.
FORM_COLUMNS = ("request_id", "photo_sha256", "product_id", "name", "email", "phone")
# Columns of a label the outcome route needs; inspected_at is optional.
OUTCOME_COLUMNS = ("technician_id", "cell_type")
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
}
# A status for calls that got no HTTP answer at all.
NO_ANSWER = "no_answer"
MISMATCH = "mismatched_answer"
LOG_TAIL_BYTES = 4000
PORT_ATTEMPTS = 3


class ServiceReplayError(RuntimeError):
    """A replay service failed: it would not start, died, or lost what it had answered."""


@dataclass(frozen=True)
class ServiceOptions:
    """How the replay talks to its services."""

    # Concurrent connections per batch: enough to keep a service's inference workers busy.
    connections: int = 8
    start_timeout_s: float = 300.0
    # How long a newly published version may take to serve (the service polls every 2 s).
    switch_timeout_s: float = 120.0
    request_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")


@dataclass
class _Service:
    """One variant's service process and what the replay has seen of it."""

    variant: str
    paths: DataPaths
    registry: ModelRegistry
    log_path: Path
    process: subprocess.Popen | None = None
    port: int | None = None
    starts: int = 0
    pending: str | None = None
    serving: str | None = None
    sent: int = 0
    failures: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    outcomes_posted: int = 0
    outcome_failures: Counter = field(default_factory=Counter)
    labels_without_assessment: int = 0
    published: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace").strip() or "(empty log)"


class _Connections:
    """Keep-alive HTTP connections to one loopback port, shared by worker threads.

    Opened for one burst of calls and closed after it, so no connection idles into the server's
    keep-alive timeout between batches.
    """

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            self._idle.put(connection)
        return response.status, _json_or_text(data)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self) -> "_Connections":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _json_or_text(data: bytes) -> dict:
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {"text": data[:500].decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def multipart_form(
    fields: dict[str, str], files: dict[str, tuple[str, bytes]]
) -> tuple[bytes, str]:
    """A multipart/form-data body of text fields and (filename, bytes) files; its content type."""
    boundary = f"replay-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        header = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(header.encode() + str(value).encode() + b"\r\n")
    for name, (filename, content) in files.items():
        kind = "image/png" if content.startswith(b"\x89PNG") else "image/jpeg"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def read_stream(root: Path, stream: str, schema: dict, *, attempts: int = 5) -> pl.DataFrame:
    """Every row of a served-log stream (closed segments and the active one), read while the
    service may be rotating it."""
    for _ in range(attempts):
        listed = served_log.all_segments(root, stream)
        try:
            frame = served_log.read_frame(listed, schema)
        except FileNotFoundError:
            continue
        # A rotation between the listing of closed/ and of active/ can hide a segment from a
        # listing; two listings that agree, around the read, saw every segment.
        again = served_log.all_segments(root, stream)
        if {path.name for path in again} == {path.name for path in listed}:
            return frame
    raise ServiceReplayError(f"the served log {root / stream} kept changing while being read")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class ServiceGrader:
    """The `Grader` of the replay whose predictions go through real HTTP repair services.

    `work`: the replay's work folder (each variant's data directory, `work/<variant>`, is
    replaced at start); `catalog`: the product catalog CSV the services price from; `photos`:
    sha256 and content of every photo the requests name.
    """

    def __init__(
        self,
        work: Path,
        catalog: Path,
        photos: pl.DataFrame,
        *,
        variants: tuple[str, ...] = VARIANTS,
        options: ServiceOptions | None = None,
        run_tag: str = "feedback-loop-replay",
    ) -> None:
        self.work = Path(work)
        self.catalog = Path(catalog)
        self.photos = photos.select("sha256", "content").unique("sha256", keep="first")
        self.variants = variants
        self.options = options or ServiceOptions()
        self.run_tag = run_tag
        self._services: dict[str, _Service] = {}

    # Lifecycle.

    def start(self) -> None:
        """Create each variant's data directory and store, and start its service process."""
        from compositional_ai.definitions import build_resources

        if not self.catalog.is_file():
            raise FileNotFoundError(
                f"no product catalog at {self.catalog}: the services price every assessment"
            )
        for variant in self.variants:
            paths = DataPaths((self.work / variant).resolve())
            if paths.root.exists():
                shutil.rmtree(paths.root)
            paths.reference.mkdir(parents=True)
            shutil.copyfile(self.catalog, paths.reference / CATALOG_FILE)
            registry = build_resources(paths)["model_registry"]
            # Creating the store here, before the service opens it, keeps two processes from
            # creating one SQLite schema at the same time.
            registry.versions(REPAIR_MODEL)
            self._services[variant] = _Service(
                variant=variant, paths=paths, registry=registry, log_path=paths.root / "serve.log"
            )
        for service in self._services.values():
            self._spawn(service)

    def close(self) -> None:
        """Stop every service this grader started; SIGKILL those that do not stop in time."""
        for service in self._services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.stop_timeout_s
        for service in self._services.values():
            process = service.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("the %s service did not stop in time; killing it", service.variant)
                process.kill()
                process.wait()

    def __enter__(self) -> "ServiceGrader":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def processes(self) -> dict[str, subprocess.Popen | None]:
        """Each variant's service process (for inspection)."""
        return {variant: service.process for variant, service in self._services.items()}

    def paths(self, variant: str) -> DataPaths:
        """The data directory of a variant's service: its registry, catalog and served log."""
        return self._services[variant].paths

    def url(self, variant: str) -> str:
        return self._services[variant].url

    def _spawn(self, service: _Service) -> None:
        service.port = _free_port()
        service.starts += 1
        env = {**os.environ, **TELEMETRY_OFF, DATA_DIR_ENV: str(service.paths.root)}
        command = [sys.executable, "-m", "compositional_ai", "serve", "--host", HOST]
        with service.log_path.open("ab") as log:
            service.process = subprocess.Popen(
                [*command, "--port", str(service.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _await_serving(self, service: _Service, version: str) -> None:
        """Wait until the service reports `version` serving (it starts, then follows the alias)."""
        timeout = self.options.switch_timeout_s
        if service.serving is None:
            timeout += self.options.start_timeout_s
        deadline = time.monotonic() + timeout
        seen, last_error = None, None
        while True:
            code = service.process.poll()
            if code is not None:
                tail = service.log_tail()
                # Another process may take the free port between the probe and the bind.
                if (
                    service.serving is None
                    and "address already in use" in tail.lower()
                    and service.starts < PORT_ATTEMPTS
                ):
                    self._spawn(service)
                    continue
                raise ServiceReplayError(
                    f"the {service.variant} replay service exited with code {code}; "
                    f"{service.log_path} ends:\n{tail}"
                )
            try:
                with _Connections(service.port, 10.0) as connection:
                    status, body = connection.request("GET", "/v1/models")
            except OSError:
                status, body = None, {}
            if status == 200:
                seen = (body.get("serving") or {}).get("version")
                last_error = body.get("last_error")
                if seen == version:
                    service.serving = version
                    return
            if time.monotonic() > deadline:
                raise ServiceReplayError(
                    f"the {service.variant} replay service at {service.url} did not serve "
                    f"version {version} within {timeout:.0f} s (serving {seen}; last error: "
                    f"{last_error})"
                )
            time.sleep(0.1)

    def _check_alive(self, service: _Service) -> None:
        code = service.process.poll()
        if code is not None:
            raise ServiceReplayError(
                f"the {service.variant} replay service died (code {code}); "
                f"{service.log_path} ends:\n{service.log_tail()}"
            )

    # The Grader protocol.

    def publish(self, variant: str, version: str, model, metrics: dict) -> str:
        """Register `model` in the variant's store and make it `champion`; return its version."""
        service = self._services[variant]
        registry = service.registry
        # MLflow prints notes on every registration to stderr (its stream follows sys.stderr);
        # two registrations per batch would bury the replay's own output, so they go to the
        # debug log instead.
        chatter = io.StringIO()
        with contextlib.redirect_stderr(chatter):
            with registry.training_run(
                REPAIR_MODEL,
                dagster_run_id=self.run_tag,
                asset_key="feedback/feedback_loop_replay",
                params={"replay_variant": variant, "replay_version": version},
            ):
                mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
                registered = registry.log_torch_model(model, REPAIR_MODEL)
            registry.set_alias(REPAIR_MODEL, registered, CHAMPION)
        logger.debug("MLflow on registering %s v%s: %s", variant, registered, chatter.getvalue())
        service.pending = registered
        service.published.append({"replay_version": version, "registry_version": registered})
        return registered

    def grade(self, variant: str, requests: pl.DataFrame, images: np.ndarray) -> pl.DataFrame:
        """Post every request's photo to the variant's service once it serves the latest
        published version; the answers as rows of GRADED_SCHEMA."""
        service = self._services[variant]
        if service.pending is None:
            raise ServiceReplayError(f"no version of {variant} was published before grading")
        missing = [name for name in FORM_COLUMNS if name not in requests.columns]
        if missing:
            raise ValueError(f"the requests lack the assessment form's columns {missing}")
        self._await_serving(service, service.pending)
        items = requests.select(FORM_COLUMNS).join(
            self.photos,
            left_on="photo_sha256",
            right_on="sha256",
            how="left",
            maintain_order="left",
        )
        if items["content"].null_count():
            raise LookupError(f"{items['content'].null_count()} request photos have no content")

        with (
            _Connections(service.port, self.options.request_timeout_s) as connections,
            ThreadPoolExecutor(self.options.connections) as pool,
        ):
            answers = list(
                pool.map(lambda item: self._assess(connections, item), items.iter_rows(named=True))
            )
        service.sent += len(answers)
        graded = []
        for item, (status, body, latency_ms) in zip(
            items.iter_rows(named=True), answers, strict=True
        ):
            service.latencies_ms.append(latency_ms)
            if status == 200 and (
                body.get("client_request_id") != item["request_id"]
                or body.get("input_sha256") != item["photo_sha256"]
            ):
                # An answer about another request or other bytes than were sent.
                status = MISMATCH
            if status != 200:
                service.failures[str(status)] += 1
                continue
            service.answered.append(body["request_id"])
            graded.append(
                {
                    "request_id": item["request_id"],
                    "served_request_id": body["request_id"],
                    "photo_sha256": body["input_sha256"],
                    "model_version": body["model_version"],
                    "predicted_level": body["damage_level"],
                    "confidence": body["confidence"],
                }
            )
        if len(graded) < len(answers):
            self._check_alive(service)
            logger.warning(
                "%s: %d of %d assessments failed (%s)",
                variant,
                len(answers) - len(graded),
                len(answers),
                dict(service.failures),
            )
        return pl.DataFrame(graded, schema=GRADED_SCHEMA)

    def _assess(self, connections: _Connections, item: dict) -> tuple[str | int, dict, float]:
        body, content_type = multipart_form(
            {
                "product_id": item["product_id"],
                "name": item["name"],
                "email": item["email"],
                "phone": item["phone"],
                "client_request_id": item["request_id"],
            },
            {"photo": ("photo.png", item["content"])},
        )
        started = time.perf_counter()
        try:
            status, answer = connections.request(
                "POST", "/v1/assessments", body, {"Content-Type": content_type}
            )
        except (OSError, http.client.HTTPException) as error:
            status, answer = NO_ANSWER, {"error": str(error)}
        return status, answer, (time.perf_counter() - started) * 1000

    def confirm(self, variant: str, labels: pl.DataFrame) -> None:
        """Post each label as the technician's outcome of the variant's assessment of it."""
        if labels.is_empty():
            return
        missing = [name for name in OUTCOME_COLUMNS if name not in labels.columns]
        if missing:
            raise ValueError(f"the labels lack the outcome's columns {missing}")
        service = self._services[variant]
        assessed = (
            self.logged_predictions(variant)
            .select("request_id", "served_request_id")
            .unique("request_id", keep="first")
        )
        due = labels.join(assessed, on="request_id", how="inner")
        # A technician confirms an assessment: a label whose request this service never
        # assessed has no outcome to post.
        service.labels_without_assessment += labels.height - due.height
        inspected = (
            pl.col("inspected_at").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z")
            if "inspected_at" in due.columns
            else pl.lit(None, pl.String)
        )
        bodies = due.select(
            "served_request_id",
            pl.col("technician_id").cast(pl.String),
            pl.col("damage_level").cast(pl.Int64),
            pl.col("cell_type").cast(pl.String),
            inspected.alias("inspected_at"),
        )
        with (
            _Connections(service.port, self.options.request_timeout_s) as connections,
            ThreadPoolExecutor(self.options.connections) as pool,
        ):
            statuses = list(
                pool.map(
                    lambda item: self._post_outcome(connections, item),
                    bodies.iter_rows(named=True),
                )
            )
        service.outcomes_posted += len(statuses)
        service.outcome_failures.update(str(status) for status in statuses if status != 200)
        if any(status != 200 for status in statuses):
            self._check_alive(service)

    def _post_outcome(self, connections: _Connections, item: dict) -> str | int:
        outcome = {
            "technician_id": item["technician_id"],
            "quote_accepted": True,
            "damage_level": item["damage_level"],
            "cell_type": item["cell_type"],
        }
        if item["inspected_at"] is not None:
            outcome["inspected_at"] = item["inspected_at"]
        try:
            status, _ = connections.request(
                "POST",
                f"/v1/assessments/{item['served_request_id']}/outcome",
                json.dumps(outcome).encode(),
                {"Content-Type": "application/json"},
            )
        except (OSError, http.client.HTTPException):
            return NO_ANSWER
        return status

    def logged_predictions(self, variant: str) -> pl.DataFrame:
        """The variant's successful assessments as its service logged them (GRADED_SCHEMA)."""
        service = self._services[variant]
        logged = (
            read_stream(
                service.paths.served_log, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA
            )
            .filter(pl.col("status") == "ok")
            .select(
                pl.col("client_request_id").alias("request_id"),
                pl.col("request_id").alias("served_request_id"),
                pl.col("input_sha256").alias("photo_sha256"),
                "model_version",
                "predicted_level",
                "confidence",
            )
            .cast(GRADED_SCHEMA)
        )
        answered = pl.Series("served_request_id", service.answered, dtype=pl.String)
        unlogged = (~answered.is_in(logged["served_request_id"].implode())).sum()
        if unlogged:
            raise ServiceReplayError(
                f"the {variant} service answered {unlogged} assessments its served log lacks"
            )
        return logged

    def recorded_labels(self, variant: str) -> pl.DataFrame:
        """The technician labels the variant's service logged as accepted outcomes."""
        service = self._services[variant]
        outcomes = read_stream(
            service.paths.served_log, served_log.OUTCOMES_STREAM, served_log.OUTCOME_LOG_SCHEMA
        ).filter(
            (pl.col("status") == "ok")
            & pl.col("quote_accepted")
            & pl.col("damage_level").is_not_null()
        )
        assessed = self.logged_predictions(variant).select(
            "request_id", "served_request_id", "photo_sha256"
        )
        return (
            outcomes.select(pl.col("request_id").alias("served_request_id"), "damage_level")
            .join(assessed, on="served_request_id", how="inner")
            .select(list(RECORDED_LABELS_SCHEMA))
            .cast(RECORDED_LABELS_SCHEMA)
        )

    def summary(self) -> dict:
        """Requests, failures and latency per variant, and the versions each service served.

        Waits for each service to serve its last published version first, so the final
        versions are loaded by the service too, though no batch is left for them to grade.
        """
        variants = {}
        for variant, service in self._services.items():
            if service.pending is not None and service.pending != service.serving:
                self._await_serving(service, service.pending)
            with _Connections(service.port, 10.0) as connection:
                _, models = connection.request("GET", "/v1/models")
            variants[variant] = {
                "url": service.url,
                "served_log": str(service.paths.served_log),
                "requests_sent": service.sent,
                "failures": sum(service.failures.values()),
                "failures_by_status": dict(service.failures),
                "p50_latency_ms": _percentile(service.latencies_ms, 50),
                "p95_latency_ms": _percentile(service.latencies_ms, 95),
                "outcomes_posted": service.outcomes_posted,
                "outcome_failures": sum(service.outcome_failures.values()),
                "labels_without_assessment": service.labels_without_assessment,
                "published": service.published,
                "served_versions": [
                    period["version"] for period in models.get("served_versions", [])
                ],
            }
        latencies = [ms for service in self._services.values() for ms in service.latencies_ms]
        return {
            "through": THROUGH,
            "requests_sent": sum(item["requests_sent"] for item in variants.values()),
            "failures": sum(item["failures"] for item in variants.values()),
            "p50_latency_ms": _percentile(latencies, 50),
            "p95_latency_ms": _percentile(latencies, 95),
            "connections": self.options.connections,
            "variants": variants,
        }
