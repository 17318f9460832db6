"""The repair service's HTTP API: live assessments whose predictions land as a data source.

Routes (OpenAPI at /openapi.json):

- `POST /v1/assessments` (multipart: photo, product_id, name, email, phone, client_request_id?)
  grades the photo with the registry's champion and quotes the repair.
- `POST /v1/assessments/{request_id}/chat` ({"text": ...}) answers the chatbot's current
  question; the bot asks the slots of formats.CHAT_SLOTS in order.
- `POST /v1/assessments/{request_id}/outcome` records a technician's confirmed outcome.
- `GET /v1/models` (versions served), `GET /healthz` (200 once a model serves, else 503).

Every call to the three POST routes, failures included, is appended to the served log (see
served_log) before it is answered: assessments to `assessments` with the batch inference log's
columns, plus the accepted request (pseudonymised contacts) to `requests` and its photo to
`photos/`; chat turns to `chats`; outcomes to `outcomes`. A call is answered with success only
after its rows are on disk; if the log cannot take them, the answer is 503.

Untrusted input is checked before it reaches anything expensive: the body size at the door
(bodies over the limit are answered 413 without being parsed), the form fields (a field given
twice, in a form or a JSON body, is refused as `duplicate_field`) and product id,
then `inspect_and_decode` (format, byte and pixel limits from the header, a full verifying
decode, whose pixels the model then gets). Photos are checked and decoded in worker threads, at
most `inference_workers` at a time, and graded by one thread that runs a single forward pass for
every photo waiting (`serving.BatchGrader`); none of it runs on the event loop.
"""

import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
import polars as pl
import torch
import uvicorn
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from compositional_ai.chatbot.extractor import extract_slots
from compositional_ai.landing import formats
from compositional_ai.lib.pseudonym import pseudonym_key_from_env, pseudonymise_one
from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.assets import INFERENCE_LOG_SCHEMA, REPAIR_MODEL
from compositional_ai.repair_service.quotes import quote_usd_one
from compositional_ai.repair_service.served_log import ServedLog, ServedLogError
from compositional_ai.repair_service.serving import (
    DEFAULT_MAX_BATCH,
    DEFAULT_POLL_S,
    BatchGrader,
    ChampionHolder,
)
from compositional_ai.resources.model_registry import ModelRegistry
from compositional_ai.settings import DataPaths
from compositional_ai.vision import images as image_checks
from compositional_ai.vision.images import DecodeFailed, ImageRejected, inspect_and_decode
from compositional_ai.warehouse.validation import (
    EARLIEST_TIMESTAMP,
    FUTURE_TOLERANCE,
    MAX_PHOTO_BYTES,
    MAX_PHOTO_PIXELS,
)

logger = logging.getLogger(__name__)

SOURCE = "served"
CHANNEL = "online"
REQUEST_ID_PREFIX = "srv-"
MAX_FIELD_CHARS = 256
MAX_ID_CHARS = 128
MAX_CHAT_CHARS = 2000
MAX_TURNS = 40
JSON_BODY_LIMIT = 64 * 1024
# Room for the text fields and multipart framing around the photo.
FORM_OVERHEAD_BYTES = 64 * 1024
# A body over the limit is still read (and discarded) up to this multiple of the limit, so an
# ordinary client sees the 413 instead of a connection reset mid-upload; beyond it the
# connection is closed.
DRAIN_FACTOR = 4

# HTTP status for each inspect_image rejection.
REJECTION_STATUS = {
    image_checks.EMPTY_FILE: 422,
    image_checks.TOO_MANY_BYTES: 413,
    image_checks.NOT_AN_IMAGE: 415,
    image_checks.UNSUPPORTED_FORMAT: 415,
    image_checks.TRUNCATED_IMAGE: 422,
    image_checks.TOO_MANY_PIXELS: 413,
}
DECODE_FAILED = "decode_failed"
PHOTO_SUFFIX = {"PNG": "png", "JPEG": "jpg"}

# The bot's question for each slot of formats.CHAT_SLOTS; "closing" ends the conversation.
BOT_QUESTIONS = {
    "damage": "We have your photo. In your own words, what happened to the panel?",
    "name": "Thank you. Which name should the repair be booked under?",
    "email": "Which e-mail address should the quote go to?",
    "phone": "And a phone number the technician can reach you on?",
    "age": "If you are happy to say: how old are you? Some service plans depend on it.",
    "household": "Who else lives at the address? It helps us plan a visit. Feel free to skip.",
    "closing": "That is all we need. A technician will confirm your quote after the inspection.",
}
SLOT_FIELDS = (
    "damage_details",
    "damage_keywords",
    "name",
    "email",
    "phone",
    "age",
    "senior_citizen",
    "partner",
    "dependents",
)

_ROUTES = (
    ("assessment", re.compile(r"^/v1/assessments/?$")),
    ("chat", re.compile(r"^/v1/assessments/(?P<request_id>[^/]+)/chat/?$")),
    ("outcome", re.compile(r"^/v1/assessments/(?P<request_id>[^/]+)/outcome/?$")),
)
_STARTED = "compositional_ai.started"
_REQUEST_ID = "compositional_ai.request_id"


