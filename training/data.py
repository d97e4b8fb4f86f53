"""Labelled image datasets: a folder of class sub-folders, Food-101, or iFood 2019 (FGVC6).

Layouts (``detect_layout`` tells them apart; ``--layout`` overrides):
- ``folder``: ``<root>/<class>/<image>``, split here with a seeded, stratified validation share;
- ``food101``: ``food-101/meta/{classes.txt,train.json,test.json}`` and ``food-101/images/<class>/<id>.jpg``
  (the ``test`` split validates); without the JSON lists, the class folders under ``images/``;
- ``ifood2019``: ``class_list.txt`` (``<id> <name>`` per line), ``train_labels.csv`` / ``val_labels.csv``
  (``img_name,label``, integer class ids) and flat ``train_set/`` / ``val_set/`` image folders, or
  ``train_set/train_set/`` as Kaggle's archive nests them (the official validation split validates; the
  unlabelled test set is not used).

Metadata is checked as it is read: a missing file raises ``FileNotFoundError`` naming it, a malformed line
``MetadataError`` naming the file and the line. An image that the metadata lists but that is not on disk is
skipped and reported (how many, and a few names). Files are opened robustly: an unreadable file is skipped
with a warning naming it, never a crash of the run; ``collate`` drops the skipped samples and reports their
paths so the caller can count them.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from lambda_fn.vision.imaging import IMAGE_EXTENSIONS, ImageError, open_image, prepare, to_rgb

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "folder", "food101", "ifood2019")
IFOOD_CLASS_LIST = "class_list.txt"
# split -> (image folder, label files to try): Kaggle ships *_labels.csv with an ``img_name,label`` header;
# the organisers' annot.tar names the same lists *_info.csv, without the header.
IFOOD_SPLITS = {
    "train": ("train_set", ("train_labels.csv", "train_info.csv")),
    "val": ("val_set", ("val_labels.csv", "val_info.csv")),
}
IFOOD_HEADERS = (["img_name", "label"], ["image_name", "label"])
MISSING_SHOWN = 5  # names listed when images the metadata names are not on disk
_INTEGER = re.compile(r"-?[0-9]+")


class MetadataError(ValueError):
    """A dataset's metadata file has a malformed line; the message names the file and the line."""

    def __init__(self, path: Path, line: int, problem: str):
        super().__init__(f"{path} line {line}: {problem}")
        self.path, self.line = Path(path), line


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class LabelledData:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    root: Path | None = None  # the folder image keys are relative to (Food-101: the one holding meta/)
    missing: list[Path] = field(default_factory=list)  # listed in the metadata but not on disk: skipped


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, in a stable (sorted POSIX path) order."""
    root = Path(root)
    return sorted((p for p in root.rglob("*") if is_image_file(p)), key=lambda p: p.relative_to(root).as_posix())


def is_food101_root(root: Path) -> bool:
    root = Path(root)
    return (root / "food-101" / "meta" / "classes.txt").is_file() or (root / "meta" / "classes.txt").is_file()


def is_ifood2019_root(root: Path) -> bool:
    root = Path(root)
    names = [IFOOD_CLASS_LIST] + [name for _, names in IFOOD_SPLITS.values() for name in names]
    return any((root / name).is_file() for name in names)


def detect_layout(root: Path, layout: str = "auto") -> str:
    """``layout`` unless it is ``auto``; then ``food101``, ``ifood2019`` or ``folder`` by the metadata present."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    if is_food101_root(root):
        return "food101"
    return "ifood2019" if is_ifood2019_root(root) else "folder"


def food101_base(root: Path) -> Path:
    """The Food-101 folder holding ``meta/`` and ``images/``: ``root`` itself or its ``food-101/``."""
    root = Path(root)
    return root / "food-101" if (root / "food-101" / "meta").is_dir() else root


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


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a BOM is dropped); bytes that are not UTF-8 are a MetadataError."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise MetadataError(path, data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text") from None


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what})")
    return path


