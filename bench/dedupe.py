"""Choosing the near-duplicate threshold: cosine between a photo and its edited copies (re-encoded, resized,
slightly cropped) against cosine between different photos of the same dish, with a trained model.

    python -m bench.dedupe --artifacts artifacts --images data/sample

A threshold collapses a pair when their cosine is above it. Hiding a different photo loses a result, while
letting a copy through only repeats one, so the rule is: the lowest threshold (in steps of 0.01) that collapses
at most 0.1% of the pairs of different photos of the same dish; the report says how many copies it catches,
and sweeps thresholds around it.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench._setup import RESULTS, pin_threads
from bench.harness import percentile, write_result
from lambda_fn.contract.manifest import EMBEDDINGS_FILE
from lambda_fn.storage.artifacts import fetch
from lambda_fn.vision.engine import Engine
from lambda_fn.vision.imaging import load_for_model


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share / 2), round(img.height * share / 2)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _scale(img: Image.Image, factor: float) -> Image.Image:
    return img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.Resampling.BICUBIC)


# What happens to a photo between two uploads of "the same picture": each edit, then a JPEG save.
EDITS = {
    "re-encoded q75": lambda im: _jpeg(im, 75),
    "re-encoded q50": lambda im: _jpeg(im, 50),
    "resized 50%": lambda im: _jpeg(_scale(im, 0.5), 90),
    "resized 25%": lambda im: _jpeg(_scale(im, 0.25), 90),
    "cropped 5%": lambda im: _jpeg(_crop(im, 0.05), 90),
    "cropped 10%": lambda im: _jpeg(_crop(im, 0.10), 90),
    "cropped 5% + resized 50% + q60": lambda im: _jpeg(_scale(_crop(im, 0.05), 0.5), 60),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="a trained build (default: artifacts)")
    p.add_argument("--images", type=Path, default=Path("data/sample"), help="its collection (default: data/sample)")
    p.add_argument("--photos", type=int, default=120, help="photos edited, spread over the set (default: 120)")
    p.add_argument("--out", type=Path, default=RESULTS / "dedupe.json", help="JSON results (default: %(default)s)")
    return p


def _stats(values: np.ndarray) -> dict:
    return {f"p{q:g}": percentile(values, q) for q in (0, 0.1, 1, 5, 50, 95, 99, 99.9, 100)} | {"n": len(values)}


def main(args: argparse.Namespace) -> int:
    pin_threads()
    fetched = fetch(str(args.artifacts), args.artifacts)
    engine = Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)
    meta = engine.meta
    vectors = np.load(args.artifacts / EMBEDDINGS_FILE).astype(np.float32)
    labels = np.array([e.label or "" for e in engine.keys])

    s = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1)
    same_pairs, other_pairs = s[same & upper], s[~same & upper]

    chosen = np.linspace(0, len(engine.keys) - 1, min(args.photos, len(engine.keys))).astype(int)
    copies: dict[str, list[float]] = {name: [] for name in EDITS}
    for i in chosen:
        with Image.open(args.images / engine.keys[i].key) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
        inputs = [load_for_model(edit(photo), meta.resize_size, meta.crop_size) for edit in EDITS.values()]
        embedded, _ = engine.embed(np.stack(inputs))
        for name, v in zip(EDITS, embedded @ vectors[i], strict=True):
            copies[name].append(float(v))
    all_copies = np.concatenate([np.array(v) for v in copies.values()])

    high_pair = percentile(same_pairs, 99.9)
    threshold = math.ceil(high_pair * 100) / 100
    sweep = [
        {
            "threshold": t,
            "copies_collapsed": float((all_copies > t).mean()),
            **{f"{name}_collapsed": float((np.array(v) > t).mean()) for name, v in copies.items()},
            "same_dish_pairs_collapsed": float((same_pairs > t).mean()),
            "different_dish_pairs_collapsed": float((other_pairs > t).mean()),
        }
        for t in (0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)
    ]
    report = {
        "artifacts": str(args.artifacts),
        "model_quantization": meta.quantization,
        "photos_edited": len(chosen),
        "copies": {name: _stats(np.array(v)) for name, v in copies.items()},
        "all_copies": _stats(all_copies),
        "same_dish_pairs": _stats(same_pairs),
        "different_dish_pairs": _stats(other_pairs),
        "threshold": threshold,
        "copies_collapsed": float((all_copies > threshold).mean()),
        "same_dish_pairs_collapsed": float((same_pairs > threshold).mean()),
        "sweep": sweep,
    }
    print(f"{len(chosen)} photos x {len(EDITS)} edits against {len(same_pairs):,} same-dish pairs")
    print(f"  {'cosine to the original':<34} {'min':>6} {'p1':>6} {'p50':>6}")
    for name, v in copies.items():
        print(f"  {name:<34} {min(v):>6.3f} {percentile(v, 1):>6.3f} {percentile(v, 50):>6.3f}")
    print(f"  {'different photos, same dish':<34} {'p50':>6} {'p99.9':>6} {'max':>6}")
    print(f"  {'':<34} {percentile(same_pairs, 50):>6.3f} {high_pair:>6.3f} {same_pairs.max():>6.3f}")
    print(f"  {'threshold':>9} {'copies':>7} {'same dish':>9} {'other dish':>10}   (share collapsed)")
    for row in sweep:
        print(
            f"  {row['threshold']:>9.3f} {row['copies_collapsed']:>7.1%} {row['same_dish_pairs_collapsed']:>9.2%} "
            f"{row['different_dish_pairs_collapsed']:>10.2%}"
        )
    print(
        f"threshold {threshold:.2f}: collapses {report['copies_collapsed']:.1%} of copies and "
        f"{report['same_dish_pairs_collapsed']:.2%} of different same-dish pairs"
    )
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