@dataclass(frozen=True)
class ServiceConfig:
    """Limits and timings of one service instance."""

    # The landing contract's limits, so a photo the service takes is one silver would take.
    max_photo_bytes: int = MAX_PHOTO_BYTES
    max_photo_pixels: int = MAX_PHOTO_PIXELS
    poll_s: float = DEFAULT_POLL_S
    housekeeping_s: float = 1.0
    inference_workers: int = 2
    torch_threads: int = 1
    # The most photos graded in one forward pass.
    max_batch: int = DEFAULT_MAX_BATCH
    segment_max_bytes: int = served_log.DEFAULT_MAX_BYTES
    segment_max_age_s: float = served_log.DEFAULT_MAX_AGE_S
    max_sessions: int = 50_000
    # Conversations and outcomes of requests assessed this long ago are restored on restart.
    session_retention_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_photo_bytes < 1 or self.max_photo_pixels < 1:
            raise ValueError("photo limits must be positive")
        if self.inference_workers < 1 or self.torch_threads < 1 or self.max_batch < 1:
            raise ValueError("inference_workers, torch_threads and max_batch must be >= 1")

    @property
    def form_body_limit(self) -> int:
        return self.max_photo_bytes + FORM_OVERHEAD_BYTES


class ApiError(Exception):
    """A request the service answers with an error: status, machine code, human message.

    `context` carries what is known of the request (product, photo hash, model version) into
    its log row.
    """

    def __init__(self, status: int, code: str, message: str, **context: Any) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.context = context


class Catalog:
    """Product list prices from the landing catalog file, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._prices: dict[str, float] = {}
        self._stamp: tuple[int, int] | None = None

    def refresh(self) -> None:
        """Reload if the file changed; keep the last good prices if it vanished or is broken."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._stamp is None:
                raise FileNotFoundError(
                    f"no product catalog at {self.path}: run `compositional-ai landing` first"
                ) from None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            self._prices = self._load()
        except (pl.exceptions.PolarsError, OSError) as error:
            if self._stamp is None:
                raise
            logger.warning("catalog %s not reloaded: %s", self.path, error)
            return
        self._stamp = stamp

    def _load(self) -> dict[str, float]:
        raw = pl.read_csv(self.path, infer_schema=False)
        prices = (
            raw.select(
                pl.col("product_id").str.strip_chars(),
                pl.col("list_price_usd").str.strip_chars().cast(pl.Float64, strict=False),
            )
            .filter(
                (pl.col("product_id") != "")
                & pl.col("list_price_usd").is_finite()
                & (pl.col("list_price_usd") > 0)
            )
            .unique("product_id", keep="first", maintain_order=True)
        )
        return dict(zip(prices["product_id"], prices["list_price_usd"], strict=True))

    def price(self, product_id: str) -> float | None:
        return self._prices.get(product_id)

    def __len__(self) -> int:
        return len(self._prices)


# How long a retry waits for its original call, still being assessed, before it is refused.
RETRY_WAIT_S = 30.0


def _answer(row: dict) -> dict:
    """The assessment's answer, from its log row (as written, or as read back after a restart)."""
    return {
        "request_id": row["request_id"],
        "client_request_id": row["client_request_id"],
        "product_id": row["product_id"],
        "damage_level": row["predicted_level"],
        "probabilities": list(row["probabilities"]),
        "confidence": row["confidence"],
        "quote": row["quote_usd"],
        "quote_usd": row["quote_usd"],
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "input_sha256": row["input_sha256"],
        "latency_ms": row["latency_ms"],
        "chat": {"reply": BOT_QUESTIONS[formats.CHAT_SLOTS[0]], "asks": formats.CHAT_SLOTS[0]},
    }


@dataclass
class Session:
    """What the service remembers of one served assessment: its chat and whether it has an
    outcome."""

    request_id: str
    product_id: str
    model_version: str
    predicted_level: int
    assessed_at: datetime
    turns: list[dict] = field(default_factory=list)
    has_outcome: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The caller's retry key, and what a retry with it must match and gets back.
    client_request_id: str | None = None
    input_sha256: str | None = None
    answer: dict | None = None

    @property
    def transcript_id(self) -> str:
        return f"chat-{self.request_id}"


class Sessions:
    """The most recent `capacity` sessions by request id (the oldest are forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._by_client: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, session: Session) -> None:
        with self._lock:
            self._items[session.request_id] = session
            if session.client_request_id is not None:
                self._by_client[session.client_request_id] = session.request_id
            while len(self._items) > self.capacity:
                _, forgotten = self._items.popitem(last=False)
                key = forgotten.client_request_id
                if key is not None and self._by_client.get(key) == forgotten.request_id:
                    del self._by_client[key]

    def get(self, request_id: str) -> Session | None:
        with self._lock:
            return self._items.get(request_id)

    def by_client_request_id(self, client_request_id: str) -> Session | None:
        """The remembered assessment made for this retry key, if any."""
        with self._lock:
            request_id = self._by_client.get(client_request_id)
            return None if request_id is None else self._items.get(request_id)

    def __len__(self) -> int:
        return len(self._items)


class ChatIn(BaseModel):
    """One customer message."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_CHAT_CHARS)


