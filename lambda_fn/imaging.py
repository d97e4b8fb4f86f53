"""Image decoding and the one function that turns a picture into the model's input.

`prepare()` is shared by training evaluation, indexing and serving, so what the service feeds the model
cannot drift from what the index was built with. Normalisation (mean/std) lives inside the exported
model; this module only decodes, orients, converts to RGB, resizes and crops, in uint8.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The preprocessing every model of this project is trained and served with, unless its export says otherwise:
# torchvision's classification preset (shorter side to 256, centre crop 224).
DEFAULT_RESIZE_SIZE = 256
DEFAULT_CROP_SIZE = 224

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
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")


# Above this many times resize_size**2, prepare() resizes only the crop region (aspect ratios beyond ~16:1).
_MAX_RESIZED_AREA = 16


class ImageError(ValueError):
    """The bytes are not a usable image (corrupt, truncated, not an image)."""


class ImageTooLarge(ImageError):
    """The image's pixel count is over the configured cap (decompression-bomb guard)."""


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


def open_image(source: bytes | str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open an image lazily (header only) and refuse what we will not decode.

    Raises ImageTooLarge before any pixel is decoded when width*height exceeds ``max_pixels``.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        img = Image.open(fp)
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
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(
            f"image is {img.width}x{img.height} = {img.width * img.height:,} pixels; the limit is "
            f"{max_pixels:,}. Resize it before uploading."
        )
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, I;16, ...) to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image is truncated or corrupt: {exc}") from exc
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: scale the full range to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        lo = 0.0 if img.mode.startswith("I") else float(arr.min())
        arr = np.clip((arr - lo) / max(top - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return img.convert("RGB")


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter``, keeping aspect (torchvision's Resize(int))."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def prepare(img: Image.Image, resize_size: int, crop_size: int) -> np.ndarray:
    """PIL image -> (crop, crop, 3) uint8 RGB array: orient, RGB, resize shorter side, centre crop.

    Matches torchvision ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` on PIL images (bilinear).
    JPEGs much larger than needed are decoded at a reduced DCT scale (``Image.draft``), so a 12-megapixel
    photo is never decoded at full size to produce a 224 crop.
    """
    if img.format in ("JPEG", "MPO"):
        scale = resize_size / min(img.size)
        if scale < 0.5:
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    try:
        img.load()
        img = to_rgb(img)
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
    source: bytes | str | Path, resize_size: int, crop_size: int, *, max_pixels: int | None = None
) -> np.ndarray:
    """Bytes or a path -> model input array; raises ImageError subclasses for anything unusable."""
    return prepare(open_image(source, max_pixels=max_pixels), resize_size, crop_size)
