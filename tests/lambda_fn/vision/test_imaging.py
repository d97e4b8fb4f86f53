import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from lambda_fn.vision.imaging import (
    ImageError,
    ImageTooLarge,
    UnsupportedImage,
    load_for_model,
    open_image,
    prepare,
    resized_size,
)
from tests.helpers import png_bomb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90, np.float32)], axis=2
    )
    return Image.fromarray(arr.astype(np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (257, 256), (640, 480)])
def test_prepare_matches_torchvision_resize_and_center_crop(size):
    img = _gradient(*size)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    expected = reference(img).permute(1, 2, 0).numpy()
    ours = prepare(Image.open(io.BytesIO(_encode(img, "PNG"))), 256, 224)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, expected)


def test_resized_size_keeps_aspect_like_torchvision():
    assert resized_size(4000, 3000, 256) == (341, 256)
    assert resized_size(3000, 4000, 256) == (256, 341)


def test_large_jpeg_is_decoded_at_reduced_size_and_stays_close():
    img = _gradient(4000, 3000)
    data = _encode(img, "JPEG", quality=92)
    opened = open_image(data)
    fast = prepare(opened, 256, 224)
    assert max(opened.size) <= 1000  # draft mode decoded at 1/4 or 1/8 scale, not 12 MP
    full = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    slow = full(Image.open(io.BytesIO(data)).convert("RGB")).permute(1, 2, 0).numpy()
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    # A wide upright picture: left half red, right half blue. Store it so that applying `orientation`
    # gives the upright picture back.
    upright = Image.new("RGB", (200, 100), (255, 0, 0))
    upright.paste((0, 0, 255), (100, 0, 200, 100))
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright.transpose(inverse) if inverse is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_for_model(_encode(stored, "PNG", exif=exif), 64, 64)
    assert out.shape == (64, 64, 3)
    left, right = out[32, 5], out[32, 58]
    assert left[0] > 200 and left[2] < 50, f"orientation {orientation}: left should be red, got {left}"
    assert right[2] > 200 and right[0] < 50, f"orientation {orientation}: right should be blue, got {right}"


def test_pixel_bomb_is_refused_before_decoding():
    bomb = png_bomb(30000, 30000)
    assert len(bomb) < 10_000
    with pytest.raises(ImageTooLarge, match="limit"):
        open_image(bomb, max_pixels=50_000_000)
    with pytest.raises(ImageTooLarge):  # beyond Pillow's own bomb threshold too
        open_image(png_bomb(60000, 60000), max_pixels=None)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"%PDF-1.4 fake", UnsupportedImage),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", UnsupportedImage),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", UnsupportedImage),
        (b"hello world", ImageError),
        (b"", ImageError),
    ],
)
def test_non_images_are_classified(data, error):
    with pytest.raises(error):
        open_image(data)


def test_truncated_jpeg_is_an_image_error():
    data = _encode(_gradient(300, 200), "JPEG")
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        load_for_model(data[: len(data) // 2], 64, 64)


def test_model_input_is_uint8_hwc_for_the_exported_model():
    out = load_for_model(_encode(_gradient(100, 80), "WEBP"), 72, 64)
    batch = torch.from_numpy(out[None])
    assert batch.shape == (1, 64, 64, 3) and batch.dtype == torch.uint8
