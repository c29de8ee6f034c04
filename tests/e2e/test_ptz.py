"""Pan/tilt end to end: real rendezvous, real camera agent, real aiortc viewers with the
``ptz`` data channel, and the agent's real pyserial ``loop://`` head read back byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from camera.agent import CameraAgent
from camera.client.ptz import PtzRefused, command_for, control
from camera.client.viewer import Connection, ViewerIdentity, ViewError, connect
from camera.config import HardwareConfig
from camera.ptz import NOT_AUTHORIZED
from tests.conftest import Stack, scaled


def h(text: str) -> bytes:
    return bytes.fromhex(text)


STOP = h("ff 01 00 00 00 00 01")
RIGHT = h("ff 01 00 02 20 00 23")
LEFT = h("ff 01 00 04 20 00 25")
GOTO_3 = h("ff 01 00 07 00 03 0b")


async def ptz_camera(stack: Stack, **hardware: Any) -> CameraAgent:
    settings = {"ptz_port": "loop://", **hardware}
    camera = await stack.camera(hardware=HardwareConfig(**settings))
    assert camera.ptz.head is not None
    camera.ptz.head._port.timeout = 0  # type: ignore[attr-defined]  # read back without blocking
    return camera


def wire(camera: CameraAgent) -> Any:
    """The far end of the head's loop:// port: what reached the RS-485 line."""
    assert camera.ptz.head is not None
    return camera.ptz.head._port  # type: ignore[attr-defined]


async def read(camera: CameraAgent, n: int, timeout: float = 3.0) -> bytes:
    data = b""
    async with asyncio.timeout(scaled(timeout)):
        while len(data) < n:
            data += wire(camera).read(n - len(data))
            if len(data) < n:
                await asyncio.sleep(0.005)
    return data


async def nothing_more(camera: CameraAgent, seconds: float = 0.3) -> bytes:
    await asyncio.sleep(seconds)
    port = wire(camera)
    return bytes(port.read(port.in_waiting))


