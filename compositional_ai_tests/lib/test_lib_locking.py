import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compositional_ai.lib.locking import (
    InterProcessLock,
    LockHolder,
    LockTimeoutError,
    lock_path_for,
    read_holder,
)

# Takes the lock on argv[1] with purpose argv[2], says so, and keeps it until killed.
HOLDER = r"""
import sys
import time
from pathlib import Path
from compositional_ai.lib.locking import InterProcessLock

with InterProcessLock(Path(sys.argv[1]), timeout_s=30, purpose=sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def holder_process(database: Path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database), "materialize silver/repair_requests"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


def test_lock_file_sits_next_to_the_database(database: Path):
    assert lock_path_for(database) == database.parent / "warehouse.duckdb.lock"


def test_holder_is_written_while_held_and_cleared_on_release(database: Path):
    with InterProcessLock(database, timeout_s=1, purpose="materialize gold/x"):
        holder = read_holder(lock_path_for(database))
        assert holder is not None
        assert (holder.pid, holder.purpose) == (os.getpid(), "materialize gold/x")
        assert holder.acquired_at.endswith("+00:00")
    assert read_holder(lock_path_for(database)) is None


def test_nested_acquire_in_one_thread_does_not_deadlock(database: Path):
    outer = InterProcessLock(database, timeout_s=1, purpose="outer")
    with outer:
        # A zero timeout proves the nested acquire does not wait on the process's own flock.
        with InterProcessLock(database, timeout_s=0, purpose="inner"):
            assert read_holder(lock_path_for(database)).purpose == "outer"
        # Leaving the inner block keeps the lock: the outer acquisition still holds it.
        assert read_holder(lock_path_for(database)).purpose == "outer"
    assert read_holder(lock_path_for(database)) is None


def test_threads_of_one_process_take_turns(database: Path):
    events: list[str] = []
    first_holds = threading.Event()
    second_done = threading.Event()

    def second() -> None:
        first_holds.wait()
        with InterProcessLock(database, timeout_s=10, purpose="second"):
            events.append("second acquired")
        second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    with InterProcessLock(database, timeout_s=1, purpose="first"):
        first_holds.set()
        # Give the other thread time to block on the lock; it must not get in before release.
        time.sleep(0.2)
        events.append("first releasing")
    thread.join(timeout=10)
    assert second_done.is_set()
    assert events == ["first releasing", "second acquired"]


def test_another_thread_times_out_while_the_lock_is_held(database: Path):
    errors: list[LockTimeoutError] = []

    def waiter() -> None:
        try:
            with InterProcessLock(database, timeout_s=0.1, purpose="waiter"):
                pass
        except LockTimeoutError as error:
            errors.append(error)

    with InterProcessLock(database, timeout_s=1, purpose="holder thread"):
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(timeout=10)
    assert len(errors) == 1
    assert errors[0].holder is not None and errors[0].holder.purpose == "holder thread"


def test_timeout_names_the_database_the_wait_and_the_holder(database: Path, holder_process):
    with pytest.raises(LockTimeoutError) as raised:
        with InterProcessLock(database, timeout_s=0.3, poll_s=0.02, purpose="waiter"):
            pass
    message = str(raised.value)
    assert str(database) in message
    assert "after 0.3 s" in message
    assert f"held by pid {holder_process.pid} (purpose: materialize silver/repair_requests)" in (
        message
    )
    assert raised.value.holder.pid == holder_process.pid
    assert raised.value.waited_s >= 0.3


def test_a_killed_holder_leaves_no_stale_lock(database: Path, holder_process):
    os.kill(holder_process.pid, signal.SIGKILL)
    holder_process.wait()
    # The dead holder's name is still in the file, but the kernel released its flock.
    assert read_holder(lock_path_for(database)).pid == holder_process.pid
    with InterProcessLock(database, timeout_s=5, purpose="after the kill"):
        assert read_holder(lock_path_for(database)).pid == os.getpid()


def test_a_forked_child_does_not_inherit_the_parents_lock(database: Path):
    with InterProcessLock(database, timeout_s=1, purpose="parent"):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with InterProcessLock(database, timeout_s=0.1, purpose="child"):
                    code = 2
            except LockTimeoutError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    # 0: the child had to wait for the parent, as a separate process must.
    assert os.waitstatus_to_exitcode(status) == 0


def test_free_lock_is_taken_with_zero_timeout(database: Path):
    with InterProcessLock(database, timeout_s=0):
        assert lock_path_for(database).exists()


@pytest.mark.parametrize(
    ("timeout_s", "poll_s"),
    [
        (-1, 0.05),  # a negative wait
        (1, 0),  # a poll interval that would spin
    ],
)
def test_invalid_settings_are_refused(database: Path, timeout_s: float, poll_s: float):
    with pytest.raises(ValueError):
        InterProcessLock(database, timeout_s=timeout_s, poll_s=poll_s)


def test_release_without_acquire_is_an_error(database: Path):
    with pytest.raises(RuntimeError, match="does not hold"):
        InterProcessLock(database, timeout_s=1).release()


def test_unreadable_holder_text_reads_as_unknown(database: Path):
    lock_path_for(database).write_text('{"pid": 12', encoding="utf-8")
    assert read_holder(lock_path_for(database)) is None


def test_release_from_a_thread_that_does_not_hold_it_is_an_error(database: Path):
    errors: list[Exception] = []

    def releaser() -> None:
        try:
            InterProcessLock(database, timeout_s=1).release()
        except RuntimeError as error:
            errors.append(error)

    with InterProcessLock(database, timeout_s=1, purpose="owner"):
        thread = threading.Thread(target=releaser)
        thread.start()
        thread.join(timeout=10)
        assert read_holder(lock_path_for(database)).purpose == "owner"
    assert len(errors) == 1


def test_timeout_error_survives_pickling(database: Path):
    holder = LockHolder(pid=7, hostname="h", purpose="p", acquired_at="2024-01-01T00:00:00+00:00")
    error = LockTimeoutError(database, lock_path_for(database), 1.5, holder)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.holder == holder
