"""Small files that cost a decoder far more than their size, built byte by byte (the tests and
``bench.request_memory`` use them).

- ``rle_bmp``: a run-length-encoded BMP, a few bytes a row, which Pillow decodes in Python a pixel at a time;
- ``flat_jpeg``: a flat grey JPEG of any size, layout and scan structure, its entropy-coded data nothing but
  zero bytes (every block: DC difference 0, no AC), so an 8000x8000 file takes well under a megabyte and no
  encoder is needed: progressive, or sequential with one scan per component, are what make libjpeg keep every
  coefficient of the image in memory.
"""

from __future__ import annotations

import math
import struct


def rle_bmp(side: int, bits: int = 8) -> bytes:
    """A ``side`` x ``side`` RLE8 (``bits=8``) or RLE4 (``bits=4``) BMP: one short run per row, then end of bitmap."""
    colours = 2**bits
    data = bytes([1, 7 if bits == 8 else 0x17, 0, 0]) * side + b"\0\1"
    palette = b"".join(bytes([i * 255 // (colours - 1)] * 3 + [0]) for i in range(colours))
    offset = 14 + 40 + len(palette)
    compression = 1 if bits == 8 else 2
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, bits, compression, len(data), 2835, 2835, colours, 0)
    return header + info + palette + data


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def flat_jpeg(
    width: int,
    height: int,
    *,
    components: int = 3,
    sampling: tuple[int, int] = (1, 1),
    progressive: bool = False,
    interleaved: bool = True,
) -> bytes:
    """A flat JPEG: ``components`` 1, 3 (YCbCr, the first at ``sampling`` (h, v), the others 1x1) or 4 (CMYK).

    ``progressive``: a progressive file holding only its DC scan (valid: the AC coefficients stay zero);
    ``interleaved=False``: sequential, one scan per component. Otherwise a baseline file with one scan.
    Each Huffman table has a single one-bit code, "0", for difference 0 and for end of block.
    """
    factors = [sampling] + [(1, 1)] * (components - 1)
    h_max, v_max = max(h for h, _ in factors), max(v for _, v in factors)
    sof = bytes([8]) + struct.pack(">HH", height, width) + bytes([components])
    for i, (h, v) in enumerate(factors):
        sof += bytes([i + 1, h << 4 | v, 0])
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + b"\x01" * 64)
    if components == 4:  # Adobe marker, transform 0: the channels are CMYK as they stand
        out += _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
    one_code = bytes([1] + [0] * 15) + b"\x00"
    out += _segment(0xC2 if progressive else 0xC0, sof)
    out += _segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    bits_per_block = 1 if progressive else 2  # DC code; sequential scans add the end-of-block code
    if interleaved or progressive:
        scans = [(list(range(components)), mcus * sum(h * v for h, v in factors))]
    else:  # a scan of one component covers its own blocks, not whole MCUs
        scans = [
            ([i], math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8))
            for i, (h, v) in enumerate(factors)
        ]
    for members, blocks in scans:
        header = bytes([len(members)]) + b"".join(bytes([i + 1, 0x00]) for i in members)
        header += bytes([0, 0, 0]) if progressive else bytes([0, 63, 0])
        out += _segment(0xDA, header) + b"\x00" * math.ceil(blocks * bits_per_block / 8)
    return out + b"\xff\xd9"