class OutcomeIn(BaseModel):
    """A technician's outcome; damage_level and cell_type only when the quote was accepted."""

    model_config = ConfigDict(extra="forbid")
    technician_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    quote_accepted: StrictBool
    damage_level: StrictInt | None = Field(default=None, ge=0, le=len(formats.DAMAGE_LEVELS) - 1)
    cell_type: Literal[formats.CELL_TYPES] | None = None
    inspected_at: AwareDatetime | None = None


class AssessmentOut(BaseModel):
    request_id: str
    client_request_id: str | None
    product_id: str
    damage_level: int
    probabilities: list[float]
    confidence: float
    # The repair quote in US dollars; `quote_usd` says the currency, `quote` is the field the
    # API promises.
    quote: float
    quote_usd: float
    model_name: str
    model_version: str
    input_sha256: str
    latency_ms: float
    chat: dict


class ChatOut(BaseModel):
    request_id: str
    transcript_id: str
    reply: str | None
    asks: str | None
    done: bool
    slots: dict


class OutcomeOut(BaseModel):
    request_id: str
    recorded: bool
    model_version: str
    predicted_level: int
    damage_level: int | None


class ErrorOut(BaseModel):
    error: dict
    request_id: str | None


ERROR_RESPONSES = {status: {"model": ErrorOut} for status in (404, 409, 413, 415, 422, 500, 503)}


def new_request_id() -> str:
    return REQUEST_ID_PREFIX + uuid.uuid4().hex


def route_kind(path: str) -> tuple[str, str | None] | None:
    """Which logged route a path is ("assessment", "chat", "outcome") and its request id."""
    for kind, pattern in _ROUTES:
        match = pattern.match(path)
        if match:
            return kind, match.groupdict().get("request_id")
    return None


