"""Procedural 10-class image dataset: shapes x colours on textured, noisy backgrounds.

Deterministic by seed, 32x32 RGB by default, and learnable by a small CNN in seconds on a CPU.
It is what ``make demo`` and most tests use.
"""

from __future__ import annotations

import colorsys

import numpy as np

SHAPES = ("disk", "square", "ring", "cross", "triangle", "hstripes", "vstripes", "checker", "diagonal", "diamond")


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, xx: np.ndarray, yy: np.ndarray,
                freq: np.ndarray) -> np.ndarray:
    d2 = dx * dx + dy * dy
    if kind == "disk":
        return d2 < r * r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < r
    if kind == "ring":
        return np.abs(np.sqrt(d2) - r) < 0.3 * r
    if kind == "cross":
        return ((np.abs(dx) < r / 3) & (np.abs(dy) < r)) | ((np.abs(dy) < r / 3) & (np.abs(dx) < r))
    if kind == "triangle":
        return (dy < r) & (dy > -r) & (np.abs(dx) < (dy + r) / 2)
    if kind == "hstripes":
        return np.sin(yy * freq) > 0
    if kind == "vstripes":
        return np.sin(xx * freq) > 0
    if kind == "checker":
        return (np.sin(xx * freq) * np.sin(yy * freq)) > 0
    if kind == "diagonal":
        return np.abs(dx - dy) < r / 2
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) < r
    raise ValueError(f"unknown shape {kind!r}")


def make_synthetic(num_images: int, seed: int, num_classes: int = 10, image_size: int = 32,
                   noise: float = 0.12, hue_jitter: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, 3, H, W], labels int64 [N])``, balanced over classes.

    Class c draws shape ``SHAPES[c % 10]`` in a colour around hue ``c / num_classes`` at a random
    position and size, over a random dark background with a low-frequency texture and Gaussian noise.
    """
    if num_classes < 1 or num_classes > len(SHAPES):
        raise ValueError(f"synthetic dataset: num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % num_classes
    rng.shuffle(labels)
    s = image_size
    grid = (np.arange(s, dtype=np.float32) + 0.5) / s
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    yy, xx = yy[None], xx[None]  # [1, H, W]
    images = np.empty((num_images, 3, s, s), dtype=np.float32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        n = idx.size
        if n == 0:
            continue
        col = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731
        cx, cy = col(rng.uniform(0.3, 0.7, n)), col(rng.uniform(0.3, 0.7, n))
        r = col(rng.uniform(0.18, 0.32, n))
        freq = col(rng.uniform(14.0, 22.0, n))
        mask = _shape_mask(SHAPES[c % len(SHAPES)], xx - cx, yy - cy, r, xx, yy, freq).astype(np.float32)
        hue = (c / num_classes + rng.uniform(-hue_jitter, hue_jitter, n)) % 1.0
        sat, val = rng.uniform(0.3, 0.9, n), rng.uniform(0.4, 0.9, n)
        fg = np.array([colorsys.hsv_to_rgb(h, sa, v) for h, sa, v in zip(hue, sat, val)], dtype=np.float32)
        bg = rng.uniform(0.1, 0.5, (n, 3)).astype(np.float32)
        phase = col(rng.uniform(0, 2 * np.pi, n))
        texture = 0.08 * np.sin(6.0 * xx + phase) * np.cos(5.0 * yy - phase)  # [n, H, W]
        alpha = col(rng.uniform(0.35, 0.8, n))[:, None]  # shape contrast against the background
        img = bg[:, :, None, None] + texture[:, None] + alpha * mask[:, None] * (fg - bg)[:, :, None, None]
        img += rng.normal(0.0, noise, img.shape).astype(np.float32)
        images[idx] = img
    images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)
