"""Measure retrieval quality and the Annoy speed/recall trade-off of an index build.

    python -m training.evaluate --artifacts artifacts/ --queries data/sample

Reports, for labelled collections, precision@k and mAP@k of same-label neighbours (a query that is itself
in the index is left out of its own results); Annoy recall@10 against exact brute-force search over the
same vectors at several ``search_k`` values, with per-query latency; a contact sheet PNG; a JSON report.
Without ``--queries`` every indexed image is used as a query.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from lambda_fn.artifacts import ArtifactError, fetch
from lambda_fn.engine import Engine
from lambda_fn.manifest import EMBEDDINGS_FILE
from training.build_index import embed_collection, scan_collection
from training.cli import run

KS = (1, 5, 10)


def exact_top_k(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: list[int | None] | None = None,
    *,
    with_similarities: bool = False,
    max_block_bytes: int = 256 << 20,
):
    """Exact top-k by inner product (cosine for unit vectors), nearest first, leaving ``exclude[q]`` out.

    Queries go in blocks so the float32 similarity block stays under ``max_block_bytes`` (10^6 vectors fit).
    Returns ids ``(len(queries), k)``, and their similarities too with ``with_similarities``.
    """
    block = max(1, max_block_bytes // (4 * len(vectors)))
    ids = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        s = queries[start : start + block] @ vectors.T
        for row, ex in enumerate((exclude or [])[start : start + block]):
            if ex is not None:
                s[row, ex] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        ids[start : start + block] = np.take_along_axis(part, order, axis=1)
        sims[start : start + block] = np.take_along_axis(part_sims, order, axis=1)
    return (ids, sims) if with_similarities else ids


def precision_at_k(relevant: np.ndarray, k: int) -> float:
    """Mean share of the first k results that are relevant. ``relevant`` is a (queries, >=k) bool array."""
    return float(relevant[:, :k].mean())


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """mAP@k: per query, sum of precision@i at each relevant rank i <= k, over min(k, relevant items)."""
    rel = relevant[:, :k].astype(np.float64)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(n_relevant, k).astype(np.float64)
    ap = np.divide((precision_at_i * rel).sum(axis=1), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(ap.mean())


def recall_at_k(approx: list[list[int]], exact: np.ndarray, k: int | None = None) -> float:
    """Mean share of the exact top-k (k: all of ``exact``'s columns by default) the approximate search found."""
    k = k or exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(e[:k].tolist())) / k for a, e in zip(approx, exact, strict=True)]))


def annoy_sweep(
    engine: Engine, queries: np.ndarray, exclude: list[int | None], exact: np.ndarray, search_ks: list[int], k: int = 10
) -> list[dict]:
    rows = []
    for search_k in search_ks:
        found, times = [], []
        for q, ex in zip(queries, exclude, strict=True):
            n = k + (ex is not None)
            t0 = time.perf_counter()
            ids = engine.index.get_nns_by_vector(q.tolist(), n, search_k=search_k)
            times.append((time.perf_counter() - t0) * 1000)
            found.append([i for i in ids if i != ex][:k])
        rows.append(
            {
                "search_k": search_k,
                "recall@10": recall_at_k(found, exact, k),
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
            }
        )
    return rows


