"""The build's download, started before the service imports torch.

A cold start spends most of its time importing torch and the web stack (~1.7 s on a 2-vCPU x86 machine),
while the network and the disk sit idle; fetching the build (S3 client, manifest, three files downloaded and
sha256-checked into the cache) needs neither torch nor the app. ``Prefetch.start`` runs that fetch on a thread
of its own, called by ``lambda_fn.main`` before it imports the app, so the two overlap. The first load
(``ServiceState._load``) takes the result instead of fetching, waiting for it when it is not done yet.

Only files are fetched here: every torch call still runs on the service's one torch thread. The fetch is the
one ``ServiceState`` would make (``artifacts.read_manifest``, ``check_trusted`` before any download,
``fetch_build``), so a failure is the same ``ArtifactError``, kept and raised to the first load, which reports
it as its own (503 with the public message, the detail in the log, the backoff). A prefetch is used once:
later attempts fetch for themselves.

Stdlib, ``lambda_fn.artifacts`` and ``lambda_fn.config`` only at import, none of which imports torch.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from lambda_fn import artifacts
from lambda_fn.artifacts import FetchedArtifacts
from lambda_fn.config import Settings


def _fetch(settings: Settings, s3_client=None) -> tuple[FetchedArtifacts, object]:
    """The build the manifest names, verified in the cache (or the folder), and the S3 client it came through."""
    uri = settings.artifacts_uri
    client = s3_client
    if client is None and artifacts.Location.parse(uri).is_s3:
        client = artifacts.s3_client()
    manifest, stamp = artifacts.read_manifest(uri, client)
    artifacts.check_trusted(manifest, settings.trusted_model_sha256)
    return artifacts.fetch_build(uri, settings.cache_dir, manifest, stamp, client), client


class Prefetch:
    """A fetch of the published build running on its own thread; ``result()`` waits for it."""

    def __init__(self, settings: Settings, s3_client=None):
        self.settings = settings
        self.seconds: float | None = None  # how long the fetch took, once it is done
        self._future: Future[tuple[FetchedArtifacts, object]] = Future()
        # A daemon: a process that exits (a CLI, a failed cold start) does not wait for a slow S3. A partial
        # file it leaves is removed by the next process's ``artifacts.clean_partials``.
        self._thread = threading.Thread(target=self._run, args=(s3_client,), name="prefetch", daemon=True)

    @classmethod
    def start(cls, settings: Settings, s3_client=None) -> Prefetch:
        prefetch = cls(settings, s3_client)
        prefetch._thread.start()
        return prefetch

    def _run(self, s3_client) -> None:
        started = time.perf_counter()
        try:
            result = _fetch(self.settings, s3_client)
        except BaseException as exc:  # handed to whoever takes the result, raised there
            self.seconds = time.perf_counter() - started
            self._future.set_exception(exc)
        else:
            self.seconds = time.perf_counter() - started
            self._future.set_result(result)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> tuple[FetchedArtifacts, object]:
        """The fetched build and the S3 client (None for a folder); raises what the fetch raised."""
        return self._future.result()
