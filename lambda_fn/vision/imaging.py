"""Image decoding and the one function that turns a picture into the model's input.

`prepare()` is shared by training evaluation, indexing and serving, so what the service feeds the model
cannot drift from what the index was built with. Normalisation (mean/std) lives inside the exported
model; this module only decodes, orients, converts to RGB, resizes and crops, in uint8.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Formats accepted from users; MPO is what many phone cameras call their JPEGs.
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP"})

# Leading bytes of formats people upload that Pillow cannot read here: answered "unsupported", not "corrupt".
_KNOWN_UNSUPPORTED = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%!PS", "PostScript"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
)
# The Pillow plugins Image.open may try: an explicit allowlist, so no other parser ever sees user bytes.
# (Pillow's JPEG plugin also returns MPO, the multi-picture JPEG many phone cameras write.)
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Progressive JPEGs are decoded scan by scan, each pass over every coefficient of the image, so decode time
# grows with the number of scans while the file stays small. Encoders write few: baseline files (cameras,
# browsers' canvas encoders) have 1, libjpeg/libjpeg-turbo's and Pillow's progressive mode 10 for colour
# (6 for grey), Photoshop's "progressive" 3 to 5. 32 leaves room for unusual encoders and refuses the
# hand-made hundreds.
MAX_JPEG_SCANS = 32
# A progressive or multi-scan JPEG keeps every DCT coefficient (2 bytes a sample) in memory until its last
# scan, whatever the output scale; a baseline JPEG is decoded a row of blocks at a time. Such files may hold
# at most this many samples (pixels x components, each component at its own sampled resolution): 256 MiB of
# coefficients, so the usual 4:2:0 colour passes up to 64 MP, 4:4:4 up to 44 MP, CMYK up to 33 MP.
MAX_BUFFERED_JPEG_SAMPLES = 128 * 2**20
# BMP compressions Pillow decodes in Python, a pixel at a time: RLE8 and RLE4 (no camera or browser writes them).
_BMP_SLOW_COMPRESSIONS = {1: "RLE8", 2: "RLE4"}
# Pillow's WebP decoder holds about five bytes per pixel beyond the image while it decodes (1 GB for 64 MP,
# measured by bench/request_memory.py), so WebP gets a lower pixel cap: 16 MP is a large phone photo.
FORMAT_MAX_PIXELS = {"WEBP": 16_000_000}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")


# Above this many times resize_size**2, prepare() resizes only the crop region (aspect ratios beyond ~16:1).
_MAX_RESIZED_AREA = 16
# Non-JPEG images larger than this are box-reduced in their own mode before conversion (see _shrink).
_SHRINK_ABOVE_PIXELS = 16_000_000
_ROWS_PER_BAND = 512
_BAND_PIXELS = 4_000_000  # pixels per band when shrinking: 16 MB for RGBA
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """The bytes are not a usable image (corrupt, truncated, not an image)."""


class ImageTooLarge(ImageError):
    """The image's pixel count is over the configured cap (decompression-bomb guard)."""


class ImageTooComplex(ImageTooLarge):
    """Within the byte and pixel caps, but far costlier to decode than images people take (many scans)."""


class UnsupportedImage(ImageError):
    """A real file format, but not one we decode."""


def _sniff_unsupported(head: bytes) -> str | None:
    stripped = head.lstrip()
    for magic, name in _KNOWN_UNSUPPORTED:
        if stripped.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIC/AVIF"
    return None


def jpeg_scan_count(data: bytes, *, stop_after: int = MAX_JPEG_SCANS) -> int:
    """Start-of-scan markers in the first picture of a JPEG, counted by walking its segments (not by
    searching the bytes: an EXIF thumbnail holds scans of its own). Stops counting past ``stop_after``."""
    pos, scans = 2, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            match = _JPEG_MARKER.search(data, pos)  # inside entropy-coded data: find the next marker
            if match is None:
                break
            pos = match.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image: an MPO's further pictures are not decoded
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # restart markers and TEM carry no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            scans += 1
            if scans > stop_after:
                break
            match = _JPEG_MARKER.search(data, pos + 2 + length)
            if match is None:
                break
            pos = match.start()
            continue
        pos += 2 + length
    return scans


