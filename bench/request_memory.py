"""Peak memory growth and decode time of one query image, for the costliest images the upload caps admit.

    python -m bench.request_memory [--side 8000] [--quick]

Each image is decoded by ``lambda_fn.vision.imaging.load_for_model`` (what a search request runs) in a fresh
child process; the child reports its resident set before and its peak (``VmHWM``) after, so the growth is
what one request adds on top of a warm container. Images are generated: smooth gradients and flat areas
compress well, so ``side`` x ``side`` pixels fit in the 4.5 MB upload cap in every format listed.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.harness import write_result
from lambda_fn.contract.config import DEFAULT_MAX_UPLOAD_BYTES, Settings
from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
from lambda_fn.vision.imaging import MAX_BUFFERED_JPEG_SAMPLES
from support.hostile_images import flat_jpeg, rle_bmp
from support.service import REPO_ROOT

WORK = REPO_ROOT / "bench" / ".work" / "request_memory"
OUT = REPO_ROOT / "bench" / "results" / "request_memory.json"

CHILD = """
import json, sys, time
from support.service import proc_status_kib
from lambda_fn.vision.imaging import ImageError, load_for_model
data = open(sys.argv[1], "rb").read()
before = proc_status_kib()["VmRSS"]
start = time.perf_counter()
try:
    load_for_model(data, int(sys.argv[2]), int(sys.argv[3]), max_pixels=int(sys.argv[4]))
    outcome = "decoded"
except ImageError as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
seconds = time.perf_counter() - start
peak = proc_status_kib()["VmHWM"]
print(json.dumps({"growth_mib": (peak - before) / 1024, "seconds": seconds, "outcome": outcome}))
"""


def _gradient(side: int) -> np.ndarray:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    return (ramp[None, :] * 0.6 + ramp[:, None] * 0.4).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def with_many_scans(progressive_jpeg: bytes, scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until the file holds ``scans`` scans: valid segment
    structure, decoded by libjpeg scan after scan (each pass walks every coefficient of the image)."""
    last = progressive_jpeg.rfind(b"\xff\xda")
    end = progressive_jpeg.rfind(b"\xff\xd9")
    have = progressive_jpeg.count(b"\xff\xda")
    return progressive_jpeg[:end] + progressive_jpeg[last:end] * (scans - have) + progressive_jpeg[end:]


