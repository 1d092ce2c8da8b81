"""Decode an ImageFolder tree (``<split>/<class>/*.jpg``) into uint8 tensors, naming any broken file."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def list_image_folder(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    """Return ``(classes, files, labels)`` for ``split_dir/<class>/<image>``, classes sorted by name."""
    if not split_dir.is_dir():
        raise DatasetError(f"missing folder {split_dir}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        members = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not members:
            raise DatasetError(f"class folder {split_dir / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += members
        labels += [label] * len(members)
    return classes, files, labels


def fingerprint_files(files: list[Path]) -> str:
    """A cheap content-address for a file list: relative names, sizes and modification times."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.parent.name}/{f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def _decode(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if size is not None and im.format == "JPEG" and min(im.size) >= 2 * size:
                im.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale: much faster for big photos
            if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit grayscale (PNG, TIFF): convert clips at 255
                im = Image.fromarray((np.asarray(im).astype(np.int64) // 257).clip(0, 255).astype(np.uint8), "L")
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for broken files
        raise DatasetError(f"cannot decode image {path}: {exc}") from exc


def decode_images(files: list[Path], expected_size: int, resize: bool, progress: bool = True) -> np.ndarray:
    """Decode ``files`` to uint8 ``[N, 3, S, S]``; a file of another size is resized or named in an error."""
    from tqdm.auto import tqdm

    out = np.empty((len(files), expected_size, expected_size, 3), dtype=np.uint8)
    workers = min(8, (os.cpu_count() or 1) * 2)

    def work(i: int) -> None:
        arr = _decode(files[i], expected_size if resize else None)
        if arr.shape != (expected_size, expected_size, 3):
            raise DatasetError(f"image {files[i]} is {arr.shape[1]}x{arr.shape[0]}, expected "
                               f"{expected_size}x{expected_size}; set dataset.resize=true to resize")
        out[i] = arr

    with ThreadPoolExecutor(workers) as pool:
        for _ in tqdm(pool.map(work, range(len(files))), total=len(files), desc=f"decode {files[0].parent.parent.name}",
                      disable=not progress, leave=False):
            pass
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
