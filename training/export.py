"""Export a training checkpoint as a TorchScript embedding model that carries its own preprocessing.

    python -m training.export --checkpoint checkpoints/best.pt --out artifacts/model.pt

The saved module takes uint8 RGB images ``(B, H, W, 3)``, already resized and centre-cropped to the model's
input size by ``lambda_fn.imaging.prepare``, and returns L2-normalised 512-d float32 embeddings.
``embed_and_classify`` also returns class probabilities. Metadata (sizes, mean/std, class names, training
args, a content hash) travels inside the file as the ``meta.json`` extra file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lambda_fn.engine import load_model
from lambda_fn.manifest import MODEL_META_FILE, ModelMeta
from training.cli import run
from training.model import (
    EMBEDDING_DIM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EmbeddingNet,
    ExportedModel,
    weights_sha256,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by training.train")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/model.pt"),
        help="TorchScript file to write (default: artifacts/model.pt)",
    )
    return p


def load_checkpoint(path: Path) -> tuple[EmbeddingNet, dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first with `python -m training.train`")
    state = torch.load(path, map_location="cpu", weights_only=False)
    net = EmbeddingNet(len(state["classes"]))
    net.load_state_dict(state["model"])
    return net.eval(), state


def export(net: EmbeddingNet, meta: ModelMeta, out: Path) -> torch.jit.ScriptModule:
    """Script ``net`` with its metadata into ``out`` (written atomically); returns the scripted module."""
    scripted = torch.jit.script(ExportedModel(net.eval()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={MODEL_META_FILE: meta.model_dump_json()})
    tmp.replace(out)
    return scripted


def meta_for(net: EmbeddingNet, classes: list[str], train_args: dict) -> ModelMeta:
    return ModelMeta(
        dim=EMBEDDING_DIM,
        resize_size=int(train_args.get("resize_size", 256)),
        crop_size=int(train_args.get("crop_size", 224)),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        class_names=classes,
        weights_sha256=weights_sha256(net),
        torch_version=torch.__version__,
        train_args=train_args,
    )


@torch.inference_mode()
def parity(net: EmbeddingNet, scripted_path: Path, size: int, n: int = 4) -> float:
    """Max |eager - reloaded TorchScript| over ``n`` random uint8 images."""
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loaded, _ = load_model(scripted_path)
    return float((net.embed(images) - loaded(images)).abs().max())


def main(args: argparse.Namespace) -> int:
    net, state = load_checkpoint(args.checkpoint)
    meta = meta_for(net, state["classes"], state["args"])
    export(net, meta, args.out)
    err = parity(net, args.out, meta.crop_size)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {meta.dim}-d embeddings, "
        f"{len(meta.class_names)} classes, input {meta.crop_size}px; "
        f"eager vs TorchScript max abs diff {err:.2e}"
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (FileNotFoundError, KeyError, RuntimeError))


if __name__ == "__main__":
    sys.exit(cli())
