"""Fine-tune ResNet34 on a labelled food dataset, in two phases: the new head alone, then the whole network.

    python -m training.train --data data/sample --head-epochs 1 --epochs 2 --output-dir checkpoints

Checkpoints (``checkpoint.pt`` each epoch, ``best.pt`` by validation top-1) store the model, optimizer and
scheduler state, the class names and these arguments, so ``--resume`` continues exactly and
``training.export`` rebuilds the model without being told its shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
from training.cli import run
from training.data import LAYOUTS, eval_transform, load_labelled, make_loader, train_transform
from training.model import EmbeddingNet, WeightsUnavailable, imagenet_state_dict, load_backbone_weights

log = logging.getLogger("training.train")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--data", type=Path, required=True, help="dataset root: class folders, Food-101 or iFood 2019 (FGVC6)"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="dataset layout; auto detects Food-101's meta/classes.txt and iFood 2019's class_list.txt / "
        "train_labels.csv (both train on their official split; class folders use --val-fraction)",
    )
    p.add_argument("--download", action="store_true", help="download Food-101 into --data (needs internet)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (torchvision IMAGENET1K_V1), 'auto' (imagenet when it can be had, else random init), "
        "'none' (random init) or a path to a state dict",
    )
    p.add_argument("--head-epochs", type=int, default=1, help="epochs training only the new classifier head")
    p.add_argument("--epochs", type=int, default=3, help="epochs fine-tuning the whole network after the head")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--lr-head", type=float, default=1e-3, help="AdamW learning rate of the head-only phase")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the full fine-tune (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    p.add_argument(
        "--resize-size",
        type=int,
        default=DEFAULT_RESIZE_SIZE,
        help=f"eval: shorter side resized to this (default: {DEFAULT_RESIZE_SIZE})",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=DEFAULT_CROP_SIZE,
        help=f"model input size, train crop and eval centre crop (default: {DEFAULT_CROP_SIZE})",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share for class-folder data")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, init and shuffling")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu' or 'cuda'")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--eval-first", action="store_true", help="evaluate once before training (baseline loss)")
    p.add_argument("--output-dir", type=Path, default=Path("checkpoints"), help="where checkpoints go")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    return p


def accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 3)) -> list[int]:
    """Number of samples whose label is in the top-k predictions, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.unsqueeze(1)
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


def set_phase(model: EmbeddingNet, phase: str) -> list[nn.Parameter]:
    """Freeze the backbone for the head phase; return the parameters the optimizer should update."""
    for name, param in model.named_parameters():
        param.requires_grad = phase == "full" or name.startswith("backbone.fc.")
    return [p for p in model.parameters() if p.requires_grad]


def train_one_epoch(model, criterion, optimizer, loader, device, epoch: int, phase: str, scaler) -> dict:
    model.train()
    if phase == "head":  # a frozen backbone keeps its BatchNorm statistics too
        model.eval()
    totals = {"loss": 0.0, "n": 0, "top1": 0, "top3": 0, "skipped": []}
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} ({phase})", unit="batch", dynamic_ncols=True)
    for images, labels, _, skipped in bar:
        totals["skipped"] += skipped
        if images is None:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        top1, top3 = accuracy(logits.detach().float(), labels)
        totals["loss"] += float(loss.detach()) * n
        totals["n"] += n
        totals["top1"] += top1
        totals["top3"] += top3
        seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}", img_s=f"{totals['n'] / seconds:.1f}")
    seconds = time.perf_counter() - start
    n = max(totals["n"], 1)
    return {
        "loss": totals["loss"] / n,
        "top1": totals["top1"] / n,
        "top3": totals["top3"] / n,
        "images": totals["n"],
        "seconds": seconds,
        "images_per_s": totals["n"] / seconds,
        "skipped": totals["skipped"],
    }


@torch.inference_mode()
def evaluate(model, criterion, loader, device) -> dict:
    model.eval()
    loss_sum, n, top1, top3, skipped = 0.0, 0, 0, 0, []
    for images, labels, _, bad in tqdm(loader, desc="eval", unit="batch", dynamic_ncols=True, leave=False):
        skipped += bad
        if images is None:
            continue
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss_sum += float(criterion(logits, labels)) * labels.shape[0]
        n += labels.shape[0]
        a1, a3 = accuracy(logits, labels)
        top1, top3 = top1 + a1, top3 + a3
    n_safe = max(n, 1)
    return {"loss": loss_sum / n_safe, "top1": top1 / n_safe, "top3": top3 / n_safe, "images": n, "skipped": skipped}


def initial_weights(model: EmbeddingNet, spec: str) -> str:
    if spec == "none":
        return "random init"
    if spec in ("imagenet", "auto"):
        try:
            state = imagenet_state_dict()
        except WeightsUnavailable as exc:
            if spec == "imagenet":
                raise
            log.warning("falling back to random init: %s", exc)
            return "random init (ImageNet weights unavailable)"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--weights {spec}: no such file (use 'imagenet', 'none' or a path)")
        state = read_checkpoint(path)
        state = state.get("model", state)
    missing = load_backbone_weights(model, state)
    return f"{spec} (not loaded: {', '.join(missing) or 'nothing'})"


