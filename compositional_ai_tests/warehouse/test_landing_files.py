import hashlib
import json
import os

import pytest

from compositional_ai.warehouse.landing_files import (
    BatchNotReadyError,
    LandingFileError,
    batch_folder,
    check_batch_key,
    read_files,
    read_lines,
    ready_manifest,
    unexpected_entries,
)


def lines_of(tmp_path, content: bytes, *, csv: bool = False):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    return read_lines(path, batch="b", source_file="data.txt", csv=csv)


@pytest.mark.parametrize(
    "batch",
    [
        "2026-01-05",
        "week 3",  # a space
        "o'brien",  # a single quote, which SQL literals would need escaped
        'say "hi"',  # double quotes
        "north,south",  # a comma
        "zürich-ßüd",  # non-ASCII letters
        "東京 batch",  # non-Latin script
        " leading and trailing ",  # spaces at both ends are legal folder names
        ".hidden",  # a dot prefix is a folder name, not a path step
    ],
)
def test_batch_keys_that_name_one_folder_are_accepted(batch):
    assert check_batch_key(batch) == batch


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ("a/b", "path separator"),  # would name a folder two levels down
        ("../elsewhere", "path separator"),  # would leave the batches root
        ("a\\b", "path separator"),  # a Windows separator
        ("", "cannot name"),  # the batches root itself
        (".", "cannot name"),  # the batches root itself
        ("..", "cannot name"),  # the landing root
        ("a\nb", "control characters"),  # Dagster refuses control characters in keys
        ("a\tb", "control characters"),  # a tab
        ("a\x00b", "control characters"),  # NUL cannot be in a path at all
        ("a\x7fb", "control characters"),  # DEL
        ("a...b", "'...'"),  # Dagster reads '...' as a partition range
    ],
)
def test_batch_keys_that_cannot_be_a_folder_are_refused(batch, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        check_batch_key(batch)


def test_batch_folder_refuses_slashes_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError) as raised:
        batch_folder(tmp_path, "2026/01/05")
    assert str(raised.value) == (
        "batch key '2026/01/05' contains a path separator ('/' or '\\'); a batch is one folder "
        "directly below the batches folder, so its name cannot contain one"
    )


def test_batch_folder_needs_the_ready_marker(tmp_path):
    (tmp_path / "b 1").mkdir()
    with pytest.raises(BatchNotReadyError, match="has no _READY marker yet"):
        batch_folder(tmp_path, "b 1")
    (tmp_path / "b 1" / "_READY").write_text("")
    assert batch_folder(tmp_path, "b 1") == tmp_path / "b 1"


def test_batch_folder_refuses_a_linked_batch(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "_READY").write_text("{}")
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "linked").symlink_to(outside)
    with pytest.raises(LandingFileError, match="is a symbolic link"):
        batch_folder(tmp_path / "batches", "linked")


@pytest.mark.parametrize(
    ("content", "texts"),
    [
        (b"a\nb\n", ["a", "b"]),  # LF line ends
        (b"a\r\nb\r\n", ["a", "b"]),  # CRLF: the CR is part of the line end
        (b"a\r\nb\n", ["a", "b"]),  # mixed line ends
        (b"a\nb", ["a", "b"]),  # a last line without LF is still a line
        (b"\xef\xbb\xbfa\nb\n", ["a", "b"]),  # a BOM at the start of the file is dropped
        (
            b"a\n\xef\xbb\xbfb\n",
            ["a", "\ufeffb"],
        ),  # a BOM inside the file is data; silver strips it
        (b"a\n\nb\n", ["a", "", "b"]),  # a blank line is a row (silver quarantines it)
        (b"a\r\r\nb\n", ["a\r", "b"]),  # only one CR belongs to the line end
        (b"a\rb\n", ["a\rb"]),  # a lone CR is not a line end
        (b"", []),  # a zero-byte file has no lines
        (b"\xef\xbb\xbf", []),  # a file with nothing but a BOM is empty too
        (b"\n", [""]),  # one empty line
    ],
)
def test_lines_split_on_lf_only(tmp_path, content, texts):
    frame = lines_of(tmp_path, content)
    assert frame["text"].to_list() == texts
    assert frame["line_number"].to_list() == list(range(1, len(texts) + 1))
    assert frame["file_sha256"].unique().to_list() == (
        [hashlib.sha256(content).hexdigest()] if texts else []
    )


def test_a_line_that_is_not_utf8_keeps_its_bytes(tmp_path):
    frame = lines_of(tmp_path, b'{"a": 1}\n{"a": "\xff"}\n')
    assert frame["text"].to_list() == ['{"a": 1}', None]
    assert frame["raw"].to_list() == [b'{"a": 1}', b'{"a": "\xff"}']
    assert frame["line_sha256"][1] == hashlib.sha256(b'{"a": "\xff"}').hexdigest()


@pytest.mark.parametrize(
    ("content", "header", "texts"),
    [
        (b"x,y\n1,2\n3,4\n", "x,y", ["1,2", "3,4"]),  # header then rows
        (b"\xef\xbb\xbfx,y\r\n1,2\r\n", "x,y", ["1,2"]),  # a spreadsheet's BOM and CRLF
        (b"x,y\n", None, []),  # a header without rows
        (b"", None, []),  # a zero-byte CSV
    ],
)
def test_csv_rows_carry_their_header_and_start_at_line_2(tmp_path, content, header, texts):
    frame = lines_of(tmp_path, content, csv=True)
    assert frame["text"].to_list() == texts
    assert frame["line_number"].to_list() == list(range(2, 2 + len(texts)))
    assert set(frame["csv_header"].to_list()) == ({header} if texts else set())