def make_images(side: int) -> dict[str, bytes]:
    g = _gradient(side)
    rgb = Image.fromarray(np.stack([g, g.T, np.flipud(g)], -1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the decoder must transpose
    progressive = _save(rgb, "JPEG", quality=85, progressive=True)
    bmp_1, bmp_24 = min(side, 5900), min(side, 1200)
    webp = min(side, 4000)  # WebP's own pixel cap, 16 MP
    cmyk_progressive = _save(rgb.convert("CMYK"), "JPEG", quality=85, progressive=True)
    # the largest progressive files under the sample cap: 4:4:4 colour and CMYK, square, whole 8x8 blocks
    cap_444, cap_cmyk = (min(side, math.isqrt(MAX_BUFFERED_JPEG_SAMPLES // n) // 8 * 8) for n in (3, 4))
    cmyk_at_cap = _save(rgb.crop((0, 0, cap_cmyk, cap_cmyk)).convert("CMYK"), "JPEG", quality=85, progressive=True)
    images = {
        "jpeg_baseline_rgb": _save(rgb, "JPEG", quality=85),
        "jpeg_progressive_10_scans": progressive,
        "jpeg_progressive_200_scans": with_many_scans(progressive, 200),
        "jpeg_exif_rotated": _save(rgb, "JPEG", quality=85, exif=exif),
        "jpeg_cmyk": _save(rgb.convert("CMYK"), "JPEG", quality=85),
        "jpeg_progressive_grey": _save(Image.fromarray(g), "JPEG", quality=85, progressive=True),
        "jpeg_progressive_444": _save(rgb, "JPEG", quality=85, progressive=True, subsampling=0),
        "jpeg_progressive_cmyk": cmyk_progressive,
        "jpeg_progressive_cmyk_32_scans": with_many_scans(cmyk_progressive, 32),
        "jpeg_progressive_444_at_cap": _save(
            rgb.crop((0, 0, cap_444, cap_444)), "JPEG", quality=85, progressive=True, subsampling=0
        ),
        "jpeg_progressive_cmyk_32_scans_at_cap": with_many_scans(cmyk_at_cap, 32),
        "jpeg_multiscan_444": flat_jpeg(side, side, interleaved=False),  # sequential, one scan per component
        "jpeg_multiscan_cmyk": flat_jpeg(side, side, components=4, interleaved=False),
        "bmp_rle8": rle_bmp(side, 8),
        "bmp_rle4": rle_bmp(side, 4),
        # the largest uncompressed BMPs under the upload cap: 1 bit a pixel, and 24
        "bmp_1bit": _save(Image.fromarray(g[:bmp_1, :bmp_1] > 127), "BMP"),
        "bmp_24bit": _save(rgb.crop((0, 0, bmp_24, bmp_24)), "BMP"),
        "webp_lossless_16mp": _save(rgb.crop((0, 0, webp, webp)), "WEBP", lossless=True, quality=0, method=0),
        "png_rgb": _save(rgb, "PNG", compress_level=9),
        "png_rgba": _save(Image.fromarray(np.dstack([np.asarray(rgb), g])), "PNG", compress_level=9),
        "png_la": _save(Image.fromarray(np.dstack([g, g.T])), "PNG", compress_level=9),
        "png_16bit_grey": _save(Image.fromarray(g.astype(np.uint16) * 257), "PNG", compress_level=9),
        "png_palette_transparent": _save(rgb.quantize(64), "PNG", transparency=0, compress_level=9),
        "gif": _save(rgb.quantize(64), "GIF"),
        "webp_lossless": _save(rgb, "WEBP", lossless=True, quality=0, method=0),
    }
    jpegtran = shutil.which("jpegtran")
    if jpegtran:  # libjpeg-turbo-progs: a real encoder's 99-scan progressive file (jpegtran stops at 100)
        script = WORK / "scans.txt"
        # DC of each component, then every luma AC coefficient in a scan of its own: 99 scans in all
        lines = ["0: 0 0 0 0;", "1: 0 0 0 0;", "2: 0 0 0 0;"]
        lines += [f"0: {i} {i} 0 0;" for i in range(1, 64)] + [f"1: {i} {i} 0 0;" for i in range(1, 32)]
        lines += ["1: 32 63 0 0;", "2: 1 63 0 0;"]
        script.write_text("\n".join(lines) + "\n")
        proc = subprocess.run(
            [jpegtran, "-scans", str(script)], input=images["jpeg_baseline_rgb"], capture_output=True, check=False
        )
        if proc.returncode != 0:
            print(f"jpegtran failed: {proc.stderr.decode(errors='replace')[:200]}", file=sys.stderr)
        if proc.returncode == 0:
            images["jpeg_jpegtran_99_scans"] = proc.stdout
    return images


def measure(path: Path, settings: Settings) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(path),
            str(DEFAULT_RESIZE_SIZE),
            str(DEFAULT_CROP_SIZE),
            str(settings.max_image_pixels),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> int:
    settings = Settings(artifacts_uri="unused")
    WORK.mkdir(parents=True, exist_ok=True)
    side = 2000 if args.quick else args.side
    rows = {}
    print(f"{'image':30} {'bytes':>10} {'growth MiB':>11} {'seconds':>8}  outcome")
    for name, data in make_images(side).items():
        path = WORK / name
        path.write_bytes(data)
        if len(data) > DEFAULT_MAX_UPLOAD_BYTES:
            rows[name] = {"bytes": len(data), "outcome": "over the upload cap: not a valid worst case"}
            print(f"{name:30} {len(data):>10,} {'':>11} {'':>8}  over the upload cap")
            continue
        row = {"bytes": len(data), **measure(path, settings)}
        rows[name] = row
        print(
            f"{name:30} {len(data):>10,} {row.get('growth_mib', float('nan')):>11.1f} "
            f"{row.get('seconds', float('nan')):>8.3f}  {row.get('outcome', row.get('error'))}"
        )
    worst = max((r for r in rows.values() if "growth_mib" in r), key=lambda r: r["growth_mib"])
    print(f"worst growth {worst['growth_mib']:.0f} MiB; slowest {max(r.get('seconds', 0) for r in rows.values()):.2f}s")
    write_result({"side": side, "images": rows}, args.out)
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=8000, help="image side in pixels (default: 8000, i.e. 64 MP)")
    p.add_argument("--quick", action="store_true", help="2000 px images: a smoke run")
    p.add_argument("--out", type=Path, default=OUT, help="result JSON")
    return p


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
