"""`make bench`: every benchmark, one after the other (each compares side by side within its own run)."""

from __future__ import annotations

import sys

from bench import ann, cold_start, embed, ingest, isa, latency, memory, reindex, request_memory, swap
from bench._setup import RESULTS


def main() -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The full ANN grid (1e4-1e6, ~20 min) is `python -m bench.ann`; here only the chosen n_trees at 1e4.
    # `python -m bench.pca` needs a trained build (make demo) and is run on its own; so does the reindex at
    # 10^6 (`python -m bench.reindex --sizes 1000000 ...`, about 10 minutes and 11 GB; see docs/scaling.md).
    for name, module, argv in (
        ("isa", isa, []),
        ("latency", latency, []),
        ("cold_start", cold_start, []),
        ("embed", embed, []),
        ("memory", memory, []),
        ("ann_quick", ann, ["--sizes", "10000", "--n-trees", "50"]),
        ("ingest", ingest, []),
        ("reindex", reindex, []),
        ("swap", swap, []),
        ("request_memory", request_memory, []),
    ):
        print(f"\n=== {name} ===", flush=True)
        module.main(module.get_args_parser().parse_args([*argv, "--out", str(RESULTS / f"{name}.json")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