def test_a_missing_file_gives_no_rows(tmp_path):
    frame = read_lines(tmp_path / "requests.jsonl", batch="b", source_file="requests.jsonl")
    assert frame.height == 0


def test_a_linked_data_file_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (tmp_path / "requests.jsonl").symlink_to(secret)
    with pytest.raises(LandingFileError, match="is a symbolic link"):
        read_lines(tmp_path / "requests.jsonl", batch="b", source_file="requests.jsonl")


def test_a_folder_named_like_a_data_file_is_refused(tmp_path):
    (tmp_path / "requests.jsonl").mkdir()
    with pytest.raises(LandingFileError, match="is not a regular file"):
        read_lines(tmp_path / "requests.jsonl", batch="b", source_file="requests.jsonl")


def test_photo_entries_are_recorded_without_following_links(tmp_path):
    batch = tmp_path / "batch"
    photos = batch / "photos"
    (photos / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret bytes")
    (photos / "a.png").write_bytes(b"abc")
    (photos / "sub" / "b.png").write_bytes(b"defg")
    (photos / ".hidden").write_bytes(b"h")
    (photos / "empty.png").write_bytes(b"")
    (photos / "link.png").symlink_to(outside / "secret.png")
    (photos / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (photos / "linked_dir").symlink_to(outside)
    os.mkfifo(photos / "pipe.png")
    frame = read_files(photos, batch="b", relative_to=batch)
    rows = {row["source_file"]: row for row in frame.iter_rows(named=True)}
    assert sorted(rows) == [
        "photos/.hidden",
        "photos/a.png",
        "photos/broken.png",
        "photos/empty.png",
        "photos/link.png",
        "photos/linked_dir",
        "photos/pipe.png",
        "photos/sub/b.png",
    ]
    assert {name: row["file_type"] for name, row in rows.items()} == {
        "photos/.hidden": "file",
        "photos/a.png": "file",
        "photos/broken.png": "symlink",
        "photos/empty.png": "file",
        "photos/link.png": "symlink",
        "photos/linked_dir": "symlink",
        "photos/pipe.png": "special",
        "photos/sub/b.png": "file",
    }
    assert rows["photos/a.png"]["content"] == b"abc"
    assert rows["photos/a.png"]["file_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert rows["photos/sub/b.png"]["size_bytes"] == 4
    assert rows["photos/link.png"]["link_target"] == str(outside / "secret.png")
    # Nothing read through a link: no content and no entry from inside the linked folder.
    for name in ("photos/link.png", "photos/broken.png", "photos/linked_dir", "photos/pipe.png"):
        assert (rows[name]["content"], rows[name]["size_bytes"]) == (b"", 0)
    assert b"secret bytes" not in frame["content"].to_list()


def test_a_linked_photos_folder_is_one_link_row(tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")
    (batch / "photos").symlink_to(tmp_path / "etc")
    frame = read_files(batch / "photos", batch="b", relative_to=batch)
    assert frame.select("source_file", "file_type", "size_bytes").rows() == [
        ("photos", "symlink", 0)
    ]


def test_a_file_above_the_content_limit_keeps_its_size_and_digest_only(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    data = b"x" * 5000
    (photos / "big.png").write_bytes(data)
    (photos / "small.png").write_bytes(b"y" * 10)
    frame = read_files(photos, batch="b", relative_to=tmp_path, max_content_bytes=1000)
    assert frame.select("source_file", "file_type", "size_bytes").rows() == [
        ("photos/big.png", "oversized", 5000),
        ("photos/small.png", "file", 10),
    ]
    assert frame["content"][0] == b""
    assert frame["file_sha256"][0] == hashlib.sha256(data).hexdigest()


def test_a_missing_photos_folder_gives_no_rows(tmp_path):
    assert read_files(tmp_path / "photos", batch="b", relative_to=tmp_path).height == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"files": {"a": "1"}, "rows": {"a": 2}}', {"files": {"a": "1"}, "rows": {"a": 2}}),
        (b"", {}),  # an empty marker only says "ready"
        (b"  \n", {}),  # whitespace only
        (b"{not json", {}),  # a half-written manifest does not stop the batch
        (b"[1, 2]", {}),  # JSON, but not an object
        (b'{"files": ["a"], "batch_id": "b"}', {"batch_id": "b"}),  # files that is not an object
        (b'{"files": {}, "n": "\xff"}', {}),  # not UTF-8
    ],
)
def test_ready_manifest_never_fails_the_batch(tmp_path, content, expected):
    (tmp_path / "_READY").write_bytes(content)
    assert ready_manifest(tmp_path) == expected


def test_unexpected_entries_names_what_the_contract_does_not(tmp_path):
    for name in ("_READY", "requests.jsonl", "chats.jsonl", "request.jsonl", "cell.png", "notes"):
        (tmp_path / name).write_text("")
    (tmp_path / "photos").mkdir()
    (tmp_path / "Photos").mkdir()
    assert unexpected_entries(tmp_path) == ["Photos", "cell.png", "notes", "request.jsonl"]
    assert unexpected_entries(tmp_path / "absent") == []


def test_manifest_round_trip_of_generated_marker(tmp_path):
    manifest = {"batch_id": "b", "files": {"requests.jsonl": "ab" * 32}, "rows": {}}
    (tmp_path / "_READY").write_text(json.dumps(manifest, indent=2) + "\n")
    assert ready_manifest(tmp_path) == manifest
