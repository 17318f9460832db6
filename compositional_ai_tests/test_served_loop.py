"""The deployed service as a data source: served predictions become partitions, one retraining
run follows, and confirmed served outcomes reach the next model's training set."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import duckdb
import pytest
import requests
from dagster import DagsterInstance, build_sensor_context, materialize

from compositional_ai.definitions import build_definitions, build_resources
from compositional_ai.demo import ops_config
from compositional_ai.feedback.sensors import inference_partition_sensor
from compositional_ai.landing.elpv import load_elpv_labels
from compositional_ai.repair_service.served_assets import served_log_sensor

pytestmark = pytest.mark.slow

POSTED = 200
BAD_UPLOADS = 3
CONFIRMED = 20
TINY_TRAINING = {"image_size": 32, "epochs": 2, "batch_size": 16, "patience": 2, "width": 8}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(paths, port, log):
    env = {**os.environ, "COMPOSITIONAL_AI_DATA": str(paths.root)}
    return subprocess.Popen(
        [sys.executable, "-m", "compositional_ai", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_healthy(url, process, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited while starting"
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail("the service did not become healthy")


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    paths, landing, _ = demo
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    products = [
        line.split(",")[0]
        for line in (paths.reference / "catalog.csv").read_text().splitlines()[1:6]
    ]
    photos = load_elpv_labels()["source_path"].head(POSTED).to_list()
    log = (tmp_path_factory.mktemp("service") / "service.log").open("wb")
    process = _serve(paths, port, log)
    try:
        _wait_healthy(url, process)

        def post(index):
            with open(photos[index], "rb") as photo:
                response = requests.post(
                    f"{url}/v1/assessments",
                    files={"photo": ("cell.png", photo, "image/png")},
                    data={
                        "product_id": products[index % len(products)],
                        "name": "Test Person",
                        "email": f"p{index}@example.org",
                        "phone": "555-010-0100",
                    },
                    timeout=60,
                )
            return response.status_code, response.json()

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(post, range(POSTED)))
        bad = [
            requests.post(
                f"{url}/v1/assessments",
                files={"photo": ("x.png", b"not an image", "image/png")},
                data={
                    "product_id": products[0],
                    "name": "Test Person",
                    "email": "x@example.org",
                    "phone": "555-010-0100",
                },
                timeout=30,
            )
            for _ in range(BAD_UPLOADS)
        ]
        ok = [body for status, body in answers if status == 200]
        for body in ok[:CONFIRMED]:
            outcome = requests.post(
                f"{url}/v1/assessments/{body['request_id']}/outcome",
                json={
                    "technician_id": "T9",
                    "quote_accepted": True,
                    "damage_level": 3,
                    "cell_type": "mono",
                },
                timeout=30,
            )
            assert outcome.status_code == 200, outcome.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    return paths, ok, bad


def _run_requests(paths, instance, sensor):
    resources = build_resources(paths)
    with build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(getattr(result, "run_requests", None) or []), resources


def test_served_predictions_become_partitions_and_one_retraining(served, monkeypatch):
    paths, ok, bad = served
    monkeypatch.setenv("DAGSTER_HOME", str(paths.dagster_home))
    assert len(ok) == POSTED
    promised = {"request_id", "damage_level", "probabilities", "quote", "model_version"}
    assert all(promised <= set(body) for body in ok)
    assert all(body["quote"] > 0 and len(body["probabilities"]) == 4 for body in ok)
    bad_statuses = sorted(str(response.status_code) for response in bad)
    assert bad_statuses == ["415"] * BAD_UPLOADS, [response.text for response in bad]
    instance = DagsterInstance.get()
    defs = build_definitions(paths)

    runs, resources = _run_requests(paths, instance, served_log_sensor)
    assert {tuple(r.asset_selection[0].path) for r in runs} == {
        ("repair", "served_inference_log"),
        ("repair", "served_outcomes"),
    }
    for request in runs:
        result = materialize(
            defs.assets,
            selection=request.asset_selection,
            partition_key=request.partition_key,
            instance=instance,
            resources=resources,
        )
        assert result.success

    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        rows = con.execute(
            "select request_id, status, source from repair.served_inference_log"
        ).fetchall()
    ok_ids = sorted(r["request_id"] for r in ok)
    assert sorted(r[0] for r in rows if r[1] == "ok") == ok_ids
    assert sum(1 for r in rows if r[1] == "415") == BAD_UPLOADS
    assert {r[2] for r in rows} == {"served"}

    again, _ = _run_requests(paths, instance, served_log_sensor)
    assert again == []

    retrain, _ = _run_requests(paths, instance, inference_partition_sensor)
    assert len(retrain) == 1
    result = defs.resolve_job_def("retraining_job").execute_in_process(
        instance=instance, tags=dict(retrain[0].tags), run_config=ops_config(TINY_TRAINING)
    )
    assert result.success
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        served_labels = con.execute(
            "select count(*) from feedback.repair_feedback_training_set t "
            "join repair.served_inference_log s using (request_id) where t.damage_level = 3"
        ).fetchone()[0]
    assert served_labels == CONFIRMED
