"""Annex-B helpers: bytes in, values out, precise errors on malformed input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from camera import h264
from camera.h264 import NalType
from camera.sources.base import VideoSettings
from camera.sources.x264 import X264Encoder

SPS = bytes.fromhex("6742c01eda0280bf")
PPS = bytes.fromhex("68ce3c80")
IDR = bytes.fromhex("658884")
SLICE = bytes.fromhex("419a20")


def test_split_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert h264.split_nals(data) == [SPS, PPS, IDR]


def test_split_drops_trailing_zero_bytes_and_leading_zeros() -> None:
    data = b"\x00\x00\x00\x00\x01" + SPS + b"\x00\x00" + b"\x00\x00\x01" + SLICE + b"\x00"
    assert h264.split_nals(data) == [SPS, SLICE]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty access unit: no start code"),
        (SPS, "no Annex-B start code in 8 bytes"),
        (b"\xff\x00\x00\x01" + SPS, "1 byte(s) before the first start code: ff"),
        (
            b"\x00\x00\x01" + SPS + b"\x00\x00\x01\x00\x00\x00\x01" + PPS,
            "empty NAL unit after the start code at offset 11",
        ),
    ],
)
def test_split_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        h264.split_nals(data)


def test_nal_types_follow_table_7_1() -> None:
    assert h264.nal_type(SPS) is NalType.SEQUENCE_PARAMETER_SET
    assert h264.nal_type(PPS) is NalType.PICTURE_PARAMETER_SET
    assert h264.nal_type(IDR) is NalType.CODED_SLICE_IDR
    assert h264.nal_type(SLICE) is NalType.CODED_SLICE_NON_IDR
    assert h264.nal_type(b"\x06\x05") is NalType.SEI
    assert h264.nal_type(b"\x09\xf0") is NalType.ACCESS_UNIT_DELIMITER
    assert [int(t) for t in NalType] == list(range(32))


def test_nal_type_malformed() -> None:
    with pytest.raises(ValueError, match="^empty NAL unit has no header$"):
        h264.nal_type(b"")
    with pytest.raises(ValueError, match="^NAL header 0xe7: forbidden_zero_bit is set$"):
        h264.nal_type(b"\xe7\x42")


def test_is_idr_and_find_sps() -> None:
    idr_au = h264.join_nals([SPS, PPS, IDR])
    p_au = h264.join_nals([SLICE])
    assert h264.is_idr(idr_au)
    assert not h264.is_idr(p_au)
    assert h264.find_sps(idr_au) == SPS
    assert h264.find_sps(p_au) is None


def test_profile_level_id_from_a_real_x264_sps() -> None:
    encoder = X264Encoder(VideoSettings(640, 360, 30, 1_000_000))
    picture = np.full((540, 640), 128, dtype=np.uint8)
    (unit,) = encoder.encode_yuv(picture)
    sps = h264.find_sps(unit.data)
    assert sps is not None
    plid = h264.profile_level_id(sps)
    # x264 baseline sets constraint_set0+1 (0xc0); level 3.0 (0x1e) for 640x360@30.
    assert plid == "42c01e"
    assert h264.is_constrained_baseline(plid)


def test_profile_level_id_malformed() -> None:
    with pytest.raises(ValueError, match="^SPS of 2 byte\\(s\\) is too short: need at least 4$"):
        h264.profile_level_id(b"\x67\x42")
    with pytest.raises(ValueError, match="^NAL unit type 8 \\(PICTURE_PARAMETER_SET\\) is not"):
        h264.profile_level_id(PPS)


@pytest.mark.parametrize(
    ("plid", "expected"),
    [
        ("42e01f", True),  # what browsers offer
        ("42c01e", True),  # what x264 baseline emits
        ("42401f", True),  # constraint_set1 alone is enough
        ("42001f", False),  # plain Baseline: may use FMO/ASO
        ("4d001f", False),  # Main
        ("4d801f", True),  # Main with constraint_set0
        ("640c1f", False),  # Constrained High is not Constrained Baseline
        ("42f01f", True),  # constraint_set2/3 are "don't care" in Table 5
        ("42e41f", False),  # the low four bits must be zero
    ],
)
def test_is_constrained_baseline(plid: str, expected: bool) -> None:
    assert h264.is_constrained_baseline(plid) is expected


def test_is_constrained_baseline_malformed() -> None:
    with pytest.raises(ValueError, match="^profile-level-id '42e0': need 6 hex digits$"):
        h264.is_constrained_baseline("42e0")
    with pytest.raises(ValueError, match="^profile-level-id '42e0zz': not hexadecimal$"):
        h264.is_constrained_baseline("42e0zz")


def test_parameter_sets_are_put_in_front_of_bare_idrs() -> None:
    inserter = h264.ParameterSetInserter()
    assert inserter.process(h264.join_nals([IDR])) == h264.join_nals([IDR])  # nothing known
    first = h264.join_nals([SPS, PPS, IDR])
    assert inserter.process(first) == first
    assert inserter.process(h264.join_nals([SLICE])) == h264.join_nals([SLICE])
    aud = b"\x09\xf0"
    bare = h264.join_nals([aud, IDR])
    assert h264.split_nals(inserter.process(bare)) == [aud, SPS, PPS, IDR]
