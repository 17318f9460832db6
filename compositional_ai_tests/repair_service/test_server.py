"""The repair service over real HTTP: a uvicorn server on 127.0.0.1 with a registered model."""

import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import elpv_dataset
import numpy as np
import polars as pl
import pytest
import uvicorn
from PIL import Image

from compositional_ai.landing import formats
from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA, REPAIR_MODEL
from compositional_ai.repair_service.quotes import INSPECTION_FEE_USD, PARTS_SHARE_BY_LEVEL
from compositional_ai.repair_service.server import ServiceConfig, create_app
from compositional_ai.resources.model_registry import ModelRegistry
from compositional_ai.settings import PSEUDONYM_KEY_ENV, DataPaths
from compositional_ai.vision import images as image_checks
from compositional_ai.vision.training import TrainConfig, fit

# Every test here needs models trained and registered in MLflow first (several seconds).
pytestmark = pytest.mark.slow

ELPV_IMAGES = Path(elpv_dataset.__file__).parent / "data" / "images"
CATALOG_CSV = (
    "product_id,product_line,title,list_price_usd,rating\n"
    "P0001,Solar,Mono panel 400 W,200.00,4.5\n"
    "P0002,Solar,Poly panel 300 W,1000,\n"
    "P0003,Solar,Unpriced listing,,\n"
)
PRICES = {"P0001": 200.0, "P0002": 1000.0}
CUSTOMER = {"name": "Ann Lee", "email": "ann@example.com", "phone": "555-123-4567"}
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
}
MAX_PHOTO_BYTES = 200_000
MAX_PHOTO_PIXELS = 1_000_000


def _registry(root: Path) -> ModelRegistry:
    mlflow_dir = DataPaths(root).mlflow
    return ModelRegistry(
        tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        artifact_root=str(mlflow_dir / "artifacts"),
    )


def _register(registry: ModelRegistry, seed: int, num_classes: int = 4) -> str:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (32, 32, 32), dtype=np.uint8)
    config = TrainConfig(
        image_size=32,
        epochs=1,
        batch_size=8,
        width=4,
        val_fraction=0.0,
        augment="none",
        num_threads=1,
        seed=seed,
    )
    result = fit(images, np.arange(32) % num_classes, num_classes=num_classes, config=config)
    with registry.training_run(
        REPAIR_MODEL, dagster_run_id=f"test-{seed}", asset_key="repair/model", params={}
    ):
        return registry.log_torch_model(result.model, REPAIR_MODEL)


@dataclass(frozen=True)
class Store:
    root: Path
    good: tuple[str, str]
    three_classes: str


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TELEMETRY_OFF.items():
            patch.setenv(name, value)
        registry = _registry(root)
        first, second = _register(registry, 0), _register(registry, 1)
        broken = _register(registry, 2, num_classes=3)
        registry.set_alias(REPAIR_MODEL, first)
    return Store(root, (first, second), broken)


def _data_dir(root: Path, store: Store) -> DataPaths:
    """A data directory of its own (served log, catalog) sharing the store's registry."""
    paths = DataPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    paths.mlflow.symlink_to(DataPaths(store.root).mlflow, target_is_directory=True)
    paths.reference.mkdir(parents=True)
    (paths.reference / formats.CATALOG_FILE).write_text(CATALOG_CSV)
    return paths


@dataclass(frozen=True)
class Running:
    url: str
    paths: DataPaths
    registry: ModelRegistry


@pytest.fixture(scope="module")
def running(store, tmp_path_factory):
    paths = _data_dir(tmp_path_factory.mktemp("served") / "data", store)
    registry = _registry(paths.root)
    config = ServiceConfig(
        max_photo_bytes=MAX_PHOTO_BYTES,
        max_photo_pixels=MAX_PHOTO_PIXELS,
        poll_s=0.2,
        housekeeping_s=0.2,
    )
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TELEMETRY_OFF.items():
            patch.setenv(name, value)
        app = create_app(paths, config=config, registry=registry, pseudonym_key=b"test-key")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        uvicorn_server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        )
        thread = threading.Thread(
            target=uvicorn_server.run, kwargs={"sockets": [listener]}, daemon=True
        )
        thread.start()
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, lambda: thread.is_alive())
        try:
            yield Running(url, paths, registry)
        finally:
            uvicorn_server.should_exit = True
            thread.join(timeout=60)
            listener.close()


