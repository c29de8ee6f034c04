"""Annex-B H.264 helpers: split access units, name NAL units, read profile-level-id.

Sans-I/O: bytes in, values out. References are to ITU-T H.264 (04/2017) and
RFC 6184 (RTP payload format for H.264).
"""

from __future__ import annotations

import enum
import re

#: Annex B.1: a NAL unit is preceded by 0x000001 (optionally one more zero byte).
START_CODE = b"\x00\x00\x01"
_START_CODE_RE = re.compile(b"\x00\x00\x01")


class NalType(enum.IntEnum):
    """nal_unit_type, H.264 section 7.4.1, Table 7-1."""

    UNSPECIFIED_0 = 0
    CODED_SLICE_NON_IDR = 1
    CODED_SLICE_DATA_PARTITION_A = 2
    CODED_SLICE_DATA_PARTITION_B = 3
    CODED_SLICE_DATA_PARTITION_C = 4
    CODED_SLICE_IDR = 5
    SEI = 6
    SEQUENCE_PARAMETER_SET = 7
    PICTURE_PARAMETER_SET = 8
    ACCESS_UNIT_DELIMITER = 9
    END_OF_SEQUENCE = 10
    END_OF_STREAM = 11
    FILLER_DATA = 12
    SEQUENCE_PARAMETER_SET_EXTENSION = 13
    PREFIX_NAL_UNIT = 14
    SUBSET_SEQUENCE_PARAMETER_SET = 15
    DEPTH_PARAMETER_SET = 16
    RESERVED_17 = 17
    RESERVED_18 = 18
    CODED_SLICE_AUXILIARY = 19
    CODED_SLICE_EXTENSION = 20
    CODED_SLICE_EXTENSION_DEPTH_VIEW = 21
    RESERVED_22 = 22
    RESERVED_23 = 23
    UNSPECIFIED_24 = 24
    UNSPECIFIED_25 = 25
    UNSPECIFIED_26 = 26
    UNSPECIFIED_27 = 27
    UNSPECIFIED_28 = 28
    UNSPECIFIED_29 = 29
    UNSPECIFIED_30 = 30
    UNSPECIFIED_31 = 31


#: RFC 6184 section 8.1, Table 5: (profile_idc, mask, value) over the constraint
#: flags byte (profile-iop) that together mean Constrained Baseline.
_CONSTRAINED_BASELINE: tuple[tuple[int, int, int], ...] = (
    (0x42, 0b0100_1111, 0b0100_0000),  # Baseline with constraint_set1_flag
    (0x4D, 0b1000_1111, 0b1000_0000),  # Main with constraint_set0_flag
    (0x58, 0b1100_1111, 0b1100_0000),  # Extended with constraint_set0+1_flag
)


