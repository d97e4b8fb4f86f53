"""Lambda SnapStart hooks: the snapshot holds a loaded, warmed-up model and index; a restored copy starts fresh
where sharing a snapshot would be wrong.

With SnapStart (``cdk.search_function``'s ``snap_start``), Lambda runs the init phase once per published
version (``DEEPFOOD_LOAD_ON_IMPORT=true``: imports, model and index load, the warm-up forward) and resumes new
containers from a memory snapshot of it, so a cold start skips the torch import and the load. AWS documents
SnapStart for container images built on its Python 3.12+ base images, whose runtime calls the hooks that
``snapshot_restore_py`` registers (docs.aws.amazon.com/lambda/latest/dg/snapstart-runtime-hooks-custom.html).

Before the snapshot: make sure the engine is loaded (a failed load is retried here, not frozen into the
snapshot). After each restore: the snapshot may be days old and shared by many containers, so the S3 client
made at init (its connections and credentials) is dropped, Python's ``random`` is re-seeded from the OS, and
the check for a newer build is made due at once, so the first request after a restore looks for one.
"""

from __future__ import annotations

import logging
import random

from lambda_fn.search.state import ServiceState

log = logging.getLogger(__name__)


def before_snapshot(state: ServiceState) -> None:
    state.try_load()
    log.info("snapshot taken with the engine loaded", extra={"loaded": state.engine is not None})


def after_restore(state: ServiceState) -> None:
    random.seed()
    state._check_client = None
    state._last_check = float("-inf")
    log.info("restored from a snapshot; the next request checks for a newer build")


def register(state: ServiceState) -> bool:
    """Register the hooks with the Lambda runtime; False where ``snapshot_restore_py`` is absent (not on Lambda)."""
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(before_snapshot, state)
    register_after_restore(after_restore, state)
    return True
