"""The pan/tilt data channel (docs/protocol.md, "Pan/tilt data channel"), sans-I/O.

Text in, a validated command (or :class:`BadControlMessage` naming the fault) out;
commands to Pelco-D frames; the camera's replies built and parsed. No asyncio,
no sockets, no serial port: :mod:`camera.ptz` is the adapter that owns those.

Viewer -> camera, one JSON object per text message, at most 512 bytes::

    {"op": "move", "pan": -1|0|1, "tilt": -1|0|1, "zoom": -1|0|1, "speed": 1..63}
    {"op": "stop"}
    {"op": "preset", "action": "goto"|"set"|"clear", "preset": 1..255}

Camera -> viewer::

    {"type": "ptz", "available": true|false}         once, when the channel opens
    {"type": "ack", "op": "move"|"stop"|"preset"}    the frame is on the wire
    {"type": "error", "error": "...", "op"?: ...}    refused or failed; nothing sent
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from camera.errors import PeercamError
from hardware import pelco_d

__all__ = [
    "DEFAULT_SPEED",
    "LABEL",
    "MAX_MESSAGE_BYTES",
    "MAX_SPEED",
    "MIN_SPEED",
    "OPS",
    "PRESET_ACTIONS",
    "Ack",
    "Availability",
    "BadControlMessage",
    "BadReply",
    "Command",
    "ErrorReply",
    "Move",
    "Preset",
    "PresetAction",
    "Reply",
    "Stop",
    "ack",
    "availability",
    "encode_command",
    "error",
    "frame_for",
    "parse_command",
    "parse_reply",
]

LABEL = "ptz"
"""The data channel's label; the camera closes channels with any other label."""
MAX_MESSAGE_BYTES = 512
"""Largest control message (UTF-8 bytes); the biggest valid one is under 80."""
MIN_SPEED = 1
MAX_SPEED = pelco_d.MAX_SPEED
"""Pelco-D proportional speed, data1/data2 0x01..0x3F (0 would not move; turbo is not offered)."""
DEFAULT_SPEED = 0x20
"""Speed of a ``move`` without ``speed``: the middle of the range, as pelco_d's default."""
MIN_PRESET = pelco_d.MIN_PRESET
MAX_PRESET = pelco_d.MAX_PRESET
OPS = ("move", "stop", "preset")
PRESET_ACTIONS = ("goto", "set", "clear")

PresetAction = Literal["goto", "set", "clear"]
Op = Literal["move", "stop", "preset"]


class BadControlMessage(PeercamError, ValueError):
    """The viewer misbehaved: a control message that is not valid (the reply says why)."""


class BadReply(PeercamError, ValueError):
    """The camera misbehaved: a reply on the channel that is not valid."""


# --- Commands -----------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """Start (or keep) moving; the camera stops the head if not repeated in time."""

    pan: int = 0
    """-1 left, 0 still, +1 right."""
    tilt: int = 0
    """-1 down, 0 still, +1 up."""
    zoom: int = 0
    """-1 wide, 0 still, +1 tele."""
    speed: int = DEFAULT_SPEED
    """Pan and tilt speed, 1..63."""

    op: ClassVar[Op] = "move"

    @property
    def is_still(self) -> bool:
        """All axes zero: encodes to the stop frame."""
        return self.pan == self.tilt == self.zoom == 0


@dataclass(frozen=True)
class Stop:
    """Stop every motion."""

    op: ClassVar[Op] = "stop"


@dataclass(frozen=True)
class Preset:
    """Go to, store or forget a preset position (Pelco-D extended commands)."""

    action: PresetAction
    preset: int
    """1..255 (the head may support fewer)."""

    op: ClassVar[Op] = "preset"


Command = Move | Stop | Preset

_FIELDS: dict[str, frozenset[str]] = {
    "move": frozenset({"op", "pan", "tilt", "zoom", "speed"}),
    "stop": frozenset({"op"}),
    "preset": frozenset({"op", "action", "preset"}),
}


