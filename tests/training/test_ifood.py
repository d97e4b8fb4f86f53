"""iFood 2019 (FGVC6) in its official layout: read by its own metadata and trained on its official split.
Malformed metadata stops the run with the file and line named (exit 2, no traceback); images the metadata
lists but that are not on disk are reported and skipped."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import run_module, tiny_train_args
from tests.training.official_layouts import IFOOD_CLASSES, write_ifood2019
from training.data import MetadataError, detect_layout, load_labelled, read_class_list
from training.train import cli as train_cli

NAMES = [name for name, _ in IFOOD_CLASSES.values()]


@pytest.fixture(scope="module")
def ifood(tmp_path_factory) -> Path:
    return write_ifood2019(tmp_path_factory.mktemp("ifood2019"))


@pytest.fixture
def copy(ifood, tmp_path) -> Path:
    """A copy of the dataset this test may break."""
    return Path(shutil.copytree(ifood, tmp_path / "ifood2019"))


def test_layout_is_detected_and_read_with_the_official_split(ifood):
    assert detect_layout(ifood) == "ifood2019"
    assert read_class_list(ifood / "class_list.txt") == {i: name for i, (name, _) in IFOOD_CLASSES.items()}
    data = load_labelled(ifood, val_fraction=0.5)  # the fraction splits class folders; iFood has its own split
    assert data.classes == NAMES  # class-id order: ids 37, 135, 183 become 0, 1, 2
    assert (len(data.train), len(data.val), data.missing) == (12, 6, [])
    assert {s.path.parent.name for s in data.train} == {"train_set"}
    assert {s.path.parent.name for s in data.val} == {"val_set"}
    rows = dict(line.split(",") for line in (ifood / "val_labels.csv").read_text().split()[1:])
    for sample in data.val:
        assert IFOOD_CLASSES[int(rows[sample.path.name])][0] == data.classes[sample.label]


def test_kaggle_nested_folders_and_headerless_info_lists_are_read(copy):
    """Kaggle's archive unpacks to train_set/train_set/; the organisers' annot.tar names the lists
    train_info.csv / val_info.csv, without a header."""
    nested = copy / "train_set" / "train_set"
    nested.mkdir()
    for image in (copy / "train_set").glob("*.jpg"):
        image.rename(nested / image.name)
    for split in ("train", "val"):
        lines = (copy / f"{split}_labels.csv").read_text().splitlines()[1:]
        (copy / f"{split}_labels.csv").unlink()
        (copy / f"{split}_info.csv").write_text("\n".join(lines) + "\n")
    data = load_labelled(copy)
    assert (len(data.train), len(data.val)) == (12, 6)
    assert all(s.path.parent == nested for s in data.train)


def test_train_runs_on_the_official_split_with_class_list_names(ifood, tmp_path):
    out = tmp_path / "ckpt"
    args = tiny_train_args(ifood, out, "--layout", "ifood2019", "--head-epochs", "1", "--epochs", "0")
    assert train_cli(args) == 0
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    assert state["classes"] == NAMES
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train"]["images"] == 12 and history[-1]["val"]["images"] == 6


@pytest.mark.parametrize(
    ("file", "edit", "line"),
    [
        ("class_list.txt", lambda t: t.replace("135 miso_soup", "135"), 2),
        ("class_list.txt", lambda t: t.replace("37 sushi", "thirty-seven sushi"), 1),
        ("class_list.txt", lambda t: t.replace("183 pizza", "37 pizza"), 3),
        ("train_labels.csv", lambda t: t.replace("train_000001.jpg,37", "train_000001.jpg,sushi"), 3),
        ("train_labels.csv", lambda t: t.replace("train_000002.jpg,37", "train_000002.jpg,37,extra"), 4),
        ("val_labels.csv", lambda t: t.replace("val_000004.jpg,183", "val_000004.jpg,999"), 6),
        ("val_labels.csv", lambda t: t.replace("val_000003.jpg", "val_000002.jpg"), 5),
        ("val_labels.csv", lambda t: t.replace("val_000001.jpg", "../train_set/train_000001.jpg"), 3),
    ],
    ids=["no-name", "id-not-int", "id-twice", "label-not-int", "three-fields", "unknown-id", "twice", "a-path"],
)
def test_malformed_metadata_names_the_file_and_line(copy, tmp_path, capsys, file, edit, line):
    path = copy / file
    path.write_text(edit(path.read_text()))
    with pytest.raises(MetadataError) as exc:
        load_labelled(copy)
    assert (exc.value.path, exc.value.line) == (path, line)
    assert train_cli(tiny_train_args(copy, tmp_path / "ckpt")) == 2
    assert f"error: {path} line {line}: " in capsys.readouterr().err


@pytest.mark.parametrize("file", ["class_list.txt", "train_labels.csv", "val_labels.csv"])
def test_a_missing_metadata_file_is_named(copy, tmp_path, capsys, file):
    (copy / file).unlink()
    assert train_cli(tiny_train_args(copy, tmp_path / "ckpt", "--layout", "ifood2019")) == 2
    err = capsys.readouterr().err
    assert f"{copy / file} does not exist" in err


def test_cli_reports_bad_metadata_without_a_traceback(copy, tmp_path):
    path = copy / "train_labels.csv"
    path.write_text(path.read_text().replace("train_000003.jpg,37", "train_000003.jpg"))
    proc = run_module("training.train", *tiny_train_args(copy, tmp_path / "ckpt"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{path} line 5: expected 'img_name,label'" in proc.stderr and "Traceback" not in proc.stderr


def test_listed_images_that_are_missing_are_reported_and_skipped(copy, caplog):
    for name in ("train_set/train_000002.jpg", "train_set/train_000009.jpg", "val_set/val_000005.jpg"):
        (copy / name).unlink()
    data = load_labelled(copy)
    assert (len(data.train), len(data.val)) == (10, 5)
    assert sorted(p.name for p in data.missing) == ["train_000002.jpg", "train_000009.jpg", "val_000005.jpg"]
    assert f"2 images listed in {copy / 'train_labels.csv'} are missing" in caplog.text
    assert "e.g. train_set/train_000002.jpg, train_set/train_000009.jpg" in caplog.text
    assert (
        f"1 images listed in {copy / 'val_labels.csv'} are missing and skipped, e.g. val_set/val_000005.jpg"
        in caplog.text
    )
    for name in [p.name for p in (copy / "train_set").iterdir()]:
        (copy / "train_set" / name).unlink()
    with pytest.raises(ValueError, match="none of the training images"):
        load_labelled(copy)
