"""The device's status: one typed record for ``peercam status``, the serial console and
the control socket.

The agent builds a :class:`DeviceStatus`; the control socket sends it as JSON
(:meth:`DeviceStatus.as_dict`); ``peercam status`` reads it back with
:meth:`DeviceStatus.from_dict` and prints :func:`format_status`; the serial
console reads the same fields. The LED shows :attr:`DeviceStatus.state`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from camera.errors import PeercamError


class BadStatus(PeercamError, ValueError):
    """A status record that does not have the fields and types this version expects."""


@dataclass(frozen=True, slots=True)
class LinkStatus:
    url: str
    """The rendezvous URL the camera dials."""
    state: str
    """``registered``, ``connecting``, ``no-network`` or ``fault``."""
    connected: bool
    reconnects: int
    network_down: bool
    last_error: str | None = None
    """Why the last attempt failed (None once registered)."""
    recoveries: int = 0
    """Recovery actions the supervisor took on the link (reconnect, rebuild, restart)."""


@dataclass(frozen=True, slots=True)
class NatStatus:
    type: str | None = None
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class SourceStatus:
    kind: str
    fps: float
    frames: int
    last_frame_age: float | None
    restarts: int
    size: str


@dataclass(frozen=True, slots=True)
class ViewerStatus:
    session: str
    """The first 8 characters of the session ID."""
    name: str | None
    fingerprint: str | None
    connected: bool
    pair: str
    """Selected ICE pair as ``local->remote`` candidate types."""
    relayed: bool
    bitrate: int | None
    rtt_ms: float | None
    phase: str = "live"
    """The session's phase on the camera: waiting, answering, live or closing."""
    layer: str | None = None
    """The quality layer the viewer gets ("high", "low"); None without video."""
    quality: str | None = None
    """How its layer is chosen: "auto" (by its loss), "high" or "low" (it asked)."""


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    state: str
    """What the LED shows (camera/state.py)."""
    device_id: str
    uptime: float
    rendezvous: LinkStatus
    nat: NatStatus
    source: SourceStatus
    viewers: tuple[ViewerStatus, ...]
    pairing_open: bool
    viewers_paired: int
    refusals: int
    errors: int = 0
    """Messages whose handling failed unexpectedly (each logged; the camera went on)."""
    tasks: int = 0
    """asyncio tasks alive in the agent's process: back to its idle count once sessions
    end (a count that grows with every session that came and went is a leak)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DeviceStatus:
        """Read back what :meth:`as_dict` wrote; :class:`BadStatus` if it does not fit."""
        if not isinstance(data, dict):
            raise BadStatus("status: not an object")
        return DeviceStatus(
            state=_field(data, "state", str),
            device_id=_field(data, "device_id", str),
            uptime=float(_field(data, "uptime", (int, float))),
            rendezvous=_record(LinkStatus, data.get("rendezvous")),
            nat=_record(NatStatus, data.get("nat")),
            source=_record(SourceStatus, data.get("source")),
            viewers=tuple(_record(ViewerStatus, v) for v in _field(data, "viewers", list)),
            pairing_open=_field(data, "pairing_open", bool),
            viewers_paired=_field(data, "viewers_paired", int),
            refusals=_field(data, "refusals", int),
            errors=_count(data, "errors"),
            tasks=_count(data, "tasks"),
        )


T = TypeVar("T")


def _field(data: dict[str, Any], name: str, kind: Any) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise BadStatus(f"status: {name} is missing or of the wrong type")
    return value


def _count(data: dict[str, Any], name: str) -> int:
    """An optional count (0 when an older camera did not send it)."""
    value = data.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _record(cls: type[T], data: Any) -> T:
    if not isinstance(data, dict):
        raise BadStatus(f"status: {cls.__name__} is not an object")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise BadStatus(f"status: {cls.__name__}: {exc}") from None


def format_status(status: DeviceStatus) -> list[str]:
    """``peercam status`` for people: one fact per line, then one line per viewer."""
    rdv, nat, src = status.rendezvous, status.nat, status.source
    link = {
        "registered": "connected",
        "no-network": "no network",
        "fault": "FAULT",
    }.get(rdv.state, "not connected")
    detail = f"{link}, {rdv.reconnects} reconnects"
    if rdv.recoveries:
        detail += f", {rdv.recoveries} recoveries"
    if rdv.last_error and not rdv.connected:
        detail += f"; last error: {rdv.last_error}"
    lines = [
        f"state:       {status.state}",
        f"device:      {status.device_id}",
        f"rendezvous:  {rdv.url} ({detail})",
        f"nat:         {nat.summary or 'not checked yet'}",
        f"source:      {src.kind} {src.size} at {src.fps} fps "
        f"({src.frames} frames, {src.restarts} restarts)",
        f"pairing:     {'open' if status.pairing_open else 'closed'}; "
        f"{status.viewers_paired} paired viewer(s)",
        f"uptime:      {status.uptime:.0f} s",
        f"viewers:     {len(status.viewers)}",
    ]
    if status.errors:
        lines.insert(-1, f"errors:      {status.errors} message(s) failed (see the log)")
    for v in status.viewers:
        rate = "-" if v.bitrate is None else f"{v.bitrate / 1e6:.2f} Mbit/s"
        rtt = "-" if v.rtt_ms is None else f"{v.rtt_ms:.0f} ms"
        state = v.pair if v.connected else v.phase if v.phase != "live" else "connecting"
        layer = "" if v.layer is None else f" layer {v.layer}" + (
            f" ({v.quality})" if v.quality else "")
        lines.append(f"  {v.name or '?'} [{v.fingerprint or '-'}] {state} "
                     f"{'(relayed) ' if v.relayed else ''}{rate} rtt {rtt}{layer}")
    return lines
