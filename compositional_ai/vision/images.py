"""Checks for untrusted image bytes, and batched decoding to the model's grayscale input.

`inspect_image` is the gate in front of everything that decodes a photo: it reads the dimensions
from the PNG / JPEG header itself, before Pillow decodes anything, so a small file that claims a
huge canvas (a decompression bomb) is rejected without allocating it. Every failure is an
`ImageRejected` with a machine-readable reason, whatever the bytes are.
"""

import io
import os
import re
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Machine-readable rejection reasons, in the order the checks run.
EMPTY_FILE = "empty_file"
TOO_MANY_BYTES = "too_many_bytes"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
TRUNCATED_IMAGE = "truncated_image"
TOO_MANY_PIXELS = "too_many_pixels"
REJECTION_REASONS = (
    EMPTY_FILE,
    TOO_MANY_BYTES,
    NOT_AN_IMAGE,
    UNSUPPORTED_FORMAT,
    TRUNCATED_IMAGE,
    TOO_MANY_PIXELS,
)

SUPPORTED_FORMATS = ("PNG", "JPEG")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# Leading bytes of image formats we recognise but do not accept, so the caller can tell a user
# "send a PNG or JPEG" rather than "this is not an image".
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)
# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9

# Decoding a 300x300 PNG takes about a millisecond of one core, as long as the CNN's forward pass
# over it, so batch callers decode on every core (at most 4) by default.
DECODE_WORKERS = min(4, os.cpu_count() or 1)
# The side silver decodes every clean photo to once (silver.photo_pixels), the demo models' size:
# inference and training at this size read pixels instead of decoding the photo again.
STORED_IMAGE_SIZE = 96

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class ImageInfo:
    """What an accepted image is: pixel size, Pillow mode and container format."""

    width: int
    height: int
    mode: str
    format: str


class ImageRejected(ValueError):
    """An image failed a check; `reason` is one of REJECTION_REASONS, `detail` is for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DecodeFailed(ImageRejected):
    """An image passed `inspect_image` but could not be decoded to the model's pixels."""


