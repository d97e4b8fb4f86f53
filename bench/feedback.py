"""Relevance feedback ("more like this, less like that"): P@10 over rounds of simulated feedback, and its cost.

    python -m bench.feedback                          # the benchmark build (random weights), both sets
    python -m bench.feedback --artifacts artifacts    # a trained build (make demo) and its photos' labels
    python -m bench.feedback --quick                  # fewer queries (a smoke run)

Each image of a labelled set is a query in turn (left out of its own results, as ``/similar?key=`` does).
A simulated person looks at the 10 results, likes the highest-ranked one with the query's label and dislikes
the highest-ranked one with another label (each at most once over the rounds); the next round searches with
everything liked and disliked so far, which never comes back as a result. P@10 is the share of the 10 results
with the query's label; "no feedback" is round 0. Both strategies of ``lambda_fn.search.feedback`` are scored
exactly (every image), so the comparison is of the strategies, not of Annoy.

Sets: the collection of a build, labelled by its folders: by default the benchmark photos (240 synthetic dish
photos in 6 labels, bench._setup) embedded by the full-size ResNet34 with random weights, or ``--artifacts`` (a
build with ``--save-embeddings``, e.g. ``make demo``'s); and scikit-image's ``lfw_subset`` (100 faces, 100
non-faces, 25x25 grey) embedded by the same model.

Cost: per request through the service's own ranking (``lambda_fn.search.pipeline``) on that build's Annoy index:
a plain search by key against one with 1 liked + 1 disliked and with 3 + 3.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench._setup import RESULTS, artifacts, lfw_subset, pin_threads
from bench.harness import percentile, write_result
from lambda_fn.search.feedback import ALPHA, BETA, NoPositiveSignal, best_score, rocchio

TOP = 10
ROUNDS = 3


@dataclass(frozen=True)
class Strategy:
    name: str
    # (vectors, query id, liked ids, disliked ids) -> a score per image, higher is better
    score: Callable[[np.ndarray, int, list[int], list[int]], np.ndarray]


def rocchio_strategy(alpha: float, beta: float) -> Strategy:
    def score(x: np.ndarray, q: int, liked: list[int], disliked: list[int]) -> np.ndarray:
        v = rocchio(x[q], x[liked] if liked else None, x[disliked] if disliked else None, dim=x.shape[1],
                    alpha=alpha, beta=beta)  # fmt: skip
        return x @ v

    return Strategy(f"rocchio a={alpha:g} b={beta:g}", score)


def _best_score(x: np.ndarray, q: int, liked: list[int], disliked: list[int]) -> np.ndarray:
    return best_score(x, x[[q, *liked]], x[disliked] if disliked else None)


BEST_SCORE = Strategy("best_score", _best_score)


def top_results(scores: np.ndarray, excluded: set[int], k: int = TOP) -> list[int]:
    """The ``k`` highest-scored ids not in ``excluded``, best first."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order if int(i) not in excluded][:k]


def judge(results: Sequence[int], labels: np.ndarray, label, liked: list[int], disliked: list[int]) -> tuple:
    """The simulated person: the first result with the query's label not yet liked, and the first with another
    label not yet disliked (None where there is none)."""
    like = next((i for i in results if labels[i] == label and i not in liked), None)
    dislike = next((i for i in results if labels[i] != label and i not in disliked), None)
    return like, dislike


