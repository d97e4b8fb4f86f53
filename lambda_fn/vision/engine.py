"""A loaded model and index: embed images, find their nearest neighbours.

The model is loaded once per container and reused. The service calls ``embed`` only from its one torch
thread (``ServiceState``), so forwards never overlap; offline tools call it from their own single thread.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import MODEL_META_FILE, KeyEntry, Manifest, ModelMeta, read_keys_and_hashes
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.vision.labels import LabelIndex, item_vectors
from lambda_fn.vision.phash import HASH_NAME
from lambda_fn.vision.vector_store import AnnoyStore, VectorStore

# torch 2.14 marks TorchScript deprecated with a FutureWarning on every script/save/load. It still works and
# is what this project ships (see the README), so the warning is not repeated in every log line and CLI run.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


def int8_engine() -> str:
    """The quantized engine an int8 model is loaded with, from the CPU capability torch runs with.

    int8 beats fp32 on every x86 CPU measured, so the model stays int8 and only its kernels follow the CPU
    (docs/benchmarks.md, "Instruction sets"). With AVX-512, torch's ``x86`` engine: oneDNN's VNNI kernels
    where cpuinfo reports AVX-512 VNNI, FBGEMM's elsewhere. With AVX2 only (all Lambda promises on x86_64),
    ``x86`` would pick FBGEMM, whose AVX2 kernels measured 5% slower than oneDNN's (bench/isa.py), so
    ``onednn`` there. The capability honours ``ATEN_CPU_CAPABILITY``, so an AVX2 cap gets the AVX2 choice.
    """
    return "onednn" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "x86"


def runtime_info(meta: ModelMeta) -> dict[str, object]:
    """Which model and kernels run here, for /health."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vnni": bool(vnni),
        "model": "int8" if meta.quantization else "fp32",
        "quantized_engine": torch.backends.quantized.engine if meta.quantization else None,
        "threads": torch.get_num_threads(),
    }


def load_model(path: Path) -> tuple[torch.jit.ScriptModule, ModelMeta]:
    """Load an exported TorchScript model and the metadata it carries (int8 weights are packed at load for
    ``int8_engine()``)."""
    extra = {MODEL_META_FILE: ""}
    if platform.machine().lower() in ("x86_64", "amd64"):
        torch.backends.quantized.engine = int8_engine()
    try:
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ArtifactError(f"model file {path} could not be loaded as TorchScript: {exc}") from exc
    if not extra[MODEL_META_FILE]:
        raise ArtifactError(f"model file {path} has no {MODEL_META_FILE}; export it with training.export")
    meta = ModelMeta.model_validate_json(extra[MODEL_META_FILE])
    if meta.quantization and platform.machine().lower() not in ("x86_64", "amd64"):
        raise ArtifactError(
            f"{path} is {meta.quantization}, which needs an x86-64 CPU; this is {platform.machine()}. "
            "Deploy the function as x86_64 or export without --int8."
        )
    return model.eval(), meta


def load_index(path: Path, dim: int, metric: str) -> AnnoyIndex:
    """Memory-map an Annoy index built with ``dim`` and ``metric`` (from the manifest, never hard-coded)."""
    index = AnnoyIndex(dim, metric)
    try:
        index.load(str(path))
    except OSError as exc:
        raise ArtifactError(f"index file {path} could not be loaded: {exc}") from exc
    return index


def _check_dim(manifest: Manifest, meta: ModelMeta) -> None:
    if manifest.dim != meta.dim:
        raise ArtifactError(
            f"index has {manifest.dim}-d vectors but the model makes {meta.dim}-d embeddings: "
            "rebuild the index with this model (training.build_index)"
        )


def _picture_hashes(
    manifest: Manifest, hashes: list[str | None] | None, count: int
) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(hash per id as uint64, whether each id has one, why the dedupe is off or None). Nothing is guessed: a
    build without hashes, or with another kind of hash, collapses no result."""
    if manifest.perceptual_hash is None or not hashes or not any(hashes):
        return None, None, "the build has no perceptual hashes: rebuild it, or re-embed the collection and reindex"
    if manifest.perceptual_hash != HASH_NAME:
        return None, None, f"the build's hashes are {manifest.perceptual_hash!r}; this service compares {HASH_NAME!r}"
    if len(hashes) != count:
        raise ArtifactError(f"the key map has {len(hashes)} perceptual hashes for {count} images")
    try:
        values = np.array([int(h, 16) if h else 0 for h in hashes], dtype=np.uint64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ArtifactError(f"the key map holds a perceptual hash that is not 16 hex digits: {exc}") from exc
    return values, np.array([bool(h) for h in hashes]), None


@dataclass
class Neighbour:
    id: int
    distance: float

    @property
    def similarity(self) -> float:
        """Cosine similarity from Annoy's angular distance d = sqrt(2 - 2 cos)."""
        return 1.0 - self.distance * self.distance / 2.0


