"""Read landed files into bronze frames: every line or file as landed, with where it came from.

Bronze keeps the raw bytes; nothing is parsed or dropped here, so every later rejection can be
traced to a file, a line and a digest. Two encoding details are not kept in a line's bytes (the
file digest still covers them): a UTF-8 byte-order mark at the very start of a file, and the CR
of a CRLF line end. A line is what lies between LF bytes; a last line without LF is still a line.

Symbolic links are never followed: a linked entry in a photos folder becomes a row with no
content (silver quarantines it), and a linked data file or batch folder is refused with an error,
since following either could read outside the landing root.
"""

import hashlib
import json
import os
import stat
from pathlib import Path

import polars as pl

from compositional_ai.landing import formats

LINE_SCHEMA = {
    "batch": pl.String,
    "source_file": pl.String,
    "line_number": pl.Int64,
    "line_sha256": pl.String,
    "raw": pl.Binary,
    "text": pl.String,
    "csv_header": pl.String,
    "file_sha256": pl.String,
}

# file_type: "file" (content kept), "oversized" (a regular file above the content limit, so
# content is empty), "symlink" (never followed, link_target holds where it points) or
# "special" (a FIFO, socket or device, never opened).
FILE_SCHEMA = {
    "batch": pl.String,
    "source_file": pl.String,
    "file_sha256": pl.String,
    "size_bytes": pl.Int64,
    "content": pl.Binary,
    "file_type": pl.String,
    "link_target": pl.String,
}

UTF8_BOM = b"\xef\xbb\xbf"
# Far above any photo silver accepts; a larger file is hashed but its bytes are not kept.
MAX_CONTENT_BYTES = 64 * 1024 * 1024
# Dagster refuses these in partition keys, and a key is a folder name here.
PARTITION_KEY_FORBIDDEN = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")
# The files and folders a batch may hold (formats.py); anything else is reported, not read.
BATCH_ENTRIES = frozenset(
    {
        formats.READY_MARKER,
        formats.REQUESTS_FILE,
        formats.CHATS_FILE,
        formats.CUSTOMERS_FILE,
        formats.OUTCOMES_FILE,
        formats.PHOTOS_DIR,
        formats.SYNTHETIC_FILE,
        formats.SYNTHETIC_DIR,
    }
)


class BatchNotReadyError(RuntimeError):
    """Raised when a batch folder is read before its `_READY` marker exists."""


class LandingFileError(ValueError):
    """Raised when a landed path exists but may not be read: a link, a folder or a device."""


def check_batch_key(batch: str) -> str:
    """Return the batch key if it can name one folder below the batches root, else raise.

    Spaces, quotes, commas and non-ASCII letters are fine; path separators, '.', '..', control
    characters and '...' (which Dagster refuses in partition keys) are not.
    """
    if batch in ("", ".", ".."):
        raise ValueError(f"batch key {batch!r} cannot name a landing batch folder")
    if "/" in batch or "\\" in batch:
        raise ValueError(
            f"batch key {batch!r} contains a path separator ('/' or '\\'); a batch is one folder "
            "directly below the batches folder, so its name cannot contain one"
        )
    found = [part for part in PARTITION_KEY_FORBIDDEN if part in batch]
    if found or any(ord(char) < 32 or ord(char) == 127 for char in batch):
        raise ValueError(
            f"batch key {batch!r} contains control characters or '...', which cannot be "
            "partition keys"
        )
    return batch


def batch_folder(batches_root: Path, batch: str) -> Path:
    """Return the folder of one landing batch, refusing keys that would leave the landing root."""
    folder = batches_root / check_batch_key(batch)
    if folder.is_symlink():
        raise LandingFileError(
            f"landing batch {batch!r} at {folder} is a symbolic link; batch folders are not "
            "followed outside the landing root"
        )
    if not (folder / formats.READY_MARKER).is_file():
        raise BatchNotReadyError(
            f"landing batch {batch!r} at {folder} has no {formats.READY_MARKER} marker yet"
        )
    return folder


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _split_lines(content: bytes) -> list[bytes]:
    """Split on LF, dropping one CR before it; a final line without LF is still a line."""
    if content.startswith(UTF8_BOM):
        content = content[len(UTF8_BOM) :]
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _refuse_unreadable(path: Path) -> None:
    if path.is_symlink():
        raise LandingFileError(
            f"{path} is a symbolic link; landing files are read only as regular files"
        )
    if path.exists() and not path.is_file():
        raise LandingFileError(f"{path} exists but is not a regular file")


