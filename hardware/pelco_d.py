"""Pelco-D: the RS-485 pan/tilt/zoom head protocol, as a sans-I/O codec and a thin driver.

Wire format (Pelco "D" Protocol Manual, TF-0002 v2 rev 1, "The Message Format"),
seven bytes, one start bit, eight data bits, no parity, one stop bit, 2400 baud:

    FF  address  command1  command2  data1  data2  checksum

The checksum is the sum of bytes 2..6 (address through data2) modulo 256; the sync
byte is not included. data1 is the pan speed 0x00..0x3F (0xFF = turbo), data2 the
tilt speed 0x00..0x3F. All command bytes zero means stop. Extended commands set bit
0 of command2 and carry their argument in data2 (presets) with command1 = data1 = 0.

Sources checked for the command table (they agree with each other):

* Pelco "D" Protocol Manual TF-0002 v2.1 (2003), https://fdocuments.in/document/pelcodprotocolmanual21.html
* Pelco DRD14 manual C466M-E §5.2.4 "Extended Commands" (set/clear/go to preset
  00 03 / 00 05 / 00 07, preset in word 6),
  http://camera.manualsonline.com/manuals/mfg/pelco/drd14.html?p=22
* "Pelco D message structure" (command1/command2 bit tables, checksum excludes sync),
  https://shyuanliang.blogspot.com/2012/03/pelco-d-message-structure.html
* NewTek NDI HX PTZ3 manual §3.5.1 and Minrray UV950A manual §5.2 Pelco-D command
  lists (right 0x02, left 0x04, up 0x08, down 0x10, tele 0x20, wide 0x40, focus far
  0x80, focus near command1 0x01; presets 0x03/0x05/0x07 with the ID in byte 6).

Everything above ``PelcoD`` is pure: integers in, bytes out, and back. ``PelcoD`` is
the I/O adapter over any object with ``write``/``flush`` (a pyserial port in
production, ``loop://`` or a pty in tests).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from hardware.errors import HardwareError

__all__ = [
    "CHECKSUM_RANGE",
    "DEFAULT_BAUDRATE",
    "EXTENDED",
    "FRAME_LENGTH",
    "MAX_SPEED",
    "SYNC",
    "TURBO_SPEED",
    "Command1",
    "Command2",
    "ExtendedCommand",
    "Frame",
    "InvalidCommand",
    "MalformedFrame",
    "PelcoD",
    "PelcoDError",
    "PortClosed",
    "SerialPort",
    "checksum",
    "clear_preset",
    "decode",
    "encode",
    "goto_preset",
    "move",
    "set_preset",
    "stop",
]

logger = logging.getLogger(__name__)

# --- Constants, as named in the Pelco-D manual ("The Message Format") -------------

SYNC = 0xFF
"""Byte 1, the synchronisation byte; always 0xFF."""
FRAME_LENGTH = 7
CHECKSUM_RANGE = slice(1, 6)
"""Bytes 2..6 (0-based 1..5): address, command1, command2, data1, data2."""
MIN_ADDRESS = 1
MAX_ADDRESS = 255
MAX_SPEED = 0x3F
"""Highest proportional pan or tilt speed (data1 / data2)."""
TURBO_SPEED = 0xFF
"""data1 only: pan at the head's maximum ("turbo") speed."""
MIN_PRESET = 1
MAX_PRESET = 255
DEFAULT_BAUDRATE = 2400


# --- Errors: one root; peer misbehaved vs. we misbehaved --------------


class PelcoDError(HardwareError):
    """Root of every error this module raises on purpose."""


class MalformedFrame(PelcoDError, ValueError):
    """The peer misbehaved: bytes that are not a well-formed Pelco-D frame."""


class InvalidCommand(PelcoDError, ValueError):
    """We misbehaved: an address, speed, direction or preset that cannot be encoded."""


class PortClosed(PelcoDError, RuntimeError):
    """A command was sent through a :class:`PelcoD` that was already closed."""


# --- Command bits -----------------------------------------------------------------


