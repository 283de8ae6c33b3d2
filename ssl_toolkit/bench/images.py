"""Synthetic photo-like JPEGs for the data-pipeline benchmarks.

JPEG decode time grows with the entropy-coded size, so a benchmark on flat or tiny test images
flatters every pipeline. These images are built to code like a photograph at their size: a smooth
colour field (sky, walls), mid-scale blotches (foliage, texture), a few hard-edged shapes (objects) and
sensor noise. At 400×350 and quality 90 they come out at about 35–50 KB, in the 30–60 KB range of
ImageNet training images resized to that size.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def _colour_field(rng: np.random.Generator, width: int, height: int, cells: tuple[int, int]) -> np.ndarray:
    """Random colours on a ``cells`` grid, bicubic-upsampled to ``width × height`` (float32 H×W×3)."""
    grid = rng.integers(0, 256, (cells[1], cells[0], 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)


def synthetic_photo(rng: np.random.Generator, width: int = 400, height: int = 350) -> np.ndarray:
    """One photo-like uint8 RGB image, ``(height, width, 3)``."""
    field = (
        0.6 * _colour_field(rng, width, height, (3, 3))
        + 0.25 * _colour_field(rng, width, height, (max(width // 32, 2), max(height // 32, 2)))
        + 0.15 * _colour_field(rng, width, height, (max(width // 7, 2), max(height // 7, 2)))
    )
    canvas = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=colour)
    image = 0.55 * np.asarray(canvas, np.float32) + 0.45 * field  # shapes shaded by the field below
    image += rng.normal(0.0, rng.uniform(5.0, 8.0), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_jpegs(
    num_images: int, size: tuple[int, int] = (400, 350), quality: int = 90, seed: int = 0
) -> list[bytes]:
    """``num_images`` encoded JPEGs of :func:`synthetic_photo` images.

    Args:
        num_images: how many.
        size: ``(width, height)`` in pixels, as PIL gives sizes.
        quality: JPEG quality (4:2:0 chroma subsampling, PIL's default).
        seed: the same seed gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    width, height = int(size[0]), int(size[1])
    out = []
    for _ in range(num_images):
        buffer = io.BytesIO()
        Image.fromarray(synthetic_photo(rng, width, height)).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out