def build_optimizer(model, phase: str, args, full_epochs: int):
    params = set_phase(model, phase)
    lr = args.lr_head if phase == "head" else args.lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(full_epochs, 1))
        if phase == "full"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    )
    return optimizer, scheduler


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or not without running code that it carries."""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint or state dict read with ``torch.load(weights_only=True)``: tensors and plain data (dicts,
    lists, strings, numbers) only. A pickled object of any other class is refused, since unpickling it would
    run code and checkpoints are passed around; ``save_checkpoint``'s contents are all plain data."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path} is not a checkpoint: torch could not unpickle it") from None
        raise CheckpointError(
            f"{path} holds a pickled Python object ({found[1]}), not only tensors and plain data; refused, as "
            "unpickling it could run code (torch.load weights_only=True). Use a checkpoint training.train "
            "wrote; load this one with weights_only=False only if you made it yourself"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a checkpoint: {str(exc).splitlines()[0]}") from None


def save_checkpoint(path: Path, **state) -> None:
    """Write ``state`` (plain data and tensors only, so ``read_checkpoint`` can load it) atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(args.seed)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    data = load_labelled(
        args.data, layout=args.layout, val_fraction=args.val_fraction, seed=args.seed, download=args.download
    )
    log.info(
        "dataset %s: %d classes, %d train / %d val images", args.data, len(data.classes), len(data.train), len(data.val)
    )
    model = EmbeddingNet(len(data.classes))
    start_epoch, best_top1, history = 0, -1.0, []
    resume_state = None
    if args.resume:
        resume_state = read_checkpoint(args.resume)
        if resume_state["classes"] != data.classes:
            raise ValueError(f"{args.resume} was trained on other classes than {args.data}")
        model.load_state_dict(resume_state["model"])
        start_epoch, best_top1 = resume_state["epoch"] + 1, resume_state["best_top1"]
        history = resume_state["history"]
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)
    else:
        log.info("initial weights: %s", initial_weights(model, args.weights))
    model.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not args.no_amp)
    train_loader = make_loader(
        data.train,
        train_transform(args.crop_size),
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle=True,
        seed=args.seed,
    )
    val_loader = make_loader(
        data.val,
        eval_transform(args.resize_size, args.crop_size),
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle=False,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.eval_first and not history:
        history.append({"epoch": -1, "phase": "before", "val": evaluate(model, criterion, val_loader, device)})
        log.info("before training: val loss %.4f top1 %.3f", history[-1]["val"]["loss"], history[-1]["val"]["top1"])

    total = args.head_epochs + args.epochs
    optimizer = scheduler = None
    current_phase = None
    for epoch in range(start_epoch, total):
        phase = "head" if epoch < args.head_epochs else "full"
        if phase != current_phase:
            optimizer, scheduler = build_optimizer(model, phase, args, args.epochs)
            if resume_state is not None and resume_state["phase"] == phase and epoch == start_epoch:
                optimizer.load_state_dict(resume_state["optimizer"])
                scheduler.load_state_dict(resume_state["scheduler"])
            current_phase = phase
        train_stats = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, phase, scaler)
        scheduler.step()
        val_stats = evaluate(model, criterion, val_loader, device)
        skipped = sorted(set(train_stats.pop("skipped")) | set(val_stats.pop("skipped")))
        history.append(
            {"epoch": epoch, "phase": phase, "train": train_stats, "val": val_stats, "skipped_files": skipped}
        )
        log.info(
            "epoch %d (%s): train loss %.4f top1 %.3f | val loss %.4f top1 %.3f top3 %.3f | %.1fs, %.1f img/s",
            epoch,
            phase,
            train_stats["loss"],
            train_stats["top1"],
            val_stats["loss"],
            val_stats["top1"],
            val_stats["top3"],
            train_stats["seconds"],
            train_stats["images_per_s"],
        )
        if skipped:
            log.warning("%d unreadable files skipped, e.g. %s", len(skipped), ", ".join(skipped[:3]))
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "phase": phase,
            "classes": data.classes,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "best_top1": max(best_top1, val_stats["top1"]),
            "history": history,
        }
        save_checkpoint(args.output_dir / "checkpoint.pt", **state)
        if val_stats["top1"] > best_top1:
            best_top1 = val_stats["top1"]
            save_checkpoint(args.output_dir / "best.pt", **state)
    (args.output_dir / "history.json").write_text(json.dumps(history, indent=2))
    log.info("done: best val top1 %.3f; checkpoints in %s", best_top1, args.output_dir)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (WeightsUnavailable, FileNotFoundError, ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(cli())
