"""The feedback-loop replay through real repair services: one `compositional-ai serve` process
per variant on 127.0.0.1, its registry, its served log."""

import base64
import signal
import socket

import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from compositional_ai.definitions import build_resources
from compositional_ai.feedback.loop_replay import (
    CONFIRMED,
    MODEL,
    SELF_LABELLED,
    TECHNICIAN,
    VARIANTS,
    ReplayConfig,
    replay_feedback_loop,
)
from compositional_ai.feedback.replay_assets import (
    PLOT_FILE,
    REPLAY_DIR,
    REPLAY_OP,
    feedback_loop_replay,
)
from compositional_ai.feedback.service_replay import (
    TELEMETRY_OFF,
    ServiceGrader,
    ServiceOptions,
    ServiceReplayError,
    multipart_form,
)
from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA, REPAIR_MODEL
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.vision.images import decode_gray
from compositional_ai.vision.training import predict_proba

# Every test here starts service processes and trains models (several seconds each).
pytestmark = pytest.mark.slow

ARCHIVE, B1, B2, B3 = "2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"
# Tiny training at the service's smallest sensible input size.
TINY = {"image_size": 32, "epochs": 1, "batch_size": 8, "width": 4, "val_fraction": 0.0}
UNSOLD_REQUEST = "r0201"
LEAKED_REQUEST = "r0100"
REQUESTS = 24


def _logged(root, stream: str, schema: dict) -> pl.DataFrame:
    return served_log.read_frame(served_log.all_segments(root, stream), schema)


def _assessments(root) -> pl.DataFrame:
    return _logged(root, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)


@pytest.fixture(scope="module")
def served(replay_landing, tmp_path_factory, write_replay_inputs):
    """The replay of the small landing through two live services, and the grader after it."""
    paths = DataPaths(tmp_path_factory.mktemp("served_replay"))
    write_replay_inputs(paths, replay_landing)
    grader = ServiceGrader(
        paths.root / REPLAY_DIR,
        paths.reference / "catalog.csv",
        replay_landing["photos"],
        options=ServiceOptions(connections=4),
    )
    # Module-scoped, so set up before the autouse environment: the services need these too.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TELEMETRY_OFF.items():
            patch.setenv(name, value)
        patch.setenv(PSEUDONYM_KEY_ENV, "test-key")
        with grader:
            result = replay_feedback_loop(
                replay_landing["labels"],
                replay_landing["requests"],
                replay_landing["holdout"],
                replay_landing["photos"],
                config=ReplayConfig(**TINY),
                grader=grader,
            )
    return result, grader


def test_every_prediction_came_over_http_and_is_a_served_log_row(served):
    result, grader = served
    for variant in VARIANTS:
        answered = result.predictions.filter(pl.col("variant") == variant)
        logged = _assessments(grader.paths(variant).served_log).filter(pl.col("status") == "ok")
        # Every request but the one naming an unsold product was answered, once.
        assert answered.height == logged.height == REQUESTS - 1
        assert answered["served_request_id"].str.starts_with("srv-").all()
        joined = answered.join(
            logged, left_on="served_request_id", right_on="request_id", suffix="_logged"
        )
        assert joined.height == answered.height
        assert (joined["client_request_id"] == joined["request_id"]).all()
        for column in ("model_version", "predicted_level", "confidence"):
            assert (joined[column] == joined[f"{column}_logged"]).all(), column
        assert (joined["photo_sha256"] == joined["input_sha256"]).all()
        assert set(logged["source"].to_list()) == {"served"}


def test_failures_latency_and_outcomes_are_accounted(served):
    result, grader = served
    grading = result.grading
    assert grading["through"] == "http_service"
    assert grading["requests_sent"] == 2 * REQUESTS
    assert grading["failures"] == 2
    assert grading["p50_latency_ms"] > 0
    confirmed, own = grading["variants"][CONFIRMED], grading["variants"][SELF_LABELLED]
    assert confirmed["failures_by_status"] == own["failures_by_status"] == {"422": 1}
    # Batch 1's 8 outcomes and 7 of batch 2's: the unsold request has no assessment to confirm.
    assert confirmed["outcomes_posted"] == 15
    assert confirmed["labels_without_assessment"] == 1
    assert confirmed["outcome_failures"] == 0
    assert own["outcomes_posted"] == 0
    for variant in VARIANTS:
        refused = _assessments(grader.paths(variant).served_log).filter(pl.col("status") == "422")
        assert refused["client_request_id"].to_list() == [UNSOLD_REQUEST]
        assert result.predictions.filter(
            (pl.col("variant") == variant) & (pl.col("request_id") == UNSOLD_REQUEST)
        ).is_empty()


