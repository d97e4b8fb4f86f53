"""Writes a small, seeded, clearly SYNTHETIC labelled set of "dish" pictures for offline demos and tests.

Each class differs in colour, shape and texture; every picture gets a random plate position, scale,
rotation, lighting and table background. A few files are stored EXIF-rotated, as PNG, or as grayscale, so
the loaders' handling of those cases is exercised by the demo itself.

    python -m training.sample_data data/sample --per-class 40
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from training.cli import run

ORIENTATION_TAG = 0x0112
Painter = Callable[[ImageDraw.ImageDraw, random.Random, int], None]


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _pizza(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    d.ellipse((0, 0, s, s), fill=_jitter(rng, (214, 160, 60)))
    d.ellipse((s * 0.07, s * 0.07, s * 0.93, s * 0.93), fill=_jitter(rng, (240, 200, 90)))
    for _ in range(rng.randint(6, 10)):
        r = s * rng.uniform(0.06, 0.09)
        a, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0, s * 0.32)
        cx, cy = s / 2 + dist * math.cos(a), s / 2 + dist * math.sin(a)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_jitter(rng, (170, 30, 30)))


def _salad(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    for _ in range(rng.randint(25, 40)):
        cx, cy = rng.uniform(s * 0.15, s * 0.85), rng.uniform(s * 0.15, s * 0.85)
        w, h = s * rng.uniform(0.08, 0.18), s * rng.uniform(0.04, 0.09)
        d.ellipse((cx - w, cy - h, cx + w, cy + h), fill=_jitter(rng, (60, 160, 50), 40))
    for _ in range(rng.randint(4, 8)):
        cx, cy, r = rng.uniform(s * 0.2, s * 0.8), rng.uniform(s * 0.2, s * 0.8), s * 0.04
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_jitter(rng, (220, 40, 40)))


def _sushi(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    for i in range(rng.randint(2, 4)):
        y = s * (0.15 + 0.22 * i)
        d.rounded_rectangle(
            (s * 0.1, y, s * 0.9, y + s * 0.16), radius=s * 0.05, fill=_jitter(rng, (245, 245, 240), 10)
        )
        d.rounded_rectangle(
            (s * 0.12, y - s * 0.03, s * 0.88, y + s * 0.07), radius=s * 0.04, fill=_jitter(rng, (250, 130, 110))
        )
        d.rectangle((s * 0.45, y - s * 0.04, s * 0.55, y + s * 0.17), fill=(20, 25, 20))


def _soup(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    d.ellipse((0, 0, s, s), fill=_jitter(rng, (235, 235, 235), 10))
    d.ellipse((s * 0.12, s * 0.12, s * 0.88, s * 0.88), fill=_jitter(rng, (190, 95, 35), 30))
    for _ in range(rng.randint(3, 7)):
        cx, cy, r = rng.uniform(s * 0.3, s * 0.7), rng.uniform(s * 0.3, s * 0.7), s * 0.03
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_jitter(rng, (40, 120, 40)))


def _pasta(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    colour = _jitter(rng, (245, 215, 120))
    for _ in range(rng.randint(10, 16)):
        phase, amp, y0 = rng.uniform(0, 6.3), s * rng.uniform(0.03, 0.08), rng.uniform(s * 0.2, s * 0.8)
        pts = [(x, y0 + amp * math.sin(x / s * 12 + phase)) for x in range(int(s * 0.1), int(s * 0.9), 4)]
        d.line(pts, fill=colour, width=max(2, s // 40))
    d.ellipse((s * 0.4, s * 0.4, s * 0.6, s * 0.6), fill=_jitter(rng, (180, 40, 30)))


def _steak(d: ImageDraw.ImageDraw, rng: random.Random, s: int) -> None:
    pts = [
        (s / 2 + s * rng.uniform(0.3, 0.45) * math.cos(a), s / 2 + s * rng.uniform(0.22, 0.35) * math.sin(a))
        for a in (i * 2 * math.pi / 9 for i in range(9))
    ]
    d.polygon(pts, fill=_jitter(rng, (110, 55, 30)))
    for i in range(4):
        x = s * (0.25 + 0.15 * i)
        d.line((x, s * 0.25, x + s * 0.15, s * 0.75), fill=(40, 20, 10), width=max(2, s // 30))


DISHES: dict[str, Painter] = {
    "pizza": _pizza,
    "salad": _salad,
    "sushi": _sushi,
    "soup": _soup,
    "pasta": _pasta,
    "steak": _steak,
}


def render(dish: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """One synthetic photo: a table texture, a plate, the dish rotated and scaled, then lighting."""
    table = _jitter(rng, rng.choice([(120, 90, 60), (200, 200, 200), (60, 70, 90), (150, 40, 40)]), 30)
    img = Image.new("RGB", (width, height), table)
    # numpy's generator, seeded from ours: PIL's effect_noise draws from an unseeded C rand()
    grain = np.random.default_rng(rng.randrange(2**32)).normal(128, rng.uniform(10, 40), (height, width))
    noise = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).convert("RGB")
    img = Image.blend(img, noise, 0.15)
    size = int(min(width, height) * rng.uniform(0.55, 0.9))
    cx = rng.randint(size // 2, width - size // 2)
    cy = rng.randint(size // 2, height - size // 2)
    plate = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(plate).ellipse((0, 0, size - 1, size - 1), fill=(*_jitter(rng, (250, 250, 245), 8), 255))
    food = Image.new("RGBA", (int(size * 0.8), int(size * 0.8)), (0, 0, 0, 0))
    DISHES[dish](ImageDraw.Draw(food), rng, food.width)
    food = food.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR)
    plate.alpha_composite(food, ((size - food.width) // 2, (size - food.height) // 2))
    img.paste(plate, (cx - size // 2, cy - size // 2), plate)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.25))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def write_sample_set(
    out: Path, *, per_class: int = 40, width: int = 320, height: int = 256, classes: int = len(DISHES), seed: int = 0
) -> list[Path]:
    """Write ``per_class`` images for each of the first ``classes`` dishes; returns the paths written."""
    if not 1 <= classes <= len(DISHES):
        raise ValueError(f"classes must be between 1 and {len(DISHES)}")
    rng = random.Random(seed)
    out = Path(out)
    written = []
    for dish in list(DISHES)[:classes]:
        (out / dish).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (width, height) if rng.random() < 0.6 else (height, width)
            img = render(dish, rng, w, h)
            variant = i % 10
            if variant == 3:  # stored rotated, displayed upright through EXIF orientation 6
                path = out / dish / f"{dish}_{i:04d}.jpg"
                exif = Image.Exif()
                exif[ORIENTATION_TAG] = 6
                img.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
            elif variant == 5:
                path = out / dish / f"{dish}_{i:04d}.png"
                img.save(path)
            elif variant == 7:
                path = out / dish / f"{dish}_{i:04d}.jpg"
                img.convert("L").save(path, quality=90)
            else:
                path = out / dish / f"{dish}_{i:04d}.jpg"
                img.save(path, quality=rng.randint(80, 95))
            written.append(path)
    (out / "README.txt").write_text(
        "SYNTHETIC sample data generated by `python -m training.sample_data` (not real food photos).\n"
        f"seed={seed} per_class={per_class} classes={', '.join(list(DISHES)[:classes])}\n"
    )
    return written


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write <class>/<image> files into")
    p.add_argument("--per-class", type=int, default=40, help="images per class")
    p.add_argument("--classes", type=int, default=len(DISHES), help=f"number of dish classes (max {len(DISHES)})")
    p.add_argument("--width", type=int, default=320, help="image width in pixels (height for portrait ones)")
    p.add_argument("--height", type=int, default=256, help="image height in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same files")
    return p


def main(args: argparse.Namespace) -> int:
    paths = write_sample_set(
        args.out,
        per_class=args.per_class,
        width=args.width,
        height=args.height,
        classes=args.classes,
        seed=args.seed,
    )
    print(f"wrote {len(paths)} synthetic images in {args.classes} classes to {args.out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (ValueError, OSError))


if __name__ == "__main__":
    sys.exit(cli())
