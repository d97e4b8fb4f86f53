"""Decoding is bounded by work and memory, not only by bytes and pixels.

The costliest images the caps admit are measured by ``python -m bench.request_memory`` (decode time and peak
memory growth per request); these tests pin the behaviour that keeps those numbers down."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lambda_fn.vision import imaging
from lambda_fn.vision.imaging import (
    MAX_BUFFERED_JPEG_SAMPLES,
    MAX_JPEG_SCANS,
    ImageError,
    ImageTooComplex,
    ImageTooLarge,
    UnsupportedImage,
    jpeg_buffered_samples,
    jpeg_scan_count,
    load_for_model,
    open_image,
    orient,
    prepare,
)
from support.hostile_images import flat_jpeg, rle_bmp
from tests.helpers import assert_json_error


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _photo(size=(320, 240), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8))


def many_scans(scans: int) -> bytes:
    """A progressive JPEG (libjpeg writes 10 scans) whose smallest scan is repeated until it holds ``scans``:
    a few kB per hundred scans, each a full decoding pass for libjpeg."""
    data = _jpeg(_photo(), progressive=True, quality=80)
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    ends = [*starts[1:], data.rfind(b"\xff\xd9")]
    smallest = min(zip(starts, ends, strict=True), key=lambda se: se[1] - se[0])
    segment = data[smallest[0] : smallest[1]]
    end = data.rfind(b"\xff\xd9")
    return data[:end] + segment * (scans - len(starts)) + data[end:]


def test_encoders_scan_counts_pass_and_hand_made_hundreds_are_refused():
    assert jpeg_scan_count(_jpeg(_photo())) == 1
    progressive = _jpeg(_photo(), progressive=True)
    assert jpeg_scan_count(progressive) == 10  # libjpeg's default progression for colour
    assert load_for_model(progressive, 72, 64).shape == (64, 64, 3)
    crafted = many_scans(2000)
    assert len(crafted) < 1_000_000  # far under the upload cap
    assert jpeg_scan_count(crafted) == MAX_JPEG_SCANS + 1  # counting stops once over the limit
    with pytest.raises(ImageTooComplex, match="baseline JPEG"):
        open_image(crafted)
    assert load_for_model(many_scans(MAX_JPEG_SCANS), 72, 64).shape == (64, 64, 3)


def test_scan_markers_inside_other_segments_are_not_counted():
    """An EXIF thumbnail (or any APPn payload) may hold SOS bytes of its own: segments are skipped whole."""
    data = _jpeg(_photo(), progressive=True)
    payload = b"Exif\x00\x00" + b"\xff\xda\x00\x02" * 500
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    with_app1 = data[:2] + app1 + data[2:]
    assert jpeg_scan_count(with_app1) == 10
    assert open_image(with_app1).size == (320, 240)


def test_a_crafted_jpeg_gets_413_quickly_through_the_api(client):
    r = client.post("/search", content=many_scans(5000), headers={"Content-Type": "image/jpeg"})
    error = assert_json_error(r, 413, "too_large")
    assert "progressive scans" in error["message"]


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("TIFF", "TIFF"), ("PSD", "PSD"), ("EPS", "PostScript")])
def test_only_allowlisted_formats_are_parsed(fmt, name):
    if fmt == "PSD":  # Pillow cannot write PSD: its signature is enough
        data = b"8BPS\x00\x01" + b"\x00" * 40
    elif fmt == "EPS":
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    else:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, fmt)
        data = buf.getvalue()
    with pytest.raises(UnsupportedImage, match=name):
        open_image(data)


def test_webp_has_a_lower_pixel_cap():
    buf = io.BytesIO()
    Image.new("RGB", (4100, 4000), (200, 100, 50)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    with pytest.raises(ImageTooLarge, match="16,000,000"):
        open_image(buf.getvalue(), max_pixels=64_000_000)


def test_orientation_one_makes_no_copy_and_rotation_equals_rotating_first():
    img = _photo()
    assert orient(img) is img  # a 64-MP RGBA copy would be 256 MB
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)  # PNG: no reduced-scale decoding, so both paths see the same pixels
    rotated = Image.open(io.BytesIO(buf.getvalue()))
    plain = img.transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(prepare(rotated, 72, 64), prepare(plain, 72, 64))


def test_deep_grey_conversion_in_bands_matches_the_whole_image_formula(monkeypatch):
    monkeypatch.setattr(imaging, "_ROWS_PER_BAND", 7)
    values = np.random.default_rng(1).integers(0, 65536, (50, 40)).astype(np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    expected = np.clip(values.astype(np.float64) / 65535.0 * 255.0, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(imaging._deep_grey_to_l(img)), expected)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "I;16"])
def test_shrinking_in_bands_equals_one_whole_reduce(monkeypatch, mode):
    monkeypatch.setattr(imaging, "_SHRINK_ABOVE_PIXELS", 1000)
    monkeypatch.setattr(imaging, "_BAND_PIXELS", 5000)
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (997, 1203, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        img = base.convert("RGB").quantize(32)
        img.info["transparency"] = 0
        whole = img.convert("RGBA").reduce(4)
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (997, 1203)).astype(np.uint16))
        whole = imaging._deep_grey_to_l(img).reduce(4)
    else:
        img = base.convert(mode)
        whole = img.reduce(4)
    shrunk = imaging._shrink(img, 100)
    assert shrunk.size == whole.size == (301, 250)
    assert np.array_equal(np.asarray(shrunk), np.asarray(whole))


def test_a_shrunk_large_image_embeds_like_the_full_resize(monkeypatch):
    """Above the threshold, box-reducing first (as JPEG's draft does) stays within a grey level or two."""
    img = Image.fromarray(np.asarray(_photo((1600, 1200), seed=3)))
    full = prepare(img.copy(), 72, 64)
    monkeypatch.setattr(imaging, "_SHRINK_ABOVE_PIXELS", 1000)
    shrunk = prepare(img.copy(), 72, 64)
    assert np.abs(full.astype(int) - shrunk.astype(int)).mean() < 2.0


@pytest.mark.parametrize("bits", [8, 4])
def test_rle_bmp_is_refused_before_decoding(bits):
    # Pillow decodes RLE BMPs in Python, a pixel at a time: 33 kB at 8000x8000 took 7.5 s (docs/benchmarks.md).
    data = rle_bmp(8000, bits)
    assert len(data) < 40_000
    with pytest.raises(UnsupportedImage, match=f"RLE{bits}-compressed BMP"):
        open_image(data, max_pixels=64_000_000)


@pytest.mark.parametrize("mode", ["1", "P", "RGB"])
def test_uncompressed_bmp_still_decodes(mode):
    buf = io.BytesIO()
    _photo((90, 70)).convert(mode).save(buf, "BMP")
    assert load_for_model(buf.getvalue(), 72, 64).shape == (64, 64, 3)


def test_rle_bmp_gets_415_through_the_api(client):
    r = client.post("/search", content=rle_bmp(8000), headers={"Content-Type": "image/bmp"})
    assert "PNG or JPEG" in assert_json_error(r, 415, "unsupported_type")["message"]


@pytest.mark.parametrize(
    ("size", "layout", "expected"),
    [
        # (width, height), flat_jpeg arguments, samples libjpeg buffers (whole blocks, whole MCUs per component)
        ((8000, 8000), {}, 3 * 64_000_000),
        ((8000, 8000), {"sampling": (2, 2)}, 96_000_000),  # 4:2:0: the chroma planes at a quarter
        ((8000, 8000), {"components": 4}, 4 * 64_000_000),
        ((8000, 8000), {"components": 1}, 64_000_000),
        ((101, 77), {"sampling": (2, 2)}, (14 * 10 + 2 * 7 * 5) * 64),  # luma rounded up to MCUs of 2x2 blocks
        ((101, 77), {"sampling": (2, 1)}, (14 * 10 + 2 * 7 * 10) * 64),
    ],
)
def test_buffered_samples_follow_the_components_and_their_sampling(size, layout, expected):
    with Image.open(io.BytesIO(flat_jpeg(*size, progressive=True, **layout))) as img:
        assert jpeg_buffered_samples(img) == expected


def test_buffered_samples_of_an_encoders_file():
    with Image.open(io.BytesIO(_jpeg(_photo((333, 201)), progressive=True, subsampling=2))) as img:
        assert img.layer[0][1:3] == (2, 2)
        assert jpeg_buffered_samples(img) == (42 * 26 + 2 * 21 * 13) * 64


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("progressive 4:4:4, 64 MP", flat_jpeg(8000, 8000, progressive=True)),
        ("progressive CMYK, 36 MP", flat_jpeg(6000, 6000, components=4, progressive=True)),
        ("progressive 4:4:4, 45 MP", flat_jpeg(6696, 6696, progressive=True)),
        ("sequential, a scan per component, 64 MP", flat_jpeg(8000, 8000, interleaved=False)),
        ("sequential CMYK, a scan per component, 36 MP", flat_jpeg(6000, 6000, components=4, interleaved=False)),
    ],
)
def test_jpegs_that_keep_every_coefficient_are_capped_by_samples(name, data):
    # Each of these decoded at +370 to +490 MiB before the cap (docs/benchmarks.md, "Request memory").
    assert len(data) < 1_500_000
    with pytest.raises(ImageTooComplex, match="samples"):
        open_image(data, max_pixels=64_000_000)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("progressive 4:2:0 (what encoders write), 64 MP", flat_jpeg(8000, 8000, sampling=(2, 2), progressive=True)),
        ("progressive grey, 64 MP", flat_jpeg(8000, 8000, components=1, progressive=True)),
        ("progressive 4:4:4 just under the cap", flat_jpeg(6688, 6688, progressive=True)),
        ("baseline 4:4:4, 64 MP: decoded a row of blocks at a time", flat_jpeg(8000, 8000)),
        ("baseline CMYK, 64 MP", flat_jpeg(8000, 8000, components=4)),
    ],
)
def test_jpegs_under_the_sample_cap_or_decoded_in_rows_keep_the_pixel_limit(name, data):
    with open_image(data, max_pixels=64_000_000) as img:
        assert img.width * img.height <= 64_000_000
    assert 6688 * 6688 * 3 <= MAX_BUFFERED_JPEG_SAMPLES < 6696 * 6696 * 3


