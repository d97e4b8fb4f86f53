"""Index-build throughput: training.build_index's embedding (decode workers + batched forward) vs the bare
batched forward of the same model on ready tensors, same batch size, in the same run, for the fp32 and the
int8 model. By default the run repeats in a child with the kernels capped at AVX2 (``bench.isa``): ``avx2``.
Each pipeline pass starts its DataLoader workers afresh (as an index build does once), so with few images
that start-up weighs on the fast int8 model; 480 images keep it small.

    python -m bench.embed [--images 480] [--batch-size 32] [--rounds 3] [--isa both|full|avx2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, collection, pin_threads
from bench.harness import write_result
from bench.isa import add_isa_argument, run_capped
from lambda_fn.contract.manifest import MODEL_FILE


def main(args: argparse.Namespace) -> dict:
    import torch

    from lambda_fn.vision.engine import load_model
    from training.build_index import embed_collection
    from training.data import list_images

    pin_threads()
    models = {name: load_model(artifacts(int8=name == "int8") / MODEL_FILE) for name in ("fp32", "int8")}
    per_class = -(-args.images // 6)
    paths = list_images(collection(per_class))[: args.images]
    crop = models["fp32"][1].crop_size
    batch = torch.randint(0, 256, (args.batch_size, crop, crop, 3), dtype=torch.uint8)
    with torch.inference_mode():
        for model, _ in models.values():
            model(batch)  # warm-up
    report = {
        "isa": args.isa if args.isa != "both" else "full",
        "capability": torch.backends.cpu.get_cpu_capability(),
        "images": len(paths),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": THREADS,
        "models": {},
    }
    for name, (model, meta) in models.items():

        def pipeline(model=model, meta=meta) -> float:
            t0 = time.perf_counter()
            _, kept, _, _ = embed_collection(
                model, meta.resize_size, meta.crop_size, paths, batch_size=args.batch_size, workers=args.workers
            )
            return len(kept) / (time.perf_counter() - t0)

        def bare(model=model) -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(-(-len(paths) // args.batch_size)):
                    model(batch)
            return len(paths) / (time.perf_counter() - t0)

        rounds = []
        for r in range(args.rounds):  # interleaved, the order swapped every round
            if r % 2 == 0:
                p, b = pipeline(), bare()
            else:
                b, p = bare(), pipeline()
            rounds.append({"pipeline_img_s": p, "bare_forward_img_s": b, "ratio": p / b})
        report["models"][name] = {
            "rounds": rounds,
            "median_ratio": sorted(r["ratio"] for r in rounds)[len(rounds) // 2],
        }
    print(
        f"embedding {len(paths)} images at {crop}px [{report['isa']} ISA: {report['capability']}], batch "
        f"{args.batch_size}, {args.workers} decode workers, {THREADS} torch threads"
    )
    for name, m in report["models"].items():
        for r in m["rounds"]:
            print(
                f"  {name}: pipeline {r['pipeline_img_s']:.1f} img/s vs bare forward {r['bare_forward_img_s']:.1f} "
                f"img/s -> ratio {r['ratio']:.2f}"
            )
    if args.isa == "both":
        argv = ["--images", str(args.images), "--batch-size", str(args.batch_size), "--rounds", str(args.rounds)]
        report["avx2"] = run_capped("embed", [*argv, "--workers", str(args.workers)])
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480, help="images to embed (default: 480)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for both (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="decode workers of the pipeline (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model (default: 3)")
    add_isa_argument(p)
    p.add_argument("--out", type=Path, default=RESULTS / "embed.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