def split_nals(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream into NAL units (without start codes).

    Accepts 3- and 4-byte start codes; trailing zero bytes (Annex B
    trailing_zero_8bits, or the first byte of a 4-byte start code) are dropped.
    """
    data = bytes(data)
    if not data:
        raise ValueError("empty access unit: no start code")
    starts = [m.end() for m in _START_CODE_RE.finditer(data)]
    if not starts:
        raise ValueError(f"no Annex-B start code in {len(data)} bytes")
    leading = data[: starts[0] - len(START_CODE)]
    if leading.strip(b"\x00"):
        raise ValueError(f"{len(leading)} byte(s) before the first start code: {leading[:8].hex()}")
    nals: list[bytes] = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] - len(START_CODE) if i + 1 < len(starts) else len(data)
        nal = data[begin:end].rstrip(b"\x00")
        if not nal:
            raise ValueError(f"empty NAL unit after the start code at offset {begin - 3}")
        nals.append(nal)
    return nals


def nal_type(nal: bytes) -> NalType:
    """nal_unit_type of one NAL unit (no start code), from its header (7.3.1)."""
    if not nal:
        raise ValueError("empty NAL unit has no header")
    header = nal[0]
    if header & 0x80:
        raise ValueError(f"NAL header 0x{header:02x}: forbidden_zero_bit is set")
    return NalType(header & 0x1F)


def nal_types(access_unit: bytes) -> list[NalType]:
    """The NAL unit types of an Annex-B access unit, in order."""
    return [nal_type(nal) for nal in split_nals(access_unit)]


def is_idr(access_unit: bytes) -> bool:
    """True if the access unit carries an IDR slice (nal_unit_type 5)."""
    return NalType.CODED_SLICE_IDR in nal_types(access_unit)


def find_sps(access_unit: bytes) -> bytes | None:
    """The first sequence parameter set NAL unit of the access unit, or None."""
    for nal in split_nals(access_unit):
        if nal_type(nal) is NalType.SEQUENCE_PARAMETER_SET:
            return nal
    return None


def profile_level_id(sps_nal: bytes) -> str:
    """RFC 6184 profile-level-id (6 hex digits) from an SPS NAL unit (no start code).

    The three bytes after the NAL header are profile_idc, the constraint_set
    flags byte and level_idc (H.264 7.3.2.1.1).
    """
    if len(sps_nal) < 4:
        raise ValueError(f"SPS of {len(sps_nal)} byte(s) is too short: need at least 4")
    kind = nal_type(sps_nal)
    if kind is not NalType.SEQUENCE_PARAMETER_SET:
        raise ValueError(f"NAL unit type {int(kind)} ({kind.name}) is not an SPS (7)")
    return sps_nal[1:4].hex()


def is_constrained_baseline(profile_level_id: str) -> bool:
    """True if an RFC 6184 profile-level-id means Constrained Baseline (Table 5)."""
    if len(profile_level_id) != 6:
        raise ValueError(f"profile-level-id {profile_level_id!r}: need 6 hex digits")
    try:
        raw = bytes.fromhex(profile_level_id)
    except ValueError:
        raise ValueError(f"profile-level-id {profile_level_id!r}: not hexadecimal") from None
    profile_idc, iop = raw[0], raw[1]
    return any(
        profile_idc == idc and iop & mask == value for idc, mask, value in _CONSTRAINED_BASELINE
    )


def join_nals(nals: list[bytes]) -> bytes:
    """An Annex-B access unit from NAL units, each behind a 4-byte start code."""
    return b"".join(b"\x00" + START_CODE + nal for nal in nals)


class ParameterSetInserter:
    """Puts the latest SPS/PPS in front of every IDR that arrives without them.

    A viewer can only start decoding at an IDR it can parse, so each IDR access
    unit must carry its parameter sets (sources that loop a file or pass a
    camera's stream through cannot rely on the encoder repeating them).
    """

    def __init__(self, sps: list[bytes] | None = None, pps: list[bytes] | None = None) -> None:
        self._sps: list[bytes] = list(sps or [])
        self._pps: list[bytes] = list(pps or [])

    def process(self, access_unit: bytes) -> bytes:
        """Return the access unit, with SPS/PPS prepended if it is a bare IDR."""
        nals = split_nals(access_unit)
        kinds = [nal_type(nal) for nal in nals]
        sps = [n for n, k in zip(nals, kinds, strict=True) if k is NalType.SEQUENCE_PARAMETER_SET]
        pps = [n for n, k in zip(nals, kinds, strict=True) if k is NalType.PICTURE_PARAMETER_SET]
        if sps:
            self._sps = sps
        if pps:
            self._pps = pps
        if NalType.CODED_SLICE_IDR not in kinds or (sps and pps):
            return access_unit
        if not (self._sps and self._pps):
            return access_unit  # nothing known yet: the decoder will have to wait
        # An access unit delimiter must stay first (H.264 7.4.1.2.3); SPS before
        # PPS because a PPS is parsed against the SPS it references.
        head = 1 if kinds[0] is NalType.ACCESS_UNIT_DELIMITER else 0
        rest = [n for n in nals[head:] if n not in sps and n not in pps]
        return join_nals(nals[:head] + self._sps + self._pps + rest)
