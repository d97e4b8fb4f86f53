"""Startup tuning: the service's import-order tricks and patches of library internals, in one place.

``lambda_fn.search.main`` calls ``pause_gc`` before its first heavy import and ``settle_gc`` once the app is
built. A trick stays here only while it takes more than about 5% off the figure it serves; the measurements,
and the tricks removed for falling short, are in docs/benchmarks.md ("Startup tuning", ``python -m
bench.startup``). tests/lambda_fn/search/test_startup.py fails, naming the symbol, when one of them moves.
"""

from __future__ import annotations

import gc


def pause_gc() -> None:
    """Turn cyclic garbage collection off for init. Serves the first-search time: with ``settle_gc``, -19%.

    Why: torch's imports leave ~230,000 tracked objects, and every full collection that later allocations set
    off walks all of them again."""
    gc.disable()


def settle_gc() -> None:
    """Move what init made to the permanent generation, then turn collection back on. Serves the first-search
    time: -12% against only turning collection back on.

    Why: otherwise the first request's collections walk init's objects after all."""
    gc.freeze()
    gc.enable()
