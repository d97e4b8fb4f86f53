"""The artifact contract: training writes these files, the service reads them.

Everything a reader needs to trust an index is in ``manifest.json``: the file names, their sha256, the
embedding dim and Annoy metric, and the search settings chosen from a measured recall table. The manifest
is uploaded last, so a reader never sees one that points at objects that are not there yet.

Image ids are dense ints 0..n-1 (Annoy allocates memory for max id + 1); ``keys.json`` maps each id to its
key (the image's path relative to the collection root, POSIX separators), its label and, in builds that
have one, its perceptual hash (``phash``, 16 hex digits; the manifest names the hash). The same key, under
``images/``, is the image's S3 object key.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, Field

SCHEMA_VERSION = 1

MODEL_FILE = "model.pt"
INDEX_FILE = "index.ann"
KEYS_FILE = "keys.json"
# The preprocessing every model of this project is trained and served with, unless its export says otherwise:
# torchvision's classification preset (shorter side to 256, centre crop 224).
DEFAULT_RESIZE_SIZE = 256
DEFAULT_CROP_SIZE = 224

MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
# The build's merged embedding shard (lambda_fn.contract.shards), for the next reindex.
COLLECTION_FILE = "collection.npz"
# The layout under a deployment's prefix (``s3://bucket/<prefix>/`` or a local artifacts folder):
IMAGES_PREFIX = "images/"  # the collection: <label>/<name>.jpg; written by people and ops.upload
EMBEDDINGS_PREFIX = "embeddings/"  # embeddings/<model sha256>/<shard>.npz; written by ingest, read by reindex
BUILDS_PREFIX = "builds/"  # builds/<build id>/{model.pt,index.ann,keys.json}; content-addressed, never rewritten
MODELS_PREFIX = "models/"  # models/current.json names the model new embeddings are made with
LOCKS_PREFIX = "locks/"  # locks/reindex.json: the lease that keeps two reindexes from racing
# pending/events/<digest>.json: changes ingest received before any model existed, until a reindex embeds them;
# pending/status.json: how many photos still wait, as the last reindex counted them (lambda_fn.collection.pending)
PENDING_PREFIX = "pending/"
PENDING_RECORDS_PREFIX = f"{PENDING_PREFIX}events/"
PENDING_STATUS_FILE = f"{PENDING_PREFIX}status.json"
BACKFILL_RESULTS_PREFIX = "backfill-results/"  # <map run id>/{manifest,SUCCEEDED_n,FAILED_n}.json: backfill outcomes
# Key prefix a deployment keeps everything under in its bucket, unless told otherwise.
DEFAULT_PREFIX = "deepfood"
# Name of the TorchScript `_extra_files` entry that carries the model's metadata.
MODEL_META_FILE = "meta.json"

Metric = Literal["angular", "euclidean", "dot"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(value: str) -> str:
    # A digest names a cache folder (<cache>/<sha256>/), so it must be exactly what hexdigest() writes.
    if not _SHA256.fullmatch(value):
        raise ValueError("must be a sha256: exactly 64 lowercase hex characters")
    return value


def _build_file(value: str) -> str:
    # A name is an object key under the prefix (or a file in the artifacts folder); its last part names the
    # cached copy. Anything that could climb out of either, or mean different files on different systems, is
    # refused here, before any path is built from it.
    if value.startswith("/") or "\\" in value or "\0" in value or {"", ".", ".."} & set(value.split("/")):
        raise ValueError("must be a relative POSIX path: no leading '/', no backslash, no empty, '.' or '..' part")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256)]
BuildFile = Annotated[str, AfterValidator(_build_file)]


def cache_name(name: str) -> str:
    """The name a build file's cached copy gets: the last segment of its (validated) manifest name."""
    return PurePosixPath(name).name


class ModelMeta(BaseModel):
    """What the exported TorchScript model says about itself."""

    dim: int
    resize_size: int = Field(description="Shorter side is resized to this before the centre crop")
    crop_size: int = Field(description="Square input size the model takes")
    mean: list[float]
    std: list[float]
    class_names: list[str] = []
    input_layout: str = "uint8 RGB (B, H, W, 3)"
    weights_sha256: str = Field(description="sha256 over the weights, a content hash of the model")
    torch_version: str
    arch: str = "resnet34"
    quantization: str | None = Field(None, description="None for fp32; int8 models need an x86-64 CPU")
    train_args: dict = {}


class KeyEntry(NamedTuple):
    """One indexed image. A tuple, not a pydantic model: a 10^5-image key map stays ~10 MB instead of ~60.

    ``source`` names the dataset the image came from in a collection built from several (its keys then start
    with ``<source>/``); None for a collection of one folder. ``read_keys`` shares one string per distinct
    source, so the field costs a pointer per image.
    """

    key: str
    label: str | None = None
    source: str | None = None


