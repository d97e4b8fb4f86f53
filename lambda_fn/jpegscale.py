"""Large baseline JPEGs decoded at 1/8 scale with the entropy decoding spread over the CPUs.

A 12-megapixel photo becomes a 224-px model input through libjpeg's 1/8 DCT scale (``Image.draft``), and
what remains is Huffman-decoding every coefficient of the file: about 17 ms on one core, a third of an
AVX2 forward. ``_jpegscale.c`` splits that decoding across threads (each part starts at a guessed bit
offset; the parts are joined where a decoder reaches a state the next one recorded) and then computes the
pixels with libjpeg-turbo's own integer arithmetic, so its output equals Pillow's draft decode byte for byte.

This module parses the headers (in Python, with bounds checks) and hands the scan to the C code. It covers
what cameras and phones write: baseline or extended-sequential Huffman, 8-bit, one interleaved scan, grey,
4:4:4 or 4:2:0, no restart markers. For anything else, a decode error included, ``decode`` returns None
and the caller decodes with Pillow as before, which also reports corrupt files in its own words.

The shared library is built by ``make`` (and in the container image) from the C file beside this one; when
it is missing, ``available()`` is False and everything goes through Pillow.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from pathlib import Path

from PIL import Image

LIBRARY = Path(__file__).with_name("_jpegscale.so")
SOURCE = Path(__file__).with_name("_jpegscale.c")
# The C decoder's own ceiling; parts under ~16 KB are decoded by fewer threads (see _jpegscale.c).
MAX_THREADS = 16
_ZIGZAG = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
    54, 47, 55, 62, 63,
)  # fmt: skip
_SOF_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)
_OTHER_SOF = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_lib: ctypes.CDLL | None = None
_loaded = False
_load_lock = threading.Lock()
log = logging.getLogger(__name__)


class _Unsupported(Exception):
    """The file is valid for Pillow but outside what the C decoder handles (or malformed: Pillow decides)."""


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:
        log.warning("%s is missing: large JPEGs are decoded by Pillow on one core (`make install` builds it)", LIBRARY)
        return None
    try:
        lib.js_source_sha256.restype = ctypes.c_char_p
        built_from = lib.js_source_sha256().decode()
    except AttributeError:  # built before the library said what it was built from
        built_from = None
    if SOURCE.exists() and built_from != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
        log.warning("%s was built from another version of %s: not used; `make install` rebuilds it", LIBRARY, SOURCE)
        return None
    lib.js_decode.restype = ctypes.c_int
    lib.js_decode.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
    ]  # fmt: skip
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _loaded
    with _load_lock:  # the ingest decodes on several threads at once
        if not _loaded:
            _lib = _load()
            _loaded = True
    return _lib


def available() -> bool:
    """Whether the compiled decoder is present (``make`` builds it; without it Pillow decodes everything)."""
    return _library() is not None


def default_threads() -> int:
    """The CPUs this process may run on: 2 on a 3,008 MB Lambda, up to 6 at 10,240 MB."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


def decode_threads() -> int:
    """How many threads ``decode`` uses by default here; 0 when the library is missing (Pillow decodes)."""
    return default_threads() if available() else 0


