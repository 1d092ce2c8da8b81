"""Small image trees on disk in real dataset layouts (NUS-WIDE, ImageFolder), written as real JPEG/PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = ("actor", "airport", "beach", "sunset")


def concept_image(labels: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-sized image whose content depends on its concepts: one coloured band per concept present."""
    w, h = size
    img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    n = len(labels)
    for c in np.flatnonzero(labels):
        hue = np.array([(37 * c) % 256, (91 * c + 80) % 256, (53 * c + 160) % 256], dtype=np.uint8)
        lo, hi = int(h * c / n), int(h * (c + 1) / n) + 1
        img[lo:hi] = hue
    return Image.fromarray(img)


def make_nuswide_tree(root: Path, num_train: int = 160, num_test: int = 120, num_concepts: int = 12,
                      seed: int = 0, windows_paths: bool = True) -> dict:
    """NUS-WIDE's distribution layout in ``root``: ImageList/{Train,Test}Imagelist.txt, Groundtruth/
    TrainTestLabels/Labels_<c>_{Train,Test}.txt and Flickr/<folder>/<id>.jpg, with multi-label images.

    Concept c is present with probability falling in c, so the frequency order is known; about one image in
    ten carries only the two rarest concepts (and must be left out when the top ten are kept). Returns the
    labels per split (``{split: bool [N, C]}``), the concept names and the listed paths.
    """
    rng = np.random.default_rng(seed)
    names = [f"concept{c:02d}" for c in range(num_concepts)]
    probs = np.linspace(0.5, 0.08, num_concepts)
    out = {"names": names, "labels": {}, "files": {}}
    for split, n, list_name in (("Train", num_train, "TrainImagelist.txt"), ("Test", num_test, "TestImagelist.txt")):
        labels = rng.random((n, num_concepts)) < probs
        rare_only = rng.random(n) < 0.1
        labels[rare_only] = False
        labels[rare_only, -2:] = rng.random((int(rare_only.sum()), 2)) < 0.7
        labels[rare_only, -1] |= ~labels[rare_only, -2]
        empty = ~labels.any(1)
        labels[empty, 0] = True
        listed = []
        for i in range(n):
            folder = FOLDERS[i % len(FOLDERS)]
            name = f"{i:04d}_{split.lower()}{seed}{i * 7919 % 100000:05d}.jpg"
            path = root / "Flickr" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
            concept_image(labels[i], rng, size).save(path, quality=90)
            listed.append(f"C:\\ImageData\\Flickr\\{folder}\\{name}" if windows_paths else f"{folder}\\{name}")
        (root / "ImageList").mkdir(parents=True, exist_ok=True)
        (root / "ImageList" / list_name).write_text("\r\n".join(listed) + "\r\n")
        label_dir = root / "Groundtruth" / "TrainTestLabels"
        label_dir.mkdir(parents=True, exist_ok=True)
        for c, name in enumerate(names):
            (label_dir / f"Labels_{name}_{split}.txt").write_text("".join(f"{int(v)} \n" for v in labels[:, c]))
        out["labels"][split.lower()] = labels
        out["files"][split.lower()] = listed
    return out


def make_image_folder(root: Path, per_class: int = 30, classes: tuple[str, ...] = ("cat", "dog", "ship"),
                      split: bool = True, seed: int = 0) -> None:
    """An ImageFolder tree (``root/{train,test}/<class>/`` when ``split``, else ``root/<class>/``) of images of
    mixed sizes and formats (JPEG, PNG, a grayscale one), whose colour depends on the class."""
    rng = np.random.default_rng(seed)
    parts = (("train", per_class), ("test", max(2, per_class // 2))) if split else (("", per_class),)
    for part, n in parts:
        for c, name in enumerate(classes):
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(20, 100)), int(rng.integers(20, 100))
                base = np.array([200 * (c == 0), 200 * (c == 1), 200 * (c == 2)], dtype=np.int64)
                img = np.clip(base + rng.integers(0, 55, (h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(img)
                if i % 7 == 3:
                    im.convert("L").save(folder / f"{i:03d}.png")
                elif i % 2:
                    im.save(folder / f"{i:03d}.png")
                else:
                    im.save(folder / f"{i:03d}.jpg", quality=90)
