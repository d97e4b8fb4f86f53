"""The container's loaded engine: created on first use (or at import when configured), then reused, and
replaced by a newer build when one is published.

At a cold start on Lambda the build's files are already on their way: ``lambda_fn.search.main`` starts fetching them
(``lambda_fn.search.prefetch``) before torch is imported, and the first load takes that fetch's result, or its error.

Not a FastAPI startup event: Mangum runs those on every invocation. A failed load is remembered for
/health and retried with exponential backoff (``Backoff``: 1 s doubling to 60 s, with jitter), so a fixed S3
object recovers the service without a restart, while a broken one costs one attempt per wait, not a download
per request: requests during the wait get the 503 at once, with ``Retry-After`` set to what is left of it.
What a client reads says what is wrong and what to do (``ArtifactError.public``); the detail (object URIs,
paths, the underlying error) goes to the JSON log, with the request id.

With ``trusted_model_sha256`` set, a manifest that names another model is refused before anything of the
build is downloaded or loaded: at cold start with a 503 that says so, during a swap by keeping the live build.
With ``model_signing_key`` set, so is a model without its publisher's signature (``lambda_fn.storage.signing``).

A new build is picked up without a redeploy: once ``manifest_check_s`` has passed since the last check, a
request starts one on the swap thread and goes on with the live engine. The check is one conditional read
of the manifest; only when it changed are the new build's files fetched and verified and a new Engine
loaded, all on the swap thread, and then swapped in with one reference assignment. A request takes the
engine once, at its start, so requests in flight finish on the old build and later ones use the new one.
A failed check or load is logged and shown on /health; the old build keeps serving and the next check
retries. On Lambda the environment is frozen between invocations, so a check only makes progress while
some invocation runs: a quiet container finishes it during its next requests (a frozen S3 connection may
fail it; the next check retries). That is acceptable: a container that gets no requests serves nobody a
stale build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import platform
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import torch

from lambda_fn.contract import metrics
from lambda_fn.contract.config import Settings
from lambda_fn.contract.vectors import LIVE_RECORD, S3VECTORS
from lambda_fn.search.errors import NotReady
from lambda_fn.search.prefetch import Prefetch
from lambda_fn.storage import artifacts, records
from lambda_fn.storage.artifacts import FetchedArtifacts
from lambda_fn.storage.cache import clean_partials
from lambda_fn.storage.errors import ArtifactError, RefusedModel, UntrustedModel
from lambda_fn.storage.records import LiveIndex
from lambda_fn.storage.signing import check_model
from lambda_fn.storage.store import Store, open_store
from lambda_fn.storage.vectors import VectorIndex, known_labels, s3vectors_client
from lambda_fn.vision.engine import Engine
from lambda_fn.vision.models import load_verified
from lambda_fn.vision.vector_store import S3VectorsStore

log = logging.getLogger(__name__)


# Waits between attempts to load a build that failed: the first, the longest, and the spread drawn around
# each (+-20 %), so containers that failed together do not all retry in the same second.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
RETRY_JITTER = 0.2
# Said instead of an unexpected exception's text, which may name paths or library internals.
UNEXPECTED = "loading failed unexpectedly (the service's logs have the error)"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Backoff:
    """When the next attempt to load may start, after ``failures`` failed ones in a row."""

    def __init__(self, clock=time.monotonic, random=random.random):
        self.clock, self.random = clock, random
        self.failures = 0
        self.retry_at = 0.0

    def remaining(self) -> float:
        """Seconds until the next attempt may start; 0 when it may start now."""
        return max(0.0, self.retry_at - self.clock())

    def failed(self) -> float:
        """Count a failure; returns the wait before the next attempt."""
        self.failures += 1
        nominal = min(RETRY_FIRST_S * 2 ** min(self.failures - 1, 30), RETRY_MAX_S)
        wait = min(nominal * (1 + RETRY_JITTER * (2 * self.random() - 1)), RETRY_MAX_S)
        self.retry_at = self.clock() + wait
        return wait

    def succeeded(self) -> None:
        self.failures, self.retry_at = 0, 0.0


def _log_fields(exc: Exception) -> dict:
    """What the log says about a failure, beyond the public message."""
    fields = {"reason": str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, RefusedModel):
        fields["model_sha256"] = exc.published
    if isinstance(exc, UntrustedModel):
        fields["trusted_model_sha256"] = exc.trusted
    return fields


class ServiceState:
    def __init__(self, settings: Settings, s3_client=None, *, prefetch: Prefetch | None = None):
        """``prefetch``: the build's fetch, started before torch was imported (``lambda_fn.search.prefetch``); the
        first load takes its result instead of fetching."""
        self.settings = settings
        self._s3_client = s3_client
        self._vectors_client = None
        self._prefetch = prefetch
        self.prefetch_wait_s: float | None = None  # how long the first load waited for the prefetch to finish
        self._lock = threading.Lock()
        self.engine: Engine | None = None
        self.error: str | None = None  # why the build cannot be served, in words a client may read
        self.backoff = Backoff()
        self.load_seconds: float | None = None
        # Every torch call (load, warm-up, each request's forward) runs on this one thread. Torch's OpenMP
        # pool belongs to the calling thread, so one thread keeps one warm pool (a forward on another thread
        # is slower: docs/benchmarks.md), requests queue first come, first served, and the
        # event loop stays free to accept the next upload. Loading a new model for a swap is the exception
        # (see ``_engine_for``).
        self.torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        # Checks for a new build and loads it, one check at a time, off every request's path.
        self.swap_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swap")
        # the live engine's files and its manifest's stamp; on S3 Vectors the live-index record's stamp
        self._live: FetchedArtifacts | str | None = None
        self._check_lock = threading.Lock()
        self._checking = False
        self._last_check = 0.0  # time.monotonic() when the last check (or the first load) ended
        self._check_store: Store | None = None
        self.checked_at: str | None = None
        self.swapping = False
        self.check_error: str | None = None
        self.pending_model: str | None = None  # announced in models/current.json, not live yet
        self.pending_images: int | None = None  # photos that arrived before any model, as the last reindex counted
        try:  # downloads a killed process left half done
            clean_partials(settings.cache_dir)
        except OSError as exc:
            log.warning("could not clean the artifact cache", extra={"reason": str(exc)})

    async def run(self, fn, *args):
        """``fn(*args)`` on the torch thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.torch_thread, fn, *args)

    async def live(self) -> Engine:
        """The engine a request uses from start to end; starts a check for a new build when one is due."""
        engine = self.engine
        if engine is None:
            engine = await self.run(self.get)  # loads on the torch thread the first time
        self.poll()
        return engine

    def _store(self, *, fresh: bool = False) -> Store:
        """Where the artifacts are read: one store (and S3 client) for the checks, and a new one for each
        attempt at a first load, which may be retrying after the endpoint or connections failed."""
        if fresh or self._check_store is None:
            self._check_store = open_store(self.settings.artifacts_uri, self._s3_client)
        return self._check_store

    def _fetch(self) -> FetchedArtifacts:
        """The build to load: the prefetch's, the first time there is one (raising the ArtifactError it
        raised), else fetched here. A prefetch process that died without an answer is logged and fetched
        again here, so a crash of the helper process costs no 503."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            waited = time.perf_counter()
            try:
                return prefetch.result()
            except RuntimeError:
                log.warning("the prefetch failed; fetching the build here", exc_info=True)
            finally:
                self.prefetch_wait_s = time.perf_counter() - waited
        store = self._store(fresh=True)
        manifest, stamp = records.read_manifest(store)
        self._check_model(store, manifest.model_sha256)
        return artifacts.fetch_build(store, self.settings.cache_dir, manifest, stamp)

    def _check_model(self, store: Store, sha256: str) -> None:
        check_model(
            store,
            sha256,
            trusted_model_sha256=self.settings.trusted_model_sha256,
            model_signing_key=self.settings.model_signing_key,
        )

    def _vector_engine(self, store: Store, live: LiveIndex, reuse: Engine | None = None) -> Engine:
        """An engine on the S3 Vectors index ``live`` names, with its model (``reuse``'s, when it is the same)."""
        self._check_model(store, live.model_sha256)
        if reuse is not None and reuse.model_sha256 == live.model_sha256:
            model, meta = reuse.model, reuse.meta
        else:
            loaded = load_verified(store, live.model_file, live.model_sha256, self.settings.cache_dir)
            model, meta = loaded.module, loaded.meta
        if meta.dim != live.dim:
            raise ArtifactError(f"index {live.index} holds {live.dim}-d vectors but the model makes {meta.dim}-d")
        if self._vectors_client is None:
            self._vectors_client = s3vectors_client()
        index = VectorIndex(self._vectors_client, self.settings.vector_bucket, live.index)
        vectors = S3VectorsStore(
            index,
            labels=lambda: known_labels(store, live.index),
            labels_ttl_s=self.settings.manifest_check_s or 60.0,
        )
        return Engine.with_store(model, meta, vectors, model_sha256=live.model_sha256, built_at=live.switched_at)

    def _load_vectors(self) -> tuple[Engine, str]:
        store = self._store(fresh=True)
        published = records.read_live_index(store)
        if published is None:
            raise ArtifactError(
                f"{store.describe(LIVE_RECORD)} does not exist: no vector index is live yet",
                "no vector index is live yet: announce a model and run the backfill (docs/deploy.md)",
            )
        live, stamp = published
        engine = self._vector_engine(store, live)
        engine.warm_up()
        return engine, stamp

    def _load(self) -> tuple[Engine, FetchedArtifacts | str]:
        started = time.perf_counter()
        torch.set_num_threads(self.settings.threads)
        if self.settings.vector_store == S3VECTORS:
            engine, stamp = self._load_vectors()
            self.load_seconds = time.perf_counter() - started
            log.info("model loaded; vectors in S3 Vectors", extra={"build_id": engine.build_id})
            metrics.model_loaded(self.load_seconds)
            return engine, stamp
        fetched = self._fetch()
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
                "build_id": engine.build_id,
                "model_sha256": fetched.manifest.model_sha256,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        )
        metrics.model_loaded(self.load_seconds)
        return engine, fetched

    def _attempt(self) -> None:
        try:
            engine, self._live = self._load()
        except Exception as exc:
            wait = self.backoff.failed()
            fields = _log_fields(exc) | {
                "artifacts_uri": self.settings.artifacts_uri,
                "failures": self.backoff.failures,
                "retry_in_s": round(wait, 3),
            }
            if isinstance(exc, ArtifactError):
                self.error = exc.public
                log.error("artifacts unavailable", extra=fields)
            else:
                self.error = UNEXPECTED
                log.exception("loading failed", extra=fields)
            return
        self._checked()
        self.engine = engine
        self.error = None
        self.backoff.succeeded()

    def get(self) -> Engine:
        """The loaded engine; raises NotReady (503) with the reason when it cannot be loaded now. A new attempt
        starts only once the backoff after the last failure has passed."""
        if self.engine is not None:
            return self.engine
        with self._lock:
            if self.engine is None and self.backoff.remaining() <= 0:
                self._attempt()
            if self.engine is None:
                retry_after = max(1, math.ceil(self.backoff.remaining()))
                raise NotReady(
                    f"the search index is not available: {self.error}. Retry in {retry_after} s.", retry_after
                )
            return self.engine

    def try_load(self) -> None:
        with contextlib.suppress(NotReady):
            self.torch_thread.submit(self.get).result()

    def _checked(self) -> None:
        self.checked_at = _now()
        self._last_check = time.monotonic()

    def _due(self) -> bool:
        interval = self.settings.manifest_check_s
        return bool(interval) and time.monotonic() - self._last_check >= interval

    def poll(self) -> None:
        """Start a check for a new build on the swap thread if one is due and none is running; never waits."""
        if self.engine is None or not self._due():
            return
        with self._check_lock:
            if self._checking or not self._due():
                return
            self._checking = True
        try:
            self.swap_thread.submit(self._check)
        except RuntimeError:  # the interpreter is shutting down
            self._checking = False

    def _engine_for(self, fetched: FetchedArtifacts, live: Engine) -> Engine:
        engine = Engine.from_files(
            fetched.manifest,
            fetched.model,
            fetched.index,
            fetched.keys,
            search_k=self.settings.search_k,
            reuse=live,
        )
        if engine.model is not live.model:
            # A new model loads and warms up here, on the swap thread, not on the torch thread, where every
            # queued request would wait behind the load and the warm-up forward. The price: the warm-up
            # shares the CPUs with the requests' forwards for that moment (requests slow down rather than
            # wait), this thread gets an OpenMP pool of its own (the torch thread's stays warm), and both
            # models are in memory until the last request on the old engine ends. TorchScript's plan belongs
            # to the method and oneDNN's kernel cache to the process, not the thread, so the torch thread
            # runs the warmed-up model from its first request.
            engine.warm_up()
        return engine

    def _note_pending_model(self, store: Store, live: Engine) -> None:
        """Whether a new model is announced but not live yet (its backfill is running): /health says so."""
        try:
            pointer = records.read_pointer(store)
        except Exception as exc:  # a broken pointer must not stop the manifest check
            log.warning("model pointer unreadable", extra=_log_fields(exc))
            return
        sha = pointer.model_sha256 if pointer is not None else None
        self.pending_model = sha if sha and sha != live.model_sha256 else None

    def _note_pending_images(self, store: Store, *, swapped: bool = False) -> None:
        """Photos still waiting to be embedded: one small GET of what the reindex counted, never a listing.
        Photos wait only while no model exists, so once this reads none it reads again only after a swap."""
        if self.pending_images == 0 and not swapped:
            return
        try:
            status = records.read_status(store)
        except Exception as exc:  # must not stop the manifest check either
            log.warning("pending status unreadable", extra=_log_fields(exc))
            return
        self.pending_images = status.images if status is not None else 0

    def _check_vectors(self) -> None:
        """``_check`` on the S3 Vectors store: one conditional read of the live-index record; a new record means
        a new model's index went live, and the engine is swapped for one on it."""
        live = self.engine
        new_id = None
        try:
            store = self._store()
            self._note_pending_model(store, live)
            published = records.read_live_index(store, stamp=self._live)
            if published is None:
                self.check_error = None
                return
            record, stamp = published
            new_id = record.index
            self.swapping = True
            engine = self._vector_engine(store, record, reuse=live)
            if engine.model is not live.model:
                engine.warm_up()
            self._live, self.engine = stamp, engine  # the swap: one reference assignment
            self._note_pending_model(store, engine)  # the announced model is usually the one now live
            self.check_error = None
            log.info("vector index swapped in", extra={"build_id": new_id, "previous_build_id": live.build_id})
        except Exception as exc:
            self.check_error = (
                f"checking for a new vector index failed ({new_id or 'record unread'}); {live.build_id} keeps "
                f"serving, the next check is in {self.settings.manifest_check_s:g} s"
            )
            log.warning("new vector index not swapped in", extra=_log_fields(exc), exc_info=True)
        finally:
            self.swapping = False
            self._checked()
            self._checking = False

    def _check(self) -> None:
        if self.settings.vector_store == S3VECTORS:
            self._check_vectors()
            return
        live, old = self.engine, self._live
        started = time.perf_counter()
        new_id = None
        try:
            store = self._store()
            self._note_pending_model(store, live)
            self._note_pending_images(store)
            published = records.read_manifest(store, stamp=old.stamp)
            if published is None:
                self.check_error = None
                log.debug("manifest unchanged", extra={"build_id": live.build_id})
                return
            manifest, stamp = published
            new_id = manifest.build_id
            self._check_model(store, manifest.model_sha256)
            self.swapping = True
            log.info("new build published; loading it", extra={"build_id": new_id, "live_build_id": live.build_id})
            fetched = artifacts.fetch_build(store, self.settings.cache_dir, manifest, stamp, have=old)
            engine = self._engine_for(fetched, live)
            self._live = fetched
            self.engine = engine  # the swap: one reference assignment
            self._note_pending_images(store, swapped=True)
            removed = artifacts.prune(old, fetched)
            self.check_error = None
            log.info(
                "build swapped in",
                extra={
                    "build_id": new_id,
                    "previous_build_id": live.build_id,
                    "model_reloaded": engine.model is not live.model,
                    "count": manifest.count,
                    "seconds": round(time.perf_counter() - started, 3),
                    "removed_from_cache": [str(p) for p in removed],
                },
            )
        except Exception as exc:
            interval = self.settings.manifest_check_s
            if new_id is None:
                self.check_error = (
                    f"checking for a new build failed; build {live.build_id} keeps serving, "
                    f"the next check is in {interval:g} s"
                )
            elif isinstance(exc, RefusedModel):
                self.check_error = (
                    f"build {new_id} was not swapped in: {exc.public}. Build {live.build_id} keeps serving"
                )
            else:
                self.check_error = (
                    f"build {new_id} could not be loaded (its files are missing, corrupt or do not belong "
                    f"together); build {live.build_id} keeps serving, the next check retries in {interval:g} s"
                )
            (log.error if isinstance(exc, RefusedModel) else log.warning)(
                "new build not swapped in; the live build keeps serving",
                extra=_log_fields(exc)
                | {"artifacts_uri": self.settings.artifacts_uri, "build_id": new_id, "live_build_id": live.build_id},
                exc_info=not isinstance(exc, ArtifactError),
            )
        finally:
            self.swapping = False
            self._checked()
            self._checking = False
