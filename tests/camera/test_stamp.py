"""The burnt-in stamp: survives a real libx264 encode and decode, rejects garbage."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from camera import stamp
from camera.sources.base import VideoSettings
from camera.sources.x264 import X264Encoder


def _camera_like_picture(width: int, height: int, n: int) -> np.ndarray:
    """A moving gradient with sensor-like noise, as I420 ``(h * 3 // 2, w)``.

    Pure noise would be unfair: x264 then runs out of VBV budget and skips whole
    pictures, and the decoder rightly shows (and the stamp reads) the previous one.
    """
    rng = np.random.default_rng(n)
    x = np.arange(width)[None, :]
    yy = np.arange(height * 3 // 2)[:, None]
    base = (x * 3 + yy * 2 + n * 7) % 220 + 16
    noise = rng.integers(-12, 13, (height * 3 // 2, width))
    picture: np.ndarray = np.clip(base + noise, 0, 255).astype(np.uint8)
    return picture


@pytest.mark.parametrize(
    ("width", "height", "bitrate"),
    [(640, 360, 1_000_000), (1280, 720, 2_000_000), (320, 240, 500_000)],
)
def test_round_trip_through_h264(width: int, height: int, bitrate: int) -> None:
    settings = VideoSettings(width, height, 30, bitrate, gop_seconds=1.0)
    encoder = X264Encoder(settings)
    decoder = av.CodecContext.create("h264", "r")
    base_ms = int(time.time() * 1000)
    sent = []
    read_back = []
    for n in range(40):
        picture = _camera_like_picture(width, height, n)
        frame_number = 16_777_200 + n  # crosses the 24-bit wrap
        capture_ms = base_ms + n * 33
        stamp.paint(picture[:height], frame_number, capture_ms)
        sent.append((frame_number % 2**24, capture_ms))
        for unit in encoder.encode_yuv(picture):
            for decoded in decoder.decode(av.Packet(unit.data)):
                read_back.append(stamp.read(decoded.to_ndarray(format="gray"), now_ms=base_ms))
    for decoded in decoder.decode(None):
        read_back.append(stamp.read(decoded.to_ndarray(format="gray"), now_ms=base_ms))
    encoder.close()
    assert read_back == sent


def test_numbers_wrap_modulo_field_width() -> None:
    y = np.zeros((240, 320), dtype=np.uint8)
    stamp.paint(y, 2**24 + 5, 2**40 + 7)
    assert stamp.read(y, now_ms=0) == (5, 7)
    # The 40-bit time is unwrapped to the value nearest the reader's clock.
    assert stamp.read(y, now_ms=2**40) == (5, 2**40 + 7)
    stamp.paint(y, 5, 3 * 2**40 - 10)
    assert stamp.read(y, now_ms=3 * 2**40 + 1000) == (5, 3 * 2**40 - 10)


def test_human_readable_text_is_drawn_below_the_code() -> None:
    y = np.full((360, 640), 100, dtype=np.uint8)
    stamp.paint(y, 42, 3_600_000 + 61_001)  # 01:01:01.001 UTC
    text_box = y[stamp.CODE_HEIGHT : stamp.TEXT_BOTTOM, : stamp.CODE_WIDTH]
    assert set(np.unique(text_box)) == {stamp.BLACK, stamp.WHITE}
    # Nothing outside the code and the text box is touched.
    assert (y[:, stamp.CODE_WIDTH :] == 100).all()
    assert (y[stamp.TEXT_BOTTOM :, :] == 100).all()
    # Digits really differ: another time draws other pixels.
    other = y.copy()
    stamp.paint(other, 42, 3_600_000 + 61_002)
    assert (other[: stamp.CODE_HEIGHT] != y[: stamp.CODE_HEIGHT]).any()
    assert (other[stamp.CODE_HEIGHT :] != y[stamp.CODE_HEIGHT :]).any()


def test_corrupted_stamp_reads_none() -> None:
    y = np.zeros((360, 640), dtype=np.uint8)
    stamp.paint(y, 1234, 1_700_000_000_000)
    assert stamp.read(y) == (1234, 1_700_000_000_000)  # default reference: now
    # Flip one block: the CRC no longer matches.
    block = y[16:32, 48:64]
    block[:] = np.where(block > 128, stamp.BLACK, stamp.WHITE)
    assert stamp.read(y) is None


def test_grey_or_natural_pictures_read_none() -> None:
    assert stamp.read(np.full((240, 320), 128, dtype=np.uint8)) is None
    rng = np.random.default_rng(1)
    assert stamp.read(rng.integers(0, 256, (240, 320), dtype=np.uint8)) is None
    # Hard black/white blocks with random bits: CRC rejects them.
    bits = rng.integers(0, 2, (8, 10))
    y = np.kron(np.where(bits, 235, 16), np.ones((16, 16))).astype(np.uint8)
    assert stamp.read(y) is None


def test_too_small_plane() -> None:
    assert stamp.read(np.zeros((100, 320), dtype=np.uint8)) is None
    with pytest.raises(ValueError, match="luma plane 150x240: need at least 160x128"):
        stamp.paint(np.zeros((240, 150), dtype=np.uint8), 1, 1)


def test_crc16_check_value() -> None:
    # The catalogue check value of CRC-16/CCITT-FALSE.
    assert stamp.crc16(b"123456789") == 0x29B1
