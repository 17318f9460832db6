import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from compositional_ai.repair_service import served_log
from compositional_ai.repair_service.served_log import (
    ServedLog,
    ServedLogError,
    StreamLockedError,
    all_segments,
    closed_segments,
    complete_part,
    read_frame,
    read_records,
    write_file_atomic,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _locate(root: Path, needle: bytes) -> tuple[bytes, int]:
    """The bytes and inode of the segment holding `needle` (segments may move meanwhile)."""
    while True:
        for path in all_segments(root, "s"):
            try:
                with path.open("rb") as handle:
                    data, inode = handle.read(), os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                break  # rotated since the listing: list again
            if needle in data:
                return data, inode
        else:
            raise AssertionError(f"{needle!r} is in no segment")


def test_append_is_read_back_with_its_segment_id(tmp_path):
    with ServedLog(tmp_path, "s", segment_field="batch") as log:
        first = log.append({"n": 1, "text": "caf\u00e9"})
        second = log.append_many([{"n": 2}, {"n": 3}])
        (active,) = all_segments(tmp_path, "s")
        assert active.parent.name == served_log.ACTIVE_DIR
        assert read_records(active) == [
            {"n": 1, "text": "caf\u00e9", "batch": first},
            {"n": 2, "batch": first},
            {"n": 3, "batch": first},
        ]
        assert first == second == active.stem
        assert log.stats().records == 3
    # Closing moves the segment to closed/ under the same name.
    (closed,) = closed_segments(tmp_path, "s")
    assert closed.name == active.name
    assert not any((tmp_path / "s" / served_log.ACTIVE_DIR).iterdir())
    assert oct(closed.stat().st_mode & 0o777) == oct(served_log.FILE_MODE)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # A crash mid-line leaves a fragment after the last newline: it is dropped.
        (b'{"n":1}\n{"n":2}\n{"n":', [{"n": 1}, {"n": 2}]),
        # A fragment that happens to be valid JSON is still not a whole line.
        (b'{"n":1}\n{"n":2}', [{"n": 1}]),
        # No newline at all: nothing was completely written.
        (b'{"n":1}', []),
        (b"", []),
        # Whole lines only: everything is read.
        (b'{"n":1}\n{"n":2}\n', [{"n": 1}, {"n": 2}]),
        # A multi-byte character cut in half is part of the dropped fragment.
        ('{"t":"a"}\n{"t":"\u00e9'.encode()[:-1], [{"t": "a"}]),
    ],
)
def test_readers_ignore_a_final_partial_line(tmp_path, data, expected):
    path = tmp_path / "segment.jsonl"
    path.write_bytes(data)
    assert read_records(path) == expected
    frame = read_frame([path], {"n": pl.Int64, "t": pl.String})
    assert frame.height == len(expected)


def test_complete_part_keeps_through_the_last_newline():
    assert complete_part(b"a\nb\nc") == b"a\nb\n"
    assert complete_part(b"abc") == b""


def test_read_frame_types_datetimes_and_lists(tmp_path):
    schema = {
        "id": pl.String,
        "at": pl.Datetime("us", "UTC"),
        "p": pl.List(pl.Float64),
        "level": pl.Int64,
    }
    with ServedLog(tmp_path, "s") as log:
        log.append({"id": "a", "at": "2026-01-02T03:04:05.123456+00:00", "p": [0.25, 0.75]})
        log.append({"id": "b", "at": None, "p": None, "level": 3})
    frame = read_frame(all_segments(tmp_path, "s"), schema)
    assert frame.schema == pl.Schema(schema)
    assert frame["at"][0].isoformat() == "2026-01-02T03:04:05.123456+00:00"
    assert frame["p"].to_list() == [[0.25, 0.75], None]
    assert frame["level"].to_list() == [None, 3]
    assert read_frame([], schema).schema == pl.Schema(schema)


def test_rotation_by_size_keeps_every_record_once(tmp_path):
    with ServedLog(tmp_path, "s", max_bytes=200, segment_field="batch") as log:
        for n in range(50):
            log.append({"n": n, "pad": "x" * 20})
    segments = closed_segments(tmp_path, "s")
    assert len(segments) > 5
    seen = []
    for path in segments:
        # No segment grows past the limit (each line is far below it).
        assert path.stat().st_size <= 200
        records = read_records(path)
        assert {record["batch"] for record in records} == {path.stem}
        seen += [record["n"] for record in records]
    assert seen == list(range(50))
    # Segment ids sort in writing order.
    assert [p.name for p in segments] == sorted(p.name for p in segments)


