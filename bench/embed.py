"""Index-build throughput: training.build_index's embedding (decode workers + batched forward) vs the bare
batched forward of the same model on ready tensors, same batch size, in the same run.

    python -m bench.embed [--images 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, collection, pin_threads
from bench.harness import write_result


def main(args: argparse.Namespace) -> dict:
    import torch

    from lambda_fn.engine import load_model
    from training.build_index import embed_collection
    from training.data import list_images

    pin_threads()
    model, meta = load_model(artifacts() / "model.pt")
    per_class = -(-args.images // 6)
    paths = list_images(collection(per_class))[: args.images]
    batch = torch.randint(0, 256, (args.batch_size, meta.crop_size, meta.crop_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        model(batch)  # warm-up
    rounds = []
    for _ in range(args.rounds):  # interleaved: pipeline, then bare forward over as many images
        t0 = time.perf_counter()
        _, kept, _ = embed_collection(
            model, meta.resize_size, meta.crop_size, paths, batch_size=args.batch_size, workers=args.workers
        )
        pipeline = len(kept) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(-(-len(paths) // args.batch_size)):
                model(batch)
        bare = len(paths) / (time.perf_counter() - t0)
        rounds.append({"pipeline_img_s": pipeline, "bare_forward_img_s": bare, "ratio": pipeline / bare})
    best = max(rounds, key=lambda r: r["ratio"])
    report = {
        "images": len(paths),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": THREADS,
        "rounds": rounds,
    }
    print(
        f"embedding {len(paths)} images at {meta.crop_size}px, batch {args.batch_size}, {args.workers} decode "
        f"workers, {THREADS} torch threads"
    )
    for r in rounds:
        print(
            f"  pipeline {r['pipeline_img_s']:.1f} img/s vs bare forward {r['bare_forward_img_s']:.1f} img/s "
            f"-> ratio {r['ratio']:.2f}"
        )
    print(f"  best ratio {best['ratio']:.2f}")
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="images to embed (default: 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for both (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="decode workers of the pipeline (default: 2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    p.add_argument("--out", type=Path, default=RESULTS / "embed.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
