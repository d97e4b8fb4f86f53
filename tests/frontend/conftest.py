"""Browser fixtures: Debian's Chromium driven by playwright, against the real local server."""

from __future__ import annotations

import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.service import service_env, start_local_server_process
from tests.helpers import REPO_ROOT

CHROMIUM = Path(os.environ.get("DEEPFOOD_CHROMIUM", "/usr/bin/chromium"))
OUTPUT_DIR = REPO_ROOT / "test-output" / "frontend"
FRONTEND = REPO_ROOT / "frontend"


def _browser_missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set DEEPFOOD_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium; skipped when it is missing, except with CI=true, where that is a failure.

    Module-scoped on purpose: playwright's sync API keeps an asyncio loop current on this thread while it is
    open, and Mangum (tests/lambda_fn/search/test_handler.py) would find that loop "already running".
    """
    reason = _browser_missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests cannot run on CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


class _StaticFiles(SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(FRONTEND), **kwargs)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def page_host() -> str:
    """frontend/ from a plain static file server on its own origin: the page apart from the API, as on S3."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StaticFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def site(artifacts_dir, sample_dir, page_host) -> str:
    """Base URL of the local server with the small real model, its index and the page (CORS open to page_host).

    It may fetch image links from 127.0.0.1 over http (url_allow_private, url_allow_http), so a search by link
    can point at its own /files; cloud metadata addresses stay refused.
    """
    env = service_env(cors_origins=page_host, url_allow_private=True, url_allow_http=True)
    with start_local_server_process(artifacts_dir, sample_dir, frontend=FRONTEND, env=env, threads=2) as (base, _):
        yield base


@pytest.fixture(scope="session")
def unready_site(sample_dir, tmp_path_factory) -> str:
    """Base URL of a local server whose artifacts folder is empty: /health and /search answer 503."""
    empty = tmp_path_factory.mktemp("no-artifacts")
    with start_local_server_process(empty, sample_dir, frontend=FRONTEND, expect_health=(503,)) as (base, _):
        yield base


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """test-output/frontend/ under the repository root (git-ignored): screenshots."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR


class PageProblems:
    """Uncaught exceptions and Content-Security-Policy violations seen while a test ran."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and ("Content Security Policy" in msg.text or "Uncaught" in msg.text)
                else None
            ),
        )


@pytest.fixture
def page(chromium):
    """A fresh page (own context) that fails the test on uncaught script errors or CSP violations."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    problems = PageProblems(pg)
    yield pg
    context.close()
    assert not problems.errors, "the page reported errors:\n" + "\n".join(problems.errors)
