"""The served repair model: whichever version carries the registry alias `champion`, hot-swapped.

`ChampionHolder` loads the champion once, then a background thread asks the registry every
`poll_s` seconds which version carries the alias (one indexed lookup in the MLflow store). When
the answer changes it loads the new version beside the old one, checks that it grades damage at
all (four classes, a square input size, a finite prediction on a blank image), and only then
swaps it in. Requests read the current `ServedModel` once, so each one is graded by one version
from start to end, and in-flight requests finish on the version they started with. A registry
that is down or a new version that will not load leaves the previous champion serving; the
failure is reported by `status()`.
"""

import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from compositional_ai.landing.formats import DAMAGE_LEVELS
from compositional_ai.resources.model_registry import CHAMPION, ModelRegistry
from compositional_ai.vision.training import predict_proba

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 2.0
DEFAULT_MAX_BATCH = 16


class InvalidModelError(ValueError):
    """A registered version is not a usable damage grader."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version, as requests see it."""

    name: str
    version: str
    model: object
    image_size: int
    loaded_at: datetime


@dataclass(frozen=True)
class ServedPeriod:
    """A version this process has served, from when to when (None: still serving)."""

    version: str
    since: datetime
    until: datetime | None


def check_model(model) -> int:
    """Return the model's input size, or raise InvalidModelError if it cannot grade damage."""
    image_size = getattr(model, "image_size", None)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(image_size, int) or image_size < 16:
        raise InvalidModelError(f"model has no usable image_size ({image_size!r})")
    if num_classes != len(DAMAGE_LEVELS):
        raise InvalidModelError(
            f"model has {num_classes!r} classes; damage grading needs {len(DAMAGE_LEVELS)}"
        )
    model.eval()
    blank = np.zeros((1, image_size, image_size), dtype=np.uint8)
    proba = predict_proba(model, blank, batch_size=1)
    if proba.shape != (1, num_classes) or not np.isfinite(proba).all():
        raise InvalidModelError(f"model predicts {proba.shape} / non-finite on a blank image")
    return image_size


class ChampionHolder:
    """Holds the model carrying `alias` and follows the alias to new versions."""

    def __init__(
        self,
        registry: ModelRegistry,
        model_name: str,
        *,
        alias: str = CHAMPION,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.registry = registry
        self.model_name = model_name
        self.alias = alias
        self.poll_s = poll_s
        self._current: ServedModel | None = None
        self._history: list[ServedPeriod] = []
        self._last_checked: datetime | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> ServedModel | None:
        """The model serving now (None until a champion has loaded)."""
        return self._current

    def refresh(self) -> bool:
        """Look up the alias once; load and swap in a new version. Return True if it swapped."""
        with self._lock:
            try:
                version = self.registry.version_by_alias(self.model_name, self.alias).version
            except Exception as error:
                # No champion yet, or the registry (another process's SQLite file) failing to
                # answer: either way the current model, if any, keeps serving.
                return self._note_check(error)
            current = self._current
            if current is not None and current.version == version:
                return self._note_check(None)
            try:
                model = self.registry.load_torch(self.model_name, version)
                image_size = check_model(model)
            except Exception as error:
                return self._note_check(
                    InvalidModelError(f"{self.model_name} v{version} not served: {error}")
                )
            served = ServedModel(
                name=self.model_name,
                version=version,
                model=model,
                image_size=image_size,
                loaded_at=datetime.now(UTC),
            )
            self._swap(served)
            self._note_check(None)
            return True

    def start(self) -> None:
        """Start polling the alias in a daemon thread (a first refresh runs in the caller)."""
        self.refresh()
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, name=f"champion-poll-{self.model_name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def status(self) -> dict:
        """The version serving, every version served by this process, and the last check."""
        current = self._current
        return {
            "model_name": self.model_name,
            "alias": self.alias,
            "serving": None
            if current is None
            else {
                "version": current.version,
                "image_size": current.image_size,
                "loaded_at": current.loaded_at.isoformat(),
            },
            "served_versions": [
                {
                    "version": period.version,
                    "since": period.since.isoformat(),
                    "until": None if period.until is None else period.until.isoformat(),
                }
                for period in list(self._history)
            ],
            "poll_seconds": self.poll_s,
            "last_checked_at": None
            if self._last_checked is None
            else self._last_checked.isoformat(),
            "last_error": self._last_error,
        }

    def _swap(self, served: ServedModel) -> None:
        previous = self._current
        if self._history:
            last = self._history[-1]
            self._history[-1] = ServedPeriod(last.version, last.since, served.loaded_at)
        self._history.append(ServedPeriod(served.version, served.loaded_at, None))
        self._current = served
        logger.info(
            "serving %s v%s (was %s)",
            served.name,
            served.version,
            "none" if previous is None else f"v{previous.version}",
        )

    def _note_check(self, error: Exception | None) -> bool:
        self._last_checked = datetime.now(UTC)
        message = None if error is None else str(error)
        if message is not None and message != self._last_error:
            logger.warning("champion check: %s", message)
        self._last_error = message
        return False

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()


@dataclass
class _GradingJob:
    model: object
    pixels: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    proba: np.ndarray | None = None
    error: BaseException | None = None


class BatchGrader:
    """Grades the photos of concurrent requests together: one forward pass for all waiting.

    Requests hand their decoded pixels to `grade` and wait; one thread takes every photo
    waiting (up to `max_batch`) and runs `predict_proba` over them at once, per model, since a
    hot swap can leave requests on two versions. A batch of N costs less than N passes of one
    (fewer calls through the network's layers, larger matrix products). The model works on
    each image alone (per-image standardisation, BatchNorm in eval mode), so a photo's
    probabilities do not depend on its batch, up to float rounding in the convolutions.
    """

    def __init__(self, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_GradingJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.graded = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="batch-grader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Grade what is waiting, then stop; later calls to `grade` raise RuntimeError."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join(timeout=30)

    def grade(self, model, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [C] of one image [1, H, W] (uint8), graded by `model`."""
        job = _GradingJob(model, pixels)
        with self._lock:
            if self._thread is None:
                raise RuntimeError("the batch grader is not running")
            self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.proba

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            waiting = [job]
            while len(waiting) < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    # stop() was called: grade what was taken, then leave.
                    self._grade(waiting)
                    return
                waiting.append(job)
            self._grade(waiting)

    def _grade(self, jobs: list[_GradingJob]) -> None:
        by_model: dict[int, list[_GradingJob]] = {}
        for job in jobs:
            by_model.setdefault(id(job.model), []).append(job)
        for group in by_model.values():
            try:
                pixels = np.concatenate([job.pixels for job in group])
                proba = predict_proba(group[0].model, pixels, batch_size=len(group))
            except Exception as error:
                for job in group:
                    job.error = error
            else:
                for job, row in zip(group, proba, strict=True):
                    job.proba = row
            self.batches += 1
            self.graded += len(group)
            for job in group:
                job.done.set()
