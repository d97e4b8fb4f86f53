"""Shared set-up for the service benchmarks: a full-size (224 px) model and index over synthetic photos.

The weights are random (ImageNet weights cannot be downloaded here): speed does not depend on them.
Everything lands in bench/.work/ (git-ignored) and is reused by later runs.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work"
RESULTS = Path(__file__).resolve().parent / "results"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))  # a 3008 MB Lambda has 2 vCPUs
EXPORT_VERSION = 5


def pin_threads(n: int = THREADS) -> None:
    import torch

    torch.set_num_threads(n)
    # set_num_interop_threads raises once it has been set, so only when it differs.
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)


def collection(n_per_class: int = 40) -> Path:
    from training.sample_data import DISHES, write_sample_set

    root = WORK / f"images-{n_per_class}"
    if not (root / "README.txt").is_file():
        write_sample_set(root, per_class=n_per_class, seed=1)
    assert len(list(root.glob("*/*"))) == n_per_class * len(DISHES)
    return root


def bench_net():
    """The random-init EmbeddingNet (6 classes, seed 0) every bench model is exported from; its weights are the
    ones the original pipeline in bench.latency runs (a frozen export keeps none as named parameters)."""
    import torch

    from training.model import EmbeddingNet

    torch.manual_seed(0)
    return EmbeddingNet(6).eval()


def artifacts(n_per_class: int = 40, *, int8: bool = False) -> Path:
    """model.pt (random-init ResNet34 at 224 px, 6-class head; static int8 with ``int8``) + index over
    ``collection()``."""

    from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE, MODEL_FILE
    from training.build_index import get_args_parser, main
    from training.export import calibration_batches, export, meta_for

    # The version changes with the export (2: fp32 frozen too; 3: int8 with 8-bit activations; 4: int8 average
    # pool in float), so a stale cached build is never measured.
    out = WORK / f"artifacts-{n_per_class}{'-int8' if int8 else ''}-v{EXPORT_VERSION}"
    if (out / "manifest.json").is_file():
        return out
    net = bench_net()
    classes = ["pasta", "pizza", "salad", "soup", "steak", "sushi"]
    meta = meta_for(
        net, classes, {"resize_size": DEFAULT_RESIZE_SIZE, "crop_size": DEFAULT_CROP_SIZE, "weights": "none"}
    )
    calibration = None
    if int8:
        calibration = calibration_batches(collection(n_per_class), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, 128)
    if int8:
        meta.quantization = "int8 static (x86 observers), calibrated on 128 sample images"
    export(net, meta, out / MODEL_FILE, calibration=calibration)
    args = ["--images", str(collection(n_per_class)), "--model", str(out / MODEL_FILE), "--out", str(out)]
    assert main(get_args_parser().parse_args([*args, "--workers", "2", "--save-embeddings"])) == 0
    return out


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A synthetic dish photo of the given size, as a camera would hand it over (JPEG)."""
    from training.sample_data import render

    buf = io.BytesIO()
    render("pizza", random.Random(seed), width, height).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def skimage_data() -> Path | None:
    """scikit-image's data folder, found without importing the package (its import needs more than the files);
    None where it is not installed. ``pip install --no-deps scikit-image`` is enough for the benches."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def lfw_subset():
    """scikit-image's ``lfw_subset.npy`` (200 grey 25x25 crops in 0..1: 100 faces, then 100 non-faces) and a
    label per crop (1 face, 0 not); None where scikit-image is not installed."""
    import numpy as np

    folder = skimage_data()
    path = folder / "lfw_subset.npy" if folder else None
    if path is None or not path.is_file():
        return None
    images = np.load(path)
    return images, np.array([1] * 100 + [0] * (len(images) - 100))