def _clip(value: Any, limit: int = MAX_ID_CHARS) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _text_field(name: str, value: str | None, *, limit: int, required: bool = True) -> str | None:
    text = (value or "").strip()
    if not text:
        if required:
            raise ApiError(422, "missing_fields", f"{name} is empty", fields=[name])
        return None
    if len(text) > limit:
        raise ApiError(422, "invalid_fields", f"{name} is longer than {limit} characters")
    if any(ord(char) < 32 for char in text):
        raise ApiError(422, "invalid_fields", f"{name} contains control characters")
    return text


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class RepairService:
    """The service's state and logic, independent of the HTTP framework."""

    def __init__(
        self,
        paths: DataPaths,
        registry: ModelRegistry,
        *,
        config: ServiceConfig,
        pseudonym_key: bytes,
    ) -> None:
        self.paths = paths
        self.config = config
        self.pseudonym_key = pseudonym_key
        self.root = paths.served_log
        self.catalog = Catalog(paths.reference / formats.CATALOG_FILE)
        self.holder = ChampionHolder(registry, REPAIR_MODEL, poll_s=config.poll_s)
        self.sessions = Sessions(config.max_sessions)
        self.logs = {
            stream: ServedLog(
                self.root,
                stream,
                max_bytes=config.segment_max_bytes,
                max_age_s=config.segment_max_age_s,
                segment_field=served_log.SEGMENT_FIELD,
            )
            for stream in served_log.STREAMS
        }
        self._cpu = threading.BoundedSemaphore(config.inference_workers)
        self.grader = BatchGrader(max_batch=config.max_batch)
        # Retry keys being assessed right now, so that a retry racing its original waits for it.
        self._pending: dict[str, threading.Event] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self.started_at = datetime.now(UTC)

    def start(self) -> None:
        """Open the logs, restore recent sessions, load the catalog and champion, start polling."""
        torch.set_num_threads(self.config.torch_threads)
        self.catalog.refresh()
        opened = []
        try:
            for log in self.logs.values():
                log.open()
                opened.append(log)
        except BaseException:
            for log in opened:
                log.close()
            raise
        try:
            self._restore_sessions()
        except Exception as error:
            # Losing old conversations is better than not serving: the log itself is untouched.
            logger.error("sessions not restored from %s: %s", self.root, error)
        self.grader.start()
        self.holder.start()
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="served-log-housekeeping", daemon=True
        )
        self._housekeeper.start()

    def stop(self) -> None:
        """Stop polling and close every log segment into `closed/`."""
        self._stop.set()
        self.holder.stop()
        self.grader.stop()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=30)
        for log in self.logs.values():
            try:
                log.close()
            except ServedLogError as error:
                logger.error("closing %s: %s", log.folder, error)

    def _housekeeping(self) -> None:
        while not self._stop.wait(self.config.housekeeping_s):
            try:
                self.catalog.refresh()
            except Exception as error:
                logger.warning("catalog refresh: %s", error)
            for log in self.logs.values():
                try:
                    log.rotate_if_due()
                except ServedLogError as error:
                    logger.error("rotating %s: %s", log.folder, error)

    # Assessments.

    def assess(
        self,
        *,
        request_id: str,
        started: float,
        photo: bytes | None,
        product_id: str | None,
        name: str | None,
        email: str | None,
        phone: str | None,
        client_request_id: str | None,
    ) -> dict:
        """Grade one photo and quote the repair; log request and assessment; return the answer.

        A retry that repeats an earlier call's `client_request_id` with the same photo and
        product gets that call's answer again (same request id) and adds no log rows; the same
        key with another photo or product is refused (409). Keys are remembered as long as the
        assessment's session (`max_sessions`, and across restarts from the log).
        """
        context = {"client_request_id": _clip(client_request_id)}
        try:
            client_request_id = _text_field(
                "client_request_id", client_request_id, limit=MAX_ID_CHARS, required=False
            )
        except ApiError as error:
            error.context = {**context, **error.context}
            raise
        assess = functools.partial(
            self._assess,
            request_id=request_id,
            started=started,
            photo=photo,
            product_id=product_id,
            contact_fields=(name, email, phone),
        )
        if client_request_id is None:
            return assess(client_request_id=None)
        owner, pending = self._claim(client_request_id)
        if not owner:
            pending.wait(timeout=RETRY_WAIT_S)
        try:
            earlier = self.sessions.by_client_request_id(client_request_id)
            if earlier is not None:
                return self._replay(earlier, photo=photo, product_id=product_id)
            if not owner:
                raise ApiError(
                    409,
                    "client_request_in_progress",
                    f"client_request_id {client_request_id!r} is still being assessed; retry later",
                    client_request_id=client_request_id,
                )
            return assess(client_request_id=client_request_id)
        finally:
            if owner:
                with self._pending_lock:
                    self._pending.pop(client_request_id, None)
                pending.set()

    def _claim(self, client_request_id: str) -> tuple[bool, threading.Event]:
        """(True, event) if this call assesses the key, else (False, the first call's event)."""
        with self._pending_lock:
            pending = self._pending.get(client_request_id)
            if pending is not None:
                return False, pending
            pending = self._pending[client_request_id] = threading.Event()
            return True, pending

    def _replay(self, earlier: Session, *, photo: bytes | None, product_id: str | None) -> dict:
        sha = None if photo is None else hashlib.sha256(photo).hexdigest()
        if sha != earlier.input_sha256 or product_id != earlier.product_id:
            raise ApiError(
                409,
                "client_request_id_reused",
                f"client_request_id {earlier.client_request_id!r} was used for request "
                f"{earlier.request_id} with another photo or product",
                client_request_id=earlier.client_request_id,
                input_sha256=sha,
                product_id=_clip(product_id),
            )
        return dict(earlier.answer or {})

    def _assess(
        self,
        *,
        request_id: str,
        started: float,
        photo: bytes | None,
        product_id: str | None,
        contact_fields: tuple[str | None, str | None, str | None],
        client_request_id: str | None,
    ) -> dict:
        name, email, phone = contact_fields
        context = {"client_request_id": client_request_id}
        try:
            product_id = _text_field("product_id", product_id, limit=MAX_ID_CHARS)
            context["product_id"] = product_id
            contacts = {
                "name": _text_field("name", name, limit=MAX_FIELD_CHARS),
                "email": _text_field("email", email, limit=MAX_FIELD_CHARS),
                "phone": _text_field("phone", phone, limit=MAX_FIELD_CHARS),
            }
            if photo is None:
                raise ApiError(422, "missing_fields", "photo is missing", fields=["photo"])
            price = self.catalog.price(product_id)
            if price is None:
                raise ApiError(422, "unknown_product", f"product_id {product_id!r} is not sold")
            if len(photo) <= self.config.max_photo_bytes:
                context["input_sha256"] = hashlib.sha256(photo).hexdigest()
            served = self.holder.current
            if served is None:
                raise ApiError(503, "no_model", f"no version of {REPAIR_MODEL} is champion yet")
            context["model_version"] = served.version
            with self._cpu:
                info, pixels = self._inspect_and_decode(photo, served.image_size)
            proba = self.grader.grade(served.model, pixels)
        except ApiError as error:
            error.context = {**context, **error.context}
            raise
        level = int(np.argmax(proba))
        quote = quote_usd_one(level, price)
        sha = context["input_sha256"]
        now = served_log.utc_now_iso()
        photo_name = f"{sha}.{PHOTO_SUFFIX[info.format]}"
        self._keep_photo(photo_name, photo)
        latency = _elapsed_ms(started)
        request_row = {
            "request_id": request_id,
            "submitted_at": now,
            "channel": CHANNEL,
            "client_request_id": client_request_id,
            "product_id": product_id,
            "photo": f"{served_log.PHOTOS_DIR}/{photo_name}",
            "photo_sha256": sha,
            "photo_format": info.format,
            "photo_width": info.width,
            "photo_height": info.height,
            **{
                f"{kind}_pseudonym": pseudonymise_one(value, kind=kind, key=self.pseudonym_key)
                for kind, value in contacts.items()
            },
        }
        row = {
            "request_id": request_id,
            "source": SOURCE,
            "client_request_id": client_request_id,
            "status": "ok",
            "error": None,
            "model_name": served.name,
            "model_version": served.version,
            "input_sha256": sha,
            "product_id": product_id,
            "predicted_level": level,
            "probabilities": [float(p) for p in proba],
            "confidence": float(proba[level]),
            "quote_usd": float(quote),
            "latency_ms": latency,
            "inferred_at": now,
        }
        self._write(served_log.REQUESTS_STREAM, [request_row])
        self._write(served_log.ASSESSMENTS_STREAM, [row])
        answer = _answer(row)
        self.sessions.add(
            Session(
                request_id=request_id,
                product_id=product_id,
                model_version=served.version,
                predicted_level=level,
                assessed_at=datetime.fromisoformat(now),
                client_request_id=client_request_id,
                input_sha256=sha,
                answer=answer,
            )
        )
        return answer

    def _inspect_and_decode(self, photo: bytes, size: int):
        try:
            return inspect_and_decode(
                photo,
                size,
                max_bytes=self.config.max_photo_bytes,
                max_pixels=self.config.max_photo_pixels,
            )
        except DecodeFailed as error:
            raise ApiError(422, DECODE_FAILED, error.detail) from error
        except ImageRejected as error:
            raise ApiError(REJECTION_STATUS[error.reason], error.reason, error.detail) from error

    def _keep_photo(self, name: str, data: bytes) -> None:
        path = self.root / served_log.PHOTOS_DIR / name
        if path.exists():
            return
        try:
            served_log.write_file_atomic(path, data)
        except OSError as error:
            raise ApiError(503, "log_unavailable", f"photo not stored: {error}") from error

    def _write(self, stream: str, rows: list[dict]) -> None:
        try:
            self.logs[stream].append_many(rows)
        except ServedLogError as error:
            raise ApiError(503, "log_unavailable", str(error)) from error

    # Chat.

    def chat(self, *, request_id: str, started: float, text: str) -> dict:
        """Record the customer's answer and the bot's next question; return reply and slots."""
        session = self._session(request_id)
        with session.lock:
            if len(session.turns) >= MAX_TURNS:
                raise ApiError(409, "conversation_too_long", f"{MAX_TURNS} turns already")
            now = served_log.utc_now_iso()
            new_turns = []
            if not session.turns:
                opening = formats.CHAT_SLOTS[0]
                new_turns.append(self._turn(session, 0, "bot", opening, BOT_QUESTIONS[opening], ""))
                new_turns[0]["at"] = session.assessed_at.isoformat()
            turns = session.turns + new_turns
            asked = next(turn["asks"] for turn in reversed(turns) if turn["speaker"] == "bot")
            new_turns.append(self._turn(session, len(turns), "customer", None, text, now))
            reply = next_slot = None
            if asked in formats.CHAT_SLOTS and asked != "closing":
                next_slot = formats.CHAT_SLOTS[formats.CHAT_SLOTS.index(asked) + 1]
                reply = BOT_QUESTIONS[next_slot]
                new_turns.append(self._turn(session, len(turns) + 1, "bot", next_slot, reply, now))
            slots = self._slots(session, session.turns + new_turns)
            latency = _elapsed_ms(started)
            for turn in new_turns:
                turn["latency_ms"] = latency
            self._write(served_log.CHATS_STREAM, new_turns)
            session.turns.extend(new_turns)
            last_asks = next(t["asks"] for t in reversed(session.turns) if t["speaker"] == "bot")
        return {
            "request_id": request_id,
            "transcript_id": session.transcript_id,
            "reply": reply,
            "asks": next_slot,
            "done": last_asks == "closing",
            "slots": slots,
        }

    @staticmethod
    def _turn(
        session: Session, index: int, speaker: str, asks: str | None, text: str, at: str
    ) -> dict:
        return {
            "request_id": session.request_id,
            "transcript_id": session.transcript_id,
            "turn_index": index,
            "speaker": speaker,
            "asks": asks,
            "text": text,
            "at": at,
            "status": "ok",
            "error": None,
            "latency_ms": None,
        }

    @staticmethod
    def _slots(session: Session, turns: list[dict]) -> dict:
        frame = pl.DataFrame(
            {
                "transcript_id": [session.transcript_id] * len(turns),
                "request_id": [session.request_id] * len(turns),
                "turn_index": [turn["turn_index"] for turn in turns],
                "speaker": [turn["speaker"] for turn in turns],
                "asks": [turn["asks"] for turn in turns],
                "text": [turn["text"] for turn in turns],
            },
            schema={
                "transcript_id": pl.String,
                "request_id": pl.String,
                "turn_index": pl.Int64,
                "speaker": pl.String,
                "asks": pl.String,
                "text": pl.String,
            },
        )
        row = extract_slots(frame).row(0, named=True)
        return {name: row[name] for name in SLOT_FIELDS}

    def _session(self, request_id: str) -> Session:
        session = self.sessions.get(request_id)
        if session is None:
            raise ApiError(
                404, "unknown_request", f"no assessment {_clip(request_id)!r} served here"
            )
        return session

    # Outcomes.

    def outcome(self, *, request_id: str, started: float, body: OutcomeIn) -> dict:
        """Record a technician's confirmed outcome of a served assessment (once per request)."""
        session = self._session(request_id)
        if body.quote_accepted and (body.damage_level is None or body.cell_type is None):
            raise ApiError(
                422,
                "invalid_outcome",
                "an accepted quote was inspected: damage_level and cell_type are required",
            )
        if not body.quote_accepted and (
            body.damage_level is not None or body.cell_type is not None
        ):
            raise ApiError(
                422,
                "invalid_outcome",
                "a declined quote was not inspected: damage_level and cell_type must be empty",
            )
        now = datetime.now(UTC)
        inspected = (body.inspected_at or now).astimezone(UTC)
        if inspected > now + FUTURE_TOLERANCE:
            # The same rule as landed outcomes (`timestamp_in_future`), so both paths agree.
            raise ApiError(
                422,
                "invalid_outcome",
                f"inspected_at {inspected.isoformat()} is in the future (now {now.isoformat()})",
            )
        if inspected < EARLIEST_TIMESTAMP:
            # Landing's bound too. Not "before the assessment": a replay of the workshop's
            # history posts its outcomes with their original, earlier dates.
            raise ApiError(
                422,
                "invalid_outcome",
                f"inspected_at {inspected.isoformat()} is before "
                f"{EARLIEST_TIMESTAMP.date().isoformat()}",
            )
        with session.lock:
            if session.has_outcome:
                raise ApiError(409, "outcome_exists", f"{request_id} already has an outcome")
            row = {
                "request_id": request_id,
                "technician_id": body.technician_id,
                "inspected_at": inspected.isoformat(timespec="microseconds"),
                "quote_accepted": body.quote_accepted,
                "damage_level": body.damage_level,
                # The landing contract's level is defect_probability * 3; this is its inverse.
                "defect_probability": None
                if body.damage_level is None
                else body.damage_level / (len(formats.DAMAGE_LEVELS) - 1),
                "cell_type": body.cell_type,
                "model_version": session.model_version,
                "predicted_level": session.predicted_level,
                "status": "ok",
                "error": None,
                "latency_ms": _elapsed_ms(started),
                "recorded_at": now.isoformat(timespec="microseconds"),
            }
            self._write(served_log.OUTCOMES_STREAM, [row])
            session.has_outcome = True
        return {
            "request_id": request_id,
            "recorded": True,
            "model_version": session.model_version,
            "predicted_level": session.predicted_level,
            "damage_level": body.damage_level,
        }

    # Failures.

    def log_failure(
        self,
        kind: str,
        *,
        request_id: str,
        path_request_id: str | None,
        started: float,
        status: int,
        code: str,
        message: str,
        context: dict | None = None,
    ) -> None:
        """Append the log row of a call answered with an error (raises ServedLogError)."""
        context = context or {}
        error = f"{code}: {message}"
        latency = _elapsed_ms(started)
        now = served_log.utc_now_iso()
        if kind == "assessment":
            current = self.holder.current
            row = dict.fromkeys(INFERENCE_LOG_SCHEMA)
            row.update(
                request_id=request_id,
                source=SOURCE,
                client_request_id=_clip(context.get("client_request_id")),
                status=str(status),
                error=error,
                model_name=REPAIR_MODEL,
                model_version=context.get(
                    "model_version", None if current is None else current.version
                ),
                input_sha256=context.get("input_sha256"),
                product_id=_clip(context.get("product_id")),
                latency_ms=latency,
                inferred_at=now,
            )
            row.pop(served_log.SEGMENT_FIELD)
            stream = served_log.ASSESSMENTS_STREAM
        elif kind == "chat":
            row = {
                "request_id": _clip(path_request_id),
                "transcript_id": None,
                "turn_index": None,
                "speaker": "customer",
                "asks": None,
                "text": None,
                "at": now,
                "status": str(status),
                "error": error,
                "latency_ms": latency,
            }
            stream = served_log.CHATS_STREAM
        else:
            row = dict.fromkeys(served_log.OUTCOME_LOG_SCHEMA)
            row.update(
                request_id=_clip(path_request_id),
                status=str(status),
                error=error,
                latency_ms=latency,
                recorded_at=now,
            )
            row.pop(served_log.SEGMENT_FIELD)
            stream = served_log.OUTCOMES_STREAM
        self.logs[stream].append(row)

    # Restart.

    def _restore_sessions(self) -> None:
        cutoff = time.time() - self.config.session_retention_s

        def recent(stream: str) -> list[Path]:
            return [
                path
                for path in served_log.all_segments(self.root, stream)
                if path.stat().st_mtime >= cutoff
            ]

        ok = pl.col("status") == "ok"
        assessed = (
            served_log.read_frame(recent(served_log.ASSESSMENTS_STREAM), INFERENCE_LOG_SCHEMA)
            .filter(ok)
            .sort("inferred_at")
            .tail(self.config.max_sessions)
        )
        if assessed.is_empty():
            return
        known = assessed["request_id"].implode()
        chats = (
            served_log.read_frame(recent(served_log.CHATS_STREAM), served_log.CHAT_LOG_SCHEMA)
            .filter(ok & pl.col("request_id").is_in(known))
            .sort("request_id", "turn_index")
        )
        turns = chats.group_by("request_id").agg(
            pl.struct("turn_index", "speaker", "asks", "text", "at").alias("turns")
        )
        outcomes = served_log.read_frame(
            recent(served_log.OUTCOMES_STREAM), served_log.OUTCOME_LOG_SCHEMA
        ).filter(ok)
        done = set(outcomes["request_id"].to_list())
        by_request = dict(zip(turns["request_id"], turns["turns"].to_list(), strict=True))
        for record in assessed.iter_rows(named=True):
            request_id = record["request_id"]
            session = Session(
                request_id=request_id,
                product_id=record["product_id"],
                model_version=record["model_version"],
                predicted_level=record["predicted_level"],
                assessed_at=record["inferred_at"],
                has_outcome=request_id in done,
                client_request_id=record["client_request_id"],
                input_sha256=record["input_sha256"],
                answer=_answer(record),
            )
            for turn in by_request.get(request_id, []):
                session.turns.append(
                    {
                        **turn,
                        "request_id": request_id,
                        "transcript_id": session.transcript_id,
                        "at": turn["at"].isoformat(),
                    }
                )
            self.sessions.add(session)
        logger.info("restored %d sessions from the served log", len(self.sessions))

    def health(self) -> tuple[int, dict]:
        current = self.holder.current
        body = {
            "status": "ok" if current is not None else "no_model",
            "model_name": REPAIR_MODEL,
            "model_version": None if current is None else current.version,
            "products": len(self.catalog),
            "started_at": self.started_at.isoformat(),
        }
        return (200 if current is not None else 503), body


