"""The build's download, started before the service imports torch, in a process of its own.

A cold start spends most of its time importing torch and the web stack on one core, while the network, the
disk and the other core sit idle; fetching the build (S3 client, manifest, three files downloaded and
sha256-checked into the cache) needs neither torch nor the app. ``Prefetch.start``, called by
``lambda_fn.search.main`` before it imports the app, runs that fetch in a child interpreter (``python -m
lambda_fn.search.prefetch``), so the two overlap. The first load (``ServiceState._load``) takes the result
instead of fetching, waiting for the child when it is not done yet.

A process, not a thread: boto3's client set-up and request handling are Python, and a download thread wakes
for every chunk it receives, so in a thread the fetch competed with the imports for the GIL and slowed them
by about as much as it hid (docs/benchmarks.md, "Cold start"). The child imports only this module's
dependencies (boto3, pydantic; never torch), on the other core.

The fetch is the one ``ServiceState`` would make (``records.read_manifest``, ``signing.check_model`` before any
download, ``fetch_build``), so a failure is the same ``ArtifactError``: the child writes its detail and public
message, and ``result()`` raises it again in the service, whose first load reports it as its own (503 with
the public message, the detail in the log, the backoff). A prefetch is used once: later attempts fetch for
themselves. The child's partial files carry its pid, so ``cache.clean_partials`` leaves them alone while it
runs, as it does another container's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import Manifest
from lambda_fn.contract.vectors import ANNOY
from lambda_fn.storage.artifacts import FetchedArtifacts, fetch_build
from lambda_fn.storage.errors import ArtifactError, UnsignedModel, UntrustedModel
from lambda_fn.storage.records import read_manifest
from lambda_fn.storage.signing import check_model, remember_verified
from lambda_fn.storage.store import open_store


def fetch(
    uri: str, cache_dir: Path, trusted_model_sha256: str | None, model_signing_key: str | None = None
) -> FetchedArtifacts:
    """The build the manifest names, its model checked (pin, signature) before anything is downloaded, and
    verified in the cache (or the folder)."""
    store = open_store(uri)
    manifest, stamp = read_manifest(store)
    check_model(
        store, manifest.model_sha256, trusted_model_sha256=trusted_model_sha256, model_signing_key=model_signing_key
    )
    return fetch_build(store, cache_dir, manifest, stamp)


def _answer(uri: str, cache_dir: str, trusted: str, signing_key: str = "") -> dict:
    """What the child writes: the fetched build, or the error in words the service can raise again."""
    started = time.perf_counter()
    try:
        fetched = fetch(uri, Path(cache_dir), trusted or None, signing_key or None)
    except UntrustedModel as exc:
        answer = {"untrusted": {"published": exc.published, "trusted": exc.trusted}}
    except UnsignedModel as exc:
        answer = {"unsigned": {"published": exc.published, "detail": exc.detail}}
    except ArtifactError as exc:
        answer = {"artifact_error": {"detail": str(exc), "public": exc.public}}
    except Exception as exc:
        answer = {"unexpected": f"{type(exc).__name__}: {exc}"}
    else:
        answer = {
            "manifest": fetched.manifest.model_dump_json(),
            "stamp": fetched.stamp,
            "cached": fetched.cached,
            "paths": [str(p) for p in fetched.paths],
            "signed_by": signing_key,
        }
    return answer | {"seconds": time.perf_counter() - started}


class Prefetch:
    """A fetch of the published build running in a child process; ``result()`` waits for it."""

    def __init__(self, proc: subprocess.Popen):
        self._proc = proc
        self.seconds: float | None = None  # how long the child's fetch took, once it is done

    @classmethod
    def start(cls, settings: Settings) -> Prefetch | None:
        """The child started; None when it cannot be (the first load then fetches by itself, as without one),
        or when there is no build to fetch (the S3 Vectors store: the first load fetches only the model)."""
        if settings.vector_store != ANNOY:
            return None
        # The child resolves modules as this process does (Lambda's task root, a test's repository).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        argv = [
            settings.artifacts_uri,
            str(settings.cache_dir),
            settings.trusted_model_sha256 or "",
            settings.model_signing_key or "",
        ]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lambda_fn.search.prefetch", *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
        except OSError:
            return None
        return cls(proc)

    def result(self) -> FetchedArtifacts:
        """The fetched build; raises what the fetch raised (``ArtifactError``, ``RefusedModel``), or a
        RuntimeError when the child failed unexpectedly."""
        out, err = self._proc.communicate()
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(
                f"the prefetch process exited with {self._proc.returncode} without an answer: {err[-2000:]}"
            ) from None
        self.seconds = answer["seconds"]
        if "untrusted" in answer:
            raise UntrustedModel(**answer["untrusted"])
        if "unsigned" in answer:
            raise UnsignedModel(**answer["unsigned"])
        if "artifact_error" in answer:
            raise ArtifactError(**answer["artifact_error"])
        if "unexpected" in answer:
            raise RuntimeError(f"the prefetch failed: {answer['unexpected']}")
        model, index, keys = (Path(p) for p in answer["paths"])
        manifest = Manifest.model_validate_json(answer["manifest"])
        if answer.get("signed_by"):  # verified there: this process need not ask KMS again for a swap
            remember_verified(manifest.model_sha256, answer["signed_by"])
        return FetchedArtifacts(manifest, model, index, keys, stamp=answer["stamp"], cached=answer["cached"])


if __name__ == "__main__":
    print(json.dumps(_answer(*sys.argv[1:5])), flush=True)
