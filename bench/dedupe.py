"""Choosing the dedupe rule: which results are the same picture. Real photos that packages ship, edited copies
made here, and different photos of one class, judged by the service's rule (``lambda_fn.vision.phash``).

    python -m bench.dedupe [--model artifacts/model.pt]

Photos: scikit-image's sample photographs (read from its data folder; nothing is downloaded) and
``lfw_subset``: 100 faces and 100 non-face patches (25x25 grey crops of Labeled Faces in the Wild).
- Edited copies: each sample photograph re-encoded, resized to 1/2 and 1/4, cropped 5-10%, rotated a few
  degrees, saved as JPEG: the share the rule collapses, per edit.
- Different photos of one class: every pair of faces, of non-faces, of the textures (brick, grass, gravel), of
  the two documents (page, text) and the motorcycle stereo pair (one scene, two cameras): the share collapsed.
  The goal is 0 at the default distance, at most 0.1% at any.
- Two embedders: a class oracle (each photo its class's vector plus 1e-3 noise, so same-class embeddings are
  almost identical and only the hash can refuse a pair) and a real network (``--model``; by default the bench's
  random-init ResNet34, whose embeddings of all photos are as close). The old rule (cosine > 0.99) is run
  beside the new one on both.

The default distance is the largest at which no different-photo pair collapses; hashing the prepared crop is
compared with hashing the whole picture.
"""

from __future__ import annotations

import argparse
import io
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench._setup import EXPORT_VERSION, RESULTS, WORK, bench_net, pin_threads, skimage_data
from bench.harness import write_result
from lambda_fn.contract.config import DEFAULT_DEDUPE_MAX_DISTANCE, DEFAULT_DEDUPE_SIMILARITY
from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
from lambda_fn.vision.engine import load_model
from lambda_fn.vision.imaging import load_for_model
from lambda_fn.vision.phash import HASH_BITS, distance, perceptual_hash, same_picture

OLD_THRESHOLD = 0.99  # the cosine rule this replaces
PHOTOS = [
    "astronaut.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]
CLASSES = {
    "texture": ("brick", "grass", "gravel"),
    "document": ("page", "text"),
    "stereo pair": ("motorcycle_left", "motorcycle_right"),
}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crop(img: Image.Image, share: float, *, centred: bool = True) -> Image.Image:
    dx, dy = round(img.width * share / 2), round(img.height * share / 2)
    if centred:
        return img.crop((dx, dy, img.width - dx, img.height - dy))
    return img.crop((2 * dx, 2 * dy, img.width, img.height))  # all of it off the top and left


def _scale(img: Image.Image, factor: float) -> Image.Image:
    return img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.Resampling.BICUBIC)


def _rotate(img: Image.Image, degrees: float) -> Image.Image:
    return img.rotate(degrees, Image.Resampling.BICUBIC)


# What happens to a photo between two uploads of "the same picture": each edit, then a JPEG save.
EDITS: dict[str, Callable[[Image.Image], bytes]] = {
    "re-encoded q75": lambda im: _jpeg(im, 75),
    "re-encoded q50": lambda im: _jpeg(im, 50),
    "re-encoded q30": lambda im: _jpeg(im, 30),
    "resized 1/2": lambda im: _jpeg(_scale(im, 0.5)),
    "resized 1/4": lambda im: _jpeg(_scale(im, 0.25)),
    "cropped 5%": lambda im: _jpeg(_crop(im, 0.05)),
    "cropped 5% off two sides": lambda im: _jpeg(_crop(im, 0.05, centred=False)),
    "cropped 10%": lambda im: _jpeg(_crop(im, 0.10)),
    "rotated 2°": lambda im: _jpeg(_rotate(im, 2)),
    "rotated 5°": lambda im: _jpeg(_rotate(im, 5)),
    "rotated 3° + cropped 8%": lambda im: _jpeg(_crop(_rotate(im, 3), 0.08)),
    "cropped 5% + resized 1/2 + q60": lambda im: _jpeg(_scale(_crop(im, 0.05), 0.5), 60),
}


def data_folder() -> Path:
    """scikit-image's data folder; the bench needs its photographs."""
    folder = skimage_data()
    if folder is None:
        raise SystemExit("scikit-image is not installed: pip install --no-deps scikit-image")
    return folder