def test_a_record_larger_than_max_bytes_gets_a_segment_of_its_own(tmp_path):
    with ServedLog(tmp_path, "s", max_bytes=50) as log:
        log.append({"n": 1})
        log.append({"big": "y" * 100})
        log.append({"n": 2})
    sizes = [len(read_records(path)) for path in closed_segments(tmp_path, "s")]
    assert sizes == [1, 1, 1]


def test_rotation_by_age(tmp_path):
    clock = FakeClock()
    log = ServedLog(tmp_path, "s", max_age_s=60, clock=clock).open()
    assert log.rotate_if_due() is None  # nothing written yet: no segment
    log.append({"n": 1})
    clock.now += 59
    assert log.rotate_if_due() is None
    clock.now += 1
    closed = log.rotate_if_due()
    assert closed is not None and read_records(closed) == [{"n": 1}]
    # The next append opens a new segment; an overdue segment is closed by append itself too.
    log.append({"n": 2})
    clock.now += 61
    log.append({"n": 3})
    log.close()
    assert [read_records(p) for p in closed_segments(tmp_path, "s")] == [
        [{"n": 1}],
        [{"n": 2}],
        [{"n": 3}],
    ]


def test_one_writer_per_stream(tmp_path):
    first = ServedLog(tmp_path, "s").open()
    with pytest.raises(StreamLockedError, match="another process"):
        ServedLog(tmp_path, "s").open()
    # Other streams are independent.
    ServedLog(tmp_path, "other").open().close()
    first.close()
    ServedLog(tmp_path, "s").open().close()


def test_closed_writer_refuses_records(tmp_path):
    log = ServedLog(tmp_path, "s")
    with pytest.raises(ServedLogError, match="not open"):
        log.append({"n": 1})
    log.open().close()
    with pytest.raises(ServedLogError, match="not open"):
        log.append({"n": 1})


@pytest.mark.parametrize(
    ("leftover", "expected"),
    [
        # A dead writer's segment with a torn tail: the tail is cut, the rest closed.
        (b'{"n":1}\n{"n":2}\n{"n":3', [{"n": 1}, {"n": 2}]),
        # A whole segment is closed as it is.
        (b'{"n":1}\n', [{"n": 1}]),
        # A segment with no whole line is removed.
        (b'{"n":', None),
        (b"", None),
    ],
)
def test_open_closes_what_a_dead_writer_left_active(tmp_path, leftover, expected):
    active = tmp_path / "s" / served_log.ACTIVE_DIR
    active.mkdir(parents=True)
    (active / "s-20260101T000000000000Z-1-000001.jsonl").write_bytes(leftover)
    with ServedLog(tmp_path, "s") as log:
        assert not any(active.iterdir())
        log.append({"n": 9})
    segments = closed_segments(tmp_path, "s")
    if expected is None:
        assert [read_records(p) for p in segments] == [[{"n": 9}]]
    else:
        recovered = segments[0]
        assert recovered.name == "s-20260101T000000000000Z-1-000001.jsonl"
        assert recovered.read_bytes().endswith(b"\n")
        assert read_records(recovered) == expected
        assert read_records(segments[1]) == [{"n": 9}]


def test_every_append_is_synced_before_it_returns_and_syncs_are_shared(tmp_path, monkeypatch):
    real_fsync = os.fsync
    synced: dict[int, int] = {}
    guard = threading.Lock()

    def recording_fsync(fd):
        stat = os.fstat(fd)
        # Slow syncs make the other threads' lines pile up behind them (group commit).
        time.sleep(0.005)
        real_fsync(fd)
        with guard:
            synced[stat.st_ino] = max(synced.get(stat.st_ino, 0), stat.st_size)

    monkeypatch.setattr(served_log.os, "fsync", recording_fsync)
    log = ServedLog(tmp_path, "s", max_bytes=4000).open()
    failures = []

    def writer(worker: int) -> None:
        for n in range(25):
            key = f"{worker}-{n}"
            log.append({"key": key})
            # The line must already be covered by a completed fsync of its file.
            data, inode = _locate(tmp_path, f'"{key}"'.encode())
            end = data.index(b"\n", data.index(f'"{key}"'.encode())) + 1
            with guard:
                covered = synced.get(inode, 0)
            if covered < end:
                failures.append((key, covered, end))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = log.stats()
    log.close()
    assert failures == []
    keys = [r["key"] for p in closed_segments(tmp_path, "s") for r in read_records(p)]
    assert sorted(keys) == sorted(f"{w}-{n}" for w in range(8) for n in range(25))
    assert stats.records == 200
    # Fewer syncs than appends: appends waiting behind a sync shared the next one.
    assert stats.syncs < stats.records