class Engine:
    def __init__(
        self,
        model: torch.jit.ScriptModule,
        meta: ModelMeta,
        index: AnnoyIndex,
        manifest: Manifest,
        keys: list[KeyEntry],
        *,
        search_k: int | None = None,
        vectors: np.ndarray | None = None,
        hashes: list[str | None] | None = None,
    ):
        """``vectors``: the index's item vectors read in place (``labels.item_vectors``), for exact label scans;
        ``hashes``: each id's perceptual hash as keys.json stores it (None where it has none)."""
        _check_dim(manifest, meta)
        if index.get_n_items() != manifest.count or len(keys) != manifest.count:
            raise ArtifactError(
                f"manifest says {manifest.count} images, index has {index.get_n_items()}, key map {len(keys)}: "
                "the artifacts come from different builds; upload them together"
            )
        self.model, self.meta, self.index, self.manifest, self.keys = model, meta, index, manifest, keys
        self.search_k = search_k or manifest.search_k
        self.has_head = bool(meta.class_names)
        self.build_id = manifest.build_id
        # Ids are dense per build, keys are not: a look-up by key means the same image in every build.
        self.ids = {entry.key: i for i, entry in enumerate(keys)}
        self.item_vectors = vectors
        self.labels = LabelIndex(keys, index, manifest.n_trees, vectors=vectors)
        self._hashes, self._hashed, self.dedupe_off = _picture_hashes(manifest, hashes, len(keys))
        self.store: VectorStore = AnnoyStore(self)
        self.model_sha256, self.built_at = manifest.model_sha256, manifest.built_at

    @classmethod
    def with_store(
        cls, model: torch.jit.ScriptModule, meta: ModelMeta, store: VectorStore, *, model_sha256: str, built_at: str
    ) -> Engine:
        """A model whose neighbours come from a vector store outside the container (S3 Vectors): no Annoy
        index, manifest or key map is loaded; ``build_id`` is the store's (its index)."""
        engine = cls.__new__(cls)
        engine.model, engine.meta, engine.store = model, meta, store
        engine.index = engine.manifest = engine.labels = engine.item_vectors = engine.search_k = None
        engine.keys, engine.ids = [], {}
        # each result's hash comes with it, in the vector's metadata: nothing build-wide to turn dedupe off
        engine._hashes = engine._hashed = engine.dedupe_off = None
        engine.has_head = bool(meta.class_names)
        engine.build_id = store.build_id
        engine.model_sha256, engine.built_at = model_sha256, built_at
        return engine

    @property
    def hashed(self) -> int:
        """Images with a perceptual hash the dedupe can compare (0 when it is off: ``dedupe_off`` says why)."""
        return int(self._hashed.sum()) if self._hashed is not None else 0

    def picture_hashes(self, ids: list[int]) -> list[int | None]:
        """The perceptual hash of each id (None: it has none, or the build's hashes are not comparable)."""
        if self._hashes is None:
            return [None] * len(ids)
        return [int(self._hashes[i]) if self._hashed[i] else None for i in ids]

    @classmethod
    def from_files(
        cls,
        manifest: Manifest,
        model_path: Path,
        index_path: Path,
        keys_path: Path,
        *,
        search_k: int | None = None,
        reuse: Engine | None = None,
    ) -> Engine:
        """Load a build. When ``reuse`` runs the same model (same sha256), its loaded and warmed-up model object
        is shared instead of loading the file again: no torch work at all."""
        if reuse is not None and reuse.model_sha256 == manifest.model_sha256:
            model, meta = reuse.model, reuse.meta
        else:
            model, meta = load_model(model_path)
        _check_dim(manifest, meta)  # before loading: Annoy's own complaint about a wrong dim is cryptic
        index = load_index(index_path, manifest.dim, manifest.metric)
        vectors = item_vectors(index_path, index, manifest.dim) if manifest.metric == "angular" else None
        keys, hashes = read_keys_and_hashes(keys_path)
        return cls(model, meta, index, manifest, keys, search_k=search_k, vectors=vectors, hashes=hashes)

    @torch.inference_mode()
    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (B, H, W, 3) -> (L2-normalised float32 (B, dim), class probabilities (B, C) or None)."""
        batch = torch.from_numpy(np.ascontiguousarray(images))
        # The model is frozen and optimised at export: TorchScript's profiling executor would only re-optimise
        # it on first use, for nothing (docs/benchmarks.md, "Cold start").
        with torch.jit.optimized_execution(False):
            if self.has_head:
                emb, probs = self.model.embed_and_classify(batch)
                return emb.numpy(), probs.numpy()
            return self.model(batch).numpy(), None

    def predictions(self, probs: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-probs)[:top]
        return [(self.meta.class_names[i], float(probs[i])) for i in order]

    def search(
        self, vector: np.ndarray, k: int, *, exclude: int | None = None, labels: Collection[str] = ()
    ) -> list[Neighbour]:
        """The k nearest indexed images to ``vector``, nearest first, optionally leaving one id out and keeping
        only images with one of ``labels`` (all known: see ``LabelIndex.unknown``)."""
        if labels:
            found = self.labels.search(vector, k, labels, exclude=exclude, search_k=self.search_k)
            return [Neighbour(i, d) for i, d in found]
        n = k + (1 if exclude is not None else 0)
        search_k = max(self.search_k, n * self.manifest.n_trees)
        ids, dists = self.index.get_nns_by_vector(vector.tolist(), n, search_k=search_k, include_distances=True)
        found = [Neighbour(i, d) for i, d in zip(ids, dists, strict=True) if i != exclude]
        return found[:k]

    def vector(self, image_id: int) -> np.ndarray:
        if self.item_vectors is not None:  # read in place: no Python list of floats
            return np.array(self.item_vectors[image_id])
        return np.asarray(self.index.get_item_vector(image_id), dtype=np.float32)

    def warm_up(self) -> None:
        """One forward at the real input size through the method requests use, so the first user request
        does not pay for lazy init (oneDNN's kernels, the allocator's pools; docs/benchmarks.md)."""
        size = self.meta.crop_size
        self.embed(np.zeros((1, size, size, 3), dtype=np.uint8))
