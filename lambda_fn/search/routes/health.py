"""GET /health: ready or not, which build, model and index serve, and how the check for newer builds went.

Public, so it names no location (bucket, prefix, paths) and no library version: ``versions`` holds the
service's own version only, which tells a client which release answers. Torch and Python versions would
only tell an attacker which known flaws to try; they are in the "model and index loaded" log line instead.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lambda_fn import __version__
from lambda_fn.contract.vectors import METRIC as VECTOR_METRIC
from lambda_fn.search.deps import StateDep
from lambda_fn.search.errors import NotReady
from lambda_fn.search.pipeline import max_k
from lambda_fn.search.schemas import (
    MAX_LISTED_LABELS,
    BuildInfo,
    DedupeInfo,
    ErrorDetail,
    HealthResponse,
    IndexInfo,
    ModelInfo,
    RuntimeInfo,
    UpdatesInfo,
)
from lambda_fn.vision.engine import runtime_info
from lambda_fn.vision.phash import HASH_NAME

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(state: StateDep):
    """Load the model and index if needed and report their identity and build; 503 while they cannot be loaded."""
    settings = state.settings
    body = HealthResponse(
        status="ready",
        limits={
            "default_k": settings.default_k,
            "max_k": settings.max_k,
            "max_upload_bytes": settings.max_upload_bytes,
        },
        versions={"service": __version__},
    )
    try:
        engine = await state.live()
    except NotReady as exc:
        body.status = "unavailable"
        body.error = ErrorDetail(code=exc.code, message=exc.message)
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers=exc.headers)
    m, meta = engine.manifest, engine.meta
    body.limits["max_k"] = max_k(engine, settings)
    body.build = BuildInfo(id=engine.build_id, built_at=engine.built_at)
    body.updates = UpdatesInfo(
        check_interval_s=settings.manifest_check_s,
        checked_at=state.checked_at,
        swapping=state.swapping,
        error=state.check_error,
        pending_model=state.pending_model,
        pending_images=state.pending_images,
    )
    body.model = ModelInfo(
        sha256=engine.model_sha256,
        weights_sha256=meta.weights_sha256,
        dim=meta.dim,
        resize_size=meta.resize_size,
        crop_size=meta.crop_size,
        classes=len(meta.class_names),
    )
    body.runtime = RuntimeInfo(**runtime_info(meta))
    labels = engine.store.label_names()
    if m is None:  # the S3 Vectors store
        body.index = IndexInfo(
            store=engine.store.kind, max_top_k=engine.store.max_top_k, dim=meta.dim, metric=VECTOR_METRIC
        )
    else:
        body.index = IndexInfo(
            sha256=m.index_sha256,
            count=m.count,
            dim=m.dim,
            metric=m.metric,
            n_trees=m.n_trees,
            search_k=engine.search_k,
        )
    body.index.label_count, body.index.labels = len(labels), labels[:MAX_LISTED_LABELS]
    body.dedupe = DedupeInfo(
        enabled=engine.dedupe_off is None,
        reason=engine.dedupe_off,
        perceptual_hash=m.perceptual_hash if m is not None else HASH_NAME,
        hashed_images=engine.hashed if m is not None else None,
        max_distance=settings.dedupe_max_distance,
        min_similarity=settings.dedupe_similarity,
    )
    return body
