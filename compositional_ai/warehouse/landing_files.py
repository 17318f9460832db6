"""Read landed files into bronze frames: every line or file as landed, with where it came from.

Bronze keeps the raw bytes; nothing is parsed or dropped here, so every later rejection can be
traced to a file, a line and a digest.
"""

import hashlib
import json
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

FILE_SCHEMA = {
    "batch": pl.String,
    "source_file": pl.String,
    "file_sha256": pl.String,
    "size_bytes": pl.Int64,
    "content": pl.Binary,
}

UTF8_BOM = b"\xef\xbb\xbf"


class BatchNotReadyError(RuntimeError):
    """Raised when a batch folder is read before its `_READY` marker exists."""


def batch_folder(batches_root: Path, batch: str) -> Path:
    """Return the folder of one landing batch, refusing keys that would leave the landing root."""
    if batch in ("", ".", "..") or "/" in batch or "\\" in batch or "\x00" in batch:
        raise ValueError(f"batch key {batch!r} cannot name a folder under {batches_root}")
    folder = batches_root / batch
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


def read_lines(path: Path, *, batch: str, source_file: str, csv: bool = False) -> pl.DataFrame:
    """Read a JSONL or CSV file into one bronze row per line; a missing file gives no rows.

    For CSV the first line is the header: it is not a row, and every row carries it so that
    silver can parse the row on its own.
    """
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
    frame = pl.DataFrame(
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
    return frame


def read_files(folder: Path, *, batch: str, relative_to: Path) -> pl.DataFrame:
    """Read every regular file below `folder` into one bronze row per file, bytes included.

    Symbolic links are recorded with empty content: following them could read outside the batch.
    """
    rows = []
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
            content = b"" if path.is_symlink() else path.read_bytes()
            rows.append(
                {
                    "batch": batch,
                    "source_file": path.relative_to(relative_to).as_posix(),
                    "file_sha256": hashlib.sha256(content).hexdigest(),
                    "size_bytes": len(content),
                    "content": content,
                }
            )
    return pl.DataFrame(rows, schema=FILE_SCHEMA)


def ready_manifest(folder: Path) -> dict:
    """Return the batch's `_READY` manifest (file digests and row counts written by the lander)."""
    text = (folder / formats.READY_MARKER).read_text(encoding="utf-8").strip()
    return json.loads(text) if text else {}
