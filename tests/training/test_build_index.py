import shutil

import numpy as np

from lambda_fn.contract.manifest import Manifest, file_sha256, read_keys, read_keys_and_hashes
from lambda_fn.contract.shards import Shard
from lambda_fn.storage.artifacts import fetch
from lambda_fn.vision.engine import Engine, load_index, load_model
from lambda_fn.vision.imaging import load_for_model
from lambda_fn.vision.phash import HASH_NAME, from_hex, perceptual_hash
from tests.helpers import EMBED_DIM, INDEX_TREES, SAMPLE_COUNT, SAMPLE_PER_CLASS, run_module
from training.build_index import get_args_parser, main


def _build(images, model, out, *extra: str) -> int:
    """training.build_index's main() with these paths and flags."""
    return main(
        get_args_parser().parse_args(["--images", str(images), "--model", str(model), "--out", str(out), *extra])
    )


def test_manifest_describes_the_build(artifacts_dir, model_path):
    m = Manifest.read(artifacts_dir / "manifest.json")
    assert (m.dim, m.metric, m.count, m.n_trees, m.seed) == (EMBED_DIM, "angular", SAMPLE_COUNT, INDEX_TREES, 42)
    assert m.model_sha256 == file_sha256(model_path) == file_sha256(artifacts_dir / "model.pt")
    assert m.index_sha256 == file_sha256(artifacts_dir / "index.ann")
    assert m.keys_sha256 == file_sha256(artifacts_dir / "keys.json")
    assert m.embeddings_file == "embeddings.npy" and m.search_k > 0
    assert {"torch", "annoy", "numpy"} <= set(m.versions)


def test_every_image_carries_the_perceptual_hash_of_its_prepared_crop(artifacts_dir, sample_dir):
    m = Manifest.read(artifacts_dir / "manifest.json")
    assert m.perceptual_hash == HASH_NAME and m.hashed == m.count
    entries, hashes = read_keys_and_hashes(artifacts_dir / "keys.json")
    meta = load_model(artifacts_dir / "model.pt")[1]
    for i in (0, 17, len(entries) - 1):
        pixels = load_for_model(sample_dir / entries[i].key, meta.resize_size, meta.crop_size)
        assert from_hex(hashes[i]) == perceptual_hash(pixels)
    shard = Shard.from_bytes((artifacts_dir / "collection.npz").read_bytes())  # what the next reindex starts from
    assert {a.key: a.phash for a in shard.added} == {e.key: h for e, h in zip(entries, hashes, strict=True)}


def test_ids_are_dense_in_sorted_key_order_with_folder_labels(artifacts_dir, sample_dir):
    keys = read_keys(artifacts_dir / "keys.json")
    assert [k.key for k in keys] == sorted(k.key for k in keys)
    assert all((sample_dir / k.key).is_file() for k in keys)
    assert all(k.label == k.key.split("/")[0] for k in keys)


def test_an_indexed_vector_finds_itself_first(artifacts_dir):
    fetched = fetch(str(artifacts_dir), artifacts_dir)
    engine = Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)
    vectors = np.load(artifacts_dir / "embeddings.npy")
    for i in (0, 17, SAMPLE_COUNT - 1):
        assert engine.search(vectors[i], 3)[0].id == i
        assert np.allclose(engine.vector(i), vectors[i], atol=1e-6)


def test_rebuild_with_the_same_seed_is_identical(artifacts_dir, model_path, sample_dir, tmp_path):
    assert _build(sample_dir, model_path, tmp_path, "--workers", "0", "--n-trees", str(INDEX_TREES)) == 0
    assert file_sha256(tmp_path / "index.ann") == file_sha256(artifacts_dir / "index.ann")


def test_unreadable_files_are_skipped_and_listed(model_path, sample_dir, tmp_path, capsys, caplog):
    images = tmp_path / "images"
    shutil.copytree(sample_dir / "soup", images / "soup")
    (images / "soup" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    assert _build(images, model_path, tmp_path / "out", "--workers", "0", "--n-trees", "2") == 0
    assert "1 skipped" in capsys.readouterr().out and "broken.jpg" in caplog.text
    keys = [k.key for k in read_keys(tmp_path / "out" / "keys.json")]
    assert len(keys) == SAMPLE_PER_CLASS and "soup/broken.jpg" not in keys


def test_cli_errors_are_readable(tmp_path, model_path):
    proc = run_module(
        "training.build_index",
        "--images",
        str(tmp_path / "none"),
        "--model",
        str(model_path),
        "--out",
        str(tmp_path / "o"),
        timeout=120,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_on_disk_build_gives_the_same_neighbours(artifacts_dir, model_path, sample_dir, tmp_path):
    assert (
        _build(sample_dir, model_path, tmp_path, "--workers", "0", "--n-trees", str(INDEX_TREES), "--on-disk-build")
        == 0
    )
    m = Manifest.read(tmp_path / "manifest.json")
    disk = load_index(tmp_path / "index.ann", m.dim, m.metric)
    memory = load_index(artifacts_dir / "index.ann", m.dim, m.metric)
    assert disk.get_n_items() == memory.get_n_items() == SAMPLE_COUNT
    for i in (0, 30, SAMPLE_COUNT - 1):
        assert disk.get_nns_by_item(i, 5, search_k=10_000) == memory.get_nns_by_item(i, 5, search_k=10_000)
