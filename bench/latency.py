"""Warm query latency: our Lambda handler vs the original DeepFood pipeline vs the bare model forward.

Runs in one process, interleaved (ours, original, bare forward, rotating), with torch threads pinned for
all three, so machine noise hits them alike. Queries: a 224-px upload and 3- and 12-megapixel JPEG photos.

The original pipeline, re-implemented faithfully: eager torchvision ResNet34 with a forward hook on avgpool
(the classifier head still runs), PIL decode at full size, torchvision Resize(256) + CenterCrop(224) +
ToTensor + Normalize, Annoy with 5 trees and default search_k.

    python -m bench.latency [--iterations 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, photo_jpeg, pin_threads
from bench.harness import LambdaContext, percentile, proc_status_kib, search_event, service_env, write_result
from lambda_fn.imaging import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE

SIZES = {
    f"{DEFAULT_CROP_SIZE}px upload": (DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE),
    "3 MP photo": (2000, 1500),
    "12 MP photo": (4000, 3000),
}


class OriginalPipeline:
    """The original DeepFood query path, on the same weights."""

    def __init__(self, art: Path, embeddings):
        import torch
        from annoy import AnnoyIndex
        from torchvision import models, transforms

        from training.model import IMAGENET_MEAN, IMAGENET_STD

        scripted = torch.jit.load(str(art / "model.pt"))
        state = {
            k.removeprefix("net.backbone."): v
            for k, v in scripted.state_dict().items()
            if k.startswith("net.backbone.")
        }
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


def main(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    art = artifacts()
    os.environ.update(service_env(artifacts_uri=art, num_threads=THREADS, log_level="WARNING"))
    from mangum import Mangum

    import lambda_fn.main as service
    from lambda_fn.app import create_app
    from lambda_fn.config import Settings

    int8_handler = Mangum(
        create_app(Settings(artifacts_uri=str(artifacts(int8=True)), num_threads=THREADS, log_level="WARNING")),
        lifespan="off",
    )
    pin_threads()
    original = OriginalPipeline(art, np.load(art / "embeddings.npy"))
    bare_model = torch.jit.load(str(art / "model.pt")).eval()
    bare_input = torch.zeros(1, DEFAULT_CROP_SIZE, DEFAULT_CROP_SIZE, 3, dtype=torch.uint8)
    ctx = LambdaContext()

    def ours(data: bytes) -> list[int]:
        response = service.handler(search_event(data), ctx)
        assert response["statusCode"] == 200, response["body"][:300]
        return [r["id"] for r in json.loads(response["body"])["results"]]

    def ours_int8(data: bytes) -> list[int]:
        response = int8_handler(search_event(data), ctx)
        assert response["statusCode"] == 200, response["body"][:300]
        return [r["id"] for r in json.loads(response["body"])["results"]]

    def bare(_: bytes) -> None:
        with torch.inference_mode():
            bare_model(bare_input)

    report = {"threads": THREADS, "iterations": args.iterations, "cases": {}}
    runners = {"ours": ours, "ours int8": ours_int8, "original": original.query, "bare forward": bare}
    for label, (w, h) in SIZES.items():
        data = photo_jpeg(w, h, seed=w)
        for run in runners.values():  # warm-up, also the first-request load of ours
            run(data)
        times = {name: [] for name in runners}
        order = list(runners)
        for i in range(args.iterations):
            for name in order[i % 3 :] + order[: i % 3]:
                t0 = time.perf_counter()
                runners[name](data)
                times[name].append((time.perf_counter() - t0) * 1000)
        overlap = len(set(ours(data)) & set(original.query(data))) / 10
        case = {name: {"p50_ms": percentile(t, 50), "p95_ms": percentile(t, 95)} for name, t in times.items()}
        case["bytes"] = len(data)
        case["ours/original p50"] = case["ours"]["p50_ms"] / case["original"]["p50_ms"]
        case["ours/bare forward p50"] = case["ours"]["p50_ms"] / case["bare forward"]["p50_ms"]
        case["ours int8/original p50"] = case["ours int8"]["p50_ms"] / case["original"]["p50_ms"]
        case["top10 overlap with original"] = overlap
        report["cases"][label] = case
    report["peak_rss_mb"] = proc_status_kib()["VmHWM"] / 1024
    print(
        f"query latency, {THREADS} torch threads, {args.iterations} interleaved iterations "
        f"(random-init ResNet34 at {DEFAULT_CROP_SIZE} px, {original.index.get_n_items()} images)"
    )
    columns = ["ours", "ours int8", "original", "bare forward"]
    print(
        f"{'query (p50/p95 ms)':<20}" + "".join(f"{c:>16}" for c in columns) + f"{'ours/fwd':>10}"
        f"{'ours/orig':>11}{'int8/orig':>11}"
    )
    for label, c in report["cases"].items():
        cells = "".join(f"{c[name]['p50_ms']:>9.1f}/{c[name]['p95_ms']:<6.1f}" for name in columns)
        print(
            f"{label:<20}{cells}{c['ours/bare forward p50']:>10.2f}{c['ours/original p50']:>11.2f}"
            f"{c['ours int8/original p50']:>11.2f}"
        )
    print(f"peak RSS of this process (ours, int8, original and bare model loaded): {report['peak_rss_mb']:.0f} MB")
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=30, help="timed queries per pipeline and size (default: 30)")
    p.add_argument("--out", type=Path, default=RESULTS / "latency.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