def _u16(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise _Unsupported("truncated header")
    return (data[pos] << 8) | data[pos + 1]


def _parse(data: bytes) -> dict:
    """Frame, tables and scan offset of a single-scan sequential Huffman JPEG; raises _Unsupported."""
    if data[:2] != b"\xff\xd8":
        raise _Unsupported("not a JPEG")
    quant: dict[int, list[int]] = {}
    huff: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    frame = None
    jfif = False
    adobe_transform = None
    pos = 2
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise _Unsupported("malformed marker")
        marker = data[pos + 1]
        length = _u16(data, pos + 2)
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            raise _Unsupported("truncated segment")
        if marker == 0xDB:  # DQT: one or more tables, 8- or 16-bit
            i = 0
            while i < len(body):
                precision, table = body[i] >> 4, body[i] & 15
                size = 128 if precision else 64
                raw = body[i + 1 : i + 1 + size]
                if table > 3 or precision > 1 or len(raw) != size:
                    raise _Unsupported("bad DQT")
                values = [(raw[2 * k] << 8) | raw[2 * k + 1] for k in range(64)] if precision else list(raw)
                natural = [0] * 64
                for k, v in enumerate(values):
                    natural[_ZIGZAG[k]] = v
                quant[table] = natural
                i += 1 + size
        elif marker == 0xC4:  # DHT
            i = 0
            while i < len(body):
                kind, table = body[i] >> 4, body[i] & 15
                counts = body[i + 1 : i + 17]
                total = sum(counts)
                symbols = body[i + 17 : i + 17 + total]
                if kind > 1 or table > 3 or len(counts) != 16 or len(symbols) != total or total > 256:
                    raise _Unsupported("bad DHT")
                huff[(kind, table)] = (bytes(counts), bytes(symbols))
                i += 17 + total
        elif marker == 0xDD:  # DRI: restart markers would follow
            if len(body) != 2 or _u16(body, 0):
                raise _Unsupported("restart interval")
        elif marker in _SOF_SEQUENTIAL_HUFFMAN:
            if frame is not None or len(body) < 6 or body[0] != 8:
                raise _Unsupported("not an 8-bit frame")
            height, width, ncomp = _u16(body, 1), _u16(body, 3), body[5]
            if len(body) != 6 + 3 * ncomp:
                raise _Unsupported("bad SOF")
            comps = [tuple(body[6 + 3 * c : 9 + 3 * c]) for c in range(ncomp)]
            frame = (width, height, [(cid, sf >> 4, sf & 15, tq) for cid, sf, tq in comps])
        elif marker in _OTHER_SOF or marker == 0xCC:  # progressive, lossless, arithmetic (and its DAC)
            raise _Unsupported("not sequential Huffman")
        elif marker == 0xE0 and body[:5] == b"JFIF\x00" and len(body) >= 14:  # what libjpeg counts as JFIF
            jfif = True
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe_transform = body[11]
        elif marker == 0xDA:
            return _scan(data, pos + 2 + length, body, frame, quant, huff, jfif, adobe_transform)
        elif not (0xE0 <= marker <= 0xEF or marker in (0xFE, 0xDC)):  # libjpeg skips only APPn, COM, DNL
            raise _Unsupported("unexpected marker")
        pos += 2 + length


def _scan(data, offset, sos, frame, quant, huff, jfif, adobe_transform) -> dict:
    if frame is None:
        raise _Unsupported("no frame header")
    width, height, comps = frame
    ncomp = len(comps)
    if not (0 < width <= 65500 and 0 < height <= 65500) or ncomp not in (1, 3):  # libjpeg's size limit
        raise _Unsupported("components")
    if ncomp == 3:
        ids = tuple(c[0] for c in comps)
        rgb = (adobe_transform == 0) if adobe_transform is not None else (not jfif and ids == (82, 71, 66))
        if rgb:
            raise _Unsupported("RGB-coded JPEG")
        (_, h0, v0, _), rest = comps[0], comps[1:]
        if (h0, v0) not in ((1, 1), (2, 2)) or any((h, v) != (1, 1) for _, h, v, _ in rest):
            raise _Unsupported("sampling")
    else:
        if not (1 <= comps[0][1] <= 4 and 1 <= comps[0][2] <= 4):  # libjpeg refuses other factors
            raise _Unsupported("sampling")
        h0 = v0 = 1
    if not sos or sos[0] != ncomp or len(sos) != 1 + 2 * ncomp + 3:
        raise _Unsupported("not one interleaved scan of every component")
    if tuple(sos[1 + 2 * ncomp :]) != (0, 63, 0):
        raise _Unsupported("spectral selection")
    counts, symbols, tables = bytearray(), bytearray(), []
    for c in range(ncomp):
        cid, selectors = sos[1 + 2 * c], sos[2 + 2 * c]
        if cid != comps[c][0] or comps[c][3] not in quant:
            raise _Unsupported("scan order or quantisation table")
        tables.extend(quant[comps[c][3]])
        for kind, table in ((0, selectors >> 4), (1, selectors & 15)):
            if (kind, table) not in huff:
                raise _Unsupported("missing Huffman table")
            n, s = huff[(kind, table)]
            counts += n
            symbols += s.ljust(256, b"\x00")
    return {
        "offset": offset,
        "width": width,
        "height": height,
        "ncomp": ncomp,
        "sampling": (h0, v0),
        "counts": bytes(counts),
        "symbols": bytes(symbols),
        "quant": (ctypes.c_uint16 * (64 * ncomp))(*tables),
    }


def decode(
    data: bytes | bytearray | memoryview, threads: int | None = None, stats: dict | None = None
) -> Image.Image | None:
    """The JPEG at 1/8 scale (``ceil(w/8) x ceil(h/8)``, "RGB" or "L"), exactly as Pillow's draft decode
    gives it, or None when this decoder does not handle the file (the caller then uses Pillow).

    ``threads``: how many threads decode (all CPUs when None). ``stats``, if given, receives ``parts``: how
    many threads' work the result was stitched from (1 when no later part was met, so one thread did all)."""
    lib = _library()
    if lib is None:
        return None
    data = bytes(data)  # what ctypes passes as a pointer (no copy for bytes)
    try:
        info = _parse(data)
    except _Unsupported:
        return None
    ow, oh, ncomp = -(-info["width"] // 8), -(-info["height"] // 8), info["ncomp"]
    out = ctypes.create_string_buffer(ow * oh * ncomp)
    parts = ctypes.c_int(0)
    status = lib.js_decode(
        data, len(data), info["offset"], info["width"], info["height"], ncomp, *info["sampling"],
        info["counts"], info["symbols"], info["quant"], threads or default_threads(), out, ctypes.byref(parts),
    )  # fmt: skip
    if status != 0:
        return None
    if stats is not None:
        stats["parts"] = parts.value
    return Image.frombuffer("RGB" if ncomp == 3 else "L", (ow, oh), out, "raw", "RGB" if ncomp == 3 else "L", 0, 1)