def _report_missing(listing: Path, missing: list[Path], root: Path) -> None:
    if missing:
        shown = ", ".join(p.relative_to(root).as_posix() for p in missing[:MISSING_SHOWN])
        log.warning(
            "%d images listed in %s are missing and skipped, e.g. %s",
            len(missing),
            listing,
            shown + ("" if len(missing) <= MISSING_SHOWN else ", ..."),
        )


def read_class_list(path: Path) -> dict[int, str]:
    """iFood 2019's ``class_list.txt``: class id -> name, from one ``<id> <name>`` per line."""
    _require(path, "the iFood 2019 class list: one '<id> <name>' per line")
    classes: dict[int, str] = {}
    ids_by_name: dict[str, int] = {}
    for n, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _INTEGER.fullmatch(parts[0]) or int(parts[0]) < 0:
            raise MetadataError(path, n, f"expected '<id> <name>', got {line.strip()[:80]!r}")
        class_id, name = int(parts[0]), parts[1].strip()
        if class_id in classes:
            raise MetadataError(path, n, f"class id {class_id} is listed twice (first as {classes[class_id]!r})")
        if name in ids_by_name:
            raise MetadataError(
                path, n, f"class name {name!r} is listed twice (ids {ids_by_name[name]} and {class_id})"
            )
        classes[class_id], ids_by_name[name] = name, class_id
    if not classes:
        raise MetadataError(path, 1, "no classes listed")
    return classes


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def read_label_csv(path: Path, images: Path, class_ids: dict[int, str]) -> tuple[list[tuple[Path, int]], list[Path]]:
    """An iFood 2019 label list (``img_name,label`` rows, header optional): ([(image path, class id)], missing).

    Every row is checked; an image name must be a plain file name in ``images`` and its label an id of
    ``class_ids``. Rows whose image is not on disk are returned as missing, not as samples.
    """
    _require(path, "the iFood 2019 label list: 'img_name,label' rows")
    rows: list[tuple[Path, int]] = []
    missing: list[Path] = []
    seen: dict[str, int] = {}
    first = True
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                n = reader.line_num
                if not row or not "".join(row).strip():
                    continue
                cells = [c.strip() for c in row]
                if first and [c.lower() for c in cells] in IFOOD_HEADERS:
                    first = False
                    continue
                first = False
                if len(cells) != 2:
                    raise MetadataError(path, n, f"expected 'img_name,label', got {','.join(row)[:80]!r}")
                name, label = cells
                if not _is_plain_name(name):
                    raise MetadataError(path, n, f"{name!r} is not an image file name")
                if not _INTEGER.fullmatch(label):
                    raise MetadataError(path, n, f"label {label!r} of {name} is not an integer class id")
                if int(label) not in class_ids:
                    raise MetadataError(
                        path,
                        n,
                        f"label {label} of {name} is not a class id in {IFOOD_CLASS_LIST} "
                        f"({min(class_ids)}-{max(class_ids)})",
                    )
                if name in seen:
                    raise MetadataError(path, n, f"{name} is listed twice (first on line {seen[name]})")
                seen[name] = n
                image = images / name
                if image.is_file():
                    rows.append((image, int(label)))
                else:
                    missing.append(image)
    except UnicodeDecodeError:
        _text_lines(path)  # raises a MetadataError with the line
        raise
    except csv.Error as exc:
        raise MetadataError(path, reader.line_num, str(exc)) from None
    return rows, missing


def _ifood_images(root: Path, folder: str, listing: Path) -> Path:
    """``<root>/<folder>``, or ``<root>/<folder>/<folder>`` where Kaggle's archive nests it."""
    flat, nested = root / folder, root / folder / folder
    if nested.is_dir():
        return nested
    if not flat.is_dir():
        raise FileNotFoundError(f"{flat} does not exist (the images {listing.name} lists go there)")
    return flat


