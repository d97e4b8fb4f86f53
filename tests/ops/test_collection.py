"""ops.collection: the ingest and reindex of the cloud, run on a workstation's folders."""

from __future__ import annotations

import shutil

import pytest

from lambda_fn.contract.manifest import KeyEntry, Manifest
from lambda_fn.storage.artifacts import fetch
from lambda_fn.vision.engine import Engine
from ops.collection import cli
from tests.deployment import embed_bytes, unique_photo
from tests.helpers import SAMPLE_COUNT


@pytest.fixture
def local(artifacts_dir, sample_dir, tmp_path):
    """A private copy of the session's build and collection (the tool writes into both)."""
    art, images = tmp_path / "artifacts", tmp_path / "images"
    shutil.copytree(artifacts_dir, art)
    shutil.copytree(sample_dir, images)
    return art, images, ["--artifacts", str(art), "--images", str(images), "--cache-dir", str(tmp_path / "cache")]


def _engine(art, tmp_path) -> Engine:
    fetched = fetch(str(art), tmp_path / "unused")
    return Engine.from_files(fetched.manifest, fetched.model, fetched.index, fetched.keys)


def test_add_then_remove_a_photo(local, tmp_path, capsys):
    art, images, common = local
    photo = tmp_path / "my ramen.jpg"
    photo.write_bytes(unique_photo(5))
    before = Manifest.read(art / "manifest.json")

    assert cli([*common, "add", str(photo), "--label", "ramen"]) == 0
    out = capsys.readouterr().out
    assert "added 1 images" in out and f"with {SAMPLE_COUNT + 1} images is live" in out
    assert (images / "ramen" / "my ramen.jpg").read_bytes() == photo.read_bytes()
    after = Manifest.read(art / "manifest.json")
    assert after.build_id != before.build_id and after.model_file == before.model_file
    engine = _engine(art, tmp_path)
    top = engine.search(embed_bytes(engine, photo.read_bytes()), 1)[0]
    assert engine.keys[top.id] == KeyEntry("ramen/my ramen.jpg", "ramen")

    assert cli([*common, "remove", "ramen/my ramen.jpg"]) == 0
    assert not (images / "ramen" / "my ramen.jpg").exists()
    assert "ramen/my ramen.jpg" not in {e.key for e in _engine(art, tmp_path).keys}
    assert Manifest.read(art / "manifest.json").count == SAMPLE_COUNT


def test_sync_picks_up_files_changed_by_hand(local, tmp_path, capsys):
    art, images, common = local
    (images / "newsoup").mkdir()
    (images / "newsoup" / "a.jpg").write_bytes(unique_photo(8))
    victim = sorted(p for p in images.rglob("*.jpg") if p.parent.name != "newsoup")[0]
    victim.unlink()
    assert cli([*common, "sync"]) == 0
    assert "2 changes to ingest" in capsys.readouterr().out
    keys = {e.key for e in _engine(art, tmp_path).keys}
    assert "newsoup/a.jpg" in keys and victim.relative_to(images).as_posix() not in keys
    assert cli([*common, "sync"]) == 0
    assert "0 changes to ingest" in capsys.readouterr().out


def test_status_and_clear_errors(local, tmp_path, capsys):
    _, images, common = local
    assert cli([*common, "status"]) == 0
    assert f"{SAMPLE_COUNT} images" in capsys.readouterr().out
    assert cli([*common, "add", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err
    existing = next(images.rglob("*.jpg"))
    assert cli([*common, "add", str(existing), "--label", existing.parent.name]) == 2
    assert "--replace" in capsys.readouterr().err
    assert cli([*common, "remove", "no/such.jpg"]) == 2
    assert "not in the collection" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    assert cli([*common, "add", str(notes)]) == 2
    assert "not an image file" in capsys.readouterr().err


def test_photos_added_before_any_model_wait_and_the_first_reindex_embeds_them(artifacts_dir, tmp_path, capsys):
    art, images = tmp_path / "artifacts", tmp_path / "images"
    common = ["--artifacts", str(art), "--images", str(images), "--cache-dir", str(tmp_path / "cache")]
    photo = tmp_path / "early.jpg"
    photo.write_bytes(unique_photo(9))
    assert cli([*common, "add", str(photo), "--label", "ramen"]) == 0
    captured = capsys.readouterr()
    assert "1 changes wait for one" in captured.err and "1 photos wait for a model" in captured.out
    assert cli([*common, "status"]) == 0
    assert "1 photos wait for a model" in capsys.readouterr().out

    shutil.copytree(artifacts_dir, art, dirs_exist_ok=True)  # the first model and build are published
    assert cli([*common, "status"]) == 0
    assert "1 photos that arrived before the model still wait" in capsys.readouterr().out
    assert cli([*common, "reindex"]) == 0
    out = capsys.readouterr().out
    assert "1 photos that waited for a model were handled" in out and f"with {SAMPLE_COUNT + 1} images" in out
    assert "ramen/early.jpg" in {e.key for e in _engine(art, tmp_path).keys}
    assert cli([*common, "status"]) == 0
    assert "no photos wait for a model" in capsys.readouterr().out