class Command1(enum.IntFlag):
    """Byte 3. Bits 5 and 6 are reserved and must be zero."""

    FOCUS_NEAR = 0x01
    IRIS_OPEN = 0x02
    IRIS_CLOSE = 0x04
    CAMERA_ON_OFF = 0x08
    AUTO_MANUAL_SCAN = 0x10
    SENSE = 0x80
    """Gives bits 3 and 4 their meaning: set = camera on / auto scan, clear = off / manual."""


class Command2(enum.IntFlag):
    """Byte 4 of a standard command. Bit 0 set means byte 4 is an extended command."""

    PAN_RIGHT = 0x02
    PAN_LEFT = 0x04
    TILT_UP = 0x08
    TILT_DOWN = 0x10
    ZOOM_TELE = 0x20
    ZOOM_WIDE = 0x40
    FOCUS_FAR = 0x80


EXTENDED = 0x01
"""Command2 bit 0: this frame is an extended command (manual, "Extended Commands")."""

COMMAND1_RESERVED = 0x60


class ExtendedCommand(enum.IntEnum):
    """Byte 4 of the extended commands this driver speaks; the argument is data2."""

    SET_PRESET = 0x03
    CLEAR_PRESET = 0x05
    GOTO_PRESET = 0x07


# Direction tables: -1 / 0 / +1 to the command2 bit (none for 0).
PAN_BITS: dict[int, Command2] = {-1: Command2.PAN_LEFT, 0: Command2(0), 1: Command2.PAN_RIGHT}
TILT_BITS: dict[int, Command2] = {-1: Command2.TILT_DOWN, 0: Command2(0), 1: Command2.TILT_UP}
ZOOM_BITS: dict[int, Command2] = {-1: Command2.ZOOM_WIDE, 0: Command2(0), 1: Command2.ZOOM_TELE}

# Opposite bits that must never be set together: the head's behaviour is undefined.
CONFLICTS: tuple[tuple[Command2, Command2], ...] = (
    (Command2.PAN_LEFT, Command2.PAN_RIGHT),
    (Command2.TILT_UP, Command2.TILT_DOWN),
    (Command2.ZOOM_TELE, Command2.ZOOM_WIDE),
)


# --- Frame ------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One decoded Pelco-D frame (the checksum is verified, not kept)."""

    address: int
    """Receiver address, 1..255."""
    command1: int
    """Byte 3: :class:`Command1` bits."""
    command2: int
    """Byte 4: :class:`Command2` bits, or an :class:`ExtendedCommand` when bit 0 is set."""
    data1: int
    """Byte 5: pan speed (standard) or 0 (preset commands)."""
    data2: int
    """Byte 6: tilt speed (standard) or preset number (preset commands)."""

    @property
    def is_extended(self) -> bool:
        return bool(self.command2 & EXTENDED)

    @property
    def is_stop(self) -> bool:
        return self.command1 == 0 and self.command2 == 0

    @property
    def extended(self) -> ExtendedCommand | None:
        """The extended command, or None for a standard frame."""
        return ExtendedCommand(self.command2) if self.is_extended else None

    @property
    def pan(self) -> int:
        """-1 left, 0 none, +1 right."""
        return _direction(self, Command2.PAN_LEFT, Command2.PAN_RIGHT)

    @property
    def tilt(self) -> int:
        """-1 down, 0 none, +1 up."""
        return _direction(self, Command2.TILT_DOWN, Command2.TILT_UP)

    @property
    def zoom(self) -> int:
        """-1 wide, 0 none, +1 tele."""
        return _direction(self, Command2.ZOOM_WIDE, Command2.ZOOM_TELE)

    def encode(self) -> bytes:
        return encode(self.address, self.command1, self.command2, self.data1, self.data2)


def _direction(frame: Frame, minus: Command2, plus: Command2) -> int:
    if frame.is_extended:
        return 0
    if frame.command2 & plus:
        return 1
    if frame.command2 & minus:
        return -1
    return 0


# --- Codec ------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    """Sum of address, command1, command2, data1, data2 modulo 256 (sync excluded)."""
    return sum(body) % 256


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise InvalidCommand(f"{name} {value!r} does not fit in a byte (0..255)")


