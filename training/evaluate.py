"""Measure retrieval quality and the Annoy speed/recall trade-off of an index build.

    python -m training.evaluate --artifacts artifacts/ --queries data/sample
    python -m training.evaluate --artifacts artifacts/ --source ifood=/data/ifood2019 --source food101=/data/food-101

Reports, for labelled collections, precision@k and mAP@k of same-label neighbours (a query that is itself
in the index is left out of its own results), overall and per source; Annoy recall@10 against exact
brute-force search over the same vectors at several ``search_k`` values, with per-query latency; a contact
sheet PNG; a JSON report. Without ``--queries`` every indexed image is used as a query.

Beside the exact ranking it reports what users get: precision and mAP of the search service's own ranking
(``lambda_fn.search.pipeline.rank``) with its default options, copies of one picture collapsed, and with
``dedupe=false``; on a collection without true duplicates the two are equal. It also lists the groups of
indexed images the service's dedupe treats as one picture (``lambda_fn.vision.phash.same_picture``).

Each source keeps its own taxonomy: a neighbour is relevant when it has the query's source and label, or
when ``--label-map`` pairs the two labels. That file is CSV with the header
``source_a,label_a,source_b,label_b``; each row says that label_a of source_a and label_b of source_b name
the same dish (both ways; pairs do not chain, so two labels of one source are never merged).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import EMBEDDINGS_FILE
from lambda_fn.search.pipeline import SearchOptions, rank
from lambda_fn.storage.artifacts import ArtifactError, fetch
from lambda_fn.vision.engine import Engine
from lambda_fn.vision.indexing import exact_top_k, recall_at_k
from lambda_fn.vision.phash import same_picture
from training.build_index import Sources, embed_collection, named_source, scan_sources
from training.cli import run
from training.data import MetadataError

LABEL_MAP_HEADER = ["source_a", "label_a", "source_b", "label_b"]
Taxon = tuple[str, str]  # (source, label); "" where there is none

KS = (1, 5, 10)


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


def spread(sources: list[str], cap: int) -> np.ndarray:
    """Positions of up to ``cap`` items of each source, evenly spaced through its (key-sorted) items, so
    every source and every part of it (its labels, in key order) has queries."""
    chosen = []
    for source in sorted(set(sources)):
        where = np.flatnonzero(np.asarray(sources) == source)
        chosen.append(where[np.linspace(0, len(where) - 1, min(len(where), cap)).astype(int)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def read_label_map(path: Path) -> set[tuple[Taxon, Taxon]]:
    """The pairs of labels from different sources that name the same dish (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    pairs: set[tuple[Taxon, Taxon]] = set()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for row in reader:
            cells = [c.strip() for c in row]
            if reader.line_num == 1:
                if cells != LABEL_MAP_HEADER:
                    raise MetadataError(path, 1, f"expected the header {','.join(LABEL_MAP_HEADER)}")
                continue
            if not "".join(cells):
                continue
            if len(cells) != 4 or not all(cells):
                raise MetadataError(path, reader.line_num, f"expected 4 non-empty fields, got {','.join(row)[:80]!r}")
            a, b = (cells[0], cells[1]), (cells[2], cells[3])
            pairs |= {(a, b), (b, a)}
        if reader.line_num == 0:
            raise MetadataError(path, 1, f"empty; expected the header {','.join(LABEL_MAP_HEADER)}")
    return pairs


def relevance(
    index_taxa: list[Taxon],
    query_taxa: list[Taxon],
    neighbours: np.ndarray,
    exclude: list[int | None],
    label_map: set[tuple[Taxon, Taxon]] = frozenset(),
) -> tuple[np.ndarray, np.ndarray]:
    """(relevant (queries, k) bool, number of relevant indexed items per query): same source and label, or
    a pair of ``label_map``. A query left out of its own results does not count itself."""
    taxa = {t: i for i, t in enumerate(sorted(set(index_taxa) | set(query_taxa)))}
    index_ids = np.array([taxa[t] for t in index_taxa], dtype=np.int64)
    query_ids = np.array([taxa[t] for t in query_taxa], dtype=np.int64)
    counts = np.bincount(index_ids, minlength=len(taxa))
    relevant = index_ids[neighbours] == query_ids[:, None]
    n_relevant = counts[query_ids] - np.array([ex is not None for ex in exclude], dtype=np.int64)
    mapped = np.array(sorted(taxa[a] * len(taxa) + taxa[b] for a, b in label_map if a in taxa and b in taxa))
    if len(mapped):
        relevant |= np.isin(query_ids[:, None] * len(taxa) + index_ids[neighbours], mapped)
        partners = np.zeros(len(taxa), dtype=np.int64)
        np.add.at(partners, mapped // len(taxa), counts[mapped % len(taxa)])
        n_relevant = n_relevant + partners[query_ids]
    return relevant, n_relevant


def retrieval_quality(relevant: np.ndarray, n_relevant: np.ndarray) -> dict[str, float]:
    quality = {f"precision@{k}": precision_at_k(relevant, k) for k in KS}
    return quality | {f"mAP@{k}": average_precision_at_k(relevant, n_relevant, k) for k in KS}


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


def service_ranking(
    engine: Engine, queries: np.ndarray, exclude: list[int | None], options: SearchOptions, settings: Settings
) -> np.ndarray:
    """The ids the search service answers each query with (``rank``, the code every endpoint uses), shape
    (queries, k); -1 where a page came back shorter than k."""
    out = np.full((len(queries), options.k), -1, dtype=np.int64)
    for q, (vector, ex) in enumerate(zip(queries, exclude, strict=True)):
        key = engine.keys[ex].key if ex is not None else None  # the seam leaves images out by key
        found = [nb.id for nb in rank(engine.store, vector, options, settings, exclude=key).neighbours]
        out[q, : len(found)] = found
    return out


def service_quality(
    engine: Engine,
    queries: np.ndarray,
    exclude: list[int | None],
    taxa: tuple[list[Taxon], list[Taxon]],
    settings: Settings,
    label_map: set[tuple[Taxon, Taxon]] = frozenset(),
) -> dict[str, dict[str, float]]:
    """P@k and mAP@k of the service's ranking with its default options (dedupe on) and with ``dedupe=false``;
    ``taxa`` is (index taxa, query taxa)."""
    out = {}
    for name, dedupe in (("defaults", True), ("dedupe_off", False)):
        ids = service_ranking(engine, queries, exclude, SearchOptions(k=max(KS), dedupe=dedupe), settings)
        relevant, n_relevant = relevance(*taxa, np.maximum(ids, 0), exclude, label_map)
        out[name] = retrieval_quality(relevant & (ids >= 0), n_relevant)
    return out


def near_duplicates(engine: Engine, settings: Settings, neighbours: int = 10, listed: int = 20) -> dict:
    """Groups of indexed images the service's dedupe treats as one picture (``same_picture`` of each image and
    its ``neighbours`` nearest), largest first; prints them as the report's near-duplicate section."""
    if engine.dedupe_off is not None:
        print(f"near-duplicates: the search collapses none ({engine.dedupe_off})")
        return {"enabled": False, "reason": engine.dedupe_off, "groups": 0, "images": 0, "largest": []}
    count = engine.manifest.count
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    joined: set[int] = set()
    for i in range(count):
        ids = [j for j in engine.index.get_nns_by_item(i, neighbours + 1) if j != i]
        for j in ids:
            pair = engine.picture_hashes([i, j])
            vectors = np.stack([engine.vector(i), engine.vector(j)])
            kw = {"max_distance": settings.dedupe_max_distance, "min_similarity": settings.dedupe_similarity}
            if same_picture(pair, vectors, **kw)[1] is not None:
                parent[root(i)] = root(j)
                joined |= {i, j}
    members: dict[int, list[int]] = {}
    for i in joined:
        members.setdefault(root(i), []).append(i)
    groups = sorted((sorted(g) for g in members.values()), key=lambda g: (-len(g), g[0]))
    rows = [{"keys": [engine.keys[i].key for i in g]} for g in groups]
    print(
        f"near-duplicates (the same picture: perceptual hash within {settings.dedupe_max_distance} bits, cosine >= "
        f"{settings.dedupe_similarity:g}; the search collapses them): {len(groups)} groups, "
        f"{sum(len(g) for g in groups)} images"
    )
    for row in rows[:listed]:
        print("  " + ", ".join(row["keys"][:6]) + (" ..." if len(row["keys"]) > 6 else ""))
    return {
        "enabled": True,
        "max_distance": settings.dedupe_max_distance,
        "min_similarity": settings.dedupe_similarity,
        "groups": len(groups),
        "images": sum(len(g) for g in groups),
        "largest": rows[:listed],
    }


def contact_sheet(
    rows: list[tuple[Path, str | None, str | None, list[tuple[Path, str | None, str | None, float]]]],
    out: Path,
    thumb: int = 112,
) -> None:
    """One row per query: the query, then its neighbours; under each, label (and distance), then source."""
    cols = 1 + max(len(r[3]) for r in rows)
    sheet = Image.new("RGB", (cols * (thumb + 8), len(rows) * (thumb + 30)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (qpath, qlabel, qsource, neighbours) in enumerate(rows):
        cells = [(qpath, f"QUERY {qlabel or ''}", qsource)]
        cells += [(p, f"{lab or '?'} {d:.3f}", src) for p, lab, src, d in neighbours]
        for c, (path, caption, source) in enumerate(cells):
            x, y = c * (thumb + 8) + 4, r * (thumb + 30) + 4
            with Image.open(path) as im:
                sheet.paste(ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (thumb, thumb)), (x, y))
            draw.text((x, y + thumb + 1), caption[:20], fill="black" if c else "darkred")
            if source:
                draw.text((x, y + thumb + 13), source[:20], fill="dimgray")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="build folder (default: artifacts)")
    p.add_argument(
        "--queries",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="labelled query images (class folders, iFood 2019 or Food-101; NAME=DIR gives their source, "
        "repeatable); default: every indexed image",
    )
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="collection folder the index was built from, for the contact sheet; NAME=DIR for each source of "
        "a collection of several, as given to training.build_index (default: --queries)",
    )
    p.add_argument(
        "--source", action="append", dest="images", type=named_source, metavar="NAME=DIR", help="--images NAME=DIR"
    )
    p.add_argument(
        "--label-map",
        type=Path,
        default=None,
        help="CSV source_a,label_a,source_b,label_b: labels of different sources that count as the same dish",
    )
    p.add_argument("--search-k", default="", help="comma-separated search_k values to sweep (default: a ladder)")
    p.add_argument(
        "--max-queries", type=int, default=1000, help="cap on queries per source, evenly spread (default: 1000)"
    )
    p.add_argument("--sheet-rows", type=int, default=8, help="queries shown in the contact sheet (default: 8)")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: <artifacts>/evaluation.json)")
    p.add_argument("--sheet", type=Path, default=None, help="contact sheet (default: <artifacts>/contact_sheet.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for embedding queries (default: 1)")
    return p


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    settings = Settings(artifacts_uri=str(args.artifacts))  # the service's settings (DEEPFOOD_* variables)
    label_map = read_label_map(args.label_map) if args.label_map else set()
    fetched = fetch(str(args.artifacts), args.artifacts)
    engine = Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)
    m = engine.manifest
    emb_path = args.artifacts / EMBEDDINGS_FILE
    vectors = (
        np.load(emb_path) if emb_path.is_file() else np.stack([engine.vector(i) for i in range(m.count)])
    ).astype(np.float32)
    index_taxa = [(e.source or "", e.label or "") for e in engine.keys]
    key_to_id = {e.key: i for i, e in enumerate(engine.keys)}
    images = Sources.parse(args.images) if args.images else None
    if args.queries:
        images = images or Sources.parse(args.queries)
        collection = scan_sources(Sources.parse(args.queries))
        chosen = spread([e.source or "" for e in collection.entries], args.max_queries)
        paths = [collection.paths[i] for i in chosen]
        queries, kept, _, _ = embed_collection(
            engine.model, engine.meta.resize_size, engine.meta.crop_size, paths, batch_size=32, workers=0
        )
        entries = [collection.entries[chosen[i]] for i in kept]
        q_paths = [paths[i] for i in kept]
        exclude = [
            key_to_id.get(e.key) if _same_file(images, e.key, q_paths[n]) else None for n, e in enumerate(entries)
        ]
        q_taxa = [(e.source or "", e.label or "") for e in entries]
    else:
        ids = spread([source for source, _ in index_taxa], args.max_queries)
        queries, q_taxa, exclude = vectors[ids], [index_taxa[i] for i in ids], [int(i) for i in ids]
        q_paths = [images.path(engine.keys[i].key) if images else None for i in ids]
    k_max = max(KS)
    exact = exact_top_k(vectors, queries, k_max, exclude)
    relevant, n_relevant = relevance(index_taxa, q_taxa, exact, exclude, label_map)
    quality = retrieval_quality(relevant, n_relevant)
    q_sources = np.array([source for source, _ in q_taxa])
    by_source = {
        source or "(none)": {"queries": int((q_sources == source).sum())}
        | retrieval_quality(relevant[q_sources == source], n_relevant[q_sources == source])
        for source in sorted(set(q_sources))
    }
    ladder = [int(s) for s in args.search_k.split(",") if s] or sorted(
        {m.n_trees * k_max, 500, 1000, 2000, 5000, 10000, 20000, 50000, m.search_k}
    )
    served = service_quality(engine, queries, exclude, (index_taxa, q_taxa), settings, label_map)
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
        "service_retrieval": served,
        "retrieval_by_source": by_source,
        "label_map": _label_map_report(args.label_map, label_map, set(index_taxa) | set(q_taxa)),
        "annoy": sweep,
        "exact_p_mean_ms": exact_ms,
    }
    report["near_duplicates"] = near_duplicates(engine, settings)
    out = args.out or args.artifacts / "evaluation.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"{len(queries)} queries against {m.count} images (n_trees={m.n_trees})")
    for name, row in (
        ("exact", quality),
        ("service, defaults", served["defaults"]),
        ("service, no dedupe", served["dedupe_off"]),
    ):
        print(f"  {name + ':':<20}" + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    if len(by_source) > 1 or "(none)" not in by_source:
        for source, row in by_source.items():
            metrics = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "queries")
            print(f"  {source} ({row['queries']} queries): {metrics}")
    if report["label_map"] and report["label_map"]["unknown_pairs"]:
        print(f"  label map: {report['label_map']['unknown_pairs']} pairs name labels no image has")
    print(f"  {'search_k':>9} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8}   (exact numpy: {exact_ms:.3f} ms/query)")
    for row in sweep:
        mark = "  <- manifest default" if row["search_k"] == m.search_k else ""
        print(f"  {row['search_k']:>9} {row['recall@10']:>9.3f} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f}{mark}")
    if images is not None and all(p is not None for p in q_paths):
        rows = []
        for q in np.linspace(0, len(queries) - 1, min(args.sheet_rows, len(queries))).astype(int):
            neighbours = [
                (images.path(e.key), e.label, e.source, n.distance)
                for n in engine.search(queries[q], 6, exclude=exclude[q])
                for e in [engine.keys[n.id]]
            ]
            rows.append((q_paths[q], q_taxa[q][1] or None, q_taxa[q][0] or None, neighbours))
        sheet = args.sheet or args.artifacts / "contact_sheet.png"
        contact_sheet(rows, sheet)
        print(f"contact sheet: {sheet}")
    print(f"report: {out}")
    return 0


def _same_file(images: Sources | None, key: str, path: Path) -> bool:
    """Whether the indexed image ``key`` is the file ``path`` (then a query of it skips itself)."""
    try:
        return images is not None and images.path(key).resolve() == path.resolve()
    except ValueError:
        return False


def _label_map_report(path: Path | None, pairs: set[tuple[Taxon, Taxon]], known: set[Taxon]) -> dict | None:
    if path is None:
        return None
    unknown = {frozenset(p) for p in pairs if not (p[0] in known and p[1] in known)}
    return {"file": str(path), "pairs": len({frozenset(p) for p in pairs}), "unknown_pairs": len(unknown)}


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (FileNotFoundError, ValueError, ArtifactError))


if __name__ == "__main__":
    sys.exit(cli())
