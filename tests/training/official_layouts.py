"""Tiny datasets in the official iFood 2019 (Kaggle FGVC6) and Food-101 layouts, drawn with
``training.sample_data`` so that each class looks like itself.

The file names and metadata formats are the official ones: iFood's flat ``train_set/train_NNNNNN.jpg``,
``val_set/val_NNNNNN.jpg``, ``train_labels.csv`` / ``val_labels.csv`` with an ``img_name,label`` header and
integer class ids, ``class_list.txt`` with ``<id> <name>`` lines; Food-101's ``food-101/meta/classes.txt``,
``meta/{train,test}.json`` (``{class: ["class/id", ...]}``) and ``images/<class>/<id>.jpg``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from training.sample_data import render

# Real iFood 2019 class ids and names (assets/class_list.txt of the competition), each drawn as the sample
# set's dish of the same kind. The ids are not 0..n-1, as a subset of the real list would not be.
IFOOD_CLASSES = {37: ("sushi", "sushi"), 135: ("miso_soup", "soup"), 183: ("pizza", "pizza")}
FOOD101_CLASSES = {"pizza": "pizza", "steak": "steak", "sushi": "sushi"}
SIZE = (80, 64)


def _draw(path: Path, dish: str, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    render(dish, rng, *SIZE).save(path, quality=90)


def write_ifood2019(root: Path, *, train_per_class: int = 4, val_per_class: int = 2, seed: int = 0) -> Path:
    """An iFood 2019 root with ``train_per_class`` / ``val_per_class`` images of each of IFOOD_CLASSES."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_list.txt").write_text("".join(f"{i} {name}\n" for i, (name, _) in IFOOD_CLASSES.items()))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        rows = ["img_name,label"]
        n = 0
        for class_id, (_, dish) in IFOOD_CLASSES.items():
            for _ in range(per_class):
                name = f"{split}_{n:06d}.jpg"
                _draw(root / f"{split}_set" / name, dish, rng)
                rows.append(f"{name},{class_id}")
                n += 1
        (root / f"{split}_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_food101(root: Path, *, train_per_class: int = 3, test_per_class: int = 1, seed: int = 1) -> Path:
    """A Food-101 download: ``root/food-101/{meta,images}`` with FOOD101_CLASSES."""
    rng = random.Random(seed)
    base = Path(root) / "food-101"
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in FOOD101_CLASSES))
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for c, dish in FOOD101_CLASSES.items():
        ids = [f"{c}/{100000 + 37 * i}" for i in range(train_per_class + test_per_class)]
        for image_id in ids:
            _draw(base / "images" / f"{image_id}.jpg", dish, rng)
        splits["train"][c], splits["test"][c] = ids[:train_per_class], ids[train_per_class:]
    for split, listing in splits.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
    return Path(root)
