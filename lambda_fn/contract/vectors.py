"""Facts about the vector store: which one a deployment runs, and how the S3 Vectors one is laid out.

Two stores answer the same questions (``lambda_fn.vision.vector_store``): an Annoy build inside the search
container (the default, and the offline local mode), or Amazon S3 Vectors, chosen at deploy time
(``cdk deploy -c vectorStore=s3vectors``), which CDK records in ``DEEPFOOD_VECTOR_STORE``. Infrastructure and
runtime both read the names and limits here.

On S3 Vectors a *build* is an index version: one index per model (``index_name``), filled by ingest and the
backfill, and named by ``vectors/live.json`` once it serves. The service's build id is that index's name.
"""

from __future__ import annotations

import hashlib
from typing import Literal

VectorStoreKind = Literal["annoy", "s3vectors"]
ANNOY: VectorStoreKind = "annoy"
S3VECTORS: VectorStoreKind = "s3vectors"
VECTOR_STORES: tuple[VectorStoreKind, ...] = (ANNOY, S3VECTORS)

# Published S3 Vectors limits (AWS documentation, "Limitations and restrictions", read December 2026).
MAX_TOP_K = 100  # QueryVectors returns at most this many neighbours
MAX_PUT_BATCH = 500  # vectors per PutVectors call (also the service model's list maximum)
MAX_DELETE_BATCH = 500  # keys per DeleteVectors call
MAX_GET_BATCH = 100  # keys per GetVectors call
MAX_KEY_LENGTH = 1024  # characters of a vector key
MAX_DIMENSION = 4096

# The metric the index is created with: the embeddings are L2-normalised, so cosine ranks as Annoy's angular.
METRIC = "cosine"

# Vector metadata. Label and source are filterable (the label filter uses them); the image key, the model's
# sha256 and the perceptual hash only come back with results, so they are non-filterable and do not count
# against the 2 KB filterable budget.
LABEL = "label"
SOURCE = "source"
KEY = "key"
MODEL = "model_sha256"
PHASH = "phash"
NON_FILTERABLE = (KEY, MODEL, PHASH)

# Where the service reads which index serves (a JSON record in the artifacts store, like manifest.json).
LIVE_RECORD = "vectors/live.json"
# Default wait before an index that stopped serving is deleted: clients holding its build id get 409s, and a
# rollback is a record edit, for this long.
DEFAULT_RETIRE_AFTER_S = 7 * 24 * 3600


def index_name(model_sha256: str) -> str:
    """The index that holds one model's embeddings: one index per model, so a new model never mixes with the
    old one (``model-`` and the sha256's first 16 hex digits; S3 Vectors allows 3-63 of [a-z0-9.-])."""
    if len(model_sha256) < 16:
        raise ValueError(f"not a sha256: {model_sha256!r}")
    return f"model-{model_sha256[:16].lower()}"


def vector_key(image_key: str) -> str:
    """The vector's key: the image key itself, or ``sha256:<hex>`` of it when it is longer than S3 Vectors
    allows. S3 object keys are at most 1,024 bytes, so keys of an S3 collection are always used as they are;
    the digest form only arises for longer local paths. The image key always travels in the metadata too."""
    if len(image_key) <= MAX_KEY_LENGTH:
        return image_key
    return "sha256:" + hashlib.sha256(image_key.encode()).hexdigest()