def read_lines(path: Path, *, batch: str, source_file: str, csv: bool = False) -> pl.DataFrame:
    """Read a JSONL or CSV file into one bronze row per line; a missing file gives no rows.

    For CSV the first line is the header: it is not a row, and every row carries it so that
    silver can parse the row on its own. A path that is a link, a folder or a device raises
    `LandingFileError`.
    """
    _refuse_unreadable(path)
    if not path.is_file():
        return pl.DataFrame(schema=LINE_SCHEMA)
    content = path.read_bytes()
    file_sha = hashlib.sha256(content).hexdigest()
    lines = _split_lines(content)
    header = None
    first_line = 1
    if csv and lines:
        header = _decode(lines[0])
        lines = lines[1:]
        first_line = 2
    return pl.DataFrame(
        {
            "batch": [batch] * len(lines),
            "source_file": [source_file] * len(lines),
            "line_number": list(range(first_line, first_line + len(lines))),
            "line_sha256": [hashlib.sha256(line).hexdigest() for line in lines],
            "raw": lines,
            "text": [_decode(line) for line in lines],
            "csv_header": [header] * len(lines),
            "file_sha256": [file_sha] * len(lines),
        },
        schema=LINE_SCHEMA,
    )


def _entries(folder: Path) -> list[Path]:
    """Every non-folder entry below `folder`, without descending into linked folders."""
    found = []
    for parent, folders, files in os.walk(folder, followlinks=False):
        base = Path(parent)
        found += [base / name for name in files]
        # os.walk lists a link to a folder among the folders and does not enter it.
        found += [base / name for name in folders if (base / name).is_symlink()]
    return sorted(found)


def _file_row(path: Path, *, batch: str, relative_to: Path, max_content_bytes: int) -> dict:
    info = path.lstat()
    row = {
        "batch": batch,
        "source_file": path.relative_to(relative_to).as_posix(),
        "size_bytes": 0,
        "content": b"",
        "link_target": None,
    }
    if stat.S_ISLNK(info.st_mode):
        row.update(file_type="symlink", link_target=os.readlink(path))
    elif not stat.S_ISREG(info.st_mode):
        row.update(file_type="special")
    elif info.st_size > max_content_bytes:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {**row, "file_type": "oversized", "size_bytes": info.st_size, "file_sha256": digest}
    else:
        content = path.read_bytes()
        row.update(file_type="file", size_bytes=len(content), content=content)
    return {**row, "file_sha256": hashlib.sha256(row["content"]).hexdigest()}


def read_files(
    folder: Path, *, batch: str, relative_to: Path, max_content_bytes: int = MAX_CONTENT_BYTES
) -> pl.DataFrame:
    """Read every entry below `folder` into one bronze row per file, bytes included.

    Symbolic links, devices and FIFOs get a row with empty content (`file_type` says which):
    following or opening them could read outside the batch or block. A file larger than
    `max_content_bytes` gets its size and digest but no content. When `folder` itself is a link,
    it is the one row.
    """
    if folder.is_symlink():
        paths = [folder]
    elif folder.is_dir():
        paths = _entries(folder)
    else:
        paths = []
    rows = [
        _file_row(path, batch=batch, relative_to=relative_to, max_content_bytes=max_content_bytes)
        for path in paths
    ]
    return pl.DataFrame(rows, schema=FILE_SCHEMA)


def ready_manifest(folder: Path) -> dict:
    """Return the batch's `_READY` manifest (file digests and row counts written by the lander).

    The marker's presence is what makes a batch ready; its content only feeds a comparison, so an
    empty or unreadable manifest gives {} and a `files` entry that is not an object is dropped.
    """
    try:
        manifest = json.loads((folder / formats.READY_MARKER).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    if not isinstance(manifest.get("files", {}), dict):
        manifest = {key: value for key, value in manifest.items() if key != "files"}
    return manifest


def unexpected_entries(folder: Path) -> list[str]:
    """The names in a batch folder that the landing contract does not define; they are not read.

    A misspelt data file (`request.jsonl`) or a photo beside `photos/` shows up here.
    """
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in BATCH_ENTRIES)


def read_unexpected(
    folder: Path, *, batch: str, max_content_bytes: int = MAX_CONTENT_BYTES
) -> pl.DataFrame:
    """One bronze row per file the landing contract does not define, bytes kept as for photos.

    No later layer reads these rows; they are kept so that a misspelt or stray file is seen
    (bronze's `no_unread_files` check) and can be recovered, not dropped in silence. A folder is
    read file by file; links and devices get a row without content, as in `read_files`.
    """
    paths: list[Path] = []
    for name in unexpected_entries(folder):
        path = folder / name
        paths += _entries(path) if path.is_dir() and not path.is_symlink() else [path]
    rows = [
        _file_row(path, batch=batch, relative_to=folder, max_content_bytes=max_content_bytes)
        for path in paths
    ]
    return pl.DataFrame(rows, schema=FILE_SCHEMA)
