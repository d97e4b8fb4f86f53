"""``lambda_fn.search.startup``: each trick still reaches what it relies on, and init leaves the process as the
tricks promise. A failure here names what moved and what to do about it."""

import gc
import json

import pytest

from lambda_fn.search import startup
from support.service import service_env
from tests.helpers import run_code


@pytest.fixture(scope="module")
def fresh_import(artifacts_dir) -> dict:
    """What a fresh process looks like right after ``import lambda_fn.search.main``, as a Lambda init leaves it."""
    script = (
        "import gc, json\nimport lambda_fn.search.main\n"
        "print(json.dumps({'gc_enabled': gc.isenabled(), 'frozen': gc.get_freeze_count(), "
        "'tracked': len(gc.get_objects())}))"
    )
    env = {**service_env(artifacts_uri=artifacts_dir), "PATH": "/usr/bin:/bin"}
    proc = run_code(script, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_collector_still_offers_what_pause_and_settle_use():
    for name in ("disable", "enable", "isenabled", "freeze", "get_freeze_count"):
        assert callable(getattr(gc, name, None)), (
            f"gc.{name} is gone from this Python: startup.pause_gc/settle_gc no longer work as measured; "
            "rewrite them with what replaced it, or remove them and rerun python -m bench.startup"
        )


def test_pause_and_settle_leave_collection_on_and_what_came_before_frozen():
    before = gc.get_freeze_count()
    try:
        startup.pause_gc()
        assert not gc.isenabled()
        kept = [object() for _ in range(10)]  # noqa: F841  (made during the pause, so frozen with the rest)
        startup.settle_gc()
        assert gc.isenabled() and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
        gc.enable()


def test_init_runs_without_cyclic_collection_and_freezes_what_it_made(fresh_import):
    # Collection is back on for the requests, and the ~230,000 objects of the imports (torch's, mostly) are in
    # the permanent generation, where no collection walks them; the objects a collection would walk are few.
    assert fresh_import["gc_enabled"] is True, "lambda_fn.search.main ended init without startup.settle_gc()"
    assert fresh_import["frozen"] > 100_000 and fresh_import["tracked"] < fresh_import["frozen"] // 10, (
        f"init froze {fresh_import['frozen']:,} objects and left {fresh_import['tracked']:,} tracked: "
        "lambda_fn.search.main calls startup.settle_gc() too early, or not at all"
    )