def contact_sheet(
    rows: list[tuple[Path, str | None, list[tuple[Path, str | None, float]]]], out: Path, thumb: int = 112
) -> None:
    """One row per query: the query, then its neighbours with label and distance underneath."""
    cols = 1 + max(len(r[2]) for r in rows)
    sheet = Image.new("RGB", (cols * (thumb + 8), len(rows) * (thumb + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (qpath, qlabel, neighbours) in enumerate(rows):
        cells = [(qpath, f"QUERY {qlabel or ''}")] + [(p, f"{lab or '?'} {d:.3f}") for p, lab, d in neighbours]
        for c, (path, caption) in enumerate(cells):
            x, y = c * (thumb + 8) + 4, r * (thumb + 30) + 4
            with Image.open(path) as im:
                sheet.paste(ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (thumb, thumb)), (x, y))
            draw.text((x, y + thumb + 2), caption[:20], fill="black" if c else "darkred")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="build folder (default: artifacts)")
    p.add_argument(
        "--queries", type=Path, default=None, help="labelled query images (class folders); default: every indexed image"
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="collection folder the index was built from, for the contact sheet (default: --queries)",
    )
    p.add_argument("--search-k", default="", help="comma-separated search_k values to sweep (default: a ladder)")
    p.add_argument("--max-queries", type=int, default=1000, help="cap on queries (default: 1000)")
    p.add_argument("--sheet-rows", type=int, default=8, help="queries shown in the contact sheet (default: 8)")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: <artifacts>/evaluation.json)")
    p.add_argument("--sheet", type=Path, default=None, help="contact sheet (default: <artifacts>/contact_sheet.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for embedding queries (default: 1)")
    return p


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    fetched = fetch(str(args.artifacts), args.artifacts)
    engine = Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)
    m = engine.manifest
    emb_path = args.artifacts / EMBEDDINGS_FILE
    vectors = (
        np.load(emb_path) if emb_path.is_file() else np.stack([engine.vector(i) for i in range(m.count)])
    ).astype(np.float32)
    index_labels = np.array([e.label or "" for e in engine.keys])
    key_to_id = {e.key: i for i, e in enumerate(engine.keys)}
    images_root = args.images or args.queries
    if args.queries is None:
        ids = np.arange(min(m.count, args.max_queries))
        queries, q_labels, exclude = vectors[ids], index_labels[ids], [int(i) for i in ids]
        q_paths = [(images_root / engine.keys[i].key) if images_root else None for i in ids]
    else:
        collection = scan_collection(args.queries)
        chosen = np.linspace(0, len(collection.paths) - 1, min(len(collection.paths), args.max_queries)).astype(int)
        paths = [collection.paths[i] for i in chosen]
        queries, kept, _ = embed_collection(
            engine.model, engine.meta.resize_size, engine.meta.crop_size, paths, batch_size=32, workers=0
        )
        entries = [collection.entries[chosen[i]] for i in kept]
        q_paths = [paths[i] for i in kept]
        q_labels = np.array([e.label or "" for e in entries])
        same_root = images_root is not None and args.queries.resolve() == images_root.resolve()
        exclude = [key_to_id.get(e.key) if same_root else None for e in entries]
    k_max = max(KS)
    exact = exact_top_k(vectors, queries, k_max, exclude)
    relevant = index_labels[exact] == q_labels[:, None]
    n_relevant = np.array(
        [(index_labels == lab).sum() - (ex is not None) for lab, ex in zip(q_labels, exclude, strict=True)]
    )
    quality = {f"precision@{k}": precision_at_k(relevant, k) for k in KS}
    quality |= {f"mAP@{k}": average_precision_at_k(relevant, n_relevant, k) for k in KS}
    ladder = [int(s) for s in args.search_k.split(",") if s] or sorted(
        {m.n_trees * k_max, 500, 1000, 2000, 5000, 10000, 20000, 50000, m.search_k}
    )
    sweep = annoy_sweep(engine, queries, exclude, exact, ladder, k_max)
    t0 = time.perf_counter()
    for q in queries[:200]:
        exact_top_k(vectors, q[None], k_max)
    exact_ms = (time.perf_counter() - t0) * 1000 / min(len(queries), 200)
    report = {
        "queries": len(queries),
        "index_count": m.count,
        "n_trees": m.n_trees,
        "default_search_k": m.search_k,
        "retrieval": quality,
        "annoy": sweep,
        "exact_p_mean_ms": exact_ms,
    }
    out = args.out or args.artifacts / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"{len(queries)} queries against {m.count} images (n_trees={m.n_trees})")
    print("  " + "  ".join(f"{k}={v:.3f}" for k, v in quality.items()))
    print(f"  {'search_k':>9} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8}   (exact numpy: {exact_ms:.3f} ms/query)")
    for row in sweep:
        mark = "  <- manifest default" if row["search_k"] == m.search_k else ""
        print(f"  {row['search_k']:>9} {row['recall@10']:>9.3f} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f}{mark}")
    if images_root is not None and all(p is not None for p in q_paths):
        rows = []
        for q in range(min(args.sheet_rows, len(queries))):
            neigh = engine.search(queries[q], 6, exclude=exclude[q])
            rows.append(
                (
                    q_paths[q],
                    q_labels[q] or None,
                    [(images_root / engine.keys[n.id].key, engine.keys[n.id].label, n.distance) for n in neigh],
                )
            )
        sheet = args.sheet or args.artifacts / "contact_sheet.png"
        contact_sheet(rows, sheet)
        print(f"contact sheet: {sheet}")
    print(f"report: {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (FileNotFoundError, ValueError, ArtifactError))


if __name__ == "__main__":
    sys.exit(cli())
