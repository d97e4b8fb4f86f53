"""The loaded model and index: embeddings, nearest neighbours, and the artifacts it refuses to pair."""

import math

import numpy as np
import pytest
import torch

from lambda_fn.contract.manifest import MODEL_META_FILE, Manifest, read_keys, read_keys_and_hashes
from lambda_fn.storage.artifacts import ArtifactError, fetch
from lambda_fn.vision.engine import Engine, Neighbour, load_index, load_model
from tests.helpers import EMBED_DIM, SAMPLE_CLASSES, SAMPLE_COUNT, TEST_CROP

# int8 and kernel numerics: `make test` runs these again with the kernels capped at AVX2.
pytestmark = pytest.mark.isa


@pytest.fixture(scope="module")
def engine(artifacts_dir) -> Engine:
    fetched = fetch(str(artifacts_dir), artifacts_dir)
    return Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)


def test_embed_gives_unit_vectors_and_class_probabilities(engine):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, TEST_CROP, TEST_CROP, 3), dtype=np.uint8)
    vectors, probs = engine.embed(images)
    assert vectors.shape == (2, EMBED_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert probs.shape == (2, SAMPLE_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_the_model_runs_without_the_executors_profiling_and_answers_as_the_optimised_plan_does(engine, monkeypatch):
    """A frozen model gains nothing from TorchScript's re-optimisation; the engine runs it without, and one
    warm-up forward is then all the first request needs. The answers are those of the optimised plan."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (1, TEST_CROP, TEST_CROP, 3), dtype=np.uint8)
    model = engine.model
    with torch.inference_mode():
        for _ in range(3):  # profile, optimise, then run the optimised plan
            optimised = model.embed_and_classify(torch.from_numpy(images))
    flags = []

    class Recorder:
        def embed_and_classify(self, batch):
            flags.append(torch._C._get_graph_executor_optimize())
            return model.embed_and_classify(batch)

    monkeypatch.setattr(engine, "model", Recorder())
    engine.warm_up()
    vectors, probs = engine.embed(images)
    assert flags == [False, False]  # one warm-up forward, then the request's, neither re-optimised
    assert torch._C._get_graph_executor_optimize()  # the flag is the executor's default again afterwards
    np.testing.assert_allclose(vectors, optimised[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, optimised[1].numpy(), atol=1e-5)


def test_search_is_nearest_first_and_can_leave_the_query_out(engine):
    found = engine.search(engine.vector(5), 4)
    assert len(found) == 4 and found[0].id == 5 and found[0].distance < 1e-3
    assert [n.distance for n in found] == sorted(n.distance for n in found)
    without = engine.search(engine.vector(5), 4, exclude=5)
    assert len(without) == 4 and 5 not in [n.id for n in without]
    assert [n.id for n in without[:3]] == [n.id for n in found[1:4]]


def test_search_for_more_than_the_index_holds_returns_every_image(engine):
    assert sorted(n.id for n in engine.search(engine.vector(0), SAMPLE_COUNT + 5)) == list(range(SAMPLE_COUNT))


def test_similarity_is_the_cosine_of_the_angular_distance():
    # Annoy's angular distance is sqrt(2 - 2 cos): 0 for the same direction, sqrt 2 at right angles, 2 opposite.
    assert Neighbour(0, 0.0).similarity == 1.0
    assert Neighbour(0, math.sqrt(2)).similarity == pytest.approx(0.0)
    assert Neighbour(0, 2.0).similarity == pytest.approx(-1.0)


def test_predictions_are_the_most_probable_classes_first(engine):
    probs = np.zeros(SAMPLE_CLASSES, dtype=np.float32)
    probs[[4, 1, 2]] = [0.5, 0.25, 0.125]  # exact in float32
    names = engine.meta.class_names
    assert engine.predictions(probs) == [(names[4], 0.5), (names[1], 0.25), (names[2], 0.125)]
    assert len(engine.predictions(probs, top=1)) == 1


def test_a_file_that_is_not_torchscript_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="could not be loaded as TorchScript"):
        load_model(path)


def test_a_torchscript_model_without_metadata_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ArtifactError, match=f"no {MODEL_META_FILE}"):
        load_model(path)


def test_a_missing_index_file_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="could not be loaded"):
        load_index(tmp_path / "index.ann", EMBED_DIM, "angular")


def test_a_manifest_whose_dim_differs_from_the_model_is_refused(artifacts_dir):
    manifest = Manifest.read(artifacts_dir / "manifest.json")
    model, meta = load_model(artifacts_dir / "model.pt")
    index = load_index(artifacts_dir / "index.ann", EMBED_DIM, "angular")
    wrong = manifest.model_copy(update={"dim": 256})
    with pytest.raises(ArtifactError, match=f"256-d vectors but the model makes {EMBED_DIM}-d"):
        Engine(model, meta, index, wrong, read_keys(artifacts_dir / "keys.json"))


def test_a_key_map_of_another_size_is_refused(engine):
    keys = engine.keys[:-1]
    with pytest.raises(ArtifactError, match=f"{SAMPLE_COUNT} images, index has {SAMPLE_COUNT}, key map {len(keys)}"):
        Engine(engine.model, engine.meta, engine.index, engine.manifest, keys)


def test_images_without_a_hash_are_never_compared_and_nothing_is_guessed(engine, artifacts_dir):
    _, hashes = read_keys_and_hashes(artifacts_dir / "keys.json")
    partial = [None if i % 2 else h for i, h in enumerate(hashes)]  # a build merged from old and new shards
    mixed = Engine(engine.model, engine.meta, engine.index, engine.manifest, engine.keys, hashes=partial)
    assert mixed.dedupe_off is None and mixed.hashed == (SAMPLE_COUNT + 1) // 2
    assert mixed.picture_hashes([0, 1]) == [int(hashes[0], 16), None]
    other = engine.manifest.model_copy(update={"perceptual_hash": "dct256-whole"})
    off = Engine(engine.model, engine.meta, engine.index, other, engine.keys, hashes=hashes)
    assert off.hashed == 0 and "'dct256-whole'" in off.dedupe_off and off.picture_hashes([0]) == [None]
    bad = ["not hex", *hashes[1:]]
    with pytest.raises(ArtifactError, match="not 16 hex digits"):
        Engine(engine.model, engine.meta, engine.index, engine.manifest, engine.keys, hashes=bad)