def bench_model() -> Path:
    """The bench's random-init ResNet34, exported once (no index needed)."""
    from training.export import export, meta_for

    out = WORK / f"dedupe-model-v{EXPORT_VERSION}.pt"
    if not out.is_file():
        net = bench_net()
        meta = meta_for(
            net, [], {"resize_size": DEFAULT_RESIZE_SIZE, "crop_size": DEFAULT_CROP_SIZE, "weights": "none"}
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        export(net, meta, out)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="exported model (default: the bench's random-init one)")
    p.add_argument("--out", type=Path, default=RESULTS / "dedupe.json", help="JSON results (default: %(default)s)")
    return p


class Picture:
    """One picture as the service sees it: its prepared crop, crop hash and whole-picture hash."""

    def __init__(self, data: bytes, resize: int, crop: int):
        self.pixels = load_for_model(data, resize, crop)
        self.crop_hash = perceptual_hash(self.pixels)
        with Image.open(io.BytesIO(data)) as im:
            self.whole_hash = perceptual_hash(np.asarray(im.convert("RGB")))


def collapsed(a: Picture, b: Picture, va: np.ndarray, vb: np.ndarray, max_distance: int, similarity: float) -> bool:
    """Whether the service's rule collapses b below a (a is ranked first)."""
    return (
        same_picture(
            [a.crop_hash, b.crop_hash], np.stack([va, vb]), max_distance=max_distance, min_similarity=similarity
        )[1]
        == 0
    )


