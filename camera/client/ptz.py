"""``peercam ptz``: drive a camera's pan/tilt head from the command line.

Connects like ``peercam view`` (signed offer, this viewer's paired key) but
offers only the ``ptz`` data channel, no video. A move is repeated every
``repeat`` seconds for as long as it is held (the camera stops a move that is
not repeated within a second), then stopped; each command waits for its ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from camera.client.viewer import Connection, ViewerIdentity, ViewError, connect
from camera.ptz_protocol import (
    DEFAULT_SPEED,
    LABEL,
    Ack,
    Availability,
    BadReply,
    Command,
    ErrorReply,
    Move,
    Preset,
    PresetAction,
    Stop,
    encode_command,
    parse_command,
    parse_reply,
)

logger = logging.getLogger(__name__)

MOVES: dict[str, tuple[int, int, int]] = {
    "left": (-1, 0, 0),
    "right": (1, 0, 0),
    "up": (0, 1, 0),
    "down": (0, -1, 0),
    "zoom-in": (0, 0, 1),
    "zoom-out": (0, 0, -1),
}
"""CLI action -> (pan, tilt, zoom)."""
PRESET_ACTIONS = ("goto", "set", "clear")
ACTIONS = (*MOVES, "stop", *PRESET_ACTIONS)


class PtzRefused(ViewError):
    """The camera has no head, or refused a command (not authorized, rate limited)."""


def command_for(action: str, preset: int | None = None, speed: int = DEFAULT_SPEED) -> Command:
    """The command a CLI action names; ValueError for a bad action, speed or preset."""
    command: Command
    if action in PRESET_ACTIONS:
        if preset is None:
            raise ValueError(f"{action} needs a preset number")
        command = Preset(cast(PresetAction, action), preset)
    elif preset is not None:
        raise ValueError(f"{action} takes no preset number")
    elif action in MOVES:
        pan, tilt, zoom = MOVES[action]
        command = Move(pan, tilt, zoom, speed)
    elif action == "stop":
        command = Stop()
    else:
        raise ValueError(f"unknown action {action!r} ({', '.join(ACTIONS)})")
    # Checked here as the camera will check it, so a typo fails before connecting.
    parse_command(encode_command(command))
    return command


@dataclass
class PtzResult:
    """What the camera said."""

    available: bool = False
    acks: list[str] = field(default_factory=list)
    """The op of every acknowledged command, in order."""

    def as_dict(self) -> dict[str, Any]:
        return {"available": self.available, "acks": self.acks}


class _Replies:
    """The channel's messages, parsed, in order; None when the channel closed."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    def attach(self, channel: Any) -> None:
        channel.on("message", self._queue.put_nowait)
        channel.on("close", lambda: self._queue.put_nowait(None))

    async def next(self, timeout: float) -> Availability | Ack | ErrorReply:
        try:
            async with asyncio.timeout(timeout):
                data = await self._queue.get()
        except TimeoutError:
            raise ViewError(f"no reply on the pan/tilt channel within {timeout:.0f} s") from None
        if data is None:
            raise ViewError("the camera closed the pan/tilt channel")
        try:
            return parse_reply(data)
        except BadReply as exc:
            raise ViewError(f"camera sent a bad pan/tilt reply: {exc}") from None


async def control(
    target: str,
    command: Command,
    *,
    hold: float = 0.5,
    repeat: float = 0.3,
    rendezvous: str | None = None,
    connect_timeout: float = 15.0,
    reply_timeout: float = 5.0,
    ice_servers: list[dict[str, Any]] | None = None,
    identity: ViewerIdentity | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
) -> PtzResult:
    """Send ``command`` (a move is held for ``hold`` seconds, then stopped)."""
    result = PtzResult()
    replies = _Replies()
    channels: list[Any] = []

    def setup(connection: Connection) -> None:
        # Before the offer, so the SCTP m-line is in the SDP the camera checks.
        channel = connection.pc.createDataChannel(LABEL, ordered=True)
        replies.attach(channel)
        channels.append(channel)

    async with connect(
        target,
        setup,
        rendezvous=rendezvous,
        connect_timeout=connect_timeout,
        ice_servers=ice_servers,
        identity=identity,
        tls_ca=tls_ca,
        tls_insecure=tls_insecure,
    ) as _connection:
        channel = channels[0]
        hello = await replies.next(connect_timeout)
        if not isinstance(hello, Availability):
            raise ViewError(f"camera sent {hello!r} before saying whether it has a head")
        result.available = hello.available
        if not hello.available:
            raise PtzRefused("this camera has no pan/tilt head")

        async def send(cmd: Command) -> None:
            channel.send(encode_command(cmd))
            reply = await replies.next(reply_timeout)
            if isinstance(reply, ErrorReply):
                raise PtzRefused(f"camera refused {cmd.op}: {reply.error}")
            if not isinstance(reply, Ack):
                raise ViewError(f"camera sent {reply!r} instead of an ack")
            result.acks.append(reply.op)

        await send(command)
        if isinstance(command, Move) and not command.is_still:
            loop = asyncio.get_running_loop()
            until = loop.time() + hold
            try:
                while (left := until - loop.time()) > 0:
                    await asyncio.sleep(min(repeat, left))
                    if until - loop.time() > 0:
                        await send(command)  # keep the camera's deadman fed
            except BaseException:
                # Stop without waiting (the camera's deadman is the backstop).
                if channel.readyState == "open":
                    with contextlib.suppress(Exception):
                        channel.send(encode_command(Stop()))
                raise
            await send(Stop())
    return result