def test_the_served_version_switches_between_batches(served):
    result, _ = served
    for variant in VARIANTS:
        by_step = (
            result.predictions.filter(pl.col("variant") == variant)
            .group_by("step")
            .agg(pl.col("model_version").unique())
            .sort("step")
        )
        # Each batch is answered by one version only, the one trained after the batch before.
        assert by_step["model_version"].to_list() == [["1"], ["2"], ["3"]]
        table = result.table.filter(pl.col("variant") == variant).sort("step")
        assert table["served_version"].to_list() == ["1", "2", "3", "4"]
        # The last version never grades a batch, but its service switched to it too.
        assert result.grading["variants"][variant]["served_versions"] == ["1", "2", "3", "4"]


def test_the_service_answers_with_the_registered_model(served, replay_landing):
    result, grader = served
    registry = build_resources(grader.paths(CONFIRMED))["model_registry"]
    seed = registry.load_torch(REPAIR_MODEL, "1")
    first = result.predictions.filter(
        (pl.col("variant") == CONFIRMED) & (pl.col("step") == 1)
    ).join(replay_landing["photos"], left_on="photo_sha256", right_on="sha256")
    proba = predict_proba(seed, decode_gray(first["content"].to_list(), TINY["image_size"]))
    assert np.allclose(first["confidence"].to_numpy(), proba.max(axis=1), atol=1e-6)
    confident = np.sort(proba, axis=1)[:, -1] - np.sort(proba, axis=1)[:, -2] > 1e-6
    assert (first["predicted_level"].to_numpy() == proba.argmax(axis=1))[confident].all()


@pytest.mark.parametrize("step", [1, 2, 3])
def test_self_labels_are_exactly_the_services_logged_predictions(served, replay_landing, step):
    result, grader = served
    logged = _assessments(grader.paths(SELF_LABELLED).served_log).filter(
        (pl.col("status") == "ok") & (pl.col("model_version").cast(pl.Int64) <= step)
    )
    expected = logged.filter(
        ~pl.col("input_sha256").is_in(replay_landing["holdout"]["sha256"].implode())
    ).select(
        pl.col("client_request_id").alias("request_id"),
        pl.col("input_sha256").alias("photo_sha256"),
        pl.col("predicted_level").alias("damage_level"),
    )
    trained = result.training_rows.filter(
        (pl.col("variant") == SELF_LABELLED)
        & (pl.col("step") == step)
        & (pl.col("label_origin") == MODEL)
    ).select("request_id", "photo_sha256", "damage_level")
    assert trained.height == expected.height > 0
    assert trained.sort("request_id").equals(expected.sort("request_id"))


@pytest.mark.parametrize(
    ("step", "request_batches"),
    [
        # Batch 1's outcomes arrive with batch 2: after batch 1, only the archive is confirmed.
        (1, set()),
        (2, {B1}),
        (3, {B1, B2}),
    ],
)
def test_confirmed_labels_are_the_outcomes_posted_to_the_service(
    served, replay_landing, step, request_batches
):
    result, grader = served
    root = grader.paths(CONFIRMED).served_log
    outcomes = _logged(root, served_log.OUTCOMES_STREAM, served_log.OUTCOME_LOG_SCHEMA)
    assert set(outcomes["status"].to_list()) == {"ok"}
    posted = outcomes.join(
        _assessments(root).select("request_id", "client_request_id"), on="request_id"
    )
    labels = replay_landing["labels"]
    online = labels.filter(pl.col("request_batch") != ARCHIVE)["request_id"].implode()
    trained = result.training_rows.filter(
        (pl.col("variant") == CONFIRMED)
        & (pl.col("step") == step)
        & pl.col("request_id").is_in(online)
    )
    assert set(trained["label_origin"].to_list()) <= {TECHNICIAN}
    batches = trained.join(labels.select("request_id", "request_batch"), on="request_id")
    assert set(batches["request_batch"].to_list()) == request_batches
    # What the variant learned from online requests is what the service logged as outcomes.
    assert set(trained["request_id"].to_list()) <= set(posted["client_request_id"].to_list())
    levels = trained.join(
        posted.select(pl.col("client_request_id").alias("request_id"), "damage_level"),
        on="request_id",
        suffix="_logged",
    )
    assert (levels["damage_level"] == levels["damage_level_logged"]).all()


