"""An interrupted or killed demo leaves nothing behind that the next run would skip."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.utils import make_new_run_id

from compositional_ai import demo
from compositional_ai.landing.generate import build_demo_landing
from compositional_ai.settings import DATA_DIR_ENV, DataPaths
from compositional_ai.warehouse import validation
from compositional_ai.warehouse.partitions import landing_batches
from compositional_ai.warehouse.sensors import PARTITION_NAME_TAG


@pytest.fixture
def landed(tmp_path, monkeypatch):
    paths = DataPaths(tmp_path / "data")
    monkeypatch.setenv("DAGSTER_HOME", str(paths.dagster_home))
    landing = build_demo_landing(
        paths.landing, n_batches=3, max_train_photos=24, max_holdout_photos=8
    )
    return paths, sorted(landing.batches)


def _batch_runs(paths: DataPaths) -> dict[str, list[DagsterRunStatus]]:
    with DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="batch_job"))
    found: dict[str, list[DagsterRunStatus]] = {}
    for run in reversed(runs):
        found.setdefault(run.tags[PARTITION_NAME_TAG], []).append(run.status)
    return found


def _interrupted(*args, **kwargs):
    # Ctrl-C while a batch's silver is being validated.
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)  # the signal handler raises long before this ends


def test_batches_an_interrupted_demo_left_are_ingested_by_the_next_run(landed, monkeypatch):
    paths, batches = landed
    real = validation.validate_batch

    monkeypatch.setattr(validation, "validate_batch", _interrupted)
    with pytest.raises(demo.DemoInterrupted):
        demo.run_demo(paths, on_step=lambda step: None)
    # Every batch is a partition already; only the first had a run, which did not finish.
    first = _batch_runs(paths)
    assert list(first) == [batches[0]]
    assert DagsterRunStatus.SUCCESS not in first[batches[0]]

    monkeypatch.setattr(validation, "validate_batch", real)
    calls = []
    monkeypatch.setattr(demo, "execute_job", lambda *a, **k: calls.append((a[2], k)))
    steps = demo.run_demo(paths, on_step=lambda step: None)

    assert [f"landing batch {batch}" for batch in batches] == [
        step for step in steps if step.startswith("landing batch")
    ]
    assert [k.get("partition_key") for job, k in calls if job == "batch_job"] == batches


def _started_run(instance, batch: str, *, pid: int, host: str) -> str:
    run_id = make_new_run_id()
    tags = {PARTITION_NAME_TAG: batch, demo.OWNER_HOST_TAG: host, demo.OWNER_PID_TAG: str(pid)}
    instance.add_run(
        DagsterRun(job_name="batch_job", run_id=run_id, status=DagsterRunStatus.STARTED, tags=tags)
    )
    return run_id


def test_a_run_whose_process_was_killed_is_failed_and_its_batch_ingested_again(
    landed, monkeypatch, capsys
):
    from compositional_ai import cli

    paths, batches = landed
    monkeypatch.setenv(DATA_DIR_ENV, str(paths.root))
    # A demo killed with SIGKILL: its process is gone, its run says STARTED for ever.
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        here = socket.gethostname()
        with DagsterInstance.from_config(str(demo.init_dagster_home(paths))) as instance:
            instance.add_dynamic_partitions(landing_batches.name, batches)
            orphan = _started_run(instance, batches[0], pid=killed.pid, host=here)
            # Still going in another process; and a run of another machine, whose processes
            # this one cannot see.
            alive = _started_run(instance, batches[1], pid=running.pid, host=here)
            elsewhere = _started_run(instance, batches[2], pid=killed.pid, host=f"not-{here}")

        cli.main(["init-home"])
        assert f"run {orphan} was left unfinished by a killed process: marked failed" in (
            capsys.readouterr().out
        )
        calls = []
        monkeypatch.setattr(demo, "execute_job", lambda *a, **k: calls.append((a[2], k)))
        demo.run_demo(paths, on_step=lambda step: None)
    finally:
        running.kill()
        running.wait()

    with DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        status = {run_id: instance.get_run_by_id(run_id).status for run_id in (orphan, alive)}
        status[elsewhere] = instance.get_run_by_id(elsewhere).status
    assert status == {
        orphan: DagsterRunStatus.FAILURE,
        alive: DagsterRunStatus.STARTED,
        elsewhere: DagsterRunStatus.STARTED,
    }
    # The failed run's batch is ingested again; the two still in flight are left to their runs.
    assert [k.get("partition_key") for job, k in calls if job == "batch_job"] == [batches[0]]


def test_the_demo_command_says_it_was_interrupted_and_what_to_do(landed, monkeypatch, capsys):
    from compositional_ai import cli

    paths, batches = landed
    monkeypatch.setenv(DATA_DIR_ENV, str(paths.root))
    monkeypatch.setattr(validation, "validate_batch", _interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["demo"])
    assert stopped.value.code == 130
    said = capsys.readouterr().err
    assert f"interrupted: batch_job [{batches[0]}] was interrupted (run " in said
    assert "`make demo` again takes up what is left" in said
    assert "Traceback" not in said
