"""Synthetic photos that resemble the real ones: label-preserving transforms of a parent photo.

A synthetic photo is made from one real photo of the training pool (its parent) by transforms
that leave the damage as it was: a horizontal and / or vertical flip, a shift of a few pixels
(edges repeated), gamma, contrast and brightness jitter, and gray sensor noise. No 90-degree
rotation: the cells' busbars run one way, and a rotated cell is not a photo the service receives.
Every synthetic photo is marked: it lands in its batch's synthetic folder, listed in the
synthetic manifest with `synthetic = true`, GENERATOR_VERSION and its parent's sha256.

The transforms are vectorised over a stack of same-sized photos; only decoding and PNG encoding
run per photo.
"""

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

GENERATOR_VERSION = "synth-1.0"

# Parameter ranges, chosen so a synthetic cell stays within what the real cells vary by: the elpv
# cells' mean gray level spreads by about 20 %, their noise is a few gray levels.
FLIP_PROBABILITY = 0.5
MAX_SHIFT_PX = 4
GAMMA_RANGE = (0.9, 1.1)
CONTRAST_RANGE = (0.9, 1.1)
BRIGHTNESS_RANGE = (0.92, 1.08)
NOISE_SIGMA_RANGE = (1.0, 3.0)


@dataclass(frozen=True)
class Transforms:
    """The transform parameters of n synthetic photos, one array entry per photo."""

    flip_horizontal: np.ndarray
    flip_vertical: np.ndarray
    shift_rows: np.ndarray
    shift_columns: np.ndarray
    gamma: np.ndarray
    contrast: np.ndarray
    brightness: np.ndarray
    noise_sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.gamma)

    def describe(self, index: int) -> str:
        """One photo's parameters as compact JSON, for the synthetic manifest."""
        return json.dumps(
            {
                "flip_horizontal": bool(self.flip_horizontal[index]),
                "flip_vertical": bool(self.flip_vertical[index]),
                "shift_px": [int(self.shift_rows[index]), int(self.shift_columns[index])],
                "gamma": round(float(self.gamma[index]), 4),
                "contrast": round(float(self.contrast[index]), 4),
                "brightness": round(float(self.brightness[index]), 4),
                "noise_sigma": round(float(self.noise_sigma[index]), 4),
            },
            separators=(",", ":"),
        )

    def take(self, indices: np.ndarray) -> "Transforms":
        """The parameters of the photos at `indices`."""
        return Transforms(
            **{name: getattr(self, name)[indices] for name in self.__dataclass_fields__}
        )


def draw_transforms(n: int, rng: np.random.Generator) -> Transforms:
    """Draw the parameters of n synthetic photos."""
    return Transforms(
        flip_horizontal=rng.random(n) < FLIP_PROBABILITY,
        flip_vertical=rng.random(n) < FLIP_PROBABILITY,
        shift_rows=rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=n),
        shift_columns=rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=n),
        gamma=rng.uniform(*GAMMA_RANGE, size=n),
        contrast=rng.uniform(*CONTRAST_RANGE, size=n),
        brightness=rng.uniform(*BRIGHTNESS_RANGE, size=n),
        noise_sigma=rng.uniform(*NOISE_SIGMA_RANGE, size=n),
    )


def _shifted(images: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each image moved by its own (rows, columns), the edge pixels repeated into the gap."""
    n, height, width = images.shape
    row_index = np.clip(np.arange(height)[None, :] - rows[:, None], 0, height - 1)
    column_index = np.clip(np.arange(width)[None, :] - columns[:, None], 0, width - 1)
    return images[np.arange(n)[:, None, None], row_index[:, :, None], column_index[:, None, :]]


def apply_transforms(
    images: np.ndarray, transforms: Transforms, rng: np.random.Generator
) -> np.ndarray:
    """Transform a stack of 8-bit gray images (n, height, width) into synthetic ones, uint8."""
    if images.ndim != 3 or len(transforms) != images.shape[0]:
        raise ValueError(
            f"expected a stack of {len(transforms)} gray images, got shape {images.shape}"
        )
    out = np.where(transforms.flip_horizontal[:, None, None], images[:, :, ::-1], images)
    out = np.where(transforms.flip_vertical[:, None, None], out[:, ::-1, :], out)
    out = _shifted(out, transforms.shift_rows, transforms.shift_columns)
    scaled = out.astype(np.float32) / 255.0
    scaled = np.power(scaled, transforms.gamma[:, None, None].astype(np.float32))
    mean = scaled.mean(axis=(1, 2), keepdims=True)
    scaled = (scaled - mean) * transforms.contrast[:, None, None] + mean
    scaled = scaled * transforms.brightness[:, None, None]
    noisy = scaled * 255.0 + rng.standard_normal(images.shape, dtype=np.float32) * (
        transforms.noise_sigma[:, None, None].astype(np.float32)
    )
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def decode_gray(data: bytes) -> np.ndarray:
    """One photo's bytes as an 8-bit gray array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit gray array as PNG bytes."""
    buffer = io.BytesIO()
    # The fastest zlib level: a synthetic cell is written once, and speed is what the demo needs.
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


@dataclass(frozen=True)
class SyntheticPhoto:
    """One synthetic photo: its PNG bytes and the parameters that made it (JSON)."""

    png: bytes
    transforms: str


def synthesize(parents: Sequence[bytes], *, seed: int | Sequence[int]) -> list[SyntheticPhoto]:
    """One synthetic photo per parent photo, in the parents' order; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    transforms = draw_transforms(len(parents), rng)
    decoded = [decode_gray(data) for data in parents]
    results: list[SyntheticPhoto | None] = [None] * len(parents)
    # Photos of one size are transformed as one stack.
    for shape in sorted({image.shape for image in decoded}):
        indices = np.array([i for i, image in enumerate(decoded) if image.shape == shape])
        stack = np.stack([decoded[i] for i in indices])
        group = transforms.take(indices)
        made = apply_transforms(stack, group, rng)
        for position, index in enumerate(indices.tolist()):
            results[index] = SyntheticPhoto(encode_png(made[position]), group.describe(position))
    return [result for result in results if result is not None]
