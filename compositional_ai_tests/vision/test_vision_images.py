import io
import struct
import zlib
from pathlib import Path

import elpv_dataset
import numpy as np
import pytest
from PIL import Image

from compositional_ai.vision.images import (
    REJECTION_REASONS,
    DecodeFailed,
    ImageInfo,
    ImageRejected,
    decode_gray,
    inspect_and_decode,
    inspect_image,
)

ELPV_IMAGES = Path(elpv_dataset.__file__).parent / "data" / "images"
LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000}


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(height: int = 40, width: int = 40) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) * 3 % 256).astype(np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def corrupt_idat(png: bytes) -> bytes:
    """The PNG with the start of its compressed pixel stream scrambled."""
    data = bytearray(png)
    start = data.find(b"IDAT") + 4
    data[start : start + 8] = bytes(b ^ 0x55 for b in data[start : start + 8])
    return bytes(data)


def flip_ihdr_crc(png: bytes) -> bytes:
    """The PNG with one bit of its IHDR chunk's CRC flipped."""
    data = bytearray(png)
    crc = data.find(b"IHDR") + 4 + 13
    data[crc] ^= 0x01
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its frame header (SOF0) patched to claim width x height."""
    data = bytearray(encode(gradient(), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def real_png() -> bytes:
    return (ELPV_IMAGES / "cell0001.png").read_bytes()


# Noise keeps the PNG from compressing to a few bytes, so cutting it really removes pixel data.
PNG = encode(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8), "PNG")
JPEG = encode(gradient(), "JPEG", quality=90)

REJECTED = [
    # Nothing at all.
    pytest.param(b"", LIMITS, "empty_file", id="empty"),
    # A real 23 kB cell photo against a 1 kB limit.
    pytest.param(real_png(), {**LIMITS, "max_bytes": 1000}, "too_many_bytes", id="too-big"),
    # Seeded random bytes: no signature.
    pytest.param(np.random.default_rng(1).bytes(500), LIMITS, "not_an_image", id="random-bytes"),
    # Text that someone renamed to .png.
    pytest.param(b"hello, this is a photo", LIMITS, "not_an_image", id="text"),
    # The first 4 bytes of a PNG signature.
    pytest.param(PNG[:4], LIMITS, "truncated_image", id="png-partial-signature"),
    # Signature and IHDR length, cut before the width / height.
    pytest.param(PNG[:18], LIMITS, "truncated_image", id="png-cut-in-ihdr"),
    # Header intact, pixel data cut in half.
    pytest.param(PNG[: len(PNG) // 2], LIMITS, "truncated_image", id="png-cut-in-idat"),
    # Same for a real cell photo.
    pytest.param(real_png()[:5000], LIMITS, "truncated_image", id="real-png-cut"),
    # JPEG cut after its frame header, inside the entropy-coded data.
    pytest.param(JPEG[: len(JPEG) // 2], LIMITS, "truncated_image", id="jpeg-cut-in-scan"),
    # JPEG cut inside its first segments, before the frame header.
    pytest.param(JPEG[:30], LIMITS, "truncated_image", id="jpeg-cut-before-sof"),
    # Decompression bomb: 1 kB of PNG claiming 100k x 100k pixels.
    pytest.param(png_claiming(100_000, 100_000), LIMITS, "too_many_pixels", id="png-bomb"),
    # Just over the pixel limit: 2001 x 2000 > 4 M.
    pytest.param(png_claiming(2001, 2000), LIMITS, "too_many_pixels", id="png-just-over"),
    # A strip within the pixel limit but longer than any camera's side (8193 x 1, then 1 x
    # 8193): resizing such a strip to a square costs seconds of CPU.
    pytest.param(png_claiming(8193, 1), LIMITS, "too_many_pixels", id="png-wide-strip"),
    pytest.param(png_claiming(1, 8193), LIMITS, "too_many_pixels", id="png-tall-strip"),
    # JPEG frame header claiming 60000 x 60000.
    pytest.param(jpeg_claiming(60_000, 60_000), LIMITS, "too_many_pixels", id="jpeg-bomb"),
    # Zero-width PNG, which the format forbids.
    pytest.param(png_claiming(0, 10), LIMITS, "not_an_image", id="png-zero-width"),
    # PNG signature followed by some other chunk instead of IHDR.
    pytest.param(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"tEXt", b"a" * 20), LIMITS, "not_an_image", id="no-ihdr"
    ),
    # Valid header, but the compressed pixel stream is garbage.
    pytest.param(corrupt_idat(PNG), LIMITS, "not_an_image", id="png-corrupt-idat"),
    # A real cell photo with one bit of its header's checksum flipped.
    pytest.param(flip_ihdr_crc(real_png()), LIMITS, "not_an_image", id="png-bad-ihdr-crc"),
    # JPEG whose first marker is start-of-scan: no frame header at all.
    pytest.param(b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, LIMITS, "not_an_image", id="jpeg-sos"),
    # Well-formed images in formats we do not take.
    pytest.param(encode(gradient(), "GIF"), LIMITS, "unsupported_format", id="gif"),
    pytest.param(encode(gradient(), "BMP"), LIMITS, "unsupported_format", id="bmp"),
    pytest.param(encode(gradient(), "TIFF"), LIMITS, "unsupported_format", id="tiff"),
    pytest.param(encode(gradient(), "WEBP"), LIMITS, "unsupported_format", id="webp"),
]


@pytest.mark.parametrize(("data", "limits", "reason"), REJECTED)
def test_inspect_image_rejects(data: bytes, limits: dict, reason: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, **limits)
    assert caught.value.reason == reason
    assert caught.value.detail
    # The detail reaches service callers: it names the problem, not the service's memory.
    assert " at 0x" not in caught.value.detail
    assert not caught.value.detail.endswith((" ", ":", "file the photo"))


def test_an_unidentifiable_image_is_described_in_plain_words() -> None:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(flip_ihdr_crc(real_png()), **LIMITS)
    assert caught.value.reason == "not_an_image"
    assert caught.value.detail == "PNG data is corrupt: cannot identify image file"


def test_every_reason_is_exercised() -> None:
    assert {case.values[2] for case in REJECTED} == set(REJECTION_REASONS)


ACCEPTED = [
    # The real 300 x 300 8-bit gray EL cell.
    pytest.param(real_png(), ImageInfo(300, 300, "L", "PNG"), id="real-cell"),
    # Non-square gray PNG: width and height are not swapped.
    pytest.param(encode(gradient(30, 50), "PNG"), ImageInfo(50, 30, "L", "PNG"), id="png-50x30"),
    # Colour JPEG, as a phone would send.
    pytest.param(
        encode(np.stack([gradient()] * 3, axis=-1), "JPEG"),
        ImageInfo(40, 40, "RGB", "JPEG"),
        id="rgb-jpeg",
    ),
    # 16-bit gray PNG.
    pytest.param(
        encode(gradient().astype(np.uint16) * 256, "PNG"),
        ImageInfo(40, 40, "I;16", "PNG"),
        id="png-16bit",
    ),
    # Exactly at the pixel limit (2000 x 2000 = 4 M) is allowed.
    pytest.param(
        encode(np.zeros((2000, 2000), np.uint8), "PNG"),
        ImageInfo(2000, 2000, "L", "PNG"),
        id="at-pixel-limit",
    ),
]


@pytest.mark.parametrize(("data", "expected"), ACCEPTED)
def test_inspect_image_accepts(data: bytes, expected: ImageInfo) -> None:
    assert inspect_image(data, **LIMITS) == expected


@pytest.mark.parametrize("data", [case.values[0] for case in REJECTED])
def test_inspect_and_decode_rejects_what_inspect_image_rejects(data: bytes) -> None:
    limits = {**LIMITS, "max_bytes": 1000} if data == real_png() else LIMITS
    with pytest.raises(ImageRejected) as expected:
        inspect_image(data, **limits)

    with pytest.raises(ImageRejected) as caught:
        inspect_and_decode(data, 24, **limits)

    assert not isinstance(caught.value, DecodeFailed)
    assert (caught.value.reason, caught.value.detail) == (
        expected.value.reason,
        expected.value.detail,
    )


def palette_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gradient()] * 3, axis=-1)).convert("P").save(buffer, "PNG")
    return buffer.getvalue()


# Photos of every kind the service may take, with the pixels decode_gray makes of them.
DECODED = [
    pytest.param(real_png(), id="real-cell"),
    pytest.param(encode(gradient(30, 50), "PNG"), id="png-50x30"),
    pytest.param(encode(gradient(24, 24), "PNG"), id="png-at-size"),
    pytest.param(encode(gradient().astype(np.uint16) * 257, "PNG"), id="png-16bit"),
    pytest.param(encode(np.stack([gradient()] * 3, axis=-1), "PNG"), id="png-rgb"),
    pytest.param(encode(np.dstack([gradient()] * 4), "PNG"), id="png-rgba"),
    pytest.param(encode(gradient() > 60, "PNG"), id="png-1bit"),
    pytest.param(palette_png(), id="png-palette"),
    pytest.param(JPEG, id="gray-jpeg"),
    pytest.param(encode(np.stack([gradient(300, 300)] * 3, axis=-1), "JPEG"), id="rgb-jpeg-draft"),
]


@pytest.mark.parametrize("data", DECODED)
def test_inspect_and_decode_gives_inspect_image_and_decode_gray(data: bytes) -> None:
    info, pixels = inspect_and_decode(data, 24, **LIMITS)

    assert info == inspect_image(data, **LIMITS)
    assert pixels.dtype == np.uint8 and pixels.flags.writeable
    assert np.array_equal(pixels, decode_gray([data], 24))


def test_inspect_and_decode_reports_a_failure_after_the_checks(monkeypatch) -> None:
    def failing(image, size):
        raise OSError("resampling failed")

    monkeypatch.setattr("compositional_ai.vision.images._gray_pixels", failing)

    with pytest.raises(DecodeFailed, match="resampling failed"):
        inspect_and_decode(PNG, 24, **LIMITS)


def test_pixel_limit_never_exceeds_pillows_bomb_threshold(monkeypatch) -> None:
    # Above Pillow's threshold, Pillow would warn (an error under pytest) or refuse on its own.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRejected) as caught:
        inspect_image(PNG, max_bytes=10**6, max_pixels=10**9)
    assert caught.value.reason == "too_many_pixels"


def test_mutated_images_only_ever_raise_image_rejected() -> None:
    rng = np.random.default_rng(0)
    seeds = [PNG, JPEG, real_png()]
    outcomes = set()
    for trial in range(300):
        data = bytearray(seeds[trial % 3])
        for position in rng.integers(0, len(data), size=rng.integers(1, 12)):
            data[position] = rng.integers(0, 256)
        if trial % 4 == 0:
            data = data[: rng.integers(1, len(data))]
        try:
            inspect_image(bytes(data), **LIMITS)
            outcomes.add("accepted")
        except ImageRejected as error:
            outcomes.add(error.reason)
    assert outcomes <= {"accepted", *REJECTION_REASONS}
    assert "truncated_image" in outcomes


def test_decode_gray_shape_dtype_and_values() -> None:
    flat = np.full((50, 50), 200, np.uint8)
    out = decode_gray([encode(flat, "PNG"), real_png(), encode(gradient(), "JPEG")], 32)
    assert out.shape == (3, 32, 32)
    assert out.dtype == np.uint8
    assert np.all(out[0] == 200)


def test_decode_gray_converts_colour_and_16_bit() -> None:
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    sixteen = np.full((20, 20), 32768, np.uint16)
    out = decode_gray([encode(red, "PNG"), encode(sixteen, "PNG")], 20)
    # ITU-R 601 luma of pure red is 0.299 * 255 = 76.
    assert np.all(out[0] == 76)
    # 32768 / 256 = 128, where plain conversion would clip to 255.
    assert np.all(out[1] == 128)


def test_decode_gray_stretches_non_square_and_keeps_orientation() -> None:
    tall = np.zeros((80, 20), np.uint8)
    tall[:40] = 255
    out = decode_gray([encode(tall, "PNG")], 16)[0]
    assert out.shape == (16, 16)
    # Lanczos rings by a grey level or two next to the edge.
    assert out[:6].min() >= 250 and out[10:].max() <= 5


def test_decode_gray_jpeg_draft_matches_full_decode() -> None:
    big = np.kron(gradient(), np.ones((8, 8), np.uint8))
    jpeg = encode(big, "JPEG", quality=95)
    fast = decode_gray([jpeg], 40)[0].astype(int)
    assert np.abs(fast - gradient().astype(int)).mean() < 6


def test_decode_gray_threads_match_single() -> None:
    data = [real_png(), PNG, JPEG] * 3
    assert np.array_equal(decode_gray(data, 24, num_workers=2), decode_gray(data, 24))


def test_decode_gray_names_the_bad_item() -> None:
    with pytest.raises(ImageRejected, match="item 1") as caught:
        decode_gray([PNG, PNG[:300], PNG], 16)
    assert caught.value.reason == "truncated_image"


def test_decode_gray_empty_batch() -> None:
    assert decode_gray([], 8).shape == (0, 8, 8)