def _error_response(
    status: int, code: str, message: str, request_id: str | None, **extra: Any
) -> JSONResponse:
    error = {"status": status, "code": code, "message": message, **extra}
    headers = {"X-Request-ID": request_id} if request_id else None
    return JSONResponse(
        {"error": error, "request_id": request_id}, status_code=status, headers=headers
    )


async def _answer_failure(
    service: RepairService,
    scope: dict,
    status: int,
    code: str,
    message: str,
    context: dict | None = None,
    **extra: Any,
) -> JSONResponse:
    """Log a failed call of a logged route (in a worker thread), then build its error answer."""
    request_id = scope.get(_REQUEST_ID)
    matched = route_kind(scope.get("path", "")) if scope.get("method") == "POST" else None
    if matched is not None:
        kind, path_request_id = matched
        try:
            await anyio.to_thread.run_sync(
                lambda: service.log_failure(
                    kind,
                    request_id=request_id,
                    path_request_id=path_request_id,
                    started=scope.get(_STARTED, time.perf_counter()),
                    status=status,
                    code=code,
                    message=message,
                    context=context,
                )
            )
        except ServedLogError as error:
            return _error_response(503, "log_unavailable", str(error), request_id)
    return _error_response(status, code, message, request_id, **extra)


class IntakeMiddleware:
    """Stamps arrival time and request id; reads POST bodies of the logged routes up to their
    limit (413 beyond it, before anything parses them)."""

    def __init__(self, app, service: RepairService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[_STARTED] = time.perf_counter()
        scope[_REQUEST_ID] = new_request_id()
        matched = route_kind(scope["path"]) if scope["method"] == "POST" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        limit = (
            self.service.config.form_body_limit if matched[0] == "assessment" else JSON_BODY_LIMIT
        )
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            declared_size = int(declared) if declared is not None else None
        except ValueError:
            declared_size = None
        if declared_size is not None and declared_size > DRAIN_FACTOR * limit:
            await self._too_large(scope, receive, send, limit, f"{declared_size}", close=True)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(body)
            if size > DRAIN_FACTOR * limit:
                await self._too_large(scope, receive, send, limit, f"over {size}", close=True)
                return
            if size <= limit:
                chunks.append(body)
        if size > limit:
            await self._too_large(scope, receive, send, limit, f"{size}", close=False)
            return
        payload = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, limit: int, size: str, *, close: bool) -> None:
        response = await _answer_failure(
            self.service,
            scope,
            413,
            image_checks.TOO_MANY_BYTES,
            f"request body of {size} bytes is over the limit of {limit} bytes",
        )
        if close:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)


