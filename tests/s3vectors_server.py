"""TEST EXTENSION of moto's S3 Vectors server: QueryVectors, which moto 5.2 does not implement, and throttling.

Not AWS and not moto: a route and a handler added to moto's S3 Vectors service in the test process only, before
the loopback server (``tests/conftest.py``, ``s3_endpoint``) builds its routes. It answers exact top-k over the
vectors moto stores, honouring ``topK``, ``filter`` ($eq, $ne, $in, $nin, $exists, $and, $or, and a bare value
as $eq), ``returnMetadata`` and ``returnDistance``; distance is 1 - cos for a cosine index, L2 for euclidean.
Clients call it through boto3, so botocore validates every request against the real service model.

``THROTTLE[operation] = n`` makes the next n calls of a moto operation (e.g. ``"put_vectors"``) answer 429
TooManyRequestsException, the way the service sheds load, so a test can show the caller backs off and retries.
"""

from __future__ import annotations

import threading

import numpy as np

THROTTLE: dict[str, int] = {}
CALLS: dict[str, int] = {}  # calls each operation received, throttled ones included
_lock = threading.Lock()
_installed = False


def matches(metadata: dict, condition: dict) -> bool:
    """Whether ``metadata`` satisfies an S3 Vectors metadata filter document."""
    for field, test in condition.items():
        if field == "$and":
            if not all(matches(metadata, c) for c in test):
                return False
        elif field == "$or":
            if not any(matches(metadata, c) for c in test):
                return False
        elif not _field_matches(metadata, field, test):
            return False
    return True


def _field_matches(metadata: dict, field: str, test) -> bool:
    if not isinstance(test, dict):
        test = {"$eq": test}
    value, present = metadata.get(field), field in metadata
    for op, operand in test.items():
        if op == "$eq":
            ok = present and value == operand
        elif op == "$ne":
            ok = not present or value != operand
        elif op == "$in":
            ok = present and value in operand
        elif op == "$nin":
            ok = not present or value not in operand
        elif op == "$exists":
            ok = present == bool(operand)
        else:
            raise ValueError(f"filter operator {op} is not supported by this test extension")
        if not ok:
            return False
    return True


def install() -> None:
    """Add QueryVectors and throttling to moto's S3 Vectors service, once, before its server starts."""
    global _installed
    if _installed:
        return
    from moto.core.exceptions import ServiceException
    from moto.core.responses import ActionResult
    from moto.s3vectors import urls
    from moto.s3vectors.responses import S3VectorsResponse

    class TooManyRequests(ServiceException):
        code = "TooManyRequestsException"  # the service model's 429 error shape

        def __init__(self) -> None:
            super().__init__("Rate exceeded (test extension)")

    def query_vectors(self) -> ActionResult:
        index = self.s3vectors_backend.get_index(
            self._get_param("vectorBucketName"),
            index_name=self._get_param("indexName"),
            index_arn=self._get_param("indexArn"),
        )
        top_k = int(self._get_param("topK"))
        query = np.asarray(self._get_param("queryVector")["float32"], dtype=np.float64)
        condition = self._get_param("filter") or {}
        rows = [v for v in index.vectors.values() if matches(v.metadata or {}, condition)]
        if rows:
            data = np.asarray([v.data["float32"] for v in rows], dtype=np.float64)
            if index.distance_metric == "cosine":
                norms = np.linalg.norm(data, axis=1) * max(np.linalg.norm(query), 1e-12)
                distance = 1.0 - (data @ query) / np.maximum(norms, 1e-12)
            else:
                distance = np.linalg.norm(data - query, axis=1)
            order = np.argsort(distance, kind="stable")[:top_k]
        else:
            order, distance = [], []
        out = []
        for i in order:
            item = {"key": rows[i].key}
            if self._get_bool_param("returnDistance", False):
                item["distance"] = float(distance[i])
            if self._get_bool_param("returnMetadata", False):
                item["metadata"] = rows[i].metadata
            out.append(item)
        return ActionResult({"vectors": out, "distanceMetric": index.distance_metric})

    def throttled(name: str, original):
        def handler(self):
            with _lock:
                CALLS[name] = CALLS.get(name, 0) + 1
                if THROTTLE.get(name, 0) > 0:
                    THROTTLE[name] -= 1
                    raise TooManyRequests()
            return original(self)

        return handler

    S3VectorsResponse.query_vectors = query_vectors
    for name in ("put_vectors", "delete_vectors", "get_vectors", "query_vectors", "list_vectors"):
        setattr(S3VectorsResponse, name, throttled(name, getattr(S3VectorsResponse, name)))
    urls.url_paths["{0}/QueryVectors$"] = S3VectorsResponse.dispatch
    _installed = True