def test_the_holdout_is_served_but_never_trains(served, replay_landing):
    result, _ = served
    holdout = replay_landing["holdout"]["sha256"].implode()
    assert result.training_rows.filter(pl.col("photo_sha256").is_in(holdout)).is_empty()
    # The request showing a holdout photo was still assessed by both services.
    leaked = result.predictions.filter(pl.col("request_id") == LEAKED_REQUEST)
    assert sorted(leaked["variant"].to_list()) == sorted(VARIANTS)


def test_the_services_are_stopped_after_the_replay(served):
    _, grader = served
    for variant, process in grader.processes.items():
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it to report how it ended.
        assert process.returncode in (0, -signal.SIGTERM), variant
        port = int(grader.url(variant).rsplit(":", 1)[1])
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
        # Stopping closes the active segments: everything the service logged is in closed/.
        assert not list((grader.paths(variant).served_log / "assessments" / "active").iterdir())


def test_an_error_inside_the_replay_stops_the_services(tmp_path, replay_landing):
    (tmp_path / "catalog.csv").write_text("product_id,list_price_usd\nP0001,200\n")
    grader = ServiceGrader(tmp_path / "work", tmp_path / "catalog.csv", replay_landing["photos"])
    with pytest.raises(RuntimeError, match="the replay broke"), grader:
        assert all(process.poll() is None for process in grader.processes.values())
        raise RuntimeError("the replay broke")
    assert all(process.returncode is not None for process in grader.processes.values())


def test_a_service_that_cannot_start_fails_the_replay_with_its_log(
    tmp_path, replay_landing, monkeypatch
):
    # Without the pseudonym key the service refuses to start: it would log raw contacts.
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    (tmp_path / "catalog.csv").write_text("product_id,list_price_usd\nP0001,200\n")
    grader = ServiceGrader(tmp_path / "work", tmp_path / "catalog.csv", replay_landing["photos"])
    with pytest.raises(ServiceReplayError, match="exited with code") as failure, grader:
        replay_feedback_loop(
            replay_landing["labels"],
            replay_landing["requests"],
            replay_landing["holdout"],
            replay_landing["photos"],
            config=ReplayConfig(**TINY),
            grader=grader,
        )
    assert "serve.log" in str(failure.value)
    assert PSEUDONYM_KEY_ENV in str(failure.value)
    assert all(process.returncode is not None for process in grader.processes.values())


def test_the_multipart_form_carries_fields_and_photo():
    body, content_type = multipart_form(
        {"product_id": "P0001", "client_request_id": "R-1"}, {"photo": ("photo.png", b"\x89PNGx")}
    )
    boundary = content_type.split("boundary=", 1)[1]
    assert content_type.startswith("multipart/form-data; ")
    assert body.count(f"--{boundary}".encode()) == 4
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="client_request_id"\r\n\r\nR-1\r\n' in body
    assert b"Content-Type: image/png\r\n\r\n\x89PNGx\r\n" in body


def test_the_asset_replays_through_the_services_and_attaches_the_plot(
    tmp_path, replay_landing, write_replay_inputs
):
    paths = DataPaths(tmp_path)
    write_replay_inputs(paths, replay_landing)
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [feedback_loop_replay],
            resources=build_resources(paths),
            instance=instance,
            run_config={"ops": {REPLAY_OP: {"config": {**TINY, "connections": 2}}}},
        )
    assert result.success
    metadata = result.asset_materializations_for_node(REPLAY_OP)[0].metadata
    png_path = paths.reports / PLOT_FILE
    encoded = metadata["curves"].value.split("data:image/png;base64,", 1)[1].rstrip(")")
    assert base64.b64decode(encoded) == png_path.read_bytes()
    assert metadata["predictions_through"].value == "http_service"
    assert metadata["served_requests"].value == 2 * REQUESTS
    assert metadata["served_failures"].value == 2
    assert metadata["served_p50_latency_ms"].value > 0
    assert metadata["grading"].value["connections"] == 2
    assert metadata["final_versions"].value[CONFIRMED]["served_version"] == "4"
    # Each variant's service kept its served log and registry in the replay folder.
    for variant in VARIANTS:
        root = DataPaths(paths.root / REPLAY_DIR / variant)
        assert _assessments(root.served_log).height == REQUESTS
        assert (root.mlflow / "mlflow.db").is_file()