class Remote:
    """A viewer's end of the ``ptz`` channel."""

    def __init__(self) -> None:
        self.channel: Any = None
        self.connection: Connection | None = None
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def setup(self, connection: Connection) -> None:
        self.channel = connection.pc.createDataChannel("ptz", ordered=True)
        self.channel.on("message", lambda data: self._replies.put_nowait(json.loads(data)))

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    async def reply(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(scaled(timeout)):
            return await self._replies.get()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return await self.reply()


@contextlib.asynccontextmanager
async def remote(
    stack: Stack, camera: CameraAgent, identity: ViewerIdentity | None = None
) -> AsyncIterator[Remote]:
    r = Remote()
    async with connect(stack.link(camera), r.setup, identity=identity,
                       connect_timeout=scaled(10)) as connection:
        r.connection = connection
        assert await r.reply(10) == {"type": "ptz", "available": True}
        yield r


async def test_paired_viewer_moves_the_head_with_exact_bytes(stack: Stack) -> None:
    camera = await ptz_camera(stack)
    async with remote(stack, camera) as r:
        assert await r.request({"op": "move", "pan": 1}) == {"type": "ack", "op": "move"}
        assert await r.request({"op": "stop"}) == {"type": "ack", "op": "stop"}
        assert await r.request({"op": "preset", "action": "goto", "preset": 3}) == {
            "type": "ack", "op": "preset"}
        assert await read(camera, 21) == RIGHT + STOP + GOTO_3
        # Bad input is answered, never written.
        reply = await r.request({"op": "move", "pan": 9})
        assert reply == {"type": "error", "error": "pan must be -1, 0 or 1, got 9"}
        assert await nothing_more(camera) == b""
    # The video is untouched: the session was served like any other.
    assert camera.ptz.frames_written == 3


async def test_viewer_revoked_mid_session_is_ignored(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera = await ptz_camera(stack)
    # The agent's once-a-second sweep would end the session soon after; the ACL
    # check on every message is what holds in between, so keep the sweep out of it.
    monkeypatch.setattr(camera, "end_revoked_sessions", lambda: 0)
    async with remote(stack, camera) as r:
        assert (await r.request({"op": "preset", "action": "goto", "preset": 3}))["type"] == "ack"
        assert await read(camera, 7) == GOTO_3
        assert camera.acl.revoke(stack.viewer.key)
        assert await r.request({"op": "move", "pan": 1}) == {
            "type": "error", "error": NOT_AUTHORIZED}
        assert await r.request({"op": "stop"}) == {"type": "error", "error": NOT_AUTHORIZED}
        assert await nothing_more(camera) == b""
        assert len(camera.sessions) == 1  # still streaming: only control is refused
    assert camera.ptz.refused == 2


async def test_viewer_not_in_the_acl_never_gets_a_channel(stack: Stack, tmp_path: Path) -> None:
    camera = await ptz_camera(stack)
    stranger = ViewerIdentity.load_or_create(tmp_path / "stranger")
    with pytest.raises(ViewError, match="not authorized"):
        async with remote(stack, camera, identity=stranger):
            pass
    # Refused at the offer (a bye), before any WebRTC: no session, no channel, no bytes.
    assert camera.sessions == {} and camera.refusals == 1
    assert camera.ptz.refused == 0
    assert await nothing_more(camera) == b""


async def test_flood_is_rate_limited_and_the_line_stays_bounded(stack: Stack) -> None:
    camera = await ptz_camera(stack, ptz_rate=5.0)
    async with remote(stack, camera) as r:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(60):
            r.send({"op": "preset", "action": "goto", "preset": 3})
        replies = [await r.reply() for _ in range(60)]
        elapsed = loop.time() - started
    acks = [x for x in replies if x["type"] == "ack"]
    refusal = {"type": "error", "error": "rate limited: at most 5 control messages per second"}
    limited = [x for x in replies if x == refusal]
    assert len(acks) + len(limited) == 60
    assert 5 <= len(acks) <= 5 + 5 * elapsed + 1, (len(acks), elapsed)
    assert await read(camera, 7 * len(acks)) == GOTO_3 * len(acks)
    assert await nothing_more(camera) == b""
    assert camera.ptz.rate_limited == len(limited)


async def test_session_ending_mid_move_stops_the_head_at_once(stack: Stack) -> None:
    camera = await ptz_camera(stack)
    loop = asyncio.get_running_loop()
    async with remote(stack, camera) as r:
        assert await r.request({"op": "move", "pan": -1}) == {"type": "ack", "op": "move"}
        assert await read(camera, 7) == LEFT
        left_at = loop.time()
    # The bye ends the session on the camera, which stops the head it was moving,
    # well before the 1 s deadman would have.
    assert await read(camera, 7, timeout=0.8) == STOP
    assert loop.time() - left_at < scaled(0.8)
    assert camera.ptz.deadman_stops == 0
    assert await nothing_more(camera) == b""


async def test_camera_without_a_head_says_so(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    from camera.cli import build_parser
    from camera.cli.client import ptz_command

    camera = await stack.camera()
    assert camera.ptz.head is None
    with pytest.raises(PtzRefused, match="no pan/tilt head"):
        await control(stack.link(camera), command_for("left"), connect_timeout=scaled(10))
    # The session was an ordinary, authorized one: nothing else went wrong.
    assert camera.refusals == 0
    # The command's handler: a clear message and a non-zero exit.
    args = build_parser().parse_args(["ptz", stack.link(camera), "goto", "2", "--json"])
    with pytest.raises(PtzRefused, match="no pan/tilt head"):
        await ptz_command(args)  # main() prints it as one line, exit status 1
    out, _err = capsys.readouterr()
    assert json.loads(out) == {"error": "this camera has no pan/tilt head"}


async def test_peercam_ptz_cli_moves_the_head(stack: Stack, viewer_dir: Path) -> None:
    camera = await ptz_camera(stack)
    env = {**os.environ, "PEERCAM_ICE_ADDRESSES": "127.0.0.1", "PEERCAM_LOG_LEVEL": "WARNING",
           "PEERCAM_VIEWER_DIR": str(viewer_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera.cli", "ptz", stack.link(camera), "right", "--for", "0.7",
        "--json", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(30)):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    # Held for 0.7 s: repeated every 0.3 s (the camera's deadman is fed), then stopped.
    moves = len(result["acks"]) - 1
    assert result == {"available": True, "acks": ["move"] * moves + ["stop"]}
    assert 2 <= moves <= 3, result
    assert await read(camera, 7 * (moves + 1)) == RIGHT * moves + STOP
    assert await nothing_more(camera) == b""
    # And the function behind it, for a preset.
    done = await control(stack.link(camera), command_for("goto", 3), connect_timeout=scaled(10))
    assert done.acks == ["preset"]
    assert await read(camera, 7) == GOTO_3
