"""An inter-process lock on a sidecar file, so that one process at a time opens the warehouse.

DuckDB lets one process hold a file read-write, and while it does every other process fails even
to open the file. Every access therefore takes this lock first, for as short a time as possible.
The lock is `fcntl.flock` on `<file>.lock`: the kernel drops it when the holding process dies, so
a crashed or killed step never leaves a stale lock behind. While held, the lock file names its
holder (pid, host, purpose, time), which is what a waiter that gives up reports.

Within one process the lock is shared by all threads: a process-wide re-entrant lock per lock
file serialises the threads, and a depth count lets a thread that already holds it nest
acquisitions without deadlocking on its own flock.
"""

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written into the lock file."""

    pid: int
    hostname: str
    purpose: str
    acquired_at: str

    def describe(self) -> str:
        """The holder in words, for error messages."""
        return (
            f"pid {self.pid} (purpose: {self.purpose}) since {self.acquired_at} "
            f"on host {self.hostname}"
        )


class LockTimeoutError(TimeoutError):
    """The lock stayed held by someone else for longer than the caller was willing to wait."""

    def __init__(self, target: Path, lock_path: Path, waited_s: float, holder: LockHolder | None):
        self.target = target
        self.lock_path = lock_path
        self.waited_s = waited_s
        self.holder = holder
        held_by = holder.describe() if holder else "a holder that has not written its name yet"
        super().__init__(
            f"gave up waiting for the lock on {target} after {waited_s:.1f} s: it is held by "
            f"{held_by} (lock file {lock_path}); wait for that work to finish or raise the "
            f"lock timeout"
        )

    def __reduce__(self):
        return type(self), (self.target, self.lock_path, self.waited_s, self.holder)


def lock_path_for(target: Path) -> Path:
    """The sidecar lock file that guards `target`."""
    return target.with_name(target.name + LOCK_SUFFIX)


def read_holder(lock_path: Path) -> LockHolder | None:
    """The holder named in a lock file, or None when it names nobody (free, or being written)."""
    try:
        text = lock_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        return LockHolder(
            pid=int(fields["pid"]),
            hostname=str(fields["hostname"]),
            purpose=str(fields["purpose"]),
            acquired_at=str(fields["acquired_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class _SharedState:
    """What all threads of this process share about one lock file."""

    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.owner: int | None = None
        self.fd: int | None = None


_states: dict[str, _SharedState] = {}
_states_guard = threading.Lock()


def _state_for(lock_path: Path) -> _SharedState:
    key = os.path.abspath(lock_path)
    with _states_guard:
        state = _states.get(key)
        if state is None:
            state = _states[key] = _SharedState()
        return state


def _forget_after_fork() -> None:
    # A forked child inherits the parent's descriptors, which share the parent's flock; the child
    # closes its copies (the parent's lock is unaffected) and starts with no locks of its own.
    global _states, _states_guard
    for state in _states.values():
        if state.fd is not None:
            try:
                os.close(state.fd)
            except OSError:
                pass
    _states = {}
    _states_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


class InterProcessLock:
    """An exclusive lock on `path` shared by processes (flock) and by the threads of a process."""

    def __init__(
        self,
        path: Path,
        *,
        timeout_s: float,
        poll_s: float = 0.05,
        purpose: str = "unspecified",
    ) -> None:
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.target = Path(path)
        self.lock_path = lock_path_for(self.target)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.purpose = purpose

    def acquire(self) -> None:
        """Take the lock, waiting at most timeout_s; raise LockTimeoutError after that."""
        started = time.monotonic()
        deadline = started + self.timeout_s
        state = _state_for(self.lock_path)
        if not state.thread_lock.acquire(timeout=self.timeout_s):
            raise self._timeout(time.monotonic() - started)
        try:
            if state.depth == 0:
                state.fd = self._flock(started, deadline)
                state.owner = threading.get_ident()
            state.depth += 1
        except BaseException:
            state.thread_lock.release()
            raise

    def release(self) -> None:
        """Give back one acquisition; the last one of this process frees the file lock."""
        state = _state_for(self.lock_path)
        if state.depth == 0 or state.owner != threading.get_ident():
            raise RuntimeError(f"release of {self.lock_path}, which this thread does not hold")
        state.depth -= 1
        try:
            if state.depth == 0 and state.fd is not None:
                fd, state.fd, state.owner = state.fd, None, None
                try:
                    # Unnamed before unlocked, so that a waiter never reports a holder that left.
                    os.ftruncate(fd, 0)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
        finally:
            state.thread_lock.release()

    def __enter__(self) -> "InterProcessLock":
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _flock(self, started: float, deadline: float) -> int:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout(time.monotonic() - started) from None
                    time.sleep(min(self.poll_s, remaining))
            self._write_holder(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_holder(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "purpose": self.purpose,
            "acquired_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)

    def _timeout(self, waited_s: float) -> LockTimeoutError:
        return LockTimeoutError(self.target, self.lock_path, waited_s, read_holder(self.lock_path))