def _json_name(value: Any) -> str:
    """How a bad value looks in the message: as the viewer wrote it (JSON)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(obj: dict[str, Any], name: str, default: int | None) -> int:
    if name not in obj:
        if default is None:
            raise BadControlMessage(f"missing {name!r}")
        return default
    value = obj[name]
    # bool is an int in Python, but true is not a direction or a speed.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadControlMessage(f"{name} must be an integer, got {_json_name(value)}")
    return value


def _direction(obj: dict[str, Any], name: str) -> int:
    value = _integer(obj, name, 0)
    if value not in (-1, 0, 1):
        raise BadControlMessage(f"{name} must be -1, 0 or 1, got {value}")
    return value


def parse_command(data: str | bytes) -> Command:
    """One message from the channel -> a command, or :class:`BadControlMessage`."""
    if not isinstance(data, str):
        raise BadControlMessage("binary message: control messages are JSON text")
    size = len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise BadControlMessage(f"message is {size} bytes, the limit is {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadControlMessage(f"not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(obj, dict):
        raise BadControlMessage(f"message must be a JSON object, got {type(obj).__name__}")
    if "op" not in obj:
        raise BadControlMessage("missing 'op'")
    op = obj["op"]
    if not isinstance(op, str) or op not in _FIELDS:
        raise BadControlMessage(f"unknown op {_json_name(op)} (move, stop or preset)")
    unknown = sorted(set(obj) - _FIELDS[op])
    if unknown:
        raise BadControlMessage(f"unknown field(s) {', '.join(unknown)} for op {op}")
    if op == "stop":
        return Stop()
    if op == "move":
        speed = _integer(obj, "speed", DEFAULT_SPEED)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise BadControlMessage(f"speed must be {MIN_SPEED}..{MAX_SPEED}, got {speed}")
        return Move(_direction(obj, "pan"), _direction(obj, "tilt"), _direction(obj, "zoom"),
                    speed)
    action = obj.get("action")
    if action not in PRESET_ACTIONS:
        if "action" not in obj:
            raise BadControlMessage("missing 'action'")
        raise BadControlMessage(f"action must be goto, set or clear, got {_json_name(action)}")
    preset = _integer(obj, "preset", None)
    if not MIN_PRESET <= preset <= MAX_PRESET:
        raise BadControlMessage(f"preset must be {MIN_PRESET}..{MAX_PRESET}, got {preset}")
    return Preset(action, preset)


def encode_command(command: Command) -> str:
    """What a viewer sends (the inverse of :func:`parse_command`)."""
    if isinstance(command, Move):
        return json.dumps({"op": "move", "pan": command.pan, "tilt": command.tilt,
                           "zoom": command.zoom, "speed": command.speed})
    if isinstance(command, Preset):
        return json.dumps({"op": "preset", "action": command.action, "preset": command.preset})
    return json.dumps({"op": "stop"})


_PRESET_FRAMES = {
    "goto": pelco_d.goto_preset,
    "set": pelco_d.set_preset,
    "clear": pelco_d.clear_preset,
}


def frame_for(command: Command, address: int) -> bytes:
    """The Pelco-D frame that carries ``command`` to the head at ``address``."""
    if isinstance(command, Move):
        return pelco_d.move(address, command.pan, command.tilt, command.zoom,
                            command.speed, command.speed)
    if isinstance(command, Preset):
        return _PRESET_FRAMES[command.action](address, command.preset)
    return pelco_d.stop(address)


# --- Replies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Availability:
    available: bool
    """False: this camera has no pan/tilt head (or it could not be opened)."""


@dataclass(frozen=True)
class Ack:
    op: str
    """The op whose frame was written."""


@dataclass(frozen=True)
class ErrorReply:
    error: str
    op: str | None = None
    """The op, when the message parsed that far."""


Reply = Availability | Ack | ErrorReply


def availability(available: bool) -> str:
    return json.dumps({"type": "ptz", "available": available})


def ack(op: str) -> str:
    return json.dumps({"type": "ack", "op": op})


def error(text: str, op: str | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "error": text}
    if op is not None:
        body["op"] = op
    return json.dumps(body)


def parse_reply(data: str | bytes) -> Reply:
    """A camera reply -> :class:`Availability`, :class:`Ack` or :class:`ErrorReply`."""
    if not isinstance(data, str):
        raise BadReply("binary reply: the camera sends JSON text")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadReply(f"reply is not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(obj, dict):
        raise BadReply(f"reply must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "ptz" and isinstance(obj.get("available"), bool):
        return Availability(obj["available"])
    if kind == "ack" and isinstance(obj.get("op"), str):
        return Ack(obj["op"])
    if kind == "error" and isinstance(obj.get("error"), str):
        op = obj.get("op")
        return ErrorReply(obj["error"], op if isinstance(op, str) else None)
    raise BadReply(f"not a pan/tilt reply: {_json_name(obj)}")
