"""A burnt-in, machine-readable frame stamp that survives lossy H.264.

The stamp carries the frame number and the capture time so a receiver that
decodes the video can measure glass-to-glass latency and count lost frames
without any side channel. Layout (top-left of the luma plane)::

    10 x 8 blocks of 16 x 16 px (160 x 128 px), one bit per block, row-major,
    most significant bit first: 40 bits capture_ms mod 2**40, 24 bits frame
    number mod 2**24, 16 bits CRC-16/CCITT-FALSE over those 8 bytes.

Blocks sit on macroblock boundaries and use the video-range extremes (16 and
235), so a block is one flat macroblock the encoder keeps flat; the reader takes
the mean of each block's centre 8 x 8, away from the deblocking filter's reach
(at most 3 px from an edge, H.264 8.7). Below the code, when the picture is tall
enough, the same numbers are drawn as digits for a person to read.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

BLOCK = 16
COLUMNS = 10
ROWS = 8
BITS = COLUMNS * ROWS
#: Size of the machine-readable part.
CODE_WIDTH = COLUMNS * BLOCK
CODE_HEIGHT = ROWS * BLOCK

BLACK = 16
WHITE = 235
_THRESHOLD = 128.0
#: A centre mean closer than this to the threshold is "unreadable", not a bit:
#: it keeps natural pictures (which a CRC alone rejects only 1 in 65536 times)
#: from reading as a stamp.
_MARGIN = 40.0

_MS_BITS = 40
_FRAME_BITS = 24

# Human-readable part: a 5 x 7 font scaled by _SCALE, two lines under the code.
_SCALE = 2
_GLYPH_W = 5 * _SCALE
_GLYPH_H = 7 * _SCALE
_ADVANCE = _GLYPH_W + _SCALE
_LINE = _GLYPH_H + 4
_TEXT_TOP = CODE_HEIGHT + 4
_TEXT_HEIGHT = 4 + 2 * _LINE
#: First row below the human-readable text (drawn only if the plane is this tall).
TEXT_BOTTOM = _TEXT_TOP + _TEXT_HEIGHT
_FONT_ROWS: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    ":": ("00000", "01100", "01100", "00000", "01100", "01100", "00000"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    "#": ("01010", "01010", "11111", "01010", "11111", "01010", "01010"),
    " ": ("00000",) * 7,
}


def _glyph(rows: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    bitmap = np.array([[c == "1" for c in row] for row in rows], dtype=bool)
    return np.kron(bitmap, np.ones((_SCALE, _SCALE), dtype=bool)).astype(bool)


_GLYPHS = {char: _glyph(rows) for char, rows in _FONT_ROWS.items()}


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), table-driven."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _payload(frame_number: int, capture_ms: int) -> bytes:
    ms = capture_ms % (1 << _MS_BITS)
    frame = frame_number % (1 << _FRAME_BITS)
    return ((ms << _FRAME_BITS) | frame).to_bytes(8, "big")


def _check_plane(y_plane: npt.NDArray[np.uint8]) -> None:
    if y_plane.ndim != 2:
        raise ValueError(f"luma plane has {y_plane.ndim} dimensions: need 2")
    height, width = y_plane.shape
    if width < CODE_WIDTH or height < CODE_HEIGHT:
        raise ValueError(f"luma plane {width}x{height}: need at least {CODE_WIDTH}x{CODE_HEIGHT}")


def paint(y_plane: npt.NDArray[np.uint8], frame_number: int, capture_ms: int) -> None:
    """Draw the stamp into the top-left of a uint8 luma plane, in place."""
    _check_plane(y_plane)
    message = _payload(frame_number, capture_ms)
    message += crc16(message).to_bytes(2, "big")
    bits = np.unpackbits(np.frombuffer(message, dtype=np.uint8))
    levels = np.where(bits, WHITE, BLACK).astype(np.uint8).reshape(ROWS, 1, COLUMNS, 1)
    blocks = np.broadcast_to(levels, (ROWS, BLOCK, COLUMNS, BLOCK))
    y_plane[:CODE_HEIGHT, :CODE_WIDTH] = blocks.reshape(CODE_HEIGHT, CODE_WIDTH)
    if y_plane.shape[0] >= TEXT_BOTTOM:
        _paint_text(y_plane, frame_number, capture_ms)


def _clock(capture_ms: int) -> str:
    ms_of_day = capture_ms % 86_400_000
    seconds, ms = divmod(ms_of_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}"


def _paint_text(y_plane: npt.NDArray[np.uint8], frame_number: int, capture_ms: int) -> None:
    # A dark box first so the digits read on any background.
    y_plane[CODE_HEIGHT:TEXT_BOTTOM, :CODE_WIDTH] = BLACK
    lines = (f"#{frame_number % (1 << _FRAME_BITS)}", _clock(capture_ms))
    for line_index, line in enumerate(lines):
        top = _TEXT_TOP + 2 + line_index * _LINE
        for char_index, char in enumerate(line):
            left = 4 + char_index * _ADVANCE
            if left + _GLYPH_W > CODE_WIDTH:
                break
            cell = y_plane[top : top + _GLYPH_H, left : left + _GLYPH_W]
            cell[_GLYPHS[char]] = WHITE


def unwrap_ms(capture_ms_mod: int, now_ms: int) -> int:
    """The time congruent to ``capture_ms_mod`` (mod 2**40) nearest to ``now_ms``.

    2**40 ms is about 34.8 years, so any clock within half that is unambiguous.
    """
    period = 1 << _MS_BITS
    return now_ms + (capture_ms_mod - now_ms + period // 2) % period - period // 2


def read(y_plane: npt.NDArray[Any], now_ms: int | None = None) -> tuple[int, int] | None:
    """Read ``(frame_number, capture_ms)`` from a decoded luma plane, or None.

    None means no stamp: the plane is too small, a block is ambiguous, or the
    CRC does not match. The frame number comes back modulo 2**24; capture_ms
    (sent modulo 2**40) is unwrapped to the value nearest ``now_ms`` (default:
    this machine's clock).
    """
    if y_plane.ndim != 2 or y_plane.shape[0] < CODE_HEIGHT or y_plane.shape[1] < CODE_WIDTH:
        return None
    region = np.asarray(y_plane[:CODE_HEIGHT, :CODE_WIDTH], dtype=np.float32)
    cells = region.reshape(ROWS, BLOCK, COLUMNS, BLOCK)
    quarter = BLOCK // 4
    centres = cells[:, quarter : BLOCK - quarter, :, quarter : BLOCK - quarter].mean(axis=(1, 3))
    if np.any(np.abs(centres - _THRESHOLD) < _MARGIN):
        return None
    message = np.packbits((centres > _THRESHOLD).reshape(BITS)).tobytes()
    if crc16(message[:8]) != int.from_bytes(message[8:], "big"):
        return None
    value = int.from_bytes(message[:8], "big")
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return value & ((1 << _FRAME_BITS) - 1), unwrap_ms(value >> _FRAME_BITS, now_ms)
