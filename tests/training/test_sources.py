"""One collection from several sources: iFood 2019 and Food-101 in their official layouts and a plain folder,
indexed together (keys prefixed by source, labels from each source's own metadata), searched through the
API, evaluated per source with an optional label map, and uploaded to a loopback S3 server."""

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lambda_fn.contract.manifest import label_from_metadata, read_keys
from lambda_fn.contract.shards import Shard
from ops.upload import cli as upload_cli
from ops.upload import upload
from tests.training.official_layouts import write_food101, write_ifood2019
from training.build_index import Source, Sources, get_args_parser, main, parse_source, scan_sources
from training.build_index import cli as build_cli
from training.data import MetadataError, load_labelled
from training.evaluate import get_args_parser as evaluate_args
from training.evaluate import main as evaluate_main
from training.evaluate import read_label_map, relevance
from training.sample_data import write_sample_set


@dataclass
class Mixed:
    ifood: Path
    food101: Path  # the folder a Food-101 download unpacks into: it holds food-101/
    mine: Path
    out: Path
    printed: str

    @property
    def specs(self) -> list[str]:
        return [f"ifood={self.ifood}", f"food101={self.food101}", f"mine={self.mine}"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, model_path) -> Mixed:
    root = tmp_path_factory.mktemp("mixed")
    ifood = write_ifood2019(root / "ifood2019")
    food101 = write_food101(root / "downloads")
    mine = root / "photos"
    write_sample_set(mine, per_class=2, width=80, height=64, classes=2, seed=3)
    (ifood / "train_set" / "train_000005.jpg").unlink()  # listed in train_labels.csv, not on disk
    out = root / "artifacts"
    argv = ["--source", f"ifood={ifood}", "--images", f"food101={food101}", "--source", f"mine={mine}"]
    argv += ["--model", str(model_path), "--out", str(out), "--workers", "0", "--n-trees", "4", "--save-embeddings"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(get_args_parser().parse_args(argv)) == 0
    return Mixed(ifood, food101, mine, out, printed.getvalue())


def test_keys_say_where_each_image_came_from_with_its_own_label(mixed):
    entries = read_keys(mixed.out / "keys.json")
    keys = [e.key for e in entries]
    assert keys == sorted(keys) and len(keys) == 17 + 12 + 4
    assert all(e.key.startswith(f"{e.source}/") for e in entries)
    by_key = {e.key: e for e in entries}
    # iFood labels are class_list.txt names of the CSV's class ids, not folder names
    assert by_key["ifood/train_set/train_000000.jpg"].label == "sushi"
    assert by_key["ifood/train_set/train_000004.jpg"].label == "miso_soup"
    assert by_key["ifood/val_set/val_000005.jpg"].label == "pizza"
    assert "ifood/train_set/train_000005.jpg" not in by_key
    # Food-101 keys are relative to the folder holding meta/, labels from meta/*.json
    assert by_key["food101/images/steak/100037.jpg"].label == "steak"
    assert by_key["mine/salad/salad_0001.jpg"].label == "salad"
    assert {json.dumps(row["source"]) for row in json.loads((mixed.out / "keys.json").read_text())} == {
        '"ifood"',
        '"food101"',
        '"mine"',
    }
    assert "sources: ifood 17 images, food101 12 images, mine 4 images" in mixed.printed
    assert "1 images listed in the metadata are not on disk" in mixed.printed
    assert "train_000005.jpg" in mixed.printed


def test_collection_shard_carries_the_keys_labels_and_vectors(mixed):
    shard = Shard.from_bytes((mixed.out / "collection.npz").read_bytes())
    entries = read_keys(mixed.out / "keys.json")
    assert [(a.key, a.label) for a in shard.added] == [(e.key, e.label) for e in entries]
    assert np.allclose(shard.vectors, np.load(mixed.out / "embeddings.npy"))
    assert all(len(a.etag) == 32 for a in shard.added)  # each file's MD5: its S3 ETag once uploaded


def test_search_results_name_their_source(mixed, make_client, tmp_path):
    client = make_client(artifacts_uri=str(mixed.out), images_uri=str(tmp_path))
    data = (mixed.ifood / "val_set" / "val_000002.jpg").read_bytes()
    r = client.post("/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "33"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    top = results[0]
    assert (top["key"], top["label"], top["source"]) == ("ifood/val_set/val_000002.jpg", "miso_soup", "ifood")
    assert {m["source"] for m in results} == {"ifood", "food101", "mine"}
    assert all(m["key"].startswith(m["source"] + "/") for m in results)


def test_a_one_folder_collection_is_unchanged(artifacts_dir, sample_dir):
    rows = json.loads((artifacts_dir / "keys.json").read_text())
    assert all(set(row) == {"key", "label", "phash"} for row in rows)  # no source field, as before sources
    assert all(e.source is None for e in read_keys(artifacts_dir / "keys.json"))
    sources = Sources.parse([sample_dir])
    assert sources.path(rows[0]["key"]) == sample_dir / rows[0]["key"]


def test_source_specs():
    assert parse_source("/data/x") == Source(None, Path("/data/x"))
    assert parse_source("ifood=/data/ifood2019") == Source("ifood", Path("/data/ifood2019"))
    assert parse_source("./a=b") == Source(None, Path("./a=b"))  # a folder whose name has '='
    with pytest.raises(ValueError, match="expected NAME=DIR"):
        parse_source("/data/x", named=True)
    with pytest.raises(ValueError, match="name every source"):
        Sources.parse(["/data/a", "b=/data/b"])
    with pytest.raises(ValueError, match="must differ"):
        Sources.parse(["a=/data/a"], ["a=/data/b"])
    sources = Sources.parse(["a=/data/a"], ["b=/data/b"])
    assert sources.path("b/x/y.jpg") == Path("/data/b/x/y.jpg")
    with pytest.raises(ValueError, match="source 'c'"):
        sources.path("c/y.jpg")


def test_cli_refuses_unnamed_sources(model_path, tmp_path, capsys):
    argv = ["--images", str(tmp_path), "--images", str(tmp_path), "--model", str(model_path), "--out", str(tmp_path)]
    assert build_cli(argv) == 2
    assert "name every source" in capsys.readouterr().err


def test_food101_root_or_the_folder_holding_it_give_the_same_keys(mixed):
    a = scan_sources(Sources.parse([f"food101={mixed.food101}"]))
    b = scan_sources(Sources.parse([f"food101={mixed.food101 / 'food-101'}"]))
    assert a.entries == b.entries and a.paths == b.paths
    assert load_labelled(mixed.food101 / "food-101").classes == ["pizza", "steak", "sushi"]


def test_food101_metadata_errors_name_the_file_and_line(mixed, tmp_path):
    import shutil

    root = Path(shutil.copytree(mixed.food101, tmp_path / "f"))
    test_json = root / "food-101" / "meta" / "test.json"
    test_json.write_text('{\n  "pizza": ["pizza/100111"],\n  "steak": ["steak/100111"],\n}\n')
    with pytest.raises(MetadataError, match=r"test.json line 4: not valid JSON"):
        load_labelled(root)
    test_json.write_text('{\n  "pizza": ["pizza/100111"],\n  "ramen": ["ramen/1"]\n}\n')
    with pytest.raises(MetadataError, match=r"test.json line 3: class 'ramen' is not in meta/classes.txt"):
        load_labelled(root)


def test_relevance_counts_mapped_labels_of_other_sources_only():
    index = [("a", "cake"), ("a", "tart"), ("b", "gateau"), ("b", "pie"), ("a", "cake")]
    neighbours = np.array([[1, 2, 3, 4]])
    relevant, n = relevance(index, [("a", "cake")], neighbours, [0])
    assert relevant.tolist() == [[False, False, False, True]] and n.tolist() == [1]  # itself left out
    label_map = {(("a", "cake"), ("b", "gateau")), (("b", "gateau"), ("a", "cake"))}
    label_map |= {(("a", "tart"), ("b", "gateau")), (("b", "gateau"), ("a", "tart"))}
    relevant, n = relevance(index, [("a", "cake")], neighbours, [0], label_map)
    # gateau now counts; tart does not (pairs do not chain through gateau)
    assert relevant.tolist() == [[False, True, False, True]] and n.tolist() == [2]


def test_label_map_format_errors_name_the_line(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("source_a,label_a,source_b,label_b\nifood,pizza,food101,pizza\n\nifood,sushi,food101\n")
    with pytest.raises(MetadataError, match=r"map.csv line 4: expected 4 non-empty fields"):
        read_label_map(path)
    path.write_text("ifood,pizza,food101,pizza\n")
    with pytest.raises(MetadataError, match=r"map.csv line 1: expected the header"):
        read_label_map(path)
    path.write_text("source_a,label_a,source_b,label_b\r\nifood,pizza,food101,pizza\r\n")
    assert read_label_map(path) == {
        (("ifood", "pizza"), ("food101", "pizza")),
        (("food101", "pizza"), ("ifood", "pizza")),
    }


def test_evaluate_reports_each_source_and_the_sheet_names_them(mixed, tmp_path, monkeypatch):
    from PIL import ImageDraw

    drawn = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "text",
        lambda self, xy, text, *a, **kw: (drawn.append(text), real_text(self, xy, text, *a, **kw))[1],
    )
    label_map = tmp_path / "map.csv"
    label_map.write_text("source_a,label_a,source_b,label_b\nifood,pizza,food101,pizza\nifood,sushi,food101,sushi\n")
    reports = {}
    for name, extra in (("plain", []), ("mapped", ["--label-map", str(label_map)])):
        out = tmp_path / f"{name}.json"
        argv = ["--artifacts", str(mixed.out), "--search-k", "100000", "--out", str(out)]
        argv += ["--sheet", str(tmp_path / f"{name}.png"), "--sheet-rows", "6", *extra]
        for spec in mixed.specs:
            argv += ["--source", spec]
        assert evaluate_main(evaluate_args().parse_args(argv)) == 0
        reports[name] = json.loads(out.read_text())
    plain, mapped = reports["plain"], reports["mapped"]
    assert plain["queries"] == 33
    assert {s: r["queries"] for s, r in plain["retrieval_by_source"].items()} == {"food101": 12, "ifood": 17, "mine": 4}
    assert plain["label_map"] is None and mapped["label_map"]["pairs"] == 2
    for source in ("food101", "ifood"):  # mapped labels only add relevant neighbours
        for k in (1, 5, 10):
            assert (
                mapped["retrieval_by_source"][source][f"precision@{k}"]
                >= plain["retrieval_by_source"][source][f"precision@{k}"]
            )
    assert mapped["retrieval_by_source"]["mine"] == plain["retrieval_by_source"]["mine"]  # not in the map
    assert {"ifood", "food101", "mine"} <= set(drawn)


def test_evaluate_refuses_a_malformed_label_map(mixed, tmp_path, capsys):
    from training.evaluate import cli

    label_map = tmp_path / "map.csv"
    label_map.write_text("source_a,label_a,source_b,label_b\nifood,pizza\n")
    assert cli(["--artifacts", str(mixed.out), "--label-map", str(label_map)]) == 2
    assert f"error: {label_map} line 2: expected 4 non-empty fields" in capsys.readouterr().err


def test_upload_puts_each_image_from_its_source_under_images(mixed, s3, bucket, s3_endpoint, capsys):
    keys = [e.key for e in read_keys(mixed.out / "keys.json")]
    report = upload(mixed.out, Sources.parse(mixed.specs), bucket, "mixed", client=s3, workers=4)
    assert report.uploaded_images == len(keys) == 33
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="mixed/images/")["Contents"]}
    assert listed == {f"mixed/images/{k}" for k in keys}
    for key, path in [
        ("ifood/val_set/val_000001.jpg", mixed.ifood / "val_set" / "val_000001.jpg"),
        ("food101/images/sushi/100074.jpg", mixed.food101 / "food-101" / "images" / "sushi" / "100074.jpg"),
        ("mine/pizza/pizza_0001.jpg", mixed.mine / "pizza" / "pizza_0001.jpg"),
    ]:
        obj = s3.get_object(Bucket=bucket, Key=f"mixed/images/{key}")
        assert obj["Body"].read() == path.read_bytes() and obj["ContentType"] == "image/jpeg"
    # each image carries its label, which its key does not say for iFood (a CSV) or under a source prefix
    labels = {e.key: e.label for e in read_keys(mixed.out / "keys.json")}
    for key in ("ifood/val_set/val_000001.jpg", "food101/images/sushi/100074.jpg", "mine/pizza/pizza_0001.jpg"):
        head = s3.head_object(Bucket=bucket, Key=f"mixed/images/{key}")
        assert label_from_metadata(head["Metadata"]) == labels[key] != key.split("/")[0]
    argv = ["--artifacts", str(mixed.out), "--bucket", bucket, "--prefix", "mixed", "--endpoint-url", s3_endpoint]
    assert upload_cli(argv + [arg for spec in mixed.specs for arg in ("--source", spec)]) == 0
    assert "uploaded 0 images (33 already there)" in capsys.readouterr().out
    assert upload_cli([*argv, "--source", f"ifood={mixed.ifood}", "--source", f"food101={mixed.food101}"]) == 2
    assert "comes from source 'mine': pass its folder as mine=DIR" in capsys.readouterr().err