def _field_of(problem: dict) -> str:
    """The field a validation problem is about, dotted; "body" for the body as a whole."""
    # A body that is not JSON at all is located by the character where parsing failed
    # (("body", 1)), which names no field.
    if problem.get("type") == "json_invalid":
        return "body"
    return ".".join(str(part) for part in problem["loc"][1:]) or "body"


def _request_context(error: RequestValidationError) -> dict:
    body = getattr(error, "body", None)
    if body is None or not hasattr(body, "get"):
        return {}
    return {
        key: body.get(key)
        for key in ("product_id", "client_request_id")
        if isinstance(body.get(key), str)
    }


def _repeated(names) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


async def single_valued_form(request: Request) -> None:
    """Refuse a body that is not a multipart form (415), and a form that gives a field twice
    (which value would be meant is anyone's guess)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "an assessment is a multipart/form-data body (the photo as a file part), not "
            + (media_type or "a body without a content type"),
        )
    form = await request.form()
    repeated = _repeated(name for name, _ in form.multi_items())
    if repeated:
        # The log row names the product and client id only where the form gave one.
        known = {
            key: values[0]
            for key in ("product_id", "client_request_id")
            if len(values := form.getlist(key)) == 1 and isinstance(values[0], str)
        }
        raise ApiError(
            422, "duplicate_field", f"the form gives {', '.join(repeated)} more than once", **known
        )


async def single_valued_json(request: Request) -> None:
    """Refuse a JSON body whose objects name a field twice (json.loads keeps the last)."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        repeated.extend(_repeated(name for name, _ in items))
        return dict(items)

    try:
        json.loads(await request.body(), object_pairs_hook=pairs)
    except ValueError:
        return  # not JSON: the body's validation answers that
    if repeated:
        raise ApiError(
            422,
            "duplicate_field",
            f"the body names {', '.join(sorted(set(repeated)))} more than once",
        )


