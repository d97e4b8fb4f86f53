"""Warm query latency: our Lambda handler vs the original DeepFood pipeline vs the bare model forward.

Runs in one process, interleaved (ours, original, bare forward, rotating), with torch threads pinned for
all three, so machine noise hits them alike. Queries: a 224-px upload and 3- and 12-megapixel JPEG photos.
The API Gateway events are built before timing (API Gateway, not the function, base64-encodes the body).
By default the whole run repeats in a child process with the kernels capped at AVX2 (``bench.isa``), the
instruction set AWS Lambda promises on x86_64; its report is the ``avx2`` entry.

Where a request's time goes beyond the forward is measured stage by stage (base64 decode as Mangum does it,
Starlette's multipart parsing, JPEG decode and resize, forward, Annoy), interleaved, in ``stages``.
Retrieval quality of int8 against fp32 is measured on real labelled photos that a package ships (scikit-
image's ``lfw_subset``: 100 face and 100 non-face crops), when scikit-image is installed (the file only:
``pip install --no-deps scikit-image``).

The original pipeline, re-implemented faithfully: eager torchvision ResNet34 with a forward hook on avgpool
(the classifier head still runs), PIL decode at full size, torchvision Resize(256) + CenterCrop(224) +
ToTensor + Normalize, Annoy with 5 trees and default search_k.

    python -m bench.latency [--iterations 30] [--isa both|full|avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench._setup import RESULTS, THREADS, artifacts, bench_net, lfw_subset, photo_jpeg, pin_threads
from bench.harness import parse_upload, percentile, write_result
from bench.isa import add_isa_argument, run_capped
from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE, MODEL_FILE
from support.service import LambdaContext, proc_status_kib, search_event, service_env

SIZES = {
    f"{DEFAULT_CROP_SIZE}px upload": (DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE),
    "3 MP photo": (2000, 1500),
    "12 MP photo": (4000, 3000),
}


class OriginalPipeline:
    """The original DeepFood query path, on the same weights."""

    def __init__(self, state: dict, embeddings):
        import torch
        from annoy import AnnoyIndex
        from torchvision import models, transforms

        from training.model import IMAGENET_MEAN, IMAGENET_STD

        self.model = models.resnet34(weights=None)
        self.model.fc = torch.nn.Linear(512, state["fc.weight"].shape[0])
        self.model.load_state_dict(state)
        self.model.eval()
        self._features = None
        self.model.avgpool.register_forward_hook(lambda _m, _i, out: setattr(self, "_features", out))
        self.transform = transforms.Compose(
            [
                transforms.Resize(DEFAULT_RESIZE_SIZE),
                transforms.CenterCrop(DEFAULT_CROP_SIZE),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        self.index = AnnoyIndex(512, "angular")
        for i, v in enumerate(embeddings):
            self.index.add_item(i, v.tolist())
        self.index.build(5)

    def query(self, data: bytes, k: int = 10) -> list[int]:
        import io

        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        with torch.no_grad():
            self.model(self.transform(img).unsqueeze(0))
        vec = torch.flatten(self._features, 1)[0].numpy()
        return self.index.get_nns_by_vector(vec.tolist(), k)


def real_precision(models: dict, k: int = 10) -> dict:
    """precision@k of each model's embeddings on ``lfw_subset`` (every image a query against the rest), prepared
    exactly as for serving (grey -> RGB, resize 256, centre crop 224)."""
    import torch
    from PIL import Image

    from lambda_fn.vision.imaging import prepare
    from lambda_fn.vision.indexing import exact_top_k
    from training.evaluate import precision_at_k

    data = lfw_subset()
    if data is None:
        return {"skipped": "scikit-image is not installed (pip install --no-deps scikit-image gives the file)"}
    images, labels = data
    pixels = np.stack(
        [
            prepare(
                Image.fromarray((img * 255).round().astype(np.uint8)).convert("RGB"),
                DEFAULT_RESIZE_SIZE,
                DEFAULT_CROP_SIZE,
            )
            for img in images
        ]
    )
    out = {"dataset": "scikit-image data/lfw_subset.npy: 100 faces + 100 non-faces, 25x25 grey", "images": len(images)}
    vectors = {}
    with torch.inference_mode():
        for name, model in models.items():
            vectors[name] = torch.cat([model(torch.from_numpy(b)) for b in np.array_split(pixels, 8)]).numpy()
            top = exact_top_k(vectors[name], vectors[name], k, list(range(len(images))))
            out[f"{name} precision@{k}"] = precision_at_k(labels[top] == labels[:, None], k)
    if "fp32" in vectors and "int8" in vectors:
        cos = (vectors["fp32"] * vectors["int8"]).sum(axis=1)
        out["int8 vs fp32 cosine mean/min"] = [float(cos.mean()), float(cos.min())]
    return out


def stage_times(event: dict, model, meta, rounds: int) -> dict:
    """Median ms of each stage of a request, interleaved: base64 decode of the body (``lambda_fn.search.main``'s
    pybase64, and the standard library's that Mangum would use), multipart
    parsing (Starlette, parts kept in memory as ``lambda_fn.search.uploads`` sets it; also with Starlette's
    default of spooling a part past 1 MiB to a temporary file), JPEG decode + resize + crop
    (``lambda_fn.vision.imaging``: Pillow's draft decode), the forward."""
    import asyncio
    import base64

    import torch

    from lambda_fn.search.main import decoded_body
    from lambda_fn.vision.imaging import load_for_model

    content_type = event["headers"]["Content-Type"]
    body = base64.b64decode(event["body"])
    loop = asyncio.new_event_loop()  # its own: asyncio.run would leave Mangum's thread without a current loop
    image = loop.run_until_complete(parse_upload(body, content_type))
    pixels = load_for_model(image, meta.resize_size, meta.crop_size)
    stages = {
        "base64 decode": lambda: decoded_body(event),
        "base64 decode, standard library (Mangum's)": lambda: base64.b64decode(event["body"]),
        "multipart parse": lambda: loop.run_until_complete(parse_upload(body, content_type)),
        "multipart parse, parts spooled past 1 MiB": lambda: loop.run_until_complete(
            parse_upload(body, content_type, spool_max_size=1 << 20)
        ),
        "decode + resize": lambda: load_for_model(image, meta.resize_size, meta.crop_size),
        "forward": lambda: model(torch.from_numpy(pixels[None])),
    }
    times = {name: [] for name in stages}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, fn in stages.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1000)
    loop.close()
    return {name: percentile(t, 50) for name, t in times.items()}


def without_dedupe(event: dict) -> dict:
    """The event with ``dedupe=false``: the original pipeline returns the 10 nearest as they are, so ours does
    too and both answer the same question (and the comparison keeps the numbers measured before the
    same-picture rule, when collapsing by cosine left the random-init model one result)."""
    event["queryStringParameters"] = {**event["queryStringParameters"], "dedupe": "false"}
    event["multiValueQueryStringParameters"] = {**event["multiValueQueryStringParameters"], "dedupe": ["false"]}
    return event


# pybase64's own name for its AVX2 code path (``_pybase64._get_simd_name(64)``).
PYBASE64_AVX2 = 64


def main(args: argparse.Namespace) -> dict:
    import torch

    if args.isa == "avx2":  # the cap's environment variables do not reach pybase64, which reads cpuid itself
        from pybase64 import _pybase64

        _pybase64._set_simd_path(min(PYBASE64_AVX2, _pybase64._get_simd_path()))
    art = artifacts()
    os.environ.update(service_env(artifacts_uri=art, num_threads=THREADS, log_level="WARNING"))
    from mangum import Mangum

    import lambda_fn.search.main as service
    from lambda_fn.contract.config import Settings
    from lambda_fn.search.app import create_app
    from lambda_fn.vision.engine import load_model

    int8_app = create_app(Settings(artifacts_uri=str(artifacts(int8=True)), num_threads=THREADS, log_level="WARNING"))
    int8_handler = Mangum(int8_app, lifespan="off")
    pin_threads()
    original = OriginalPipeline(bench_net().backbone.state_dict(), np.load(art / "embeddings.npy"))
    bare_model, meta = load_model(art / MODEL_FILE)
    bare_int8, _ = load_model(artifacts(int8=True) / MODEL_FILE)
    bare_input = torch.zeros(1, DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE, 3, dtype=torch.uint8)
    ctx = LambdaContext()
    events: dict[bytes, dict] = {}

    def ours(data: bytes) -> list[int]:
        response = service.handler(events[data], ctx)
        assert response["statusCode"] == 200, response["body"][:300]
        return [r["id"] for r in json.loads(response["body"])["results"]]

    def ours_int8(data: bytes) -> list[int]:
        response = int8_handler(events[data], ctx)
        assert response["statusCode"] == 200, response["body"][:300]
        return [r["id"] for r in json.loads(response["body"])["results"]]

    # Each bare forward runs on its service's torch thread, as the service's own forward does: OpenMP keeps a
    # thread pool per calling thread, and a pool that has just finished spins on the CPUs for a while, so a
    # forward on yet another thread would pay for its neighbours' pools, which the service never does.
    def on_torch_thread(app, model):
        def forward() -> None:
            with torch.inference_mode():
                model(bare_input)

        return lambda _: app.state.service.torch_thread.submit(forward).result()

    bare = on_torch_thread(service.app, bare_model)
    bare_int8_forward = on_torch_thread(int8_app, bare_int8)

    report = {
        "isa": args.isa if args.isa != "both" else "full",
        "threads": THREADS,
        "iterations": args.iterations,
    }
    report["cases"] = {}
    runners = {
        "ours": ours,
        "ours int8": ours_int8,
        "original": original.query,
        "bare forward": bare,
        "bare forward int8": bare_int8_forward,
    }
    for label, (w, h) in SIZES.items():
        data = photo_jpeg(w, h, seed=w)
        events[data] = without_dedupe(search_event(data))
        for run in runners.values():  # warm-up, also the first-request load of ours
            run(data)
        times = {name: [] for name in runners}
        order = list(runners)
        for i in range(args.iterations):
            shift = i % len(order)
            for name in order[shift:] + order[:shift]:
                t0 = time.perf_counter()
                runners[name](data)
                times[name].append((time.perf_counter() - t0) * 1000)
        overlap = len(set(ours(data)) & set(original.query(data))) / 10
        case = {name: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95)} for name, t in times.items()}
        case["bytes"] = len(data)
        case["ours/original p50"] = case["ours"]["p50_ms"] / case["original"]["p50_ms"]
        case["ours/bare forward p50"] = case["ours"]["p50_ms"] / case["bare forward"]["p50_ms"]
        case["ours int8/original p50"] = case["ours int8"]["p50_ms"] / case["original"]["p50_ms"]
        case["ours int8/bare forward int8 p50"] = case["ours int8"]["p50_ms"] / case["bare forward int8"]["p50_ms"]
        case["top10 overlap with original"] = overlap
        case["stages fp32 (p50 ms)"] = stage_times(events[data], bare_model, meta, max(5, args.iterations // 3))
        report["cases"][label] = case
    report["real photos"] = real_precision({"fp32": bare_model, "int8": bare_int8})
    report["peak_rss_mb"] = proc_status_kib()["VmHWM"] / 1024
    print_report(report, original.index.get_n_items())
    if args.isa == "both":
        report["avx2"] = run_capped("latency", ["--iterations", str(args.iterations)])
    write_result(report, args.out)
    return report


def print_report(report: dict, images: int) -> None:
    print(
        f"query latency [{report['isa']} ISA: {torch_capability()}], {THREADS} torch threads, "
        f"{report['iterations']} interleaved iterations (random-init ResNet34 at {DEFAULT_CROP_SIZE} px, "
        f"{images} images)"
    )
    columns = ["ours", "ours int8", "original", "bare forward", "bare forward int8"]
    print(
        f"{'query (p50/p95 ms)':<20}" + "".join(f"{c:>18}" for c in columns) + f"{'ours/fwd':>10}"
        f"{'int8/fwd':>10}{'ours/orig':>11}{'int8/orig':>11}"
    )
    for label, c in report["cases"].items():
        cells = "".join(f"{c[name]['p50_ms']:>11.1f}/{c[name]['p95_ms']:<6.1f}" for name in columns)
        print(
            f"{label:<20}{cells}{c['ours/bare forward p50']:>10.2f}{c['ours int8/bare forward int8 p50']:>10.2f}"
            f"{c['ours/original p50']:>11.2f}{c['ours int8/original p50']:>11.2f}"
        )
    for label, c in report["cases"].items():
        stages = c["stages fp32 (p50 ms)"]
        print(f"  stages, {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"  real photos: {report['real photos']}")
    print(f"peak RSS of this process (ours, int8, original and bare models loaded): {report['peak_rss_mb']:.0f} MB")


def torch_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=30, help="timed queries per pipeline and size (default: 30)")
    add_isa_argument(p)
    p.add_argument("--out", type=Path, default=RESULTS / "latency.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