def jpeg_buffered_samples(img: Image.Image) -> int:
    """The samples whose coefficients libjpeg keeps for a progressive or multi-scan JPEG: per component, its
    8x8 blocks at its sampling factors (rounded up to whole blocks per MCU, as libjpeg allocates them), x 64.
    Raises ImageError for a frame header libjpeg would refuse (no components, a sampling factor outside 1-4)."""
    if not img.layer or any(not (1 <= h <= 4 and 1 <= v <= 4) for _, h, v, _ in img.layer):
        raise ImageError("the JPEG's frame header is corrupt (its components or their sampling factors)")
    h_max = max(h for _, h, _, _ in img.layer)
    v_max = max(v for _, _, v, _ in img.layer)
    blocks = 0
    for _, h, v, _ in img.layer:
        across = math.ceil(math.ceil(img.width * h / h_max) / 8)
        down = math.ceil(math.ceil(img.height * v / v_max) / 8)
        blocks += (-(-across // h) * h) * (-(-down // v) * v)
    return blocks * 64


def _check_decode_work(img: Image.Image, source: bytes | str | Path) -> None:
    if img.format == "BMP" and img.info.get("compression") in _BMP_SLOW_COMPRESSIONS:
        kind = _BMP_SLOW_COMPRESSIONS[img.info["compression"]]
        raise UnsupportedImage(f"{kind}-compressed BMP files are not supported; save the picture as PNG or JPEG")
    if img.format not in ("JPEG", "MPO"):
        return
    data = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    progressive = bool(img.info.get("progressive", img.info.get("progression")))
    scans = jpeg_scan_count(data, stop_after=MAX_JPEG_SCANS if progressive else 1)
    if progressive and scans > MAX_JPEG_SCANS:
        raise ImageTooComplex(
            f"the JPEG has more than {MAX_JPEG_SCANS} progressive scans, each of which costs a full decoding "
            "pass (cameras and common encoders write at most 10). Save it again as a baseline JPEG."
        )
    if not (progressive or scans > 1):
        return
    samples = jpeg_buffered_samples(img)
    if samples > MAX_BUFFERED_JPEG_SAMPLES:
        kind = "progressive" if progressive else "multi-scan"
        raise ImageTooComplex(
            f"the {kind} JPEG is {img.width}x{img.height} with {len(img.layer)} components: {samples:,} samples, "
            f"all held in memory while it decodes; the limit for such files is {MAX_BUFFERED_JPEG_SAMPLES:,} "
            "(64 MP in ordinary 4:2:0 colour). Save it as a baseline JPEG, or smaller."
        )


def open_image(source: bytes | str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open an image lazily (header only) and refuse what we will not decode.

    Only the formats in ``PIL_FORMATS`` are parsed. Raises ImageTooLarge before any pixel is decoded when
    width*height exceeds ``max_pixels``, a progressive JPEG has more scans than ``MAX_JPEG_SCANS`` or a
    progressive or multi-scan one more samples than ``MAX_BUFFERED_JPEG_SAMPLES``; UnsupportedImage for a
    format (or a BMP compression) not decoded.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        img = Image.open(fp, formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        head = bytes(source[:16]) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()[:16]
        kind = _sniff_unsupported(head)
        if kind:
            raise UnsupportedImage(f"{kind} files are not supported; send a JPEG, PNG, WebP or GIF") from exc
        raise ImageError("the data is not a recognisable image (expected JPEG, PNG, WebP or GIF)") from exc
    except Exception as exc:
        raise ImageError(f"the image could not be read: {exc}") from exc
    if img.format not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"{img.format} images are not supported; send a JPEG, PNG, WebP or GIF")
    if img.format in FORMAT_MAX_PIXELS and max_pixels is not None:
        max_pixels = min(max_pixels, FORMAT_MAX_PIXELS[img.format])
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(
            f"image is {img.width}x{img.height} = {img.width * img.height:,} pixels; the limit is "
            f"{max_pixels:,}. Resize it before uploading."
        )
    _check_decode_work(img, source)
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_range(img: Image.Image) -> tuple[float, float]:
    """(low, high) of a 16/32-bit integer or float grey image: what maps to 0 and 255."""
    if img.mode.startswith("I;16"):
        return 0.0, 65535.0
    low, high = img.getextrema()
    if img.mode.startswith("I"):
        return 0.0, max(float(high), 1.0)
    return float(low), float(high)


def _deep_grey_to_l(img: Image.Image, grey_range: tuple[float, float] | None = None) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit, the full range scaled to 0..255 (not clipped at 255).

    Converted a band of rows at a time: a whole 64-MP image in float64 would need 512 MB per temporary."""
    lo, top = grey_range or _grey_range(img)
    arr = np.asarray(img)
    out = np.empty(arr.shape, dtype=np.uint8)
    scale = 255.0 / max(top - lo, 1e-12)
    for start in range(0, arr.shape[0], _ROWS_PER_BAND):
        band = arr[start : start + _ROWS_PER_BAND].astype(np.float64)
        out[start : start + _ROWS_PER_BAND] = np.clip((band - lo) * scale, 0, 255)
    return Image.fromarray(out)


def convert_rgb(img: Image.Image) -> Image.Image:
    """Any mode (L, P, RGBA, CMYK, I;16, ...) -> 8-bit RGB; transparent pixels become white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if img.mode.startswith("I") or img.mode == "F":
        return _deep_grey_to_l(img).convert("RGB")
    return img.convert("RGB")


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 = as stored), read without touching the pixels."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise ImageError(f"the image's EXIF data is corrupt: {exc}") from exc
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(img: Image.Image, value: int | None = None) -> Image.Image:
    """Apply the EXIF orientation. Unlike ``ImageOps.exif_transpose`` this makes no copy of an image that
    needs no transposing (a 64-MP RGBA picture is 256 MB)."""
    value = orientation(img) if value is None else value
    method = _TRANSPOSE.get(value)
    return img if method is None else img.transpose(method)


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, I;16, ...) to 8-bit RGB."""
    return convert_rgb(orient(img))


def _reducible(band: Image.Image, grey_range: tuple[float, float] | None) -> Image.Image:
    """A band in a mode ``reduce()`` has a kernel for (it has none for palette, 1-bit and 16-bit images)."""
    if band.mode.startswith("I;16"):
        return _deep_grey_to_l(band, grey_range)
    if band.mode in ("P", "PA", "1"):
        return band.convert("RGBA" if "transparency" in band.info or band.mode == "PA" else "RGB")
    return band


def _shrink(img: Image.Image, resize_size: int) -> Image.Image:
    """A very large decoded image, box-reduced by a whole factor that keeps at least twice the resize size.

    What ``Image.draft`` does for JPEGs, for the other formats, so that mode conversion and resampling work
    on megabytes instead of hundreds of them. Only above ``_SHRINK_ABOVE_PIXELS``: ordinary photos are
    resampled exactly as torchvision would. Done a band of rows at a time (each band a multiple of the
    factor high, so the result equals one whole-image ``reduce``): converting a whole 64-MP palette image,
    or the copy ``reduce()`` makes of an RGBA one to premultiply alpha, would need another 256 MB.
    """
    factor = min(img.size) // (2 * resize_size)
    if img.width * img.height <= _SHRINK_ABOVE_PIXELS or factor < 2:
        return img
    grey_range = _grey_range(img) if img.mode.startswith("I") or img.mode == "F" else None
    rows = factor * max(1, _BAND_PIXELS // (img.width * factor))
    out = None
    for top in range(0, img.height, rows):
        band = _reducible(img.crop((0, top, img.width, min(top + rows, img.height))), grey_range)
        small = band.reduce(factor)
        if out is None:
            out = Image.new(small.mode, (-(-img.width // factor), -(-img.height // factor)))
        out.paste(small, (0, top // factor))
    return out


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter``, keeping aspect (torchvision's Resize(int))."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def prepare(img: Image.Image, resize_size: int, crop_size: int) -> np.ndarray:
    """PIL image -> (crop, crop, 3) uint8 RGB array: orient, RGB, resize shorter side, centre crop.

    Matches torchvision ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` on PIL images (bilinear).
    JPEGs much larger than needed are decoded by libjpeg at a reduced DCT scale (``Image.draft``: 1/2, 1/4
    or 1/8), so a 12-megapixel photo is never decoded at full size to produce a 224 crop.
    """
    try:
        if img.format in ("JPEG", "MPO") and resize_size / min(img.size) < 0.5:
            scale = resize_size / min(img.size)
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()
        turn = orientation(img)
        img = orient(convert_rgb(_shrink(img, resize_size)), turn)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"the image is truncated or corrupt: {exc}") from exc
    size = resized_size(img.width, img.height, resize_size)
    if size[0] * size[1] > _MAX_RESIZED_AREA * resize_size * resize_size and min(size) >= crop_size:
        # An extreme strip (10000x1 -> 2,560,000x256) would need gigabytes at the resized size: resample only
        # the source region that becomes the centre crop. Same geometry, bounded memory.
        sx, sy = img.width / size[0], img.height / size[1]
        left, top = round((size[0] - crop_size) / 2.0), round((size[1] - crop_size) / 2.0)
        box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
        return np.array(img.resize((crop_size, crop_size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left = round((img.width - crop_size) / 2.0)
    top = round((img.height - crop_size) / 2.0)
    if left < 0 or top < 0:  # only when crop > resize; pad like torchvision's CenterCrop would
        padded = Image.new("RGB", (max(img.width, crop_size), max(img.height, crop_size)))
        padded.paste(img, ((padded.width - img.width) // 2, (padded.height - img.height) // 2))
        img, left, top = padded, round((padded.width - crop_size) / 2.0), round((padded.height - crop_size) / 2.0)
    img = img.crop((left, top, left + crop_size, top + crop_size))
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def load_for_model(
    source: bytes | str | Path,
    resize_size: int,
    crop_size: int,
    *,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Bytes or a path -> model input array; raises ImageError subclasses for anything unusable."""
    return prepare(open_image(source, max_pixels=max_pixels), resize_size, crop_size)