class Manifest(BaseModel):
    """Self-description of an index build."""

    schema_version: int = SCHEMA_VERSION
    dim: int
    metric: Metric
    n_trees: int
    search_k: int = Field(description="Default Annoy search_k, chosen from a measured recall table")
    seed: int
    count: int
    model_file: BuildFile = MODEL_FILE
    model_sha256: Sha256
    index_file: BuildFile = INDEX_FILE
    index_sha256: Sha256
    keys_file: BuildFile = KEYS_FILE
    keys_sha256: Sha256
    embeddings_file: BuildFile | None = None
    collection_file: BuildFile | None = Field(None, description="Merged embedding shard this build was made from")
    collection_sha256: Sha256 | None = None
    shards_digest: Sha256 | None = Field(None, description="Digest of the embedding shards merged into this build")
    perceptual_hash: str | None = Field(
        None,
        description="The perceptual hash keys.json carries per image (lambda_fn.vision.phash.HASH_NAME); None: a "
        "build made without hashes, whose results are never collapsed as duplicates",
    )
    hashed: int = Field(0, description="Images of the build that have a perceptual hash")
    built_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    versions: dict[str, str] = {}

    def files(self, *, with_collection: bool = False) -> list[tuple[str, str, str]]:
        """(role, file name, sha256) of the files the service loads: model, index, keys; and the collection
        shard (which only publishing and reindexing need) when asked for and present."""
        files = [
            ("model", self.model_file, self.model_sha256),
            ("index", self.index_file, self.index_sha256),
            ("keys", self.keys_file, self.keys_sha256),
        ]
        if with_collection and self.collection_file and self.collection_sha256:
            files.append(("collection", self.collection_file, self.collection_sha256))
        return files

    @property
    def build_id(self) -> str:
        """Content address of the build: equal files give the same id (its folder name under builds/)."""
        parts = self.index_sha256 + self.model_sha256 + self.keys_sha256 + (self.collection_sha256 or "")
        return hashlib.sha256(parts.encode()).hexdigest()[:16]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


def read_keys_and_hashes(path: Path) -> tuple[list[KeyEntry], list[str | None]]:
    """Each id's entry, and its perceptual hash as stored (16 hex digits; None where the build has none)."""
    sources: dict[str, str] = {}  # json.loads makes a string per occurrence; keep one per distinct source
    entries, hashes = [], []
    for e in json.loads(Path(path).read_text()):
        source = e.get("source")
        entries.append(KeyEntry(str(e["key"]), e.get("label"), sources.setdefault(source, source) if source else None))
        hashes.append(e.get("phash"))
    return entries, hashes


def read_keys(path: Path) -> list[KeyEntry]:
    return read_keys_and_hashes(path)[0]


def write_keys(path: Path, entries: list[KeyEntry], hashes: list[str | None] | None = None) -> None:
    """One ``{"key", "label"}`` object per id, with ``"source"`` and ``"phash"`` only when set (maps without
    them are unchanged)."""
    hashes = hashes or [None] * len(entries)
    rows = [
        {"key": e.key, "label": e.label} | ({"source": e.source} if e.source else {}) | ({"phash": h} if h else {})
        for e, h in zip(entries, hashes, strict=True)
    ]
    Path(path).write_text(json.dumps(rows, ensure_ascii=False))


# S3 user metadata (``x-amz-meta-deepfood-label``) that names an image's label where its key does not: the
# label of a key under ``images/`` is its top folder unless the object says otherwise, which is what
# ``ops.upload`` writes for every image (an iFood image's label comes from a CSV, not its folder).
# Percent-encoded, because S3 metadata travels in HTTP headers (ASCII).
LABEL_METADATA = "deepfood-label"


def label_metadata(label: str | None) -> dict[str, str]:
    """The user metadata that records ``label`` on an image object (none for an unlabelled image)."""
    return {LABEL_METADATA: urllib.parse.quote(label, safe="")} if label else {}


def label_from_metadata(metadata: dict[str, str] | None) -> str | None:
    """The label an image object's user metadata records, if any."""
    value = (metadata or {}).get(LABEL_METADATA)
    return urllib.parse.unquote(value) if value else None


def image_object_key(prefix: str, key: str) -> str:
    """S3 object key of a collection image: ``<prefix>/images/<key>``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{IMAGES_PREFIX}{key}" if prefix else f"{IMAGES_PREFIX}{key}"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (model and index files can be hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.new(algorithm, usedforsecurity=False)).hexdigest()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")