def simulate(x: np.ndarray, labels: np.ndarray, strategy: Strategy, queries: Sequence[int], rounds: int = ROUNDS):
    """Mean P@10 per round (round 0: no feedback) over ``queries``, and how many rounds had nothing to add."""
    totals = np.zeros(rounds + 1)
    idle = 0
    for q in queries:
        liked: list[int] = []
        disliked: list[int] = []
        results = top_results(x @ x[q], {q})
        totals[0] += float(np.mean(labels[results] == labels[q]))
        for r in range(1, rounds + 1):
            like, dislike = judge(results, labels, labels[q], liked, disliked)
            if like is None and dislike is None:
                idle += 1
            liked += [like] if like is not None else []
            disliked += [dislike] if dislike is not None else []
            try:
                scores = strategy.score(x, q, liked, disliked)
            except NoPositiveSignal:
                scores = x @ x[q]
            results = top_results(scores, {q, *liked, *disliked})
            totals[r] += float(np.mean(labels[results] == labels[q]))
    return [round(float(t / len(queries)), 4) for t in totals], idle


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_set(art: Path, about: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A build's embeddings (saved with ``--save-embeddings``) and its images' labels."""
    from lambda_fn.contract.manifest import EMBEDDINGS_FILE, Manifest, read_keys

    manifest = Manifest.read(art / "manifest.json")
    x = _unit_rows(np.load(art / (manifest.embeddings_file or EMBEDDINGS_FILE)))
    labels = np.array([e.label for e in read_keys(art / manifest.keys_file)])
    return x, labels, f"{manifest.count} photos, {len(set(labels))} labels; {about}"


def lfw_set(art: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """scikit-image's lfw_subset file, read without importing scikit-image; None where it is not installed."""
    import torch
    from PIL import Image

    from lambda_fn.contract.manifest import MODEL_FILE
    from lambda_fn.vision.engine import load_model

    data = lfw_subset()
    if data is None:
        print("  scikit-image's lfw_subset is not installed: that set is left out")
        return None
    faces = data[0]
    model, meta = load_model(art / MODEL_FILE)
    size = meta.crop_size
    grey = [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").resize((size, size)) for f in faces]
    with torch.inference_mode():
        emb = model(torch.from_numpy(np.stack([np.asarray(g) for g in grey]))).numpy()
    labels = np.array(["face"] * 100 + ["not a face"] * 100)
    return _unit_rows(emb), labels, "scikit-image lfw_subset: 100 faces, 100 non-faces; the same model"


def run_quality(sets, strategies: Sequence[Strategy], n_queries: int | None, chosen: str) -> dict:
    """P@10 per round for every strategy on every set, and the first-round gain of the ``chosen`` one."""
    out = {}
    for x, labels, about in sets:
        step = max(1, len(x) // n_queries) if n_queries else 1
        queries = list(range(0, len(x), step))  # spread over every label
        rows = {}
        for s in strategies:
            p, idle = simulate(x, labels, s, queries)
            rows[s.name] = {"p_at_10": p, "first_round_gain": round(p[1] - p[0], 4), "rounds_without_feedback": idle}
            print(f"  {about[:32]:32s} {s.name:20s} P@10 by round {p}  first-round gain {p[1] - p[0]:+.4f}")
        out[about] = {"queries": len(queries), "strategies": rows, "chosen": chosen}
    return out


def run_cost(art: Path, repeats: int) -> dict:
    """Per-request time of the service's ranking: plain by key against with 1+1 and 3+3 feedback keys."""
    from lambda_fn.contract.config import Settings
    from lambda_fn.contract.manifest import Manifest, read_keys
    from lambda_fn.search.pipeline import SearchOptions, search_similar
    from lambda_fn.search.urls import ImageLinker
    from lambda_fn.vision.engine import Engine

    manifest = Manifest.read(art / "manifest.json")
    engine = Engine.from_files(manifest, art / manifest.model_file, art / manifest.index_file, art / manifest.keys_file)
    settings = Settings(artifacts_uri=str(art))
    linker = ImageLinker(settings)
    labels = [e.label for e in read_keys(art / "keys.json")]
    rng = np.random.default_rng(0)
    n = manifest.count
    cases = {"plain": (0, 0), "1 liked + 1 disliked": (1, 1), "3 liked + 3 disliked": (3, 3)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):  # the cases interleaved, each on the same query
        q = int(rng.integers(n))
        same = [i for i in range(n) if labels[i] == labels[q] and i != q]
        other = [i for i in range(n) if labels[i] != labels[q]]
        for name, (n_like, n_dislike) in cases.items():
            liked = tuple(engine.keys[int(i)].key for i in rng.choice(same, n_like, replace=False))
            disliked = tuple(engine.keys[int(i)].key for i in rng.choice(other, n_dislike, replace=False))
            options = SearchOptions(k=12, liked=liked, disliked=disliked)
            t0 = time.perf_counter()
            search_similar(q, options, engine, settings, linker)
            times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, ms in times.items():
        out[name] = {"p50_ms": round(percentile(ms, 50), 3), "p95_ms": round(percentile(ms, 95), 3)}
        print(f"  cost {name:22s} p50 {out[name]['p50_ms']:.3f} ms  p95 {out[name]['p95_ms']:.3f} ms")
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--artifacts",
        default=None,
        help="a build folder saved with --save-embeddings (default: the benchmark build, random weights)",
    )
    p.add_argument("--quick", action="store_true", help="about 60 queries per set, 50 timed requests (a smoke run)")
    p.add_argument("--repeats", type=int, default=500, help="timed requests per cost case (default 500)")
    p.add_argument("--out", default=str(RESULTS / "feedback.json"), help="where the JSON report goes")
    return p


def main(args) -> int:
    pin_threads()
    strategies = [rocchio_strategy(a, b) for a in (0.5, 1.0, 2.0) for b in (0.0, 0.5, 1.0, 1.5)] + [BEST_SCORE]
    art = Path(args.artifacts) if args.artifacts else artifacts()
    about = f"the model of {args.artifacts}" if args.artifacts else "ResNet34 224 px, random weights (bench._setup)"
    cost = run_cost(art, 50 if args.quick else args.repeats)  # first: no model forward has run (busy threads)
    sets = [s for s in (build_set(art, about), lfw_set(art)) if s is not None]
    n_queries = 60 if args.quick else None
    chosen = rocchio_strategy(ALPHA, BETA).name  # what the service runs
    quality = run_quality(sets, strategies, n_queries, chosen)
    report = {"artifacts": str(art), "top": TOP, "rounds": ROUNDS, "quality": quality, "cost_ms": cost}
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
