"""One S3 Vectors index: create it, write, delete, read and query vectors, list its keys, drop it.

Writes go in batches of at most ``MAX_PUT_BATCH`` and are retried with exponential backoff (and jitter) while
the service throttles them (about 2,500 vectors/s per index is published); any other error is raised. A put
of a key that exists replaces it and a delete of a missing key is no error, so re-delivered events and re-run
backfill batches write the same state again.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from botocore.exceptions import ClientError

from lambda_fn.contract.vectors import (
    KEY,
    LABEL,
    LIVE_RECORD,
    MAX_DELETE_BATCH,
    MAX_GET_BATCH,
    MAX_PUT_BATCH,
    MAX_TOP_K,
    METRIC,
    NON_FILTERABLE,
    vector_key,
)
from lambda_fn.storage.store import Store

log = logging.getLogger(__name__)

THROTTLED = ("ThrottlingException", "TooManyRequestsException", "ServiceUnavailableException", "SlowDown")
# Backoff between throttled attempts: the first wait, the longest, and how many attempts in all.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
MAX_ATTEMPTS = 8


class VectorStoreError(RuntimeError):
    """The vector index refused a request for a reason a retry will not fix (or throttled it past every retry)."""


def s3vectors_client(*, endpoint_url: str | None = None):
    """A boto3 ``s3vectors`` client (``AWS_ENDPOINT_URL`` reaches a loopback server in the tests)."""
    import boto3
    from botocore.config import Config

    # one attempt per call: ``VectorIndex`` retries throttling itself, with backoff sized for batch writes
    config = Config(retries={"mode": "standard", "total_max_attempts": 1})
    return boto3.client("s3vectors", endpoint_url=endpoint_url, config=config)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_throttled(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return _code(exc) in THROTTLED or status in (429, 503)


@dataclass(frozen=True)
class VectorRecord:
    """One image's vector and what comes back with it: ``metadata`` holds label, source, model sha256, ..."""

    image_key: str
    vector: np.ndarray
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Found:
    """One query result: the image key, the cosine distance S3 Vectors returned (1 - cos) and the metadata."""

    image_key: str
    distance: float
    metadata: dict

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance


def labels_prefix(index: str) -> str:
    """Where the labels written to ``index`` are kept, one empty object each (the label URL-quoted)."""
    return f"{LIVE_RECORD.rsplit('/', 1)[0]}/{index}/labels/"