def test_small_progressive_and_multi_scan_jpegs_decode():
    for data in (
        flat_jpeg(120, 90, progressive=True),
        flat_jpeg(120, 90, interleaved=False),
        flat_jpeg(120, 90, components=4, interleaved=False),
    ):
        assert load_for_model(data, 72, 64).shape == (64, 64, 3)


def test_a_multi_scan_jpeg_gets_413_through_the_api(client):
    r = client.post("/search", content=flat_jpeg(8000, 8000, interleaved=False), headers={"Content-Type": "image/jpeg"})
    message = assert_json_error(r, 413, "too_large")["message"]
    assert "multi-scan JPEG is 8000x8000 with 3 components" in message and "baseline" in message


@pytest.mark.parametrize(
    "frame",
    [
        "ffc20011080030004003011100020000031100",  # a sampling factor of 0
        "ffc20008080030244003011100021700031100",  # a frame header too short to list its components
    ],
)
def test_a_corrupt_frame_header_is_not_an_image_not_a_crash(frame):
    # Regression (found by mutating the frame header): the sample count divided by zero, or took max() of nothing.
    data = flat_jpeg(64, 48, progressive=True)
    at = data.index(b"\xff\xc2")
    corrupt = data[:at] + bytes.fromhex(frame) + data[at + len(frame) // 2 :]
    with pytest.raises(ImageError):
        load_for_model(corrupt, 72, 64, max_pixels=64_000_000)
