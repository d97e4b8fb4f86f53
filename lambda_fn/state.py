"""The container's loaded engine: created on first use (or at import when configured), then reused.

Not a FastAPI startup event: Mangum runs those on every invocation. A failed load is remembered for
/health and retried by the next request, so a fixed S3 object recovers the service without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from lambda_fn import artifacts
from lambda_fn.artifacts import ArtifactError
from lambda_fn.config import Settings
from lambda_fn.engine import Engine
from lambda_fn.errors import NotReady

log = logging.getLogger(__name__)


class ServiceState:
    def __init__(self, settings: Settings, s3_client=None):
        self.settings = settings
        self._s3_client = s3_client
        self._lock = threading.Lock()
        self.engine: Engine | None = None
        self.error: str | None = None
        self.load_seconds: float | None = None
        # Every torch call (load, warm-up, each request's forward) runs on this one thread. Torch's OpenMP
        # pool belongs to the calling thread, so one thread keeps one warm pool (a forward on a different
        # thread than the last measured 7-12 ms slower), requests queue first come, first served, and the
        # event loop stays free to accept the next upload.
        self.torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    async def run(self, fn, *args):
        """``fn(*args)`` on the torch thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.torch_thread, fn, *args)

    def _load(self) -> Engine:
        started = time.perf_counter()
        torch.set_num_threads(self.settings.threads)
        fetched = artifacts.fetch(self.settings.artifacts_uri, self.settings.cache_dir, self._s3_client)
        engine = Engine.from_files(
            fetched.manifest, fetched.model, fetched.index, fetched.keys, search_k=self.settings.search_k
        )
        engine.warm_up()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model and index loaded",
            extra={
                "seconds": round(self.load_seconds, 3),
                "count": fetched.manifest.count,
                "model_sha256": fetched.manifest.model_sha256,
                "threads": torch.get_num_threads(),
            },
        )
        return engine

    def get(self) -> Engine:
        """The loaded engine; raises NotReady (503) with the reason when it cannot be loaded now."""
        if self.engine is not None:
            return self.engine
        with self._lock:
            if self.engine is None:
                try:
                    self.engine = self._load()
                    self.error = None
                except ArtifactError as exc:
                    self.error = str(exc)
                    log.error("artifacts unavailable", extra={"reason": self.error})
                except Exception as exc:
                    self.error = f"loading failed: {type(exc).__name__}: {exc}"
                    log.exception("loading failed")
            if self.engine is None:
                raise NotReady(f"the search index is not available: {self.error}. Retry in a few seconds.")
            return self.engine

    def try_load(self) -> None:
        with contextlib.suppress(NotReady):
            self.torch_thread.submit(self.get).result()
