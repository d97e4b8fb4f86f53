"""Fixtures for the reliability suite: an in-process client that re-raises server errors, and a tally.

The tally counts what the suite tried (hostile inputs, generated examples, injected faults, 5xx seen); the
terminal summary prints it and writes it to test-output/reliability-tally.json.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis.configuration import set_hypothesis_home_dir

from tests.helpers import jpeg_bytes

_TALLY = pytest.StashKey[Counter]()
# hypothesis caches what it learns under ./.hypothesis even without an example database; keep the checkout clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "deepfood-hypothesis")


@pytest.fixture(scope="session")
def tally(request) -> Counter:
    """Counter shared by the reliability tests; printed in the terminal summary."""
    return request.config.stash.setdefault(_TALLY, Counter())


@pytest.fixture(scope="session")
def hardened(make_client) -> TestClient:
    """TestClient over the real app with local artifacts; an unhandled exception fails the test."""
    with make_client(raise_server_exceptions=True) as c:
        assert c.get("/health").status_code == 200
        yield c


@pytest.fixture(scope="session")
def assert_still_serves(hardened):
    """Call after a hostile request: a normal query must still succeed."""
    normal = jpeg_bytes((96, 80), (30, 160, 60))

    def check() -> None:
        r = hardened.post("/search?k=3", content=normal, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 3

    return check


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tally = config.stash.get(_TALLY, None)
    if tally:
        out = Path(config.rootpath) / "test-output" / "reliability-tally.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(dict(sorted(tally.items())), indent=2) + "\n")
        terminalreporter.write_sep("-", f"reliability tally (also in {out.relative_to(config.rootpath)})")
        for name in sorted(tally):
            terminalreporter.write_line(f"{name}: {tally[name]}")