def main(args: argparse.Namespace) -> int:
    pin_threads()
    folder = data_folder()
    model_path = args.model or bench_model()
    model, meta = load_model(model_path)
    resize, crop = meta.resize_size, meta.crop_size

    originals: dict[str, Image.Image] = {}
    for name in PHOTOS:
        with Image.open(folder / name) as im:
            originals[Path(name).stem] = im.convert("RGB")
    photos = {name: Picture(_jpeg(im, 95), resize, crop) for name, im in originals.items()}
    copies = {edit: {n: Picture(f(im), resize, crop) for n, im in originals.items()} for edit, f in EDITS.items()}
    lfw = np.load(folder / "lfw_subset.npy")  # (200, 25, 25) in 0..1: 100 faces, then 100 non-faces
    faces = [Picture(_jpeg(Image.fromarray(np.uint8(np.round(x * 255))).convert("RGB"), 95), resize, crop) for x in lfw]
    classes = {"face": faces[:100], "not a face": faces[100:]} | {
        c: [photos[n] for n in names] for c, names in CLASSES.items()
    }
    pairs = {c: list(itertools.combinations(members, 2)) for c, members in classes.items()}
    n_pairs = sum(len(p) for p in pairs.values())

    import torch

    everything = list(photos.values()) + [p for c in copies.values() for p in c.values()] + faces
    with torch.inference_mode():
        vectors = np.concatenate(
            [
                model(torch.from_numpy(np.stack([p.pixels for p in everything[i : i + 32]]))).numpy()
                for i in range(0, len(everything), 32)
            ]
        )
    real = {id(p): v for p, v in zip(everything, vectors, strict=True)}
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(classes) + len(photos), 512)).astype(np.float32)
    class_of = {id(p): c for c, members in enumerate(classes.values()) for p in members}
    for i, (name, p) in enumerate(photos.items()):
        class_of.setdefault(id(p), len(classes) + i)
        for edit in copies:
            class_of[id(copies[edit][name])] = class_of[id(p)]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((len(class_of), 512)).astype(np.float32) / np.sqrt(512)
    oracle = {k: centres[c] + 1e-3 * n for (k, c), n in zip(class_of.items(), noise, strict=True)}
    embedders = {"class oracle": oracle, "random-init ResNet34": real}

    def cos(emb: dict, a: Picture, b: Picture) -> float:
        va, vb = emb[id(a)], emb[id(b)]
        return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))

    report: dict = {
        "model": str(model_path),
        "photos_edited": len(photos),
        "pairs": {c: len(p) for c, p in pairs.items()},
    }
    # the hash alone (what the oracle leaves it): distance of each copy to its original, and of same-class pairs
    hashes = {}
    for kind in ("crop_hash", "whole_hash"):
        per_edit = {
            e: [distance(getattr(photos[n], kind), getattr(c, kind)) for n, c in cs.items()] for e, cs in copies.items()
        }
        same = {c: [distance(getattr(a, kind), getattr(b, kind)) for a, b in ps] for c, ps in pairs.items()}
        hashes[kind] = {"copies": per_edit, "same_class": same}
    sweep = []
    for d in range(0, 17, 2):
        row = {"max_distance": d}
        for kind, h in hashes.items():
            row[kind] = {
                "copies": {e: float(np.mean(np.array(v) <= d)) for e, v in h["copies"].items()},
                "same_class_pairs": float(
                    np.mean(np.concatenate([np.array(v) <= d for v in h["same_class"].values()]))
                ),
            }
        sweep.append(row)
    safe = [r["max_distance"] for r in sweep if r["crop_hash"]["same_class_pairs"] == 0]
    report["hash_sweep"] = sweep
    report["largest_distance_collapsing_no_pair"] = max(safe) if safe else None

    rules = {}
    for emb_name, emb in embedders.items():
        copy_cos = {e: [cos(emb, photos[n], c) for n, c in cs.items()] for e, cs in copies.items()}
        pair_cos = np.array([cos(emb, a, b) for ps in pairs.values() for a, b in ps])
        new_copies = {
            e: float(
                np.mean(
                    [
                        collapsed(
                            photos[n],
                            c,
                            emb[id(photos[n])],
                            emb[id(c)],
                            DEFAULT_DEDUPE_MAX_DISTANCE,
                            DEFAULT_DEDUPE_SIMILARITY,
                        )
                        for n, c in cs.items()
                    ]
                )
            )
            for e, cs in copies.items()
        }
        new_pairs = {
            c: int(
                sum(
                    collapsed(a, b, emb[id(a)], emb[id(b)], DEFAULT_DEDUPE_MAX_DISTANCE, DEFAULT_DEDUPE_SIMILARITY)
                    for a, b in ps
                )
            )
            for c, ps in pairs.items()
        }
        rules[emb_name] = {
            "copy_cosine_min": {e: min(v) for e, v in copy_cos.items()},
            "same_class_cosine": {"min": float(pair_cos.min()), "p50": float(np.median(pair_cos))},
            "new_rule": {
                "copies": new_copies,
                "same_class_pairs_collapsed": new_pairs,
                "same_class_share": sum(new_pairs.values()) / n_pairs,
            },
            "old_rule": {
                "copies": {e: float(np.mean(np.array(v) > OLD_THRESHOLD)) for e, v in copy_cos.items()},
                "same_class_share": float(np.mean(pair_cos > OLD_THRESHOLD)),
            },
        }
    report["rules"] = rules
    report["defaults"] = {
        "max_distance": DEFAULT_DEDUPE_MAX_DISTANCE,
        "min_similarity": DEFAULT_DEDUPE_SIMILARITY,
        "hash_bits": HASH_BITS,
    }

    print(
        f"{len(photos)} photos x {len(EDITS)} edits; {n_pairs:,} different-photo same-class pairs "
        + ", ".join(f"{c} {len(p)}" for c, p in pairs.items())
    )
    print(f"  {'Hamming distance to the original':<34} {'crop p50':>8} {'max':>4} {'whole p50':>9} {'max':>4}")
    for e in EDITS:
        c, w = hashes["crop_hash"]["copies"][e], hashes["whole_hash"]["copies"][e]
        print(f"  {e:<34} {np.median(c):>8.0f} {max(c):>4} {np.median(w):>9.0f} {max(w):>4}")
    for kind in hashes:
        same = np.concatenate([np.array(v) for v in hashes[kind]["same_class"].values()])
        print(
            f"  same-class pairs, {kind}: min {same.min()}, p0.1 {np.percentile(same, 0.1):.0f}, "
            f"p50 {np.median(same):.0f}"
        )
    print(f"  {'max distance':>12} {'copies':>7} {'same-class pairs':>16}   (crop hash alone: share collapsed)")
    for r in sweep:
        mean = np.mean(list(r["crop_hash"]["copies"].values()))
        print(f"  {r['max_distance']:>12} {mean:>7.1%} {r['crop_hash']['same_class_pairs']:>16.3%}")
    print(f"largest distance that collapses no different-photo pair: {report['largest_distance_collapsing_no_pair']}")
    for emb_name, r in rules.items():
        print(f"{emb_name}: same-class cosine p50 {r['same_class_cosine']['p50']:.4f}")
        print(f"  {'share collapsed':<34} {'new rule':>8} {'cos>0.99':>8} {'min cos':>8}")
        for e in EDITS:
            print(
                f"  {e:<34} {r['new_rule']['copies'][e]:>8.0%} {r['old_rule']['copies'][e]:>8.0%} "
                f"{r['copy_cosine_min'][e]:>8.4f}"
            )
        print(
            f"  {'different photos, same class':<34} {r['new_rule']['same_class_share']:>8.3%} "
            f"{r['old_rule']['same_class_share']:>8.1%}"
        )
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
