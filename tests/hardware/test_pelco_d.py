"""Pelco-D codec (bytes in, bytes out) and driver over loop:// and a real pty pair."""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterator

import pytest
import serial

from hardware.pelco_d import (
    Frame,
    InvalidCommand,
    MalformedFrame,
    PelcoD,
    PelcoDError,
    PortClosed,
    checksum,
    clear_preset,
    decode,
    encode,
    goto_preset,
    move,
    set_preset,
    stop,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def with_checksum(body_hex: str) -> bytes:
    """FF + body + the correct checksum: lets a test break exactly one other rule."""
    body = h(body_hex)
    return b"\xff" + body + bytes((sum(body) % 256,))


# --- Known frames -----------------------------------------------------------------

KNOWN_FRAMES = [
    # Values from the brief and the Pelco-D command tables cited in hardware/pelco_d.py.
    (move(1, pan=1, pan_speed=0x20), "ff 01 00 02 20 00 23"),
    (move(1, pan=-1, pan_speed=0x3F), "ff 01 00 04 3f 00 44"),
    (move(1, tilt=1, tilt_speed=0x10), "ff 01 00 08 00 10 19"),
    (move(1, tilt=-1, tilt_speed=0x3F), "ff 01 00 10 00 3f 50"),
    (move(1, zoom=1), "ff 01 00 20 00 00 21"),
    (move(1, zoom=-1), "ff 01 00 40 00 00 41"),
    (move(2, pan=-1, tilt=1, pan_speed=0x20, tilt_speed=0x20), "ff 02 00 0c 20 20 4e"),
    (move(1, pan=1, pan_speed=0xFF), "ff 01 00 02 ff 00 02"),
    (stop(1), "ff 01 00 00 00 00 01"),
    (move(1), "ff 01 00 00 00 00 01"),
    (set_preset(1, 1), "ff 01 00 03 00 01 05"),
    (clear_preset(1, 1), "ff 01 00 05 00 01 07"),
    (goto_preset(1, 1), "ff 01 00 07 00 01 09"),
    (goto_preset(255, 255), "ff ff 00 07 00 ff 05"),
    (encode(1, 0x01, 0x00, 0x00, 0x00), "ff 01 01 00 00 00 02"),
]


@pytest.mark.parametrize(("frame", "expected"), KNOWN_FRAMES)
def test_known_frames_encode_exactly(frame: bytes, expected: str) -> None:
    assert frame == h(expected)


@pytest.mark.parametrize(("frame", "expected"), KNOWN_FRAMES)
def test_known_frames_round_trip(frame: bytes, expected: str) -> None:
    decoded = decode(h(expected))
    assert decoded.encode() == frame


def test_checksum_wraps_modulo_256() -> None:
    # 0xFF + 0x00 + 0x04 + 0xFF + 0x3F = 0x241 -> 0x41
    assert checksum(h("ff 00 04 ff 3f")) == 0x41
    assert move(255, pan=-1, tilt=0, pan_speed=0xFF) == h("ff ff 00 04 ff 00 02")
    # exactly 256 wraps to zero
    assert encode(0xFF, 0, 0, 0, 1) == h("ff ff 00 00 00 01 00")


def test_decode_fields_and_directions() -> None:
    frame = decode(h("ff 02 00 0c 20 10 3e"))
    assert frame == Frame(address=2, command1=0, command2=0x0C, data1=0x20, data2=0x10)
    assert (frame.pan, frame.tilt, frame.zoom) == (-1, 1, 0)
    assert not frame.is_stop and not frame.is_extended and frame.extended is None
    right_down_tele = decode(move(3, pan=1, tilt=-1, zoom=1))
    assert (right_down_tele.pan, right_down_tele.tilt, right_down_tele.zoom) == (1, -1, 1)
    wide = decode(move(3, zoom=-1))
    assert wide.zoom == -1
    assert decode(stop(9)).is_stop
    preset = decode(goto_preset(4, 17))
    assert preset.is_extended and preset.extended is not None
    assert preset.extended.name == "GOTO_PRESET" and preset.data2 == 17
    assert (preset.pan, preset.tilt, preset.zoom) == (0, 0, 0)


def test_idle_axis_carries_no_speed() -> None:
    assert move(1, pan=1, pan_speed=0x20, tilt_speed=0x30) == h("ff 01 00 02 20 00 23")
    assert move(1, tilt=1, pan_speed=0x30, tilt_speed=0x20)[4] == 0


# --- Malformed input: every rule, with its message ----------------------------------

MALFORMED = [
    (b"", r"^frame is 0 bytes, expected 7$"),
    (h("ff 01 00 00 00 00"), r"^frame is 6 bytes, expected 7$"),
    (h("ff 01 00 00 00 00 01 00"), r"^frame is 8 bytes, expected 7$"),
    (h("fe 01 00 00 00 00 01"), r"^bad sync byte 0xfe, expected 0xff$"),
    (h("ff 01 00 02 20 00 24"), r"^bad checksum 0x24, expected 0x23$"),
    (with_checksum("00 00 00 00 00"), r"^address 0 is out of range 1\.\.255$"),
    (
        with_checksum("01 00 02 40 00"),
        r"^pan speed 64 is out of range 0\.\.63 \(0x00\.\.0x3f, or 0xff turbo\)$",
    ),
    (with_checksum("01 00 02 fe 00"), r"^pan speed 254 is out of range"),
    (with_checksum("01 00 08 00 40"), r"^tilt speed 64 is out of range 0\.\.63 \(0x00\.\.0x3f\)$"),
    (with_checksum("01 00 08 00 ff"), r"^tilt speed 255 is out of range"),
    (with_checksum("01 60 00 00 00"), r"^command1 0x60 sets reserved bits 5/6$"),
    (with_checksum("01 00 06 20 00"), r"^command2 0x06 sets both PAN_LEFT and PAN_RIGHT$"),
    (with_checksum("01 00 18 00 20"), r"^command2 0x18 sets both TILT_UP and TILT_DOWN$"),
    (with_checksum("01 00 60 00 00"), r"^command2 0x60 sets both ZOOM_TELE and ZOOM_WIDE$"),
    (with_checksum("01 00 07 00 00"), r"^preset 0 is out of range 1\.\.255$"),
    (with_checksum("01 00 03 00 00"), r"^preset 0 is out of range 1\.\.255$"),
    (with_checksum("01 00 09 00 01"), r"^unsupported extended command 0x09$"),
    (
        with_checksum("01 01 07 00 01"),
        r"^GOTO_PRESET needs command1 = data1 = 0, got 0x01 and 0x00$",
    ),
    (
        with_checksum("01 00 05 02 01"),
        r"^CLEAR_PRESET needs command1 = data1 = 0, got 0x00 and 0x02$",
    ),
]


@pytest.mark.parametrize(("frame", "message"), MALFORMED)
def test_decode_rejects_malformed(frame: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message) as info:
        decode(frame)
    # Peer misbehaved: catchable as the module root and as the builtin.
    assert isinstance(info.value, PelcoDError)
    assert isinstance(info.value, ValueError)


INVALID_ARGS = [
    (lambda: stop(0), r"^address 0 is out of range 1\.\.255$"),
    (lambda: stop(256), r"^address 256 is out of range 1\.\.255$"),
    (lambda: move(1, pan=1, pan_speed=0x40), r"^pan speed 64 is out of range"),
    (lambda: move(1, pan=1, pan_speed=-1), r"^pan speed -1 is out of range"),
    (lambda: move(1, tilt=1, tilt_speed=0xFF), r"^tilt speed 255 is out of range"),
    (lambda: move(1, pan=2), r"^pan direction 2 is not -1, 0 or \+1$"),
    (lambda: move(1, tilt=-2), r"^tilt direction -2 is not -1, 0 or \+1$"),
    (lambda: move(1, zoom=5), r"^zoom direction 5 is not -1, 0 or \+1$"),
    (lambda: set_preset(1, 0), r"^preset 0 is out of range 1\.\.255$"),
    (lambda: clear_preset(1, 256), r"^preset 256 is out of range 1\.\.255$"),
    (lambda: goto_preset(1, -1), r"^preset -1 is out of range 1\.\.255$"),
    (lambda: encode(1, 0x100, 0, 0, 0), r"^command1 256 does not fit in a byte \(0\.\.255\)$"),
    (lambda: encode(1, 0, 0, 0, -1), r"^data2 -1 does not fit in a byte \(0\.\.255\)$"),
]


@pytest.mark.parametrize(("call", "message"), INVALID_ARGS)
def test_encode_rejects_invalid_arguments(call: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidCommand, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)


# --- Driver over loop:// ------------------------------------------------------------


@pytest.fixture
def looped() -> Iterator[tuple[PelcoD, serial.SerialBase]]:
    port = serial.serial_for_url("loop://", timeout=1)
    head = PelcoD(port, address=1)
    yield head, port
    head.close()


def read_exactly(port: serial.SerialBase, n: int) -> bytes:
    data = port.read(n)
    assert len(data) == n, f"read {data.hex(' ')} ({len(data)} of {n} bytes)"
    return bytes(data)


def test_driver_writes_exact_frames_over_loop(looped: tuple[PelcoD, serial.SerialBase]) -> None:
    head, port = looped
    head.pan(1, speed=0x20)
    head.tilt(-1, speed=0x3F)
    head.zoom(1)
    head.move(pan=-1, tilt=1, pan_speed=0x10, tilt_speed=0x08)
    head.stop()
    head.set_preset(3)
    head.clear_preset(3)
    head.goto_preset(1)
    assert read_exactly(port, 8 * 7) == b"".join(
        [
            h("ff 01 00 02 20 00 23"),
            h("ff 01 00 10 00 3f 50"),
            h("ff 01 00 20 00 00 21"),
            h("ff 01 00 0c 10 08 25"),
            h("ff 01 00 00 00 00 01"),
            h("ff 01 00 03 00 03 07"),
            h("ff 01 00 05 00 03 09"),
            h("ff 01 00 07 00 01 09"),
        ]
    )
    assert port.in_waiting == 0


def test_driver_rejects_bad_arguments_without_writing(
    looped: tuple[PelcoD, serial.SerialBase],
) -> None:
    head, port = looped
    with pytest.raises(InvalidCommand):
        head.goto_preset(0)
    with pytest.raises(InvalidCommand):
        head.pan(1, speed=0x40)
    assert port.in_waiting == 0


def test_open_uses_8n1_at_requested_baud() -> None:
    head = PelcoD.open("loop://", address=7, baudrate=9600)
    try:
        port = head._port
        assert isinstance(port, serial.SerialBase)
        assert (port.baudrate, port.bytesize, port.parity, port.stopbits) == (9600, 8, "N", 1)
        head.stop()
        port.timeout = 1
        assert read_exactly(port, 7) == h("ff 07 00 00 00 00 07")
    finally:
        head.close()
    default = PelcoD.open("loop://")
    try:
        assert default._port.baudrate == 2400 and default.address == 1  # type: ignore[attr-defined]
    finally:
        default.close()


def test_close_is_idempotent_and_blocks_further_commands() -> None:
    port = serial.serial_for_url("loop://")
    head = PelcoD(port)
    head.close()
    assert head.closed and not port.is_open
    head.close()  # second close is a no-op, not an error
    with pytest.raises(PortClosed, match=r"^Pelco-D head 1: port is closed$"):
        head.stop()


def test_constructor_rejects_bad_address() -> None:
    with pytest.raises(InvalidCommand, match=r"^address 0 is out of range"):
        PelcoD(serial.serial_for_url("loop://"), address=0)


class ShortWritePort:
    """A port that accepts only part of each write, as a wedged driver might."""

    def __init__(self) -> None:
        self.flushed = False

    def write(self, data: bytes, /) -> int:
        return len(data) - 1

    def flush(self) -> None:
        self.flushed = True

    def close(self) -> None:
        pass


def test_short_write_is_an_error() -> None:
    port = ShortWritePort()
    with pytest.raises(PelcoDError, match=r"^Pelco-D head 1: wrote 6 of 7 bytes$"):
        PelcoD(port).stop()
    assert not port.flushed


# --- Driver over a real pty pair ------------------------------------------------------


def read_fd(fd: int, n: int, timeout: float = 2.0) -> bytes:
    data = b""
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            break
        data += os.read(fd, n - len(data))
    return data


def test_driver_writes_exact_frames_over_pty() -> None:
    master, slave = os.openpty()
    try:
        port = serial.Serial(os.ttyname(slave), baudrate=2400)
        head = PelcoD(port, address=0x21)
        try:
            head.pan(1, speed=0x20)
            head.goto_preset(0xFE)
            head.stop()
            # pyserial puts the tty in raw mode, so 0xFF and friends arrive untouched.
            assert read_fd(master, 21) == b"".join(
                [
                    h("ff 21 00 02 20 00 43"),
                    h("ff 21 00 07 00 fe 26"),
                    h("ff 21 00 00 00 00 21"),
                ]
            )
        finally:
            head.close()
            head.close()
    finally:
        os.close(slave)
        os.close(master)
