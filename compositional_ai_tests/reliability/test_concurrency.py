"""A real backfill beside the webserver, the daemon and a multiprocess run.

Every landing batch of `batch_job` is backfilled through the webserver's GraphQL API while the
daemon's sensors tick, a run of the gold tables executes its steps in processes of their own, and
this process keeps reading the warehouse. Ingestion runs keep the file open for their whole
length; the gold steps, the sensors and the reader each open it briefly. All of them reach the
one DuckDB file, so this is where the inter-process lock proves itself: no run may fail, no step
may fail, no event may mention a lock error, and the warehouse must hold what a
one-batch-at-a-time ingestion of the same files holds.
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from compositional_ai import jobs
from compositional_ai.definitions import ASSET_MODULES, build_definitions, build_resources
from compositional_ai.demo import init_dagster_home
from compositional_ai.feedback.sensors import inference_partition_sensor
from compositional_ai.landing import formats
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.resources.warehouse import Warehouse
from compositional_ai.settings import DATA_DIR_ENV, PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.warehouse.partitions import landing_batches

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

DEFINITIONS_MODULE = "compositional_ai.definitions"
TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}
# Three batches are enough for the race that matters: the third confirms the second's requests.
BATCHES = 3
SERVER_START_S = 180
BACKFILL_S = 480
READ_PAUSE_S = 0.25
# Above every event id the run storage can hold here: the inference sensor ticks, finds nothing
# newer, and requests no retraining, whose demo-size training no sensor request can shrink.
CURSOR_PAST_EVERY_EVENT = str(10**15)
# What DuckDB says when a second process opens the file, and what our lock says when it gives up.
LOCK_ERROR = re.compile(
    r"could not set lock|conflicting lock|gave up waiting for the lock|LockTimeoutError",
    re.IGNORECASE,
)

# Each silver table of a batch, the landing file its rows come from, and whether it has a header.
SILVER_SOURCES = {
    "repair_requests": (formats.REQUESTS_FILE, False),
    "customers": (formats.CUSTOMERS_FILE, True),
    "technician_outcomes": (formats.OUTCOMES_FILE, True),
    "repair_photos": (formats.PHOTOS_DIR, False),
}

INGEST_REFERENCE = dg.AssetSelection.assets(
    ["bronze", "product_catalog"], ["silver", "product_catalog"]
)
INGEST_BATCH = dg.AssetSelection.groups("bronze", "silver", "chatbot") - jobs.REFERENCE_ASSETS

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
  }
}
"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
  }
}
"""
# Gold tables that read only silver and the inference log (no model): launched during the
# backfill as an ad-hoc run of the implicit asset job, whose executor (the definitions'
# multiprocess one) runs two of its steps at a time, each in a process of its own.
PARALLEL_GOLD = (
    ["gold", "confirmed_labels"],
    ["gold", "customer_holdings"],
    ["gold", "repair_volume_weekly"],
    ["gold", "damage_level_distribution"],
    ["gold", "defect_rate_by_cell_type"],
    ["gold", "quarantine_summary"],
)
SET_CURSOR = """
mutation($selector: SensorSelector!, $cursor: String) {
  setSensorCursor(sensorSelector: $selector, cursor: $cursor) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on PythonError { message }
  }
}
"""
LOCATIONS = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"GraphQL HTTP {error.code}: {error.read()[:2000]!r}") from error
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def loaded_repository(servers: "Servers") -> dict[str, str]:
    """The selector of the one repository the webserver serves, once its code has loaded."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        servers.assert_alive()
        (entry,) = graphql(servers.port, LOCATIONS)["workspaceOrError"]["locationEntries"]
        location = entry["locationOrLoadError"]
        if location and location["__typename"] == "PythonError":
            raise AssertionError(f"{entry['name']} failed to load: {location['message']}")
        if entry["loadStatus"] == "LOADED" and location:
            (repository,) = location["repositories"]
            return {"repositoryName": repository["name"], "repositoryLocationName": entry["name"]}
        time.sleep(1)
    raise AssertionError(f"code location not loaded after {SERVER_START_S} s:\n{servers.tails()}")


class Servers:
    """The webserver and the daemon as subprocesses, each in its own process group."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_webserver(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.start(
            "webserver",
            [
                str(bin_dir / "dagster-webserver"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-m", DEFINITIONS_MODULE),
            ],
        )
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/server_info", timeout=5
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"webserver not up after {SERVER_START_S} s:\n{self.tails()}")

    def start_daemon(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.start("daemon", [str(bin_dir / "dagster-daemon"), "run", "-m", DEFINITIONS_MODULE])

    def assert_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}:\n{tail(self.logs[name])}"
                )

    def tails(self) -> str:
        return "\n".join(f"--- {name}\n{tail(log)}" for name, log in self.logs.items())

    def stop(self) -> None:
        # The whole group goes: the code servers and run workers the two started are in it.
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        for process in self.processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Reader:
    """Reads the warehouse over and over from this process while the backfill writes it."""

    warehouse: Warehouse
    batch: str
    reads: int = 0
    batch_counts: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                frame = self.warehouse.query(
                    "select count(*) as n from silver.repair_requests where batch = $batch",
                    {"batch": self.batch},
                    purpose="concurrency test reader",
                )
                self.batch_counts.add(int(frame["n"][0]))
                self.reads += 1
            except Exception as error:  # every failure of a read is a finding here
                self.errors.append(f"{type(error).__name__}: {error}")
            self.longest_s = max(self.longest_s, time.monotonic() - started)
            self.stop.wait(READ_PAUSE_S)


