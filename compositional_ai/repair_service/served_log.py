"""Durable, rotated JSON-lines logs for the repair service, and their readers.

Layout of one stream under the served-log root::

    <stream>/
        .writer.lock                    flock held by the one process writing the stream
        active/<segment>.jsonl          the segment being appended to (at most one)
        closed/<segment>.jsonl          finished segments: whole lines only, never written again

A segment id is `<stream>-<UTC opening time>-<pid>-<n>`, so closed segments sort by opening time
and a sensor can use the id as a partition key. A segment is closed (moved from `active/` to
`closed/`) when it would grow past `max_bytes`, when it is older than `max_age_s`, when the
writer closes, and, for a segment left behind by a process that died, when the next writer opens.

Durability: `append` writes each record as one line with a single `write(2)` on an O_APPEND file
and returns only after an `fsync` that covers the line, so a record whose append returned
survives SIGKILL of the process (and a power loss, as far as the disk honours fsync). Appends from
many threads share fsyncs (group commit): while one thread syncs, the others write their lines
and wait, and the next sync covers them all. Nothing is acknowledged before its sync, so the bound
on records lost by a crash is exactly the appends that had not yet returned.

Torn lines: a crash can leave the active segment ending in part of a line (a write cut short).
Readers ignore everything after the last newline, and the next writer truncates the tail before
closing the segment, so closed segments hold whole lines only. A write that fails part-way is cut
back to the last whole line at once, so later lines are never glued onto a torn one.
"""

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

ACTIVE_DIR = "active"
CLOSED_DIR = "closed"
LOCK_FILE = ".writer.lock"
SEGMENT_SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_AGE_S = 300.0
# Served logs hold customer contacts and chat text: readable by the service's user only.
FILE_MODE = 0o600


# The repair service's streams. `assessments` rows have the columns of the batch inference log
# (repair_service.assets.INFERENCE_LOG_SCHEMA, source "served"); the others are described here.
# Every row of every stream carries `batch`: the id of the segment it was written into.
ASSESSMENTS_STREAM = "assessments"
REQUESTS_STREAM = "requests"
CHATS_STREAM = "chats"
OUTCOMES_STREAM = "outcomes"
STREAMS = (ASSESSMENTS_STREAM, REQUESTS_STREAM, CHATS_STREAM, OUTCOMES_STREAM)
SEGMENT_FIELD = "batch"
# Accepted photos, content-addressed: photos/<sha256>.<png|jpg>, written before their request.
PHOTOS_DIR = "photos"

# One row per accepted assessment request. Contacts are keyed pseudonyms (lib.pseudonym), so the
# served log never stores a customer's name, e-mail or phone as given in the form.
REQUEST_LOG_SCHEMA = {
    "request_id": pl.String,
    "batch": pl.String,
    "submitted_at": pl.Datetime("us", "UTC"),
    "channel": pl.String,
    "client_request_id": pl.String,
    "product_id": pl.String,
    "photo": pl.String,
    "photo_sha256": pl.String,
    "photo_format": pl.String,
    "photo_width": pl.Int64,
    "photo_height": pl.Int64,
    "name_pseudonym": pl.String,
    "email_pseudonym": pl.String,
    "phone_pseudonym": pl.String,
}

# One row per chat turn (the turns of landing chats.jsonl, flattened), and one row per failed chat
# call (status not "ok", no turn_index). Turn text is kept as typed: the slot extractor needs it.
CHAT_LOG_SCHEMA = {
    "request_id": pl.String,
    "batch": pl.String,
    "transcript_id": pl.String,
    "turn_index": pl.Int64,
    "speaker": pl.String,
    "asks": pl.String,
    "text": pl.String,
    "at": pl.Datetime("us", "UTC"),
    "status": pl.String,
    "error": pl.String,
    "latency_ms": pl.Float64,
}

# One row per outcome call: the landing OUTCOME_COLUMNS, the assessment it confirms, and status.
OUTCOME_LOG_SCHEMA = {
    "request_id": pl.String,
    "batch": pl.String,
    "technician_id": pl.String,
    "inspected_at": pl.Datetime("us", "UTC"),
    "quote_accepted": pl.Boolean,
    "damage_level": pl.Int64,
    "defect_probability": pl.Float64,
    "cell_type": pl.String,
    "model_version": pl.String,
    "predicted_level": pl.Int64,
    "status": pl.String,
    "error": pl.String,
    "latency_ms": pl.Float64,
    "recorded_at": pl.Datetime("us", "UTC"),
}


class ServedLogError(RuntimeError):
    """The log cannot take records: not opened, already closed, or a write or sync failed."""