def _check_address(address: int, error: type[PelcoDError]) -> None:
    # Address 0 is not a receiver address in Pelco-D; receivers are numbered from 1.
    if not MIN_ADDRESS <= address <= MAX_ADDRESS:
        raise error(f"address {address!r} is out of range {MIN_ADDRESS}..{MAX_ADDRESS}")


def _check_pan_speed(speed: int, error: type[PelcoDError]) -> None:
    if not (0 <= speed <= MAX_SPEED or speed == TURBO_SPEED):
        raise error(f"pan speed {speed!r} is out of range 0..63 (0x00..0x3f, or 0xff turbo)")


def _check_tilt_speed(speed: int, error: type[PelcoDError]) -> None:
    if not 0 <= speed <= MAX_SPEED:
        raise error(f"tilt speed {speed!r} is out of range 0..63 (0x00..0x3f)")


def _check_preset(preset: int, error: type[PelcoDError]) -> None:
    if not MIN_PRESET <= preset <= MAX_PRESET:
        raise error(f"preset {preset!r} is out of range {MIN_PRESET}..{MAX_PRESET}")


def encode(address: int, cmd1: int, cmd2: int, data1: int, data2: int) -> bytes:
    """Build one frame from raw fields; only the address and byte ranges are checked."""
    _check_address(address, InvalidCommand)
    for name, value in (("command1", cmd1), ("command2", cmd2), ("data1", data1), ("data2", data2)):
        _check_byte(name, value)
    body = bytes((address, cmd1, cmd2, data1, data2))
    return bytes((SYNC,)) + body + bytes((checksum(body),))


def _direction_bits(table: dict[int, Command2], axis: str, value: int) -> Command2:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise InvalidCommand(f"{axis} direction {value!r} is not -1, 0 or +1") from None


def move(
    address: int,
    pan: int = 0,
    tilt: int = 0,
    zoom: int = 0,
    pan_speed: int = 0x20,
    tilt_speed: int = 0x20,
) -> bytes:
    """Pan (-1 left / +1 right), tilt (-1 down / +1 up) and zoom (-1 wide / +1 tele).

    A speed is sent only for an axis that moves: an idle axis carries 0, so the same
    motion always encodes to the same bytes. All zero is :func:`stop`.
    """
    _check_pan_speed(pan_speed, InvalidCommand)
    _check_tilt_speed(tilt_speed, InvalidCommand)
    cmd2 = (
        _direction_bits(PAN_BITS, "pan", pan)
        | _direction_bits(TILT_BITS, "tilt", tilt)
        | _direction_bits(ZOOM_BITS, "zoom", zoom)
    )
    return encode(address, 0, int(cmd2), pan_speed if pan else 0, tilt_speed if tilt else 0)


def stop(address: int) -> bytes:
    """All command and data bytes zero: every motion stops."""
    return encode(address, 0, 0, 0, 0)


def _preset(address: int, command: ExtendedCommand, preset: int) -> bytes:
    _check_preset(preset, InvalidCommand)
    return encode(address, 0, int(command), 0, preset)


def set_preset(address: int, preset: int) -> bytes:
    """Store the current position as ``preset`` (extended command 0x03)."""
    return _preset(address, ExtendedCommand.SET_PRESET, preset)


def clear_preset(address: int, preset: int) -> bytes:
    """Forget ``preset`` (extended command 0x05)."""
    return _preset(address, ExtendedCommand.CLEAR_PRESET, preset)


def goto_preset(address: int, preset: int) -> bytes:
    """Move to ``preset`` (extended command 0x07)."""
    return _preset(address, ExtendedCommand.GOTO_PRESET, preset)


def decode(frame: bytes) -> Frame:
    """Parse and validate one frame; raise :class:`MalformedFrame` naming the fault."""
    if len(frame) != FRAME_LENGTH:
        raise MalformedFrame(f"frame is {len(frame)} bytes, expected {FRAME_LENGTH}")
    if frame[0] != SYNC:
        raise MalformedFrame(f"bad sync byte {frame[0]:#04x}, expected {SYNC:#04x}")
    expected = checksum(frame[CHECKSUM_RANGE])
    if frame[6] != expected:
        raise MalformedFrame(f"bad checksum {frame[6]:#04x}, expected {expected:#04x}")
    address, cmd1, cmd2, data1, data2 = frame[CHECKSUM_RANGE]
    _check_address(address, MalformedFrame)
    if cmd2 & EXTENDED:
        _validate_extended(cmd1, cmd2, data1, data2)
    else:
        _validate_standard(cmd1, cmd2, data1, data2)
    return Frame(address, cmd1, cmd2, data1, data2)