def _sniff_format(data: bytes) -> str:
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(_JPEG_SOI):
        return "JPEG"
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            raise ImageRejected(UNSUPPORTED_FORMAT, f"{name} is not accepted; send PNG or JPEG")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise ImageRejected(UNSUPPORTED_FORMAT, "WebP is not accepted; send PNG or JPEG")
    if data[4:8] == b"ftyp":
        raise ImageRejected(UNSUPPORTED_FORMAT, "HEIF/AVIF is not accepted; send PNG or JPEG")
    if _PNG_SIGNATURE.startswith(data) or _JPEG_SOI.startswith(data):
        raise ImageRejected(TRUNCATED_IMAGE, f"only {len(data)} bytes of an image signature")
    raise ImageRejected(NOT_AN_IMAGE, "no PNG or JPEG signature")


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: 4-byte length, b"IHDR", then width and height.
    if len(data) < 24:
        raise ImageRejected(TRUNCATED_IMAGE, "PNG ends before its IHDR header")
    if data[12:16] != b"IHDR":
        raise ImageRejected(NOT_AN_IMAGE, "PNG does not start with an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    end = len(data)
    while True:
        if pos >= end:
            raise ImageRejected(TRUNCATED_IMAGE, "JPEG ends before its frame header")
        if data[pos] != 0xFF:
            raise ImageRejected(NOT_AN_IMAGE, f"JPEG marker expected at byte {pos}")
        # Any number of 0xFF fill bytes may precede a marker code.
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            raise ImageRejected(TRUNCATED_IMAGE, "JPEG ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI) or marker == 0xD8:
            raise ImageRejected(NOT_AN_IMAGE, "JPEG has no frame header before its scan data")
        if pos + 2 > end:
            raise ImageRejected(TRUNCATED_IMAGE, "JPEG ends inside a segment length")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise ImageRejected(NOT_AN_IMAGE, f"JPEG segment length {length} at byte {pos}")
        if marker in _JPEG_SOF_MARKERS:
            if pos + 7 > end:
                raise ImageRejected(TRUNCATED_IMAGE, "JPEG ends inside its frame header")
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length


# The longest side a photo may have, whatever its pixel count (a camera's is below 8,000).
MAX_SIDE = 8192


def _pixel_limit(max_pixels: int) -> int:
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; staying under its
    # threshold keeps those warnings (errors under pytest) from ever firing after our check.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check untrusted bytes are a complete PNG or JPEG within the size limits, and describe it."""
    fmt = _check_header(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with _verified(data, fmt) as image:
        return _describe(image, fmt)


def inspect_and_decode(
    data: bytes, size: int, *, max_bytes: int, max_pixels: int
) -> tuple[ImageInfo, np.ndarray]:
    """`inspect_image`, then the photo as `decode_gray([data], size)` gives it ([1, size, size]).

    A PNG is decoded once: the checks' full verifying decode is the one the pixels come from.
    A JPEG is decoded again, in draft mode at reduced scale, as `decode_gray` does. Raises
    `ImageRejected` as `inspect_image` does, or `DecodeFailed` if the photo passed the checks
    but could not be turned into pixels.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    fmt = _check_header(data, max_bytes=max_bytes, max_pixels=max_pixels)
    with _verified(data, fmt) as image:
        info = _describe(image, fmt)
        try:
            pixels = _gray_pixels(image, size) if fmt == "PNG" else _decode_one(data, size)
        except ImageRejected as error:
            raise DecodeFailed(error.reason, error.detail) from error
        except Exception as error:
            raise DecodeFailed(*_classify_decode_error("image", error)) from error
    # A copy: the array over Pillow's buffer is read-only, and torch wants to own writable memory.
    return info, pixels[None].copy()


def _check_header(data: bytes, *, max_bytes: int, max_pixels: int) -> str:
    if len(data) == 0:
        raise ImageRejected(EMPTY_FILE, "no bytes")
    if len(data) > max_bytes:
        raise ImageRejected(TOO_MANY_BYTES, f"{len(data)} bytes > limit {max_bytes}")
    fmt = _sniff_format(data)
    width, height = _png_size(data) if fmt == "PNG" else _jpeg_size(data)
    if width == 0 or height == 0:
        raise ImageRejected(NOT_AN_IMAGE, f"{fmt} header says {width} x {height} pixels")
    limit = _pixel_limit(max_pixels)
    if width * height > limit:
        raise ImageRejected(
            TOO_MANY_PIXELS, f"{width} x {height} = {width * height} pixels > limit {limit}"
        )
    if max(width, height) > MAX_SIDE:
        # A thin strip passes the pixel limit yet costs seconds to resize to a square.
        raise ImageRejected(
            TOO_MANY_PIXELS, f"{width} x {height} pixels: a side is longer than {MAX_SIDE}"
        )
    return fmt


def _verified(data: bytes, fmt: str) -> Image.Image:
    """The image fully decoded (every byte read), after `_check_header` passed; close it."""
    image = None
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        image.load()
        return image
    except Image.DecompressionBombError as error:
        _close(image)
        raise ImageRejected(TOO_MANY_PIXELS, str(error)) from error
    except Exception as error:
        _close(image)
        # The bytes are untrusted: whatever Pillow's decoders raise (OSError, SyntaxError,
        # struct.error, zlib.error, ...) becomes a rejection, never an unexpected exception.
        raise ImageRejected(*_classify_decode_error(fmt, error)) from error


def _close(image: Image.Image | None) -> None:
    if image is not None:
        image.close()


def _describe(image: Image.Image, fmt: str) -> ImageInfo:
    return ImageInfo(width=image.width, height=image.height, mode=image.mode, format=fmt)


# Pillow names the buffer it read in some messages ("<_io.BytesIO object at 0x7f...>"): an
# address of the service's memory that a caller has no use for.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _classify_decode_error(fmt: str, error: Exception) -> tuple[str, str]:
    # PIL names the buffer it read ("cannot identify image file <_io.BytesIO object at 0x..>"):
    # the service's memory is no one's business, and the sentence reads whole without it.
    message = _OBJECT_REPR.sub("", str(error)).strip(" :") or type(error).__name__
    if isinstance(error, EOFError) or "truncated" in message.lower():
        return TRUNCATED_IMAGE, f"{fmt} data ends early: {message}"
    return NOT_AN_IMAGE, f"{fmt} data is corrupt: {message}"


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's 16-bit to L conversion clips at 255; scaling keeps the whole range.
        pixels = np.asarray(image, dtype=np.uint32) >> 8
        return Image.fromarray(np.minimum(pixels, 255).astype(np.uint8))
    return image.convert("L")


def _gray_pixels(image: Image.Image, size: int) -> np.ndarray:
    gray = _to_gray(image)
    if gray.size != (size, size):
        # Lanczos blurs thin cracks less than bilinear, for about a quarter more time.
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)


def _decode_one(data: bytes, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=list(SUPPORTED_FORMATS)) as image:
            if image.format == "JPEG":
                # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster, still >= size.
                image.draft("L", (size, size))
            return _gray_pixels(image, size)
    except Image.DecompressionBombError as error:
        raise ImageRejected(TOO_MANY_PIXELS, str(error)) from error
    except ImageRejected:
        raise
    except Exception as error:
        raise ImageRejected(*_classify_decode_error("image", error)) from error


def decode_gray(
    data: Sequence[bytes], size: int, *, num_workers: int = DECODE_WORKERS
) -> np.ndarray:
    """Decode PNG / JPEG bytes to uint8 grayscale [N, size, size] (Lanczos resize, no crop).

    Inputs should have passed `inspect_image`; a failure still raises `ImageRejected`, naming the
    item. Non-square images are stretched to square. `num_workers` > 1 decodes in threads
    (Pillow releases the GIL while decoding); 1 decodes in the calling thread.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    out = np.empty((len(data), size, size), dtype=np.uint8)

    def decode_into(index: int) -> None:
        try:
            out[index] = _decode_one(data[index], size)
        except ImageRejected as error:
            raise ImageRejected(error.reason, f"item {index}: {error.detail}") from error

    if num_workers <= 1 or len(data) < 2:
        for index in range(len(data)):
            decode_into(index)
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            # list() re-raises the first failure in the caller's thread.
            list(pool.map(decode_into, range(len(data))))
    return out
