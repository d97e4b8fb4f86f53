import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lambda_fn.vision.imaging import ImageError, open_image
from tests.helpers import SAMPLE_CLASSES
from training.data import (
    ImageDataset,
    collate,
    eval_transform,
    is_food101_root,
    load_labelled,
    split_samples,
    train_transform,
)
from training.sample_data import DISHES, ORIENTATION_TAG, write_sample_set


def test_sample_set_is_seeded_labelled_and_varied(tmp_path):
    a = write_sample_set(tmp_path / "a", per_class=10, width=96, height=80, classes=3, seed=7)
    b = write_sample_set(tmp_path / "b", per_class=10, width=96, height=80, classes=3, seed=7)
    assert len(a) == 30
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert sorted(d.name for d in (tmp_path / "a").iterdir() if d.is_dir()) == sorted(list(DISHES)[:3])
    assert "SYNTHETIC" in (tmp_path / "a" / "README.txt").read_text()
    modes, rotated, pngs = set(), 0, 0
    for p in a:
        with Image.open(p) as im:
            modes.add(im.mode)
            rotated += im.getexif().get(ORIENTATION_TAG, 1) != 1
            pngs += im.format == "PNG"
    assert {"RGB", "L"} <= modes and rotated >= 3 and pngs >= 3


def test_split_is_stratified_and_reproducible(sample_dir):
    data = load_labelled(sample_dir, val_fraction=0.2, seed=1)
    again = load_labelled(sample_dir, val_fraction=0.2, seed=1)
    assert data.val == again.val and data.train == again.train
    assert len(data.classes) == SAMPLE_CLASSES
    assert {s.label for s in data.val} == set(range(SAMPLE_CLASSES))  # every class is validated
    assert not {s.path for s in data.val} & {s.path for s in data.train}
    other = split_samples(data.train + data.val, 0.2, seed=2)[1]
    assert other != data.val


def _odd_images(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    arr16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(arr16).save(root / "grey16.png")
    Image.new("CMYK", (50, 40), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    pal = Image.new("P", (40, 40), 1)
    pal.paste(0, (0, 0, 40, 20))  # top half: palette entry 0, which is transparent
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    Image.new("RGBA", (30, 60), (10, 200, 10, 128)).save(root / "rgba.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "notes.jpg").write_text("a text file named .jpg")
    for name in ("grey16.png", "cmyk.jpg", "palette.png", "rgba.png", "corrupt.jpg", "notes.jpg"):
        paths.append(root / name)
    return paths


def test_loader_survives_corrupt_files_and_odd_modes(tmp_path, caplog):
    from training.data import Sample

    paths = _odd_images(tmp_path / "odd")
    ds = ImageDataset([Sample(p, 0) for p in paths], eval_transform(40, 32))
    batch = collate([ds[i] for i in range(len(ds))])
    images, _, good, skipped = batch
    assert images.shape == (4, 32, 32, 3) and images.dtype.is_floating_point is False
    assert sorted(Path(p).name for p in skipped) == ["corrupt.jpg", "notes.jpg"]
    assert "corrupt.jpg" in caplog.text  # the warning names the file
    # 16-bit grey is scaled to 8 bits, not clipped to white
    grey = images[[Path(p).name for p in good].index("grey16.png")].numpy()
    assert 0 < grey.mean() < 250
    # the transparent palette pixels become white (not black), the opaque ones stay red
    pal = images[[Path(p).name for p in good].index("palette.png")].numpy().astype(int)
    assert (pal[2, 16] == [255, 255, 255]).all()
    assert (pal[30, 16] == [255, 0, 0]).all()


def test_train_transform_gives_crops_of_the_model_size(sample_dir):
    path = next(sample_dir.glob("pizza/*.jpg"))
    with open_image(path) as img:
        out = train_transform(48)(img)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def _fake_food101(root: Path, classes=("apple_pie", "ramen"), per_class=3) -> Path:
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    train, test = {}, {}
    for c in classes:
        (base / "images" / c).mkdir(parents=True)
        ids = [f"{c}/{i}" for i in range(per_class)]
        for i, image_id in enumerate(ids):
            buf = io.BytesIO()
            Image.new("RGB", (64, 48), (40 * i, 100, 200)).save(buf, "JPEG")
            (base / "images" / f"{image_id}.jpg").write_bytes(buf.getvalue())
        train[c], test[c] = ids[:-1], ids[-1:]
    (base / "meta" / "train.json").write_text(json.dumps(train))
    (base / "meta" / "test.json").write_text(json.dumps(test))
    return root


def test_food101_layout_is_read_through_torchvision(tmp_path):
    root = _fake_food101(tmp_path)
    assert is_food101_root(root)
    data = load_labelled(root)
    assert data.classes == ["apple_pie", "ramen"]
    assert len(data.train) == 4 and len(data.val) == 2
    assert all(s.path.is_file() for s in data.train + data.val)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_labelled(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        load_labelled(tmp_path / "empty")


def test_open_image_refuses_text(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("hello")
    with pytest.raises(ImageError):
        open_image(p)