@dataclass
class Scenario:
    paths: DataPaths
    batches: tuple[str, ...]
    instance: dg.DagsterInstance
    backfill_id: str
    gold_run_id: str
    seconds: float
    reader: Reader
    first_batch_requests: int
    server_logs: dict[str, str]
    oracle: DataPaths


def landed_rows(batch_dir: Path, file_name: str, has_header: bool) -> int:
    """Rows of one landing file (or files of one folder), counted from the file itself."""
    path = batch_dir / file_name
    if path.is_dir():
        return sum(1 for child in path.iterdir() if child.is_file())
    return len(path.read_bytes().splitlines()) - (1 if has_header else 0)


def ingest_one_at_a_time(paths: DataPaths, batches: tuple[str, ...]) -> None:
    """Bronze, silver and the chatbot log of every batch, in landing order, in this process."""
    assets = dg.load_assets_from_modules(ASSET_MODULES)
    resources = build_resources(paths)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, list(batches))
    steps = [(INGEST_REFERENCE, None)] + [(INGEST_BATCH, batch) for batch in batches]
    for selection, partition in steps:
        result = dg.materialize(
            assets,
            selection=selection,
            partition_key=partition,
            instance=instance,
            resources=resources,
        )
        assert result.success, partition


def bootstrap(paths: DataPaths, instance: dg.DagsterInstance, batches: tuple[str, ...]) -> None:
    """What the demo does before the second batch: reference data, batch one, the seed model."""
    defs = build_definitions(paths)
    # The landing sensor would add these on its first tick; added here, it finds nothing new.
    instance.add_dynamic_partitions(landing_batches.name, list(batches))
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    runs = [
        ("reference_job", None, quiet),
        ("batch_job", batches[0], quiet),
        (
            "seed_model_job",
            None,
            quiet | {"ops": {"repair__repair_damage_model": {"config": TINY_TRAINING}}},
        ),
    ]
    for job_name, partition, run_config in runs:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config
        )
        assert result.success, job_name


def wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, servers: Servers) -> None:
    deadline = time.monotonic() + BACKFILL_S
    while time.monotonic() < deadline:
        servers.assert_alive()
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs()
        if (
            backfill is not None
            and backfill.status != BulkActionStatus.REQUESTED
            and all(run.is_finished for run in runs)
        ):
            return
        time.sleep(2)
    states = [(run.job_name, run.tags.get("dagster/partition"), run.status.value) for run in runs]
    raise AssertionError(f"backfill unfinished after {BACKFILL_S} s: {states}\n{servers.tails()}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    root = tmp_path_factory.mktemp("concurrency")
    paths = DataPaths(root)
    landing = build_demo_landing(
        paths.landing, n_batches=BATCHES, max_train_photos=60, max_holdout_photos=16
    )
    home = init_dagster_home(paths)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        DATA_DIR_ENV: str(root),
        PSEUDONYM_KEY_ENV: "concurrency-test-key",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DAGSTER_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
    }
    # The oracle: the same landing files ingested one batch after the other, in its own warehouse.
    oracle = DataPaths(tmp_path_factory.mktemp("oracle"))
    oracle.landing.symlink_to(paths.landing, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", DATA_DIR_ENV, PSEUDONYM_KEY_ENV):
            patch.setenv(name, env[name])
        ingest_one_at_a_time(oracle, landing.batches)
        instance = dg.DagsterInstance.from_config(str(home))
        bootstrap(paths, instance, landing.batches)
        first_batch_requests = Warehouse(path=str(paths.warehouse)).query(
            "select count(*) as n from silver.repair_requests where batch = $batch",
            {"batch": landing.batches[0]},
        )["n"][0]
        servers = Servers(root, env)
        reader = Reader(Warehouse(path=str(paths.warehouse)), landing.batches[0])
        reading = threading.Thread(target=reader.loop, daemon=True)
        try:
            servers.start_webserver()
            repo = loaded_repository(servers)
            moved = graphql(
                servers.port,
                SET_CURSOR,
                {
                    "selector": repo | {"sensorName": inference_partition_sensor.name},
                    "cursor": CURSOR_PAST_EVERY_EVENT,
                },
            )["setSensorCursor"]
            assert moved["sensorState"]["status"] == "RUNNING", moved
            servers.start_daemon()
            reading.start()
            started = time.monotonic()
            launched = graphql(
                servers.port,
                LAUNCH_BACKFILL,
                {
                    "params": {
                        "selector": {
                            "partitionSetName": f"{jobs.batch_job.name}_partition_set",
                            "repositorySelector": repo,
                        },
                        "allPartitions": True,
                    }
                },
            )["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            gold = graphql(
                servers.port,
                LAUNCH_RUN,
                {
                    "params": {
                        "selector": repo
                        | {
                            "jobName": "__ASSET_JOB",
                            "assetSelection": [{"path": key} for key in PARALLEL_GOLD],
                        }
                    }
                },
            )["launchRun"]
            assert gold["__typename"] == "LaunchRunSuccess", gold
            wait_for_backfill(instance, launched["backfillId"], servers)
            seconds = time.monotonic() - started
        finally:
            reader.stop.set()
            if reading.is_alive():
                reading.join(timeout=30)
            servers.stop()
        logger.info(
            "backfill of %d batches: %.0f s; reader: %d reads, longest %.2f s",
            len(landing.batches),
            seconds,
            reader.reads,
            reader.longest_s,
        )
        yield Scenario(
            paths=paths,
            batches=landing.batches,
            instance=instance,
            backfill_id=launched["backfillId"],
            gold_run_id=gold["run"]["runId"],
            seconds=seconds,
            reader=reader,
            first_batch_requests=int(first_batch_requests),
            server_logs={
                name: log.read_text(errors="replace") for name, log in servers.logs.items()
            },
            oracle=oracle,
        )
        instance.dispose()


def records_of(instance: dg.DagsterInstance) -> dict[str, list]:
    return {run.run_id: instance.all_logs(run.run_id) for run in instance.get_runs()}


def texts_of(record) -> list[str]:
    """Every human-readable string an event record carries: its message and any error."""
    texts = [record.user_message or ""]
    event = record.dagster_event
    error = getattr(event.event_specific_data, "error", None) if event else None
    if error is not None:
        texts.append(error.to_string())
    return texts


def sql(paths: DataPaths, query: str) -> pl.DataFrame:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(query).pl()


def test_the_backfill_ran_one_successful_run_per_batch(scenario):
    backfill = scenario.instance.get_backfill(scenario.backfill_id)
    runs = scenario.instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/backfill": scenario.backfill_id})
    )
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
    assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(scenario.batches)
    assert {run.job_name for run in runs} == {jobs.batch_job.name}
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * len(scenario.batches)


def test_every_run_on_the_instance_succeeded_with_no_failed_step(scenario):
    statuses = {run.run_id: run.status for run in scenario.instance.get_runs()}
    failed_steps = [
        (run_id, record.dagster_event.step_key)
        for run_id, records in records_of(scenario.instance).items()
        for record in records
        if record.dagster_event and record.dagster_event.is_step_failure
    ]
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}
    assert failed_steps == []


def test_no_event_and_no_server_log_mentions_a_lock_error(scenario):
    in_events = [
        text[:300]
        for records in records_of(scenario.instance).values()
        for record in records
        for text in texts_of(record)
        if LOCK_ERROR.search(text)
    ]
    in_servers = [
        line[:300]
        for log in scenario.server_logs.values()
        for line in log.splitlines()
        if LOCK_ERROR.search(line)
    ]
    assert in_events == []
    assert in_servers == []