def known_labels(artifacts: Store, index: str) -> list[str]:
    """Labels ingest has written to ``index``, sorted."""
    prefix = labels_prefix(index)
    return sorted(urllib.parse.unquote(o.key[len(prefix) :]) for o in artifacts.list(prefix))


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VectorIndex:
    """The index ``name`` in the vector bucket ``bucket``."""

    def __init__(self, client, bucket: str, name: str, *, sleep: Callable[[float], None] = time.sleep):
        self.client, self.bucket, self.name, self._sleep = client, bucket, name, sleep

    def _where(self) -> dict:
        return {"vectorBucketName": self.bucket, "indexName": self.name}

    def describe(self) -> str:
        return f"s3vectors://{self.bucket}/{self.name}"

    def info(self) -> dict | None:
        """The index's description (dimension, distanceMetric, ...), or None when it does not exist."""
        try:
            return self.client.get_index(**self._where())["index"]
        except ClientError as exc:
            if _code(exc) in ("NotFoundException", "ResourceNotFoundException"):
                return None
            raise

    def ensure(self, dim: int) -> bool:
        """Create the index for ``dim``-d vectors unless it exists; True when it was created. An index that
        exists with another dimension is an error: a model of another width needs an index of its own."""
        info = self.info()
        if info is not None:
            if int(info["dimension"]) != dim:
                raise VectorStoreError(
                    f"{self.describe()} holds {info['dimension']}-d vectors, the model makes {dim}-d: "
                    "a new model gets a new index (lambda_fn.contract.vectors.index_name)"
                )
            return False
        try:
            self.client.create_index(
                **self._where(),
                dataType="float32",
                dimension=dim,
                distanceMetric=METRIC,
                metadataConfiguration={"nonFilterableMetadataKeys": list(NON_FILTERABLE)},
            )
        except ClientError as exc:
            if _code(exc) != "ConflictException":  # created meanwhile by another writer
                raise
            return False
        log.info("vector index created", extra={"index": self.describe(), "dim": dim})
        return True

    def drop(self) -> None:
        try:
            self.client.delete_index(**self._where())
        except ClientError as exc:
            if _code(exc) not in ("NotFoundException", "ResourceNotFoundException"):
                raise

    def _call(self, operation: str, **kwargs) -> dict:
        """``operation`` with backoff while throttled."""
        method = getattr(self.client, operation)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return method(**self._where(), **kwargs)
            except ClientError as exc:
                if not is_throttled(exc) or attempt == MAX_ATTEMPTS:
                    if is_throttled(exc):
                        raise VectorStoreError(f"{self.describe()} throttled {operation} {attempt} times") from exc
                    raise
                wait = min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S) * (0.5 + random.random() / 2)
                log.warning(
                    "throttled; backing off", extra={"operation": operation, "attempt": attempt, "wait_s": wait}
                )
                self._sleep(wait)
        raise AssertionError("unreachable")

    def put(self, records: Sequence[VectorRecord]) -> int:
        """Write ``records`` (replacing vectors with the same key), ``MAX_PUT_BATCH`` per call; returns calls."""
        calls = 0
        for batch in _batches(records, MAX_PUT_BATCH):
            vectors = [
                {
                    "key": vector_key(r.image_key),
                    "data": {"float32": np.asarray(r.vector, dtype=np.float32).tolist()},
                    "metadata": {**{k: v for k, v in r.metadata.items() if v is not None}, KEY: r.image_key},
                }
                for r in batch
            ]
            self._call("put_vectors", vectors=vectors)
            calls += 1
        return calls

    def delete(self, image_keys: Sequence[str]) -> None:
        keys = [vector_key(k) for k in image_keys]
        for batch in _batches(keys, MAX_DELETE_BATCH):
            self._call("delete_vectors", keys=list(batch))

    def get(self, image_keys: Iterable[str]) -> dict[str, tuple[np.ndarray, dict]]:
        """Vector and metadata of each key the index holds (missing keys are left out)."""
        wanted = {vector_key(k): k for k in image_keys}
        out: dict[str, tuple[np.ndarray, dict]] = {}
        for batch in _batches(list(wanted), MAX_GET_BATCH):
            found = self._call("get_vectors", keys=list(batch), returnData=True, returnMetadata=True)
            for v in found.get("vectors", []):
                metadata = v.get("metadata") or {}
                out[metadata.get(KEY) or wanted[v["key"]]] = (np.asarray(v["data"]["float32"], np.float32), metadata)
        return out

    def query(self, vector: np.ndarray, top_k: int, *, labels: Sequence[str] = ()) -> list[Found]:
        """The ``top_k`` (at most ``MAX_TOP_K``) nearest vectors, nearest first, only images with one of
        ``labels`` when given."""
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be 1..{MAX_TOP_K}, not {top_k}")
        kwargs: dict = {}
        if labels:
            kwargs["filter"] = {LABEL: {"$eq": labels[0]}} if len(labels) == 1 else {LABEL: {"$in": list(labels)}}
        answer = self._call(
            "query_vectors",
            topK=top_k,
            queryVector={"float32": np.asarray(vector, dtype=np.float32).tolist()},
            returnMetadata=True,
            returnDistance=True,
            **kwargs,
        )
        return [
            Found((v.get("metadata") or {}).get(KEY) or v["key"], float(v["distance"]), v.get("metadata") or {})
            for v in answer.get("vectors", [])
        ]

    def keys(self) -> Iterator[str]:
        """Every image key in the index (one ListVectors page of up to 1,000 per call)."""
        token = None
        while True:
            page = self._call(
                "list_vectors", returnMetadata=True, maxResults=1000, **({"nextToken": token} if token else {})
            )
            for v in page.get("vectors", []):
                yield (v.get("metadata") or {}).get(KEY) or v["key"]
            token = page.get("nextToken")
            if not token:
                return