def create_app(
    paths: DataPaths,
    *,
    config: ServiceConfig | None = None,
    registry: ModelRegistry | None = None,
    pseudonym_key: bytes | None = None,
) -> FastAPI:
    """The repair service as an ASGI app; logs, catalog and champion open when it starts."""
    config = config or ServiceConfig()
    if registry is None:
        from compositional_ai.definitions import build_resources

        registry = build_resources(paths)["model_registry"]
    service = RepairService(
        paths,
        registry,
        config=config,
        pseudonym_key=pseudonym_key if pseudonym_key is not None else pseudonym_key_from_env(),
    )

    async def lifespan(_app: FastAPI):
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(
        title="compositional-ai repair service",
        version="1",
        summary="Grades solar-cell damage from a photo, quotes the repair, chats, logs it all.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(IntakeMiddleware, service=service)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return await _answer_failure(
            service, request.scope, error.status, error.code, error.message, error.context
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        missing = [_field_of(problem) for problem in problems if problem.get("type") == "missing"]
        details = [
            {"field": _field_of(problem), "problem": problem.get("msg", "")} for problem in problems
        ]
        code = "missing_fields" if missing and len(missing) == len(problems) else "invalid_fields"
        message = "; ".join(f"{item['field']}: {item['problem']}" for item in details)
        return await _answer_failure(
            service, request.scope, 422, code, message, _request_context(error), fields=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            error.status_code, "http_error"
        )
        return await _answer_failure(
            service, request.scope, error.status_code, code, str(error.detail)
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s", request.url.path)
        return await _answer_failure(
            service, request.scope, 500, "internal_error", type(error).__name__
        )

    def guarded(call):
        # Anything unexpected becomes a logged 500, so no input can take the service down.
        try:
            return call()
        except ApiError:
            raise
        except Exception as error:
            logger.exception("unhandled error")
            raise ApiError(500, "internal_error", type(error).__name__) from error

    @app.post(
        "/v1/assessments",
        response_model=AssessmentOut,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(single_valued_form)],
    )
    def create_assessment(
        request: Request,
        photo: Annotated[UploadFile, File(description="PNG or JPEG photo of the cell")],
        product_id: Annotated[str, Form(max_length=MAX_ID_CHARS)],
        name: Annotated[str, Form(max_length=MAX_FIELD_CHARS)],
        email: Annotated[str, Form(max_length=MAX_FIELD_CHARS)],
        phone: Annotated[str, Form(max_length=MAX_FIELD_CHARS)],
        client_request_id: Annotated[str | None, Form(max_length=MAX_ID_CHARS)] = None,
    ) -> dict:
        """Grade the photo's damage with the champion model and quote the repair."""
        return guarded(
            lambda: service.assess(
                request_id=request.scope[_REQUEST_ID],
                started=request.scope[_STARTED],
                photo=photo.file.read(config.max_photo_bytes + 1),
                product_id=product_id,
                name=name,
                email=email,
                phone=phone,
                client_request_id=client_request_id,
            )
        )

    @app.post(
        "/v1/assessments/{request_id}/chat",
        response_model=ChatOut,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(single_valued_json)],
    )
    def chat(request: Request, request_id: str, body: ChatIn) -> dict:
        """Answer the chatbot's current question; get its next one and the slots so far."""
        return guarded(
            lambda: service.chat(
                request_id=request_id, started=request.scope[_STARTED], text=body.text
            )
        )

    @app.post(
        "/v1/assessments/{request_id}/outcome",
        response_model=OutcomeOut,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(single_valued_json)],
    )
    def outcome(request: Request, request_id: str, body: OutcomeIn) -> dict:
        """Record a technician's confirmed outcome of a served assessment."""
        return guarded(
            lambda: service.outcome(
                request_id=request_id, started=request.scope[_STARTED], body=body
            )
        )

    @app.get("/v1/models")
    def models() -> dict:
        """The version serving now and every version this process has served."""
        return service.holder.status()

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """200 while a model serves, 503 before a champion has loaded."""
        status, body = service.health()
        return JSONResponse(body, status_code=status)

    return app


def serve(host: str, port: int, paths: DataPaths) -> None:
    """Run the repair service on host:port until interrupted; logs are closed on the way out."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    app = create_app(paths)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=os.environ.get("COMPOSITIONAL_AI_LOG_LEVEL", "warning").lower(),
        # The served log records every call; uvicorn's access log would only repeat it.
        access_log=False,
        timeout_graceful_shutdown=10,
    )