def test_a_failed_write_is_cut_back_to_whole_lines(tmp_path, monkeypatch):
    log = ServedLog(tmp_path, "s").open()
    log.append({"n": 1})
    real_write = os.write
    calls = {"n": 0}

    def half_then_full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(served_log.os, "write", half_then_full_disk)
    with pytest.raises(ServedLogError, match="No space left"):
        log.append({"n": 2, "pad": "z" * 100})
    monkeypatch.setattr(served_log.os, "write", real_write)
    # The half line is gone, and the writer carries on with whole lines.
    log.append({"n": 3})
    log.close()
    (path,) = closed_segments(tmp_path, "s")
    assert _lines(path) == [b'{"n":1}\n', b'{"n":3}\n']


def test_a_failed_fsync_stops_the_writer(tmp_path, monkeypatch):
    log = ServedLog(tmp_path, "s").open()
    log.append({"n": 1})

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(served_log.os, "fsync", failing_fsync)
    with pytest.raises(ServedLogError, match="Input/output error"):
        log.append({"n": 2})
    monkeypatch.undo()
    # After a failed fsync nothing is acknowledged any more, even if the disk recovers.
    with pytest.raises(ServedLogError, match="failed earlier"):
        log.append({"n": 3})
    log.close()


def test_nan_is_refused_rather_than_written(tmp_path):
    with ServedLog(tmp_path, "s") as log:
        with pytest.raises(ValueError):
            log.append({"x": float("nan")})
        log.append({"x": 1.5})
    assert [read_records(p) for p in closed_segments(tmp_path, "s")] == [[{"x": 1.5}]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream": ""}, "plain folder name"),  # empty stream name
        ({"stream": "a/b"}, "plain folder name"),  # would escape the root
        ({"stream": ".hidden"}, "plain folder name"),  # clashes with the lock file's naming
        ({"stream": "s", "max_bytes": 0}, "max_bytes"),
        ({"stream": "s", "max_age_s": 0}, "max_age_s"),
    ],
)
def test_writer_arguments_are_checked(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServedLog(tmp_path, **kwargs)


def test_write_file_atomic(tmp_path):
    target = tmp_path / "photos" / "a.png"
    write_file_atomic(target, b"first")
    write_file_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from compositional_ai.repair_service.served_log import ServedLog

    log = ServedLog(Path(sys.argv[1]), "s", max_bytes=2000).open()
    out = threading.Lock()

    def work(worker):
        n = 0
        while True:
            key = f"{worker}-{n}"
            log.append({"key": key, "pad": "p" * 50})
            with out:
                sys.stdout.write(key + "\\n")
                sys.stdout.flush()
            n += 1

    for worker in range(4):
        threading.Thread(target=work, args=(worker,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_every_acknowledged_append_survives_sigkill(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acknowledged = []
    try:
        while len(acknowledged) < 400:
            line = process.stdout.readline()
            if not line:
                pytest.fail(f"writer died: {process.stderr.read().decode()}")
            acknowledged.append(line.decode().strip())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    # Killed mid-traffic: the active segment is left behind, possibly with a torn last line.
    written = [r["key"] for p in all_segments(tmp_path, "s") for r in read_records(p)]
    assert len(written) == len(set(written))
    assert set(acknowledged) <= set(written)
    # The next writer closes the leftover whole-lined, and nothing is lost on the way.
    ServedLog(tmp_path, "s").open().close()
    assert not list((tmp_path / "s" / served_log.ACTIVE_DIR).iterdir())
    recovered = []
    for path in closed_segments(tmp_path, "s"):
        assert path.read_bytes().endswith(b"\n")
        recovered += [json.loads(line)["key"] for line in path.read_bytes().splitlines()]
    assert recovered == written