class StreamLockedError(ServedLogError):
    """Another live process is writing the same stream."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Write `path` so that it either does not exist or holds all of `data`, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def complete_part(data: bytes) -> bytes:
    """The whole lines of `data`: everything up to and including its last newline."""
    end = data.rfind(b"\n")
    return data[: end + 1]


def read_records(path: Path) -> list[dict]:
    """The records of one segment, ignoring a final partial line (a write a crash cut short)."""
    lines = complete_part(Path(path).read_bytes()).splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def stream_dir(root: Path, stream: str) -> Path:
    return Path(root) / stream


def closed_segments(root: Path, stream: str) -> list[Path]:
    """The closed segments of a stream, oldest first."""
    folder = stream_dir(root, stream) / CLOSED_DIR
    return sorted(folder.glob(f"*{SEGMENT_SUFFIX}")) if folder.is_dir() else []


def all_segments(root: Path, stream: str) -> list[Path]:
    """Closed segments, oldest first, then the active one (if any)."""
    folder = stream_dir(root, stream) / ACTIVE_DIR
    active = sorted(folder.glob(f"*{SEGMENT_SUFFIX}")) if folder.is_dir() else []
    return closed_segments(root, stream) + active


def read_frame(paths: Sequence[Path], schema: dict) -> pl.DataFrame:
    """Read segments into one frame of `schema`; datetime columns are parsed from ISO strings."""
    datetimes = {name: dtype for name, dtype in schema.items() if isinstance(dtype, pl.Datetime)}
    as_read = {name: pl.String if name in datetimes else dtype for name, dtype in schema.items()}
    data = b"".join(complete_part(Path(path).read_bytes()) for path in paths)
    if not data.strip():
        return pl.DataFrame(schema=schema)
    frame = pl.read_ndjson(data, schema=as_read)
    return frame.with_columns(
        pl.col(name).str.to_datetime(time_unit=dtype.time_unit, time_zone="UTC")
        for name, dtype in datetimes.items()
    ).cast(schema)


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds and an explicit offset."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LogStats:
    """What a writer has done since it opened."""

    records: int
    syncs: int
    segments_closed: int
    active_segment: str | None


class ServedLog:
    """One stream's durable writer: append records, rotate segments into `closed/`.

    Thread-safe; one writer per stream across processes (an flock on `.writer.lock`). When
    `segment_field` is set, every record gets the id of the segment it is written into under
    that key (the inference log's `batch` column), so a record names its own partition.
    """

    def __init__(
        self,
        root: Path,
        stream: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        segment_field: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stream or "/" in stream or stream.startswith("."):
            raise ValueError(f"stream must be a plain folder name, got {stream!r}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.stream = stream
        self.folder = stream_dir(root, stream)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_field = segment_field
        self._clock = clock
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment: str | None = None
        self._opened_at = 0.0
        self._size = 0
        self._sequence = 0
        # Writes (one per append call) made and known to be on disk, over all segments.
        self._records = 0
        self._written = 0
        self._durable = 0
        self._syncing = False
        self._failed: str | None = None
        self._closed = False
        self._syncs = 0
        self._segments_closed = 0

    @property
    def active_dir(self) -> Path:
        return self.folder / ACTIVE_DIR

    @property
    def closed_dir(self) -> Path:
        return self.folder / CLOSED_DIR

    def open(self) -> "ServedLog":
        """Take the stream's writer lock and close any segment a dead writer left active."""
        with self._lock:
            if self._lock_fd is not None:
                return self
            self.active_dir.mkdir(parents=True, exist_ok=True)
            self.closed_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StreamLockedError(
                    f"another process is writing the served log {self.folder} (it holds "
                    f"{self.folder / LOCK_FILE}); stop it before starting another writer"
                ) from None
            self._lock_fd = fd
            for leftover in sorted(self.active_dir.glob(f"*{SEGMENT_SUFFIX}")):
                self._recover(leftover)
            return self

    def __enter__(self) -> "ServedLog":
        return self.open()

    def __exit__(self, *_exc) -> None:
        self.close()

    def append(self, record: dict) -> str:
        """Append one record durably; return the id of the segment it went into."""
        return self.append_many([record])

    def append_many(self, records: Iterable[dict]) -> str:
        """Append records as consecutive lines with one write and at most one shared fsync."""
        records = list(records)
        if not records:
            raise ValueError("append_many needs at least one record")
        with self._lock:
            self._check_writable()
            if self._fd is not None and self._clock() - self._opened_at >= self.max_age_s:
                self._close_segment()
            if self._fd is None:
                self._open_segment()
            payload = b"".join(self._encode(record) for record in records)
            if self._size > 0 and self._size + len(payload) > self.max_bytes:
                self._close_segment()
                self._open_segment()
                payload = b"".join(self._encode(record) for record in records)
            start = self._size
            try:
                _write_all(self._fd, payload)
            except OSError as error:
                self._cut_back(start, error)
                raise ServedLogError(f"writing {self._segment}: {error}") from error
            self._size += len(payload)
            self._records += len(records)
            self._written += 1
            ticket = self._written
            segment = self._segment
            self._wait_durable(ticket)
            return segment

    def rotate(self) -> Path | None:
        """Close the active segment into `closed/` now; return its path (None if none)."""
        with self._lock:
            return self._close_segment()

    def rotate_if_due(self) -> Path | None:
        """Close the active segment if it is older than max_age_s; return its path if closed."""
        with self._lock:
            if self._fd is not None and self._clock() - self._opened_at >= self.max_age_s:
                return self._close_segment()
            return None

    def close(self) -> None:
        """Close the active segment into `closed/` and release the writer lock."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._close_segment()
            finally:
                self._closed = True
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def stats(self) -> LogStats:
        with self._lock:
            return LogStats(
                records=self._records,
                syncs=self._syncs,
                segments_closed=self._segments_closed,
                active_segment=self._segment,
            )

    def _encode(self, record: dict) -> bytes:
        if self.segment_field is not None:
            record = {**record, self.segment_field: self._segment}
        # allow_nan=False: NaN is not JSON, and a line other readers cannot parse is a torn line.
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"

    def _check_writable(self) -> None:
        if self._lock_fd is None or self._closed:
            raise ServedLogError(f"served log {self.folder} is not open")
        if self._failed is not None:
            raise ServedLogError(f"served log {self.folder} failed earlier: {self._failed}")

    def _segment_path(self, folder: str, segment: str) -> Path:
        return self.folder / folder / f"{segment}{SEGMENT_SUFFIX}"

    def _open_segment(self) -> None:
        self._sequence += 1
        opened = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        segment = f"{self.stream}-{opened}-{os.getpid()}-{self._sequence:06d}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self._segment_path(ACTIVE_DIR, segment), flags, FILE_MODE)
        fsync_dir(self.active_dir)
        self._segment = segment
        self._opened_at = self._clock()
        self._size = 0

    def _close_segment(self) -> Path | None:
        if self._fd is None:
            return None
        self._check_writable()
        fd, segment = self._fd, self._segment
        try:
            os.fsync(fd)
        except OSError as error:
            self._failed = f"fsync of {segment}: {error}"
            raise ServedLogError(self._failed) from error
        self._syncs += 1
        self._durable = self._written
        self._synced.notify_all()
        os.close(fd)
        self._fd, self._segment = None, None
        closed = self._segment_path(CLOSED_DIR, segment)
        os.replace(self._segment_path(ACTIVE_DIR, segment), closed)
        fsync_dir(self.closed_dir)
        fsync_dir(self.active_dir)
        self._segments_closed += 1
        return closed

    def _wait_durable(self, ticket: int) -> None:
        # Called with the lock held. One thread at a time syncs, outside the lock, on a duplicate
        # descriptor (a rotation may close the original meanwhile); it covers every line written
        # before it started, and the waiters whose lines it covered return without a sync.
        while self._durable < ticket:
            if self._failed is not None:
                raise ServedLogError(f"served log {self.folder} failed: {self._failed}")
            if self._syncing:
                self._synced.wait()
                continue
            self._syncing = True
            target = self._written
            fd = os.dup(self._fd)
            self._lock.release()
            error: OSError | None = None
            try:
                os.fsync(fd)
            except OSError as raised:
                error = raised
            finally:
                os.close(fd)
                self._lock.acquire()
                self._syncing = False
                self._synced.notify_all()
            if error is not None:
                # After a failed fsync the kernel may have dropped the dirty pages, so a later
                # successful fsync proves nothing: the writer refuses all further records.
                self._failed = f"fsync of {self._segment}: {error}"
                raise ServedLogError(self._failed) from error
            self._syncs += 1
            self._durable = max(self._durable, target)

    def _cut_back(self, size: int, error: OSError) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as truncate_error:
            self._failed = f"write failed ({error}) and could not be cut back ({truncate_error})"

    def _recover(self, path: Path) -> None:
        data = path.read_bytes()
        whole = complete_part(data)
        if not whole:
            path.unlink()
            fsync_dir(self.active_dir)
            return
        if len(whole) != len(data):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, len(whole))
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(path, self.closed_dir / path.name)
        fsync_dir(self.closed_dir)
        fsync_dir(self.active_dir)
        self._segments_closed += 1
