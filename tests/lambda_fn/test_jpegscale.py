"""The threaded 1/8-scale JPEG decoder: byte for byte what Pillow's draft decode gives, or it declines."""

import io
import random
import subprocess

import numpy as np
import pytest
from PIL import Image

from lambda_fn import jpegscale
from lambda_fn.imaging import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE, ImageError, load_for_model, prepare

# Pillow's `subsampling` values
SUBSAMPLING_444, SUBSAMPLING_422, SUBSAMPLING_420 = 0, 1, 2
# Odd sizes: MCUs cut by the right and bottom edges.
NOISE_SIZE = (1203, 997)
ORIENTATION_TAG = 0x0112


def _encode(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    """Per-pixel noise over a smooth picture: large entropy-coded data, so every thread gets a part."""
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(smooth).astype(np.int16) + rng.integers(-40, 41, (size[1], size[0], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert(mode)


def _pillow_eighth(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    img.draft("RGB", (width // 8, height // 8))
    assert img.size == (-(-width // 8), -(-height // 8))  # Pillow chose the 1/8 scale
    img.load()
    return np.asarray(img)


def test_the_library_is_built():
    assert jpegscale.available(), f"{jpegscale.LIBRARY} is missing: `make install` builds it from {jpegscale.SOURCE}"


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("mode", "subsampling"), [("RGB", SUBSAMPLING_420), ("RGB", SUBSAMPLING_444), ("L", SUBSAMPLING_420)]
)
def test_equals_pillows_draft_decode_byte_for_byte(mode, subsampling, threads):
    data = _encode(_noise(NOISE_SIZE, seed=threads, mode=mode), quality=90, subsampling=subsampling)
    stats = {}
    got = jpegscale.decode(data, threads, stats)
    assert got is not None
    expected = _pillow_eighth(data)
    assert got.size == (-(-NOISE_SIZE[0] // 8), -(-NOISE_SIZE[1] // 8)) == expected.shape[1::-1]
    np.testing.assert_array_equal(np.asarray(got), expected)
    # Every thread's part met the previous one's decoding: the output is stitched from all of them.
    assert stats["parts"] == threads


def test_data_after_the_last_block_is_not_decoded():
    # Decodable bytes between the frame's last block and the end marker: ignored, as libjpeg ignores them.
    base = _encode(_noise((640, 480), seed=9), quality=90)
    data = base[:-2] + bytes(200_000) + b"\xff\xd9"
    np.testing.assert_array_equal(np.asarray(jpegscale.decode(data, 1)), _pillow_eighth(data))


def test_accepts_any_bytes_like_object():
    data = _encode(_noise((640, 480), seed=9), quality=90)
    expected = np.asarray(jpegscale.decode(data, 2))
    for view in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(np.asarray(jpegscale.decode(view, 2)), expected)


def test_small_scans_use_fewer_threads():
    data = _encode(_noise((160, 120), seed=1), quality=50)
    stats = {}
    assert jpegscale.decode(data, 4, stats) is not None
    assert stats["parts"] == 1


@pytest.mark.parametrize(
    "why",
    ["progressive", "4:2:2", "restart markers", "CMYK", "PNG", "truncated", "cut short", "extra scan", "not an image"],
)
def test_declines_what_it_does_not_handle_and_pillow_still_decodes_the_valid_ones(why):
    img = _noise((640, 480), seed=7)
    data = {
        "progressive": lambda: _encode(img, progressive=True),
        "4:2:2": lambda: _encode(img, subsampling=SUBSAMPLING_422),
        "restart markers": lambda: _encode(img, restart_marker_blocks=8),
        "CMYK": lambda: _encode(img.convert("CMYK")),
        "PNG": lambda: (lambda b: (img.save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
        "truncated": lambda: _encode(img)[:-5000],
        # the end-of-image marker right after a cut: the last blocks would read past the data
        "cut short": lambda: _encode(img)[:-5000] + b"\xff\xd9",
        "extra scan": lambda: _encode(img)[:-2] + b"\xff\xda\x00\x02",
        "not an image": lambda: b"\xff\xd8\xff\xe0 not really",
    }[why]()
    assert jpegscale.decode(data, 2) is None
    if why in ("progressive", "4:2:2", "restart markers", "CMYK"):
        assert _pillow_eighth(data).shape[:2] == (60, 80)


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _grey_8x8(
    dc_table: bytes,
    scan: bytes,
    sof: bytes = b"\x08\x00\x08\x00\x08\x01\x01\x11\x00",
    ac_table: bytes = b"\x01" + bytes(15) + b"\x00",
) -> bytes:
    """A grey JPEG (8x8 unless ``sof`` says otherwise) with the given Huffman tables (16 counts, then the
    symbols) and scan bytes; every quantisation value 1. By default the one AC code means end of block."""
    return (
        b"\xff\xd8"
        + _segment(0xDB, b"\x00" + bytes([1] * 64))
        + _segment(0xC0, sof)
        + _segment(0xC4, b"\x00" + dc_table)
        + _segment(0xC4, b"\x10" + ac_table)
        + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + scan
        + b"\xff\xd9"
    )


def test_the_longest_read_past_the_data_is_declined():
    """An 8x8 grey JPEG whose only Huffman codes are 16 bits of zeros with 15 extra bits: the one block,
    starting in the scan's single byte, reads 64 x 31 bits of the zero padding (the most a block can; the
    C code pads for it, which an AddressSanitizer build checks) and is declined as running past the data."""
    only_code_16_bits = bytes(15) + b"\x01" + b"\x0f"
    data = _grey_8x8(only_code_16_bits, b"\x00", ac_table=only_code_16_bits)
    assert jpegscale._parse(data)["width"] == 8
    assert jpegscale.decode(data, 1) is None


def test_an_over_full_huffman_table_is_declined_before_any_table_entry_is_written():
    """255 one-bit codes: the table builder once wrote far past its lookup table (a heap overflow a
    395-byte upload could trigger; Pillow opens the file, so it reached the decoder)."""
    data = _grey_8x8(bytes([255]) + bytes(15) + bytes(255), b"\x00", sof=b"\x08\x10\x00\x10\x00\x01\x01\x11\x00")
    assert jpegscale.decode(data, 2) is None
    with pytest.raises(ImageError):
        load_for_model(data, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE)


def test_a_huffman_table_using_the_all_ones_code_is_declined_as_libjpeg_refuses_it():
    data = _grey_8x8(bytes([2]) + bytes(15) + b"\x00\x01", b"\x3f")
    assert jpegscale.decode(data, 1) is None


@pytest.mark.parametrize(
    "change",
    ["fill byte before a stuffed zero", "short JFIF with R, G, B ids", "JPG marker", "grey sampling 0"],
)
def test_what_libjpeg_reads_differently_or_refuses_is_declined(change):
    base = _encode(_noise((160, 128), seed=5), quality=90, subsampling=SUBSAMPLING_444)
    offset = jpegscale._parse(base)["offset"]
    stuffed = base.index(b"\xff\x00", offset)
    sof = base.index(b"\xff\xc0")
    if change == "fill byte before a stuffed zero":  # libjpeg-turbo's fast path reads FF FF as a marker
        data = base[:stuffed] + b"\xff" + base[stuffed:]
    elif change == "short JFIF with R, G, B ids":  # libjpeg needs 14 bytes to call it JFIF, then ids mean RGB
        data = bytearray(base.replace(base[2 : 2 + 4 + 14], b"\xff\xe0\x00\x09JFIF\x00\x01\x01", 1))
        sof = bytes(data).index(b"\xff\xc0")
        sos = bytes(data).index(b"\xff\xda")
        data[sof + 10], data[sof + 13], data[sof + 16] = 82, 71, 66
        data[sos + 5], data[sos + 7], data[sos + 9] = 82, 71, 66
        data = bytes(data)
    elif change == "JPG marker":  # libjpeg stops at segments it does not know; only APPn and COM are skipped
        data = base[:2] + _segment(0xC8, b"xx") + base[2:]
    else:
        grey = _encode(_noise((160, 128), seed=5, mode="L"), quality=90)
        sof = grey.index(b"\xff\xc0")
        data = grey[: sof + 11] + b"\x00" + grey[sof + 12 :]
    assert jpegscale.decode(base, 1) is not None  # the unchanged file is one it decodes
    assert jpegscale.decode(data, 1) is None


@pytest.mark.parametrize("width", [65500, 65501])
def test_frames_wider_than_libjpegs_limit_are_declined(width):
    # Grey, 8 rows; every block is a zero DC difference and an end of block, one bit each.
    sof = b"\x08\x00\x08" + width.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    data = _grey_8x8(b"\x01" + bytes(15) + b"\x00", bytes(-(-width // 8) * 2 // 8 + 1), sof=sof)
    got = jpegscale.decode(data, 1)
    if width <= 65500:
        np.testing.assert_array_equal(np.asarray(got), _pillow_eighth(data))
    else:
        assert got is None


def test_mutated_files_decode_exactly_as_pillow_does_or_are_declined():
    """Random byte changes in the headers and the scan: the C decoder never crashes, never accepts what
    Pillow rejects, and whatever it returns is Pillow's output; every doubtful case is left to Pillow."""
    base = _encode(_noise((640, 512), seed=3), quality=85)
    scan_start = jpegscale._parse(base)["offset"]
    rng = random.Random(0)
    outcomes = {"declined": 0, "equal": 0}
    for _ in range(150):
        data = bytearray(base)
        start = 2 if rng.random() < 0.2 else scan_start
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(start, len(data))] = rng.choice([rng.randrange(256), 0xFF, 0x00])
        data = bytes(data)
        try:
            expected = _pillow_eighth(data)
        except Exception:
            expected = None
        for threads in (1, 3):
            got = jpegscale.decode(data, threads)
            if got is None:
                outcomes["declined"] += 1
                continue
            assert expected is not None, "decoded a file Pillow rejects"
            np.testing.assert_array_equal(np.asarray(got), expected)
            outcomes["equal"] += 1
    assert outcomes["equal"] > 50 and outcomes["declined"] > 20, outcomes  # both branches really ran


def _photo_12mp(orientation: int = 1) -> bytes:
    rng = np.random.default_rng(12)
    img = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((4000, 3000), Image.BICUBIC)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return _encode(img, quality=90, exif=exif)


@pytest.mark.parametrize("orientation", [1, 6])
def test_model_input_is_the_same_with_and_without_it(orientation, tmp_path):
    data = _photo_12mp(orientation)
    pillow_only = load_for_model(data, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, jpeg_threads=0)
    np.testing.assert_array_equal(load_for_model(data, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE), pillow_only)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)  # a file on disk, as indexing reads it
    np.testing.assert_array_equal(load_for_model(path, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE), pillow_only)


def test_an_mpo_moved_to_its_second_picture_is_decoded_by_pillow():
    first, second = _noise((2400, 2100), seed=1), _noise((2400, 2100), seed=2)
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    inputs = []
    for jpeg_threads in (None, 0):
        img = Image.open(io.BytesIO(buf.getvalue()))
        img.seek(1)
        inputs.append(prepare(img, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, jpeg_threads=jpeg_threads))
    np.testing.assert_array_equal(*inputs)


def test_prepare_uses_it_for_large_jpegs(monkeypatch):
    calls = []
    decode = jpegscale.decode
    monkeypatch.setattr(jpegscale, "decode", lambda data, threads, *a: calls.append(threads) or decode(data, threads))
    load_for_model(_photo_12mp(), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE)
    load_for_model(_encode(_noise((1000, 800), seed=1)), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE)  # 1/2 scale
    load_for_model(_photo_12mp(), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, jpeg_threads=1)
    assert calls == [None, 1]


def test_a_library_built_from_another_version_of_the_source_is_not_used(tmp_path, monkeypatch, caplog):
    # A stale build after a pull: its ctypes signature may differ from what jpegscale.py declares.
    for name in ("build_jpegscale.sh", jpegscale.SOURCE.name):
        (tmp_path / name).write_bytes((jpegscale.SOURCE.parent / name).read_bytes())
    with (tmp_path / jpegscale.SOURCE.name).open("a") as source:
        source.write("/* another version */\n")
    stale = tmp_path / jpegscale.LIBRARY.name
    subprocess.run(["sh", str(tmp_path / "build_jpegscale.sh"), str(stale)], check=True)
    monkeypatch.setattr(jpegscale, "LIBRARY", stale)
    monkeypatch.setattr(jpegscale, "_loaded", False)
    assert not jpegscale.available()
    assert "built from another version" in caplog.text
    monkeypatch.setattr(jpegscale, "LIBRARY", jpegscale.SOURCE.with_name(stale.name))
    monkeypatch.setattr(jpegscale, "_loaded", False)
    assert jpegscale.available()  # the library make built from this source


def test_without_the_library_pillow_decodes_everything(request):
    data = _photo_12mp()
    expected = load_for_model(data, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, jpeg_threads=0)
    request.getfixturevalue("jpeg_library_missing")
    assert not jpegscale.available() and jpegscale.decode_threads() == 0
    assert jpegscale.decode(data) is None
    np.testing.assert_array_equal(load_for_model(data, DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE), expected)
