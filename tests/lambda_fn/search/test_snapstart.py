"""lambda_fn.search.snapstart: the hooks SnapStart's runtime calls, registered through a stand-in
snapshot_restore_py."""

from __future__ import annotations

import sys
import time
import types

import pytest

from lambda_fn.search import snapstart


@pytest.fixture
def runtime_hooks(monkeypatch):
    """A snapshot_restore_py that records registrations, as the Lambda runtime's module does, and runs them."""
    module = types.ModuleType("snapshot_restore_py")
    module.before, module.after = [], []
    module.register_before_snapshot = lambda fn, *args: module.before.append((fn, args))
    module.register_after_restore = lambda fn, *args: module.after.append((fn, args))
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    return module


def test_without_the_runtime_module_nothing_is_registered(monkeypatch, make_client):
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)
    assert snapstart.register(make_client().app.state.service) is False


def test_snapshot_holds_a_loaded_engine_and_a_restore_checks_for_a_newer_build(runtime_hooks, make_client):
    state = make_client(manifest_check_s=60).app.state.service
    assert snapstart.register(state) is True
    assert state.engine is None
    for fn, args in runtime_hooks.before:
        fn(*args)
    assert state.engine is not None
    state._check_client = object()
    state._last_check = time.monotonic()
    assert not state._due()
    for fn, args in runtime_hooks.after:
        fn(*args)
    assert state._check_client is None
    assert state._due()