def _validate_standard(cmd1: int, cmd2: int, data1: int, data2: int) -> None:
    if cmd1 & COMMAND1_RESERVED:
        raise MalformedFrame(f"command1 {cmd1:#04x} sets reserved bits 5/6")
    for a, b in CONFLICTS:
        if cmd2 & a and cmd2 & b:
            raise MalformedFrame(f"command2 {cmd2:#04x} sets both {a.name} and {b.name}")
    _check_pan_speed(data1, MalformedFrame)
    _check_tilt_speed(data2, MalformedFrame)


def _validate_extended(cmd1: int, cmd2: int, data1: int, data2: int) -> None:
    try:
        command = ExtendedCommand(cmd2)
    except ValueError:
        raise MalformedFrame(f"unsupported extended command {cmd2:#04x}") from None
    if cmd1 != 0 or data1 != 0:
        raise MalformedFrame(
            f"{command.name} needs command1 = data1 = 0, got {cmd1:#04x} and {data1:#04x}"
        )
    _check_preset(data2, MalformedFrame)


# --- I/O adapter ------------------------------------------------------------------


class SerialPort(Protocol):
    """What :class:`PelcoD` needs from a port; ``serial.Serial`` satisfies it."""

    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class PelcoD:
    """Drives one head at ``address`` by writing frames to an injected port.

    The port is owned by this object: :meth:`close` closes it (once; twice is safe).
    """

    def __init__(self, port: SerialPort, address: int = 1) -> None:
        _check_address(address, InvalidCommand)
        self._port = port
        self.address = address
        self._closed = False

    @classmethod
    def open(cls, url: str, address: int = 1, baudrate: int = DEFAULT_BAUDRATE) -> PelcoD:
        """Open ``url`` (``/dev/ttyUSB0``, ``loop://``, ``rfc2217://...``) as 8N1."""
        # Imported here so the codec above stays importable without pyserial.
        import serial

        port = serial.serial_for_url(
            url,
            baudrate=baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
        )
        logger.info("Pelco-D head %d on %s at %d baud", address, url, baudrate)
        return cls(port, address)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, frame: bytes) -> None:
        """Write one already-encoded frame and flush it onto the wire."""
        if self._closed:
            raise PortClosed(f"Pelco-D head {self.address}: port is closed")
        written = self._port.write(frame)
        if written is not None and written != len(frame):
            raise PelcoDError(
                f"Pelco-D head {self.address}: wrote {written} of {len(frame)} bytes"
            )
        self._port.flush()
        logger.debug("Pelco-D head %d <- %s", self.address, frame.hex(" "))

    def move(
        self,
        pan: int = 0,
        tilt: int = 0,
        zoom: int = 0,
        pan_speed: int = 0x20,
        tilt_speed: int = 0x20,
    ) -> None:
        self.send(move(self.address, pan, tilt, zoom, pan_speed, tilt_speed))

    def pan(self, direction: int, speed: int = 0x20) -> None:
        """-1 left, +1 right, 0 stop panning (and everything else)."""
        self.move(pan=direction, pan_speed=speed)

    def tilt(self, direction: int, speed: int = 0x20) -> None:
        """-1 down, +1 up."""
        self.move(tilt=direction, tilt_speed=speed)

    def zoom(self, direction: int) -> None:
        """-1 wide, +1 tele."""
        self.move(zoom=direction)

    def stop(self) -> None:
        self.send(stop(self.address))

    def set_preset(self, preset: int) -> None:
        self.send(set_preset(self.address, preset))

    def clear_preset(self, preset: int) -> None:
        self.send(clear_preset(self.address, preset))

    def goto_preset(self, preset: int) -> None:
        self.send(goto_preset(self.address, preset))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._port.close()
