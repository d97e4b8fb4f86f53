"""Export a training checkpoint as a TorchScript embedding model that carries its own preprocessing.

    python -m training.export --checkpoint checkpoints/best.pt --out artifacts/model.pt

The saved module takes uint8 RGB images ``(B, H, W, 3)``, already resized and centre-cropped to the model's
input size by ``lambda_fn.vision.imaging.prepare``, and returns L2-normalised 512-d float32 embeddings.
``embed_and_classify`` also returns class probabilities. Metadata (sizes, mean/std, class names, training
args, a content hash) travels inside the file as the ``meta.json`` extra file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE, MODEL_FILE, MODEL_META_FILE, ModelMeta
from lambda_fn.vision.engine import load_model
from lambda_fn.vision.imaging import ImageError, load_for_model
from training.cli import run
from training.data import list_images
from training.model import (
    EMBEDDING_DIM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EmbeddingNet,
    ExportedModel,
    to_torchscript,
    weights_sha256,
)
from training.quantize import BACKEND, quantize_int8
from training.train import read_checkpoint


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by training.train")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts") / MODEL_FILE,
        help="TorchScript file to write (default: artifacts/model.pt)",
    )
    p.add_argument(
        "--int8", action="store_true", help="static int8 quantisation (x86), ~5x faster on CPU; needs calibration"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="calibration images for --int8 (default: the checkpoint's training --data folder)",
    )
    p.add_argument("--calibration-images", type=int, default=256, help="how many to use (default: 256)")
    return p


def load_checkpoint(path: Path) -> tuple[EmbeddingNet, dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first with `python -m training.train`")
    state = read_checkpoint(path)
    net = EmbeddingNet(len(state["classes"]))
    net.load_state_dict(state["model"])
    return net.eval(), state


def export(net: EmbeddingNet, meta: ModelMeta, out: Path, *, calibration: list[torch.Tensor] | None = None):
    """Trace ``net`` (int8 when ``calibration`` batches are given); save it with its metadata to ``out``."""
    example = torch.zeros(2, meta.crop_size, meta.crop_size, 3, dtype=torch.uint8)
    # Frozen: weights become constants of the graph, batch norm folds into the convolutions. fp32 forward
    # 4% faster for it (bench/isa.py: 84.0 vs 87.1 ms of one core with AVX-512, 87.3 vs 91.4 with AVX2).
    if calibration is None:
        traced = to_torchscript(ExportedModel(net.eval()).eval(), example, freeze=True)
    else:
        traced = to_torchscript(quantize_int8(net, calibration), example, freeze=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.jit.save(traced, str(tmp), _extra_files={MODEL_META_FILE: meta.model_dump_json()})
    tmp.replace(out)
    return traced


def meta_for(net: EmbeddingNet, classes: list[str], train_args: dict) -> ModelMeta:
    return ModelMeta(
        dim=EMBEDDING_DIM,
        resize_size=int(train_args.get("resize_size", DEFAULT_RESIZE_SIZE)),
        crop_size=int(train_args.get("crop_size", DEFAULT_CROP_SIZE)),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        class_names=classes,
        weights_sha256=weights_sha256(net),
        torch_version=torch.__version__,
        train_args=train_args,
    )


@torch.inference_mode()
def parity(net: EmbeddingNet, exported_path: Path, images: torch.Tensor) -> tuple[float, float]:
    """(max |eager - reloaded file|, mean cosine between them) over uint8 ``images``."""
    loaded, _ = load_model(exported_path)
    eager, exported = net.embed(images), loaded(images)
    return float((eager - exported).abs().max()), float((eager * exported).sum(dim=1).mean())


def calibration_batches(folder: Path, resize: int, crop: int, count: int, batch: int = 32) -> list[torch.Tensor]:
    """``count`` images spread evenly over ``folder`` (recursively), prepared exactly as for serving."""
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no calibration images under {folder}; pass --calibration DIR")
    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).astype(int)]
    arrays = []
    for p in chosen:
        try:
            arrays.append(load_for_model(p, resize, crop))
        except ImageError:
            continue
    stacked = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, crop, crop, 3, dtype=torch.uint8)
    return list(stacked.split(batch))


def main(args: argparse.Namespace) -> int:
    net, state = load_checkpoint(args.checkpoint)
    meta = meta_for(net, state["classes"], state["args"])
    calibration = None
    folder = args.calibration or Path(state["args"].get("data", ""))
    if args.int8:
        calibration = calibration_batches(folder, meta.resize_size, meta.crop_size, args.calibration_images)
        count = sum(len(b) for b in calibration)
        meta.quantization = f"int8 static ({BACKEND}), calibrated on {count} images from {folder}"
    export(net, meta, args.out, calibration=calibration)
    probe = torch.randint(
        0, 256, (4, meta.crop_size, meta.crop_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    if folder.is_dir():
        probe = calibration_batches(folder, meta.resize_size, meta.crop_size, 16)[0]
    err, cosine = parity(net, args.out, probe)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {meta.quantization or 'fp32'}): "
        f"{meta.dim}-d embeddings, {len(meta.class_names)} classes, input {meta.crop_size}px; eager fp32 vs file "
        f"on {len(probe)} images: max abs diff {err:.2e}, mean cosine {cosine:.5f}"
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (FileNotFoundError, KeyError, RuntimeError))


if __name__ == "__main__":
    sys.exit(cli())