def load_ifood2019(root: Path) -> LabelledData:
    """iFood 2019 with its official split: train_set/ trains, val_set/ validates; names from class_list.txt."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    class_ids = read_class_list(root / IFOOD_CLASS_LIST)
    order = sorted(class_ids)
    index = {class_id: i for i, class_id in enumerate(order)}
    splits: dict[str, list[Sample]] = {}
    missing: list[Path] = []
    for split, (folder, names) in IFOOD_SPLITS.items():
        listing = next((root / name for name in names if (root / name).is_file()), root / names[0])
        _require(listing, f"the iFood 2019 {split} labels: 'img_name,label' rows")
        rows, gone = read_label_csv(listing, _ifood_images(root, folder, listing), class_ids)
        _report_missing(listing, gone, root)
        splits[split] = [Sample(path, index[class_id]) for path, class_id in rows]
        missing += gone
    if not splits["train"]:
        raise ValueError(f"none of the training images listed under {root} exist")
    return LabelledData([class_ids[c] for c in order], splits["train"], splits["val"], root, missing)


def _food101_split(path: Path, index: dict[str, int], images: Path) -> tuple[list[Sample], list[Path]]:
    """One of Food-101's ``meta/{train,test}.json`` lists: {class: ["class/id", ...]} -> (samples, missing)."""
    text = "\n".join(_text_lines(path))
    try:
        listing = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None

    def line_of(s: str) -> int:
        return text.count("\n", 0, max(text.find(json.dumps(s)), 0)) + 1

    if not isinstance(listing, dict):
        raise MetadataError(path, 1, 'expected an object {class: ["class/id", ...]}')
    samples, missing = [], []
    for name, ids in listing.items():
        if name not in index:
            raise MetadataError(path, line_of(name), f"class {name!r} is not in meta/classes.txt")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise MetadataError(path, line_of(name), f'class {name!r}: expected a list of "class/id" strings')
        for image_id in ids:
            parts = image_id.split("/")
            if not image_id or any(p in ("", ".", "..") for p in parts):
                raise MetadataError(path, line_of(image_id), f"{image_id!r} is not an image id")
            image = images / f"{image_id}.jpg"
            if image.is_file():
                samples.append(Sample(image, index[name]))
            else:
                missing.append(image)
    return samples, missing


def load_food101(root: Path, download: bool = False, *, val_fraction: float = 0.2, seed: int = 0) -> LabelledData:
    """Food-101 from its own metadata: meta/classes.txt names the classes, meta/train.json and test.json the
    split (test validates). Without the JSON lists, the class folders under images/ are split here.
    ``download`` fetches and extracts it into ``root`` first, through torchvision."""
    root = Path(root)
    if download:
        from torchvision.datasets import Food101

        Food101(str(root), split="train", download=True)
    base = food101_base(root)
    classes_path = _require(base / "meta" / "classes.txt", "Food-101's class list; --download fetches the dataset")
    classes: list[str] = []
    for n, line in enumerate(_text_lines(classes_path), 1):
        name = line.strip()
        if name and name in classes:
            raise MetadataError(classes_path, n, f"class {name!r} is listed twice")
        if name:
            classes.append(name)
    if not classes:
        raise MetadataError(classes_path, 1, "no classes listed")
    index = {name: i for i, name in enumerate(classes)}
    images = base / "images"
    lists = [base / "meta" / "train.json", base / "meta" / "test.json"]
    if all(p.is_file() for p in lists):
        (train, gone_train), (val, gone_val) = (_food101_split(p, index, images) for p in lists)
        _report_missing(lists[0], gone_train, base)
        _report_missing(lists[1], gone_val, base)
        missing = gone_train + gone_val
    else:
        samples = [Sample(p, i) for i, name in enumerate(classes) for p in list_images(images / name)]
        train, val = split_samples(samples, val_fraction, seed)
        missing = []
    if not train:
        raise ValueError(f"no Food-101 training images found under {images}")
    return LabelledData(classes, train, val, base, missing)


def load_labelled(
    root: Path, *, layout: str = "auto", val_fraction: float = 0.2, seed: int = 0, download: bool = False
) -> LabelledData:
    """The dataset at ``root`` in its layout (``auto``: detected; ``download`` implies Food-101)."""
    root = Path(root)
    layout = "food101" if layout == "auto" and download else detect_layout(root, layout)
    if layout == "food101":
        return load_food101(root, download, val_fraction=val_fraction, seed=seed)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if layout == "ifood2019":
        return load_ifood2019(root)
    classes, samples = scan_class_folders(root)
    train, val = split_samples(samples, val_fraction, seed)
    return LabelledData(classes, train, val, root)


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