def _wait_healthy(url: str, alive, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            pytest.fail("the server stopped while starting")
        try:
            status, _ = _request("GET", f"{url}/healthz")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not become healthy in {timeout_s} s")


def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def _multipart(fields: dict | list, files: dict | list) -> tuple[bytes, str]:
    """A multipart body; lists of (name, value) pairs may name a field more than once."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items() if isinstance(fields, dict) else fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + str(value).encode()
            + b"\r\n"
        )
    for name, (filename, content) in files.items() if isinstance(files, dict) else files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _assess(url: str, photo: bytes | None, *, product_id: str | None = "P0001", **fields):
    form = {**CUSTOMER, **fields}
    if product_id is not None:
        form["product_id"] = product_id
    form = {key: value for key, value in form.items() if value is not None}
    files = {} if photo is None else {"photo": ("cell.png", photo)}
    body, content_type = _multipart(form, files)
    return _request("POST", f"{url}/v1/assessments", body, {"Content-Type": content_type})


def _post_json(url: str, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _request("POST", url, body, {"Content-Type": "application/json"})


def _log(paths: DataPaths, stream: str, schema: dict) -> pl.DataFrame:
    return served_log.read_frame(served_log.all_segments(paths.served_log, stream), schema)


def _photos(count: int, start: int = 1) -> list[bytes]:
    return [(ELPV_IMAGES / f"cell{n:04d}.png").read_bytes() for n in range(start, start + count)]


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def test_concurrent_real_photos_are_each_logged_once(running):
    photos = _photos(200)
    products = ["P0001", "P0002"]

    def post(index: int):
        return _assess(
            running.url,
            photos[index],
            product_id=products[index % 2],
            client_request_id=f"client-{index}",
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, range(len(photos))))
    assert [status for status, _ in answers] == [200] * len(photos)
    bodies = {body["client_request_id"]: body for _, body in answers}
    assert len({body["request_id"] for body in bodies.values()}) == len(photos)

    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA).filter(
        pl.col("client_request_id").str.starts_with("client-")
    )
    # Exactly once each, and the row says what the answer said.
    assert log.height == len(photos)
    assert log["request_id"].n_unique() == len(photos)
    for row in log.iter_rows(named=True):
        body = bodies[row["client_request_id"]]
        index = int(row["client_request_id"].removeprefix("client-"))
        assert row["request_id"] == body["request_id"]
        assert row["status"] == "ok" and row["error"] is None and row["source"] == "served"
        assert row["input_sha256"] == hashlib.sha256(photos[index]).hexdigest()
        assert row["product_id"] == products[index % 2]
        assert (
            row["predicted_level"] == body["damage_level"] == int(np.argmax(row["probabilities"]))
        )
        assert row["probabilities"] == pytest.approx(body["probabilities"])
        assert sum(row["probabilities"]) == pytest.approx(1.0)
        assert row["model_version"] == body["model_version"]
        assert row["latency_ms"] > 0
        assert row["batch"].startswith(f"{served_log.ASSESSMENTS_STREAM}-")
        share = PARTS_SHARE_BY_LEVEL[row["predicted_level"]]
        expected = round(INSPECTION_FEE_USD + share * PRICES[row["product_id"]], 2)
        assert row["quote_usd"] == body["quote_usd"] == pytest.approx(expected)

    requests = _log(running.paths, served_log.REQUESTS_STREAM, served_log.REQUEST_LOG_SCHEMA)
    mine = requests.filter(pl.col("request_id").is_in(log["request_id"].implode()))
    assert mine.height == len(photos)
    for row in mine.iter_rows(named=True):
        stored = running.paths.served_log / row["photo"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["photo_sha256"]
        assert (row["photo_format"], row["photo_width"], row["photo_height"]) == ("PNG", 300, 300)
        # Contacts are pseudonyms, never the raw form values.
        assert row["email_pseudonym"] not in (None, CUSTOMER["email"])
        assert len(row["email_pseudonym"]) == 20
    assert mine["email_pseudonym"].n_unique() == 1


def _too_big_png() -> bytes:
    # A PNG signature in front of random bytes: over the byte limit, within the body limit.
    return _png((8, 8))[:33] + os.urandom(MAX_PHOTO_BYTES)


MALFORMED = [
    # (case, photo, form overrides, status, code)
    ("not an image", b"just some text, not a photo", {}, 415, "not_an_image"),
    ("a GIF", _gif(), {}, 415, "unsupported_format"),
    ("empty file", b"", {}, 422, "empty_file"),
    (
        "truncated PNG",
        (ELPV_IMAGES / "cell0001.png").read_bytes()[:5000],
        {},
        422,
        "truncated_image",
    ),
    ("decompression bomb", _png((2000, 2000)), {}, 413, "too_many_pixels"),
    ("photo over the byte limit", _too_big_png(), {}, 413, "too_many_bytes"),
    ("body over the limit", os.urandom(MAX_PHOTO_BYTES + 200_000), {}, 413, "too_many_bytes"),
    ("unknown product", _png((64, 64)), {"product_id": "P9999"}, 422, "unknown_product"),
    ("unpriced product", _png((64, 64)), {"product_id": "P0003"}, 422, "unknown_product"),
    ("no photo", None, {}, 422, "missing_fields"),
    ("no product", _png((64, 64)), {"product_id": None}, 422, "missing_fields"),
    ("no e-mail", _png((64, 64)), {"email": None}, 422, "missing_fields"),
    ("blank name", _png((64, 64)), {"name": "   "}, 422, "missing_fields"),
    ("control characters", _png((64, 64)), {"name": "Ann\x07Lee"}, 422, "invalid_fields"),
    ("overlong phone", _png((64, 64)), {"phone": "5" * 300}, 422, "invalid_fields"),
]


@pytest.mark.parametrize(
    ("case", "photo", "overrides", "status", "code"),
    MALFORMED,
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_requests_get_a_4xx_and_are_logged(running, case, photo, overrides, status, code):
    client_id = f"bad-{uuid.uuid4().hex}"
    fields = {"product_id": "P0001", "client_request_id": client_id, **overrides}
    answered, body = _assess(running.url, photo, **fields)
    assert answered == status, body
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert body["error"]["message"]
    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    (row,) = log.filter(pl.col("request_id") == body["request_id"]).iter_rows(named=True)
    assert row["status"] == str(status)
    assert row["error"].startswith(f"{code}: ")
    assert row["predicted_level"] is None and row["probabilities"] is None
    assert row["source"] == "served" and row["latency_ms"] >= 0
    if case != "body over the limit":
        # Everything but a body refused at the door was parsed: the row names the client.
        assert row["client_request_id"] == client_id


@pytest.mark.parametrize(
    ("fields", "photos", "repeated", "logged_product"),
    [
        # Which product would be meant? Landing quarantines such a line as duplicate_field.
        ([("product_id", "P0001"), ("product_id", "P0002")], 1, "product_id", None),
        ([("product_id", "P0001")], 2, "photo", "P0001"),
    ],
    ids=["two products", "two photos"],
)
def test_a_form_field_given_twice_is_refused_and_logged(
    running, fields, photos, repeated, logged_product
):
    client_id = f"twice-{uuid.uuid4().hex}"
    form = [*CUSTOMER.items(), ("client_request_id", client_id), *fields]
    files = [("photo", ("cell.png", photo)) for photo in _photos(photos, start=400)]
    body, content_type = _multipart(form, files)
    status, answer = _request(
        "POST", f"{running.url}/v1/assessments", body, {"Content-Type": content_type}
    )
    assert (status, answer["error"]["code"]) == (422, "duplicate_field"), answer
    assert repeated in answer["error"]["message"]
    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    (row,) = log.filter(pl.col("request_id") == answer["request_id"]).iter_rows(named=True)
    assert row["status"] == "422" and row["error"].startswith("duplicate_field: ")
    # An ambiguous product is not logged as either of the two.
    assert row["client_request_id"] == client_id and row["product_id"] == logged_product
    assert row["predicted_level"] is None
    # Nothing was graded or kept for it.
    requests = _log(running.paths, served_log.REQUESTS_STREAM, served_log.REQUEST_LOG_SCHEMA)
    assert requests.filter(pl.col("client_request_id") == client_id).is_empty()


@pytest.mark.parametrize(
    ("body", "content_type", "named"),
    [
        (b'{"product_id": "P0001"}', "application/json", "not application/json"),
        (b"product_id=P0001&name=Ann", "application/x-www-form-urlencoded", "not application/x"),
        (b"P0001", "text/plain", "not text/plain"),
    ],
    ids=["json", "urlencoded", "text"],
)
def test_a_body_that_is_not_a_multipart_form_is_a_logged_415(running, body, content_type, named):
    headers = {"Content-Type": content_type}
    status, answer = _request("POST", f"{running.url}/v1/assessments", body, headers)
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type"), answer
    assert named in answer["error"]["message"]
    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    (row,) = log.filter(pl.col("request_id") == answer["request_id"]).iter_rows(named=True)
    assert row["status"] == "415" and row["error"].startswith("unsupported_media_type: ")


def test_malformed_multipart_is_a_logged_400(running):
    body = b"--nope\r\nthis is not multipart at all"
    status, answer = _request(
        "POST",
        f"{running.url}/v1/assessments",
        body,
        {"Content-Type": "multipart/form-data; boundary=other"},
    )
    assert 400 <= status < 500
    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    (row,) = log.filter(pl.col("request_id") == answer["request_id"]).iter_rows(named=True)
    assert row["status"] == str(status)


def test_a_huge_declared_body_is_refused_before_it_is_sent(running):
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/assessments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload)["error"]["code"] == "too_many_bytes"


def test_a_decoding_failure_after_inspection_is_a_422(running, monkeypatch):
    # The photo passes every check; turning the verified decode into pixels then fails.
    def failing_pixels(image, size):
        raise OSError("the resampler gave up")

    monkeypatch.setattr(image_checks, "_gray_pixels", failing_pixels)
    status, body = _assess(running.url, _png((64, 64)))
    assert (status, body["error"]["code"]) == (422, "decode_failed")
    log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    (row,) = log.filter(pl.col("request_id") == body["request_id"]).iter_rows(named=True)
    assert row["status"] == "422" and row["input_sha256"] is not None


def test_chat_asks_the_slots_in_order_and_captures_them(running):
    status, assessed = _assess(running.url, _photos(1, start=300)[0])
    assert status == 200
    request_id = assessed["request_id"]
    assert assessed["chat"]["asks"] == formats.CHAT_SLOTS[0]
    answers = [
        "The glass cracked when a branch fell on it, and now it gets very hot",
        "My name is Maria Gonzalez",
        "maria.g@example.org",
        "(555) 010-2233",
        "I'm 71 years old",
        "I live with my husband and two kids",
        "Thanks!",
    ]
    url = f"{running.url}/v1/assessments/{request_id}/chat"
    replies = []
    for text in answers:
        status, reply = _post_json(url, {"text": text})
        assert status == 200, reply
        replies.append(reply)
    # Each answer is followed by the next slot's question; the closing ends the conversation.
    assert [reply["asks"] for reply in replies] == [*formats.CHAT_SLOTS[1:], None]
    assert [reply["done"] for reply in replies] == [False] * 5 + [True, True]
    assert replies[-1]["reply"] is None
    slots = replies[-1]["slots"]
    assert slots["damage_keywords"] == ["crack", "overheating", "dropped"]
    assert (slots["name"], slots["email"], slots["phone"]) == (
        "Maria Gonzalez",
        "maria.g@example.org",
        "(555) 010-2233",
    )
    assert (slots["age"], slots["senior_citizen"]) == (71, True)
    assert (slots["partner"], slots["dependents"]) == (True, True)
    # Slots so far: after the first answer only the damage is known.
    assert replies[0]["slots"]["name"] is None
    assert replies[0]["slots"]["damage_details"] == answers[0]

    turns = (
        _log(running.paths, served_log.CHATS_STREAM, served_log.CHAT_LOG_SCHEMA)
        .filter(pl.col("request_id") == request_id)
        .sort("turn_index")
    )
    assert turns["turn_index"].to_list() == list(range(14))
    assert turns["speaker"].to_list() == ["bot", "customer"] * 7
    assert turns.filter(pl.col("speaker") == "bot")["asks"].to_list() == list(formats.CHAT_SLOTS)
    assert turns.filter(pl.col("speaker") == "customer")["text"].to_list() == answers
    assert set(turns["status"]) == {"ok"}
    assert turns["transcript_id"].unique().to_list() == [f"chat-{request_id}"]


def test_outcome_is_recorded_once(running):
    status, assessed = _assess(running.url, _photos(1, start=310)[0])
    url = f"{running.url}/v1/assessments/{assessed['request_id']}/outcome"
    outcome = {
        "technician_id": "T-07",
        "quote_accepted": True,
        "damage_level": 3,
        "cell_type": "poly",
    }
    status, body = _post_json(url, outcome)
    assert status == 200, body
    assert body == {
        "request_id": assessed["request_id"],
        "recorded": True,
        "model_version": assessed["model_version"],
        "predicted_level": assessed["damage_level"],
        "damage_level": 3,
    }
    status, again = _post_json(url, outcome)
    assert (status, again["error"]["code"]) == (409, "outcome_exists")
    log = _log(running.paths, served_log.OUTCOMES_STREAM, served_log.OUTCOME_LOG_SCHEMA).filter(
        pl.col("request_id") == assessed["request_id"]
    )
    assert log["status"].to_list() == ["ok", "409"]
    (row,) = log.filter(pl.col("status") == "ok").iter_rows(named=True)
    assert (row["technician_id"], row["quote_accepted"], row["cell_type"]) == ("T-07", True, "poly")
    assert row["damage_level"] == 3 and row["defect_probability"] == pytest.approx(1.0)
    assert row["predicted_level"] == assessed["damage_level"]


@pytest.fixture(scope="module")
def assessed_id(running) -> str:
    status, body = _assess(running.url, _photos(1, start=320)[0])
    assert status == 200
    return body["request_id"]


CHAT_AND_OUTCOME_ERRORS = [
    # (route, request id ("known" = a served assessment), body, status, code)
    ("chat", "srv-unknown", {"text": "hello"}, 404, "unknown_request"),
    ("chat", "known", {"text": ""}, 422, "invalid_fields"),
    ("chat", "known", {}, 422, "missing_fields"),
    ("chat", "known", {"text": "x" * 2001}, 422, "invalid_fields"),
    ("chat", "known", {"text": "hi", "extra": 1}, 422, "invalid_fields"),
    ("chat", "known", b"{not json", 422, "invalid_fields"),
    ("chat", "known", {"text": 5}, 422, "invalid_fields"),
    # json.loads would keep the last of the two; the service refuses to guess.
    ("chat", "known", b'{"text": "hello", "text": "bye"}', 422, "duplicate_field"),
    (
        "outcome",
        "srv-unknown",
        {"technician_id": "T", "quote_accepted": False},
        404,
        "unknown_request",
    ),
    # An accepted quote was inspected: the label fields are required.
    ("outcome", "known", {"technician_id": "T", "quote_accepted": True}, 422, "invalid_outcome"),
    # A declined quote was not inspected: the label fields must stay empty.
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": False, "cell_type": "mono"},
        422,
        "invalid_outcome",
    ),
    ("outcome", "known", {"technician_id": "T", "quote_accepted": "yes"}, 422, "invalid_fields"),
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": True, "damage_level": 4, "cell_type": "mono"},
        422,
        "invalid_fields",
    ),
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": True, "damage_level": 1, "cell_type": "thin"},
        422,
        "invalid_fields",
    ),
    ("outcome", "known", {"quote_accepted": False}, 422, "missing_fields"),
    (
        "outcome",
        "known",
        b'{"technician_id": "T", "quote_accepted": false, "quote_accepted": true}',
        422,
        "duplicate_field",
    ),
    # A naive timestamp is ambiguous.
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": False, "inspected_at": "2026-01-01T10:00:00"},
        422,
        "invalid_fields",
    ),
    # An inspection cannot be later than now (landed outcomes: timestamp_in_future).
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": False, "inspected_at": "2999-01-01T10:00:00Z"},
        422,
        "invalid_outcome",
    ),
    # ...nor before 2000 (landed outcomes: out_of_range).
    (
        "outcome",
        "known",
        {"technician_id": "T", "quote_accepted": False, "inspected_at": "1970-01-01T00:00:00Z"},
        422,
        "invalid_outcome",
    ),
]


@pytest.mark.parametrize(("route", "target", "payload", "status", "code"), CHAT_AND_OUTCOME_ERRORS)
def test_chat_and_outcome_errors_are_answered_and_logged(
    running, assessed_id, route, target, payload, status, code
):
    request_id = assessed_id if target == "known" else target
    answered, body = _post_json(f"{running.url}/v1/assessments/{request_id}/{route}", payload)
    assert (answered, body["error"]["code"]) == (status, code), body
    if route == "chat":
        log = _log(running.paths, served_log.CHATS_STREAM, served_log.CHAT_LOG_SCHEMA)
    else:
        log = _log(running.paths, served_log.OUTCOMES_STREAM, served_log.OUTCOME_LOG_SCHEMA)
    rows = log.filter(
        (pl.col("request_id") == request_id) & (pl.col("error").str.starts_with(f"{code}: "))
    )
    assert rows.height >= 1
    assert set(rows["status"]) == {str(status)}


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        # Not JSON at all: the body as a whole is at fault, not a field named by a position.
        (b"{not json", ["body"]),
        # JSON, but the text is a number and an unknown field rides along.
        ({"text": 5, "extra": 1}, ["text", "extra"]),
    ],
)
def test_a_malformed_chat_body_names_the_fields_at_fault(running, assessed_id, payload, fields):
    url = f"{running.url}/v1/assessments/{assessed_id}/chat"
    status, body = _post_json(url, payload)
    assert (status, body["error"]["code"]) == (422, "invalid_fields")
    assert [item["field"] for item in body["error"]["fields"]] == fields


def test_models_health_and_openapi(running):
    status, models = _request("GET", f"{running.url}/v1/models")
    assert status == 200
    assert models["model_name"] == REPAIR_MODEL and models["alias"] == "champion"
    assert models["serving"]["image_size"] == 32
    status, health = _request("GET", f"{running.url}/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["model_version"] == models["serving"]["version"]
    assert health["products"] == 2
    status, spec = _request("GET", f"{running.url}/openapi.json")
    assert status == 200
    assert {
        "/v1/assessments",
        "/v1/assessments/{request_id}/chat",
        "/v1/assessments/{request_id}/outcome",
        "/v1/models",
        "/healthz",
    } <= set(spec["paths"])
    form = spec["paths"]["/v1/assessments"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


def _wait_for(check, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_champion_hot_swap_without_restart(running, store):
    first, second = store.good
    photo = _photos(1, start=400)[0]
    try:
        status, before = _assess(running.url, photo)
        assert (status, before["model_version"]) == (200, first)
        # A version that is not a damage grader is promoted by mistake: it is not served.
        running.registry.set_alias(REPAIR_MODEL, store.three_classes)
        _wait_for(
            lambda: (
                f"v{store.three_classes}"
                in (_request("GET", f"{running.url}/v1/models")[1]["last_error"] or "")
            ),
            "the broken champion to be refused",
        )
        status, during = _assess(running.url, photo)
        assert (status, during["model_version"]) == (200, first)
        # A good new champion replaces the old one while the server runs.
        running.registry.set_alias(REPAIR_MODEL, second)

        def graded_by_second():
            answer = _assess(running.url, photo)[1]
            return answer if answer["model_version"] == second else None

        after = _wait_for(graded_by_second, "the new champion to serve")
        assert after["probabilities"] != pytest.approx(before["probabilities"])
        models = _request("GET", f"{running.url}/v1/models")[1]
        served = [period["version"] for period in models["served_versions"]]
        assert served[-2:] == [first, second]
        assert models["served_versions"][-2]["until"] is not None
        assert models["served_versions"][-1]["until"] is None
        log = _log(running.paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
        by_id = dict(zip(log["request_id"], log["model_version"], strict=True))
        assert by_id[before["request_id"]] == first
        assert by_id[after["request_id"]] == second
    finally:
        running.registry.set_alias(REPAIR_MODEL, first)
        _wait_for(
            lambda: _request("GET", f"{running.url}/v1/models")[1]["serving"]["version"] == first,
            "the original champion to return",
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_subprocess(paths: DataPaths, port: int, log_path: Path) -> subprocess.Popen:
    code = (
        "import sys; from pathlib import Path; "
        "from compositional_ai.repair_service.server import serve; "
        "from compositional_ai.settings import DataPaths; "
        "serve('127.0.0.1', int(sys.argv[1]), DataPaths(Path(sys.argv[2])))"
    )
    env = {**os.environ, **TELEMETRY_OFF, PSEUDONYM_KEY_ENV: "test-key"}
    with log_path.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(port), str(paths.root)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_sigkill_during_traffic_loses_no_answered_request(store, tmp_path):
    paths = _data_dir(tmp_path / "data", store)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start_subprocess(paths, port, tmp_path / "server.log")
    try:
        _wait_healthy(url, lambda: process.poll() is None)
        photos = _photos(400, start=1000)
        answered: list[tuple[int, dict]] = []
        guard = threading.Lock()
        stop = threading.Event()

        def client(worker: int) -> None:
            for index in range(worker, len(photos), 4):
                if stop.is_set():
                    return
                # Every fifth call is malformed: its error answer must be logged too.
                photo = b"not a photo" if index % 5 == 0 else photos[index]
                try:
                    result = _assess(url, photo, client_request_id=f"k-{index}")
                except (OSError, http.client.HTTPException):
                    # The server is gone, perhaps between an answer's headers and its body
                    # (IncompleteRead): an answer not read whole was not answered.
                    return
                with guard:
                    answered.append(result)

        workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for worker in workers:
            worker.start()
        _wait_for(lambda: len(answered) >= 60, "traffic to build up", timeout_s=120)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    succeeded = {body["request_id"] for status, body in answered if status == 200}
    refused = {body["request_id"] for status, body in answered if status == 415}
    assert succeeded and refused
    assert len(succeeded) + len(refused) == len(answered)
    # The kill left the active segments behind; readers see every answered call already.
    assert list((paths.served_log / served_log.ASSESSMENTS_STREAM / "active").iterdir())
    log = _log(paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    counts = Counter(log["request_id"].to_list())
    assert all(counts[request_id] == 1 for request_id in succeeded | refused)
    statuses = dict(zip(log["request_id"], log["status"], strict=True))
    assert {statuses[request_id] for request_id in succeeded} == {"ok"}
    assert {statuses[request_id] for request_id in refused} == {"415"}
    requests = _log(paths, served_log.REQUESTS_STREAM, served_log.REQUEST_LOG_SCHEMA)
    assert succeeded <= set(requests["request_id"])

    # A restart closes the dead process's segments and carries on where it stopped.
    process = _start_subprocess(paths, port, tmp_path / "server.log")
    try:
        _wait_healthy(url, lambda: process.poll() is None)
        assert not list((paths.served_log / served_log.ASSESSMENTS_STREAM / "active").iterdir())
        earlier = sorted(succeeded)[0]
        outcome = {"technician_id": "T-1", "quote_accepted": False}
        status, _ = _post_json(f"{url}/v1/assessments/{earlier}/outcome", outcome)
        assert status == 200
        status, late = _assess(url, photos[1])
        assert status == 200
        # A retry of a call answered before the kill gets that answer back, from the log.
        before = next(body for status, body in answered if status == 200)
        index = int(before["client_request_id"].removeprefix("k-"))
        status, retried = _assess(url, photos[index], client_request_id=f"k-{index}")
        assert (status, retried["request_id"]) == (200, before["request_id"])
        assert retried["probabilities"] == before["probabilities"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    # A clean stop closes everything: whole lines only, every answer exactly once.
    for stream in served_log.STREAMS:
        assert not list((paths.served_log / stream / "active").iterdir())
        for segment in served_log.closed_segments(paths.served_log, stream):
            data = segment.read_bytes()
            assert data.endswith(b"\n")
            for line in data.splitlines():
                json.loads(line)
    log = _log(paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    counts = Counter(log["request_id"].to_list())
    assert all(counts[request_id] == 1 for request_id in succeeded | refused | {late["request_id"]})


def _rows_for_key(paths, key: str) -> pl.DataFrame:
    log = _log(paths, served_log.ASSESSMENTS_STREAM, INFERENCE_LOG_SCHEMA)
    return log.filter(pl.col("client_request_id") == key)


def test_a_retry_with_the_same_client_request_id_gets_the_same_answer_once_logged(running):
    photo, other = _photos(2, start=520)
    status, first = _assess(running.url, photo, client_request_id="retry-1")
    assert status == 200
    status, again = _assess(running.url, photo, client_request_id="retry-1")
    assert (status, again) == (200, first)
    # The same key for another photo is a client bug, not a retry.
    status, body = _assess(running.url, other, client_request_id="retry-1")
    assert (status, body["error"]["code"]) == (409, "client_request_id_reused")
    rows = _rows_for_key(running.paths, "retry-1")
    assert sorted(rows["status"].to_list()) == ["409", "ok"]
    assert rows.filter(pl.col("status") == "ok")["request_id"].to_list() == [first["request_id"]]
    # Without a key every call is its own assessment.
    ids = {_assess(running.url, photo)[1]["request_id"] for _ in range(2)}
    assert len(ids) == 2


def test_retries_racing_each_other_are_assessed_once(running):
    (photo,) = _photos(1, start=530)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda _: _assess(running.url, photo, client_request_id="race"), range(6))
        )
    assert [status for status, _ in answers] == [200] * 6
    assert len({body["request_id"] for _, body in answers}) == 1
    assert _rows_for_key(running.paths, "race").height == 1


def test_the_service_takes_the_photos_the_landing_contract_takes() -> None:
    """A photo the service accepts must not be quarantined when the same photo is landed."""
    from compositional_ai.warehouse import validation

    config = ServiceConfig()
    assert config.max_photo_bytes == validation.MAX_PHOTO_BYTES
    assert config.max_photo_pixels == validation.MAX_PHOTO_PIXELS