def test_every_step_of_every_backfill_run_succeeded(scenario):
    runs = scenario.instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/backfill": scenario.backfill_id})
    )
    step_keys = {}
    for run in runs:
        records = scenario.instance.all_logs(run.run_id)
        step_keys[run.tags["dagster/partition"]] = sorted(
            record.dagster_event.step_key
            for record in records
            if record.dagster_event and record.dagster_event.is_step_success
        )
    job = build_definitions(scenario.paths).resolve_job_def(jobs.batch_job.name)
    expected = sorted(node.name for node in job.graph.nodes)
    assert step_keys == {batch: expected for batch in scenario.batches}
    logger.info(
        "backfill: %d runs, %d steps, %.0f s",
        len(runs),
        sum(len(keys) for keys in step_keys.values()),
        scenario.seconds,
    )


def test_the_gold_run_ran_each_step_in_a_process_of_its_own(scenario):
    instance = scenario.instance
    run = instance.get_run_by_id(scenario.gold_run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    starts = [
        record
        for record in instance.all_logs(run.run_id)
        if record.dagster_event and record.dagster_event.is_step_start
    ]
    assert len(starts) == len(PARALLEL_GOLD)
    pids = {record.dagster_event.pid for record in starts}
    assert len(pids) == len(PARALLEL_GOLD)
    assert os.getpid() not in pids
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    materialized = {
        tuple(record.event_log_entry.dagster_event.asset_key.path) for record in records
    }
    assert materialized == {tuple(key) for key in PARALLEL_GOLD}


def test_silver_rows_per_batch_are_the_landed_rows_minus_quarantine(scenario):
    silver = {
        table: dict(
            sql(scenario.paths, f"select batch, count(*) from silver.{table} group by 1").rows()
        )
        for table in SILVER_SOURCES
    }
    quarantined = sql(
        scenario.paths, "select batch, source, count(*) as n from silver.quarantine group by 1, 2"
    )
    held = {(batch, source): n for batch, source, n in quarantined.rows()}
    for batch in scenario.batches:
        batch_dir = scenario.paths.batches / batch
        for table, (file_name, header) in SILVER_SOURCES.items():
            landed = landed_rows(batch_dir, file_name, header)
            assert silver[table].get(batch, 0) == landed - held.get((batch, table), 0), (
                batch,
                table,
            )


def test_each_batch_holds_what_a_one_batch_at_a_time_ingestion_holds(scenario):
    # Silver validates a batch against the batches before it (returning customers, outcomes of
    # last week's requests), so a backfill must yield the same rows as ingesting in order.
    by_table = "select batch, count(*) as n from silver.{table} group by 1 order by 1"
    by_reason = (
        "select batch, source, reason, count(*) as n from silver.quarantine "
        "group by all order by all"
    )
    for query in [by_table.format(table=table) for table in SILVER_SOURCES] + [by_reason]:
        assert sql(scenario.paths, query).rows() == sql(scenario.oracle, query).rows(), query


def test_the_inference_and_chatbot_logs_cover_every_batch(scenario):
    online = dict(
        sql(
            scenario.paths,
            "select batch, count(*) from silver.repair_requests where channel = 'online' "
            "group by 1",
        ).rows()
    )
    logged = dict(
        sql(
            scenario.paths, "select batch, count(*) from repair.repair_inference_log group by 1"
        ).rows()
    )
    captured = dict(
        sql(
            scenario.paths, "select batch, count(*) from chatbot.chatbot_capture_log group by 1"
        ).rows()
    )
    unread = dict(
        sql(scenario.paths, "select batch, count(*) from chatbot.chat_quarantine group by 1").rows()
    )
    for batch in scenario.batches:
        chats = landed_rows(scenario.paths.batches / batch, formats.CHATS_FILE, False)
        assert logged.get(batch, 0) == online.get(batch, 0), batch
        assert captured.get(batch, 0) + unread.get(batch, 0) == chats, batch


def test_the_reader_never_failed_and_never_saw_a_half_replaced_partition(scenario):
    reader = scenario.reader
    assert reader.errors == []
    assert reader.reads >= 10
    # The backfill replaces batch one's rows in one transaction: readers see old or new, never none.
    assert reader.batch_counts == {scenario.first_batch_requests}
