"""Request and response bodies: the OpenAPI document built from these is the API's contract."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

# Longest image link accepted (browsers and CDNs cap URLs near 2 kB too).
MAX_URL_LENGTH = 2048
# Labels listed by /health and in an unknown-label error; a collection may have thousands.
MAX_LISTED_LABELS = 50


class ErrorCode(StrEnum):
    """Every error code the API answers with; each belongs to exactly one HTTP status (``STATUS``)."""

    NOT_AN_IMAGE = "not_an_image"
    BAD_BASE64 = "bad_base64"
    BAD_DATA_URL = "bad_data_url"
    BAD_MULTIPART = "bad_multipart"
    EMPTY_BODY = "empty_body"
    EMPTY_IMAGE = "empty_image"
    NOT_FOUND = "not_found"
    UNKNOWN_IMAGE = "unknown_image"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STALE_BUILD = "stale_build"
    UNKNOWN_LABEL = "unknown_label"
    NO_POSITIVE_EXAMPLE = "no_positive_example"
    URL_NOT_ALLOWED = "url_not_allowed"
    URL_UNREACHABLE = "url_unreachable"
    TOO_LARGE = "too_large"
    UNSUPPORTED_TYPE = "unsupported_type"
    MISSING_IMAGE = "missing_image"
    INVALID_PARAMETERS = "invalid_parameters"
    BAD_REQUEST = "bad_request"
    INTERNAL_ERROR = "internal_error"
    NOT_READY = "not_ready"

    @property
    def status(self) -> int:
        return STATUS[self]


STATUS: dict[ErrorCode, int] = {
    ErrorCode.NOT_AN_IMAGE: 400,
    ErrorCode.BAD_BASE64: 400,
    ErrorCode.BAD_DATA_URL: 400,
    ErrorCode.BAD_MULTIPART: 400,
    ErrorCode.EMPTY_BODY: 400,
    ErrorCode.EMPTY_IMAGE: 400,
    ErrorCode.BAD_REQUEST: 400,  # refused by the HTTP layer before the service saw it, e.g. JSON that does not parse
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_IMAGE: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.STALE_BUILD: 409,  # an id from an earlier build: ids are dense per build, so it may name another image
    ErrorCode.TOO_LARGE: 413,  # the upload's bytes or the image's pixels
    ErrorCode.UNSUPPORTED_TYPE: 415,  # the content type or the image format
    ErrorCode.MISSING_IMAGE: 422,
    ErrorCode.INVALID_PARAMETERS: 422,
    ErrorCode.UNKNOWN_LABEL: 422,  # a label filter naming no label of the live build; the message lists them
    # Nothing to search towards: neither a query image nor a liked image (only disliked ones, or none).
    ErrorCode.NO_POSITIVE_EXAMPLE: 422,
    # The service will not fetch from there: a scheme other than https, or an address that is not public.
    ErrorCode.URL_NOT_ALLOWED: 422,
    # The URL gave no image: DNS, connection, TLS, timeout, an error status or too many redirects. A 4xx, not a
    # 502: the service is healthy and the client has to change the link; 5xx would count against its alarms.
    ErrorCode.URL_UNREACHABLE: 422,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.NOT_READY: 503,
}


class ErrorDetail(BaseModel):
    code: ErrorCode = Field(description="Stable machine-readable code; the enum lists every one")
    message: str = Field(description="What went wrong and what to do about it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JsonSearchRequest(BaseModel):
    """Exactly one of ``image`` and ``url``."""

    image: str | None = Field(
        None, description="The image as base64, or as a data: URL (data:image/jpeg;base64,...); or give `url`"
    )
    url: str | None = Field(
        None,
        max_length=MAX_URL_LENGTH,
        json_schema_extra={"format": "uri"},
        description="An https:// link to the image, fetched by the service (public addresses only, at most "
        "3 redirects, the upload size limit applies); or give `image`",
    )
    k: int | None = Field(None, description="Number of results; default and maximum come from the settings")


class Match(BaseModel):
    id: int | None = Field(
        description="Image id in the build (0..count-1), valid only with its `build_id`; null on an S3 Vectors "
        "index, which names images by `key` only"
    )
    key: str = Field(description="Path of the image in the collection (its S3 key under images/)")
    label: str | None = Field(None, description="Label from the collection's folder layout, when known")
    source: str | None = Field(
        None, description="Dataset the image came from (e.g. ifood, food101) when the collection has several"
    )
    distance: float = Field(description="Angular distance, sqrt(2 - 2 cos); 0 is identical")
    similarity: float = Field(description="Cosine similarity of the embeddings, 1 is identical")
    url: str = Field(description="URL the browser can load the image from")


class Prediction(BaseModel):
    label: str
    probability: float


class Timings(BaseModel):
    decode_ms: float
    embed_ms: float
    search_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    k: int
    offset: int = Field(0, description="Rank of the first result: results are ranks offset .. offset+k-1")
    next_offset: int | None = Field(
        None, description="Pass as `offset` for the next results; null when there are no more (or max_k is reached)"
    )
    labels: list[str] = Field(default_factory=list, description="The label filter applied; empty: none")
    cut_below_similarity: int = Field(
        0, description="Results of this page left out because their similarity is below `min_similarity`"
    )
    duplicates_collapsed: int = Field(
        0,
        description="Copies of the same picture as a higher-ranked result left out of this page (`dedupe=true`; "
        "always 0 on a build without perceptual hashes, see /health `dedupe`)",
    )
    build_id: str = Field(
        description="The index build that answered; ids are only meaningful within it (pass it back as `build`)"
    )
    results: list[Match]
    predictions: list[Prediction] = Field(description="What the model thinks the query is (empty without a head)")
    timings: Timings
    query_id: int | None = Field(None, description="Set for similar-image searches: the image searched from")
    query: Match | None = Field(None, description="Set for similar-image searches: that image, with its link")
    liked: list[str] = Field(
        default_factory=list, description="Keys of the liked images the ranking was moved towards (`like=`)"
    )
    disliked: list[str] = Field(
        default_factory=list, description="Keys of the disliked images the ranking was moved away from (`dislike=`)"
    )


class ModelInfo(BaseModel):
    sha256: str
    weights_sha256: str
    dim: int
    resize_size: int
    crop_size: int
    classes: int


class RuntimeInfo(BaseModel):
    """Which model and kernels this container runs: chosen from the CPU it landed on (lambda_fn.vision.engine)."""

    cpu_capability: str = Field(description="torch's CPU kernel level: AVX512, AVX2 (Lambda's x86 guarantee), ...")
    cpu_vnni: bool = Field(description="The CPU has AVX-512 VNNI (int8 dot products); oneDNN's int8 kernels use it")
    model: Literal["int8", "fp32"]
    quantized_engine: str | None = Field(
        None, description="int8 only: x86 (oneDNN with AVX-512 VNNI, else FBGEMM) or onednn (AVX2 only)"
    )
    threads: int


class IndexInfo(BaseModel):
    store: Literal["annoy", "s3vectors"] = Field(
        "annoy",
        description="`annoy`: a build loaded into the service; `s3vectors`: an Amazon S3 Vectors index, where a "
        "build is an index version (`build.id` names the index), images are named by key (`id` is null) and a "
        "query returns at most `max_top_k` neighbours",
    )
    max_top_k: int | None = Field(
        None, description="The most neighbours one query returns (offset + k stays within it); null: no limit"
    )
    sha256: str | None = Field(None, description="sha256 of the index file (Annoy)")
    count: int | None = Field(None, description="Images in the build (Annoy; S3 Vectors: at the last switch)")
    dim: int
    metric: str
    n_trees: int | None = Field(None, description="Annoy trees")
    search_k: int | None = Field(None, description="Annoy nodes inspected per query")
    label_count: int = Field(0, description="Distinct labels in the index (values for the `label` filter)")
    labels: list[str] = Field(
        default_factory=list, description=f"The most frequent labels, at most {MAX_LISTED_LABELS}"
    )


class DedupeInfo(BaseModel):
    enabled: bool = Field(
        description="Whether searches with `dedupe=true` (the default) collapse copies of the same picture"
    )
    reason: str | None = Field(None, description="Why collapsing is off for this build")
    perceptual_hash: str | None = Field(None, description="The hash the build's images carry")
    hashed_images: int | None = Field(
        0, description="Images with a hash; one without is never collapsed. Null on S3 Vectors (not counted)"
    )
    max_distance: int = Field(description="Bits of 64 two hashes may differ in for one picture")
    min_similarity: float = Field(description="Cosine the two embeddings must also have")


class BuildInfo(BaseModel):
    id: str = Field(
        description="The live build: the <id> of builds/<id>/ (on S3 Vectors, the index's name); every search "
        "response carries it"
    )
    built_at: str = Field(description="When the build was made, or the S3 Vectors index went live (ISO 8601)")


class UpdatesInfo(BaseModel):
    check_interval_s: float = Field(description="Seconds between checks for a newer build; 0: never")
    checked_at: str | None = Field(None, description="When the published manifest was last checked (ISO 8601)")
    swapping: bool = Field(False, description="A newer build is being fetched and loaded; the live one serves")
    error: str | None = Field(None, description="Why the last check failed; the live build keeps serving")
    pending_model: str | None = Field(
        None,
        description="sha256 of a model announced in models/current.json but not live yet: the collection is "
        "being embedded with it, and the live build serves until a build of the new model covers it",
    )
    pending_images: int | None = Field(
        None,
        description="Photos that arrived before any model was published and are not searchable yet, as the last "
        "reindex counted them; the first reindex with a model embeds them. Null until the first check",
    )


class HealthResponse(BaseModel):
    status: Literal["ready", "unavailable"]
    error: ErrorDetail | None = None
    build: BuildInfo | None = None
    updates: UpdatesInfo | None = None
    model: ModelInfo | None = None
    index: IndexInfo | None = None
    dedupe: DedupeInfo | None = None
    runtime: RuntimeInfo | None = None
    limits: dict[str, int] = Field(default_factory=dict, description="default_k, max_k, max_upload_bytes")
    versions: dict[str, str] = Field(default_factory=dict)
