"""Labelled image datasets: a folder of class sub-folders, or the Food-101 layout.

Files are opened robustly: an unreadable file is skipped with a warning naming it, never a crash of the run;
`collate` drops the skipped samples and reports their paths so the caller can count them.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from lambda_fn.imaging import IMAGE_EXTENSIONS, ImageError, open_image, prepare, to_rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class LabelledData:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, in a stable (sorted POSIX path) order."""
    root = Path(root)
    return sorted((p for p in root.rglob("*") if is_image_file(p)), key=lambda p: p.relative_to(root).as_posix())


def is_food101_root(root: Path) -> bool:
    root = Path(root)
    return (root / "food-101" / "meta" / "classes.txt").is_file() or (root / "meta" / "classes.txt").is_file()


def scan_class_folders(root: Path) -> tuple[list[str], list[Sample]]:
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [Sample(path, idx) for idx, name in enumerate(classes) for path in list_images(root / name)]
    if not samples:
        raise ValueError(f"no images found in class sub-folders of {root} (expected {root}/<class>/<image>.jpg)")
    return classes, samples


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded, stratified split: each class keeps ``val_fraction`` of its images (at least one) for validation."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: str(s.path))
        rng.shuffle(items)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 and val_fraction > 0 else 0
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def load_food101(root: Path, download: bool) -> LabelledData:
    """Food-101 through torchvision (which validates the layout and downloads with ``download=True``)."""
    from torchvision.datasets import Food101

    def read(split: str) -> tuple[list[str], list[Sample]]:
        ds = Food101(str(root), split=split, download=download)
        # torchvision keeps the file list in private attributes; reading them avoids its non-robust loader.
        return ds.classes, [Sample(Path(p), int(y)) for p, y in zip(ds._image_files, ds._labels, strict=True)]

    classes, train = read("train")
    _, val = read("test")
    return LabelledData(classes, train, val)


def load_labelled(
    root: Path, *, layout: str = "auto", val_fraction: float = 0.2, seed: int = 0, download: bool = False
) -> LabelledData:
    root = Path(root)
    if layout == "food101" or (layout == "auto" and (download or is_food101_root(root))):
        return load_food101(root, download)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    classes, samples = scan_class_folders(root)
    train, val = split_samples(samples, val_fraction, seed)
    return LabelledData(classes, train, val)


def train_transform(crop_size: int) -> Callable[[Image.Image], np.ndarray]:
    """Training augmentation: RandomResizedCrop + horizontal flip, on an oriented RGB image."""
    aug = transforms.Compose([transforms.RandomResizedCrop(crop_size), transforms.RandomHorizontalFlip()])

    def apply(img: Image.Image) -> np.ndarray:
        img.load()
        return np.asarray(aug(to_rgb(img)), dtype=np.uint8)

    return apply


def eval_transform(resize_size: int, crop_size: int) -> Callable[[Image.Image], np.ndarray]:
    """The serving preprocessing, exactly."""
    return lambda img: prepare(img, resize_size, crop_size)


class ImageDataset(torch.utils.data.Dataset):
    """(uint8 HWC tensor | None, label, path) per sample; None marks a file that could not be used."""

    def __init__(self, samples: list[Sample], transform: Callable[[Image.Image], np.ndarray]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        try:
            with open_image(sample.path) as img:
                arr = self.transform(img)
        except (ImageError, OSError, ValueError) as exc:
            log.warning("skipping unreadable image %s: %s", sample.path, exc)
            return None, sample.label, str(sample.path)
        return torch.from_numpy(arr.copy()), sample.label, str(sample.path)


def collate(batch):
    """Stack the usable samples; return (images uint8 BHWC, labels, paths, skipped paths)."""
    good = [b for b in batch if b[0] is not None]
    skipped = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, None, [], skipped
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, [b[2] for b in good], skipped


def make_loader(samples, transform, *, batch_size: int, workers: int, shuffle: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        generator=generator,
        persistent_workers=False,
    )
