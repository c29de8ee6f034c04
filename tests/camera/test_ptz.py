"""Pan/tilt control: the sans-I/O parser, then PtzControl over a real loop:// port and a pty.

The layer below PtzControl is the data channel (faked here with the event emitter
aiortc's RTCDataChannel is built on) and the serial port (real: pyserial's loop://,
and a kernel pty pair). tests/e2e/test_ptz.py runs the same over real peers.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import serial
from pyee.asyncio import AsyncIOEventEmitter

from camera.client.ptz import command_for
from camera.config import HardwareConfig
from camera.ptz import NO_HEAD, NOT_AUTHORIZED, PtzControl, open_head
from camera.ptz_protocol import (
    MAX_MESSAGE_BYTES,
    Ack,
    Availability,
    BadControlMessage,
    BadReply,
    ErrorReply,
    Move,
    Preset,
    Stop,
    encode_command,
    frame_for,
    parse_command,
    parse_reply,
)
from hardware.pelco_d import PelcoD
from tests.conftest import scaled


def h(text: str) -> bytes:
    return bytes.fromhex(text)


STOP = h("ff 01 00 00 00 00 01")
RIGHT = h("ff 01 00 02 20 00 23")
LEFT_FAST = h("ff 01 00 04 3f 00 44")
GOTO_1 = h("ff 01 00 07 00 01 09")

# --- Parser: every op ---------------------------------------------------------------

VALID = [
    ('{"op":"move","pan":1,"tilt":0,"zoom":0,"speed":32}', Move(1, 0, 0, 32)),
    ('{"op":"move","pan":-1,"tilt":1,"zoom":-1,"speed":1}', Move(-1, 1, -1, 1)),
    ('{"op":"move","tilt":-1,"speed":63}', Move(0, -1, 0, 63)),
    ('{"op":"move","zoom":1}', Move(0, 0, 1, 32)),
    ('{"op":"move"}', Move(0, 0, 0, 32)),
    ('{"op":"stop"}', Stop()),
    ('{"op":"preset","action":"goto","preset":1}', Preset("goto", 1)),
    ('{"op":"preset","action":"set","preset":255}', Preset("set", 255)),
    ('{"op":"preset","action":"clear","preset":17}', Preset("clear", 17)),
    (' {"preset": 4, "action": "goto", "op": "preset"} ', Preset("goto", 4)),
]


@pytest.mark.parametrize(("text", "command"), VALID)
def test_parser_accepts_every_op(text: str, command: object) -> None:
    assert parse_command(text) == command


@pytest.mark.parametrize(("text", "command"), VALID)
def test_encode_command_round_trips(text: str, command: Any) -> None:
    assert parse_command(encode_command(command)) == command


BAD = [
    (b'{"op":"stop"}', "binary message: control messages are JSON text"),
    ("x" * 513, "message is 513 bytes, the limit is 512"),
    # 171 three-byte characters: under 512 characters, over 512 bytes.
    ('{"op":"stop","x":"' + "\u20ac" * 171 + '"}', "message is 533 bytes, the limit is 512"),
    ("", "not JSON: Expecting value at character 0"),
    ("{", "not JSON: Expecting property name enclosed in double quotes at character 1"),
    ('{"op":"stop"} x', "not JSON: Extra data at character 14"),
    ("[]", "message must be a JSON object, got list"),
    ('"stop"', "message must be a JSON object, got str"),
    ("null", "message must be a JSON object, got NoneType"),
    ("{}", "missing 'op'"),
    ('{"op":5}', "unknown op 5 (move, stop or preset)"),
    ('{"op":"fly"}', 'unknown op "fly" (move, stop or preset)'),
    ('{"op":"MOVE"}', 'unknown op "MOVE" (move, stop or preset)'),
    ('{"op":"stop","now":true}', "unknown field(s) now for op stop"),
    ('{"op":"move","pan":1,"roll":1,"a":0}', "unknown field(s) a, roll for op move"),
    ('{"op":"move","pan":2}', "pan must be -1, 0 or 1, got 2"),
    ('{"op":"move","tilt":-2}', "tilt must be -1, 0 or 1, got -2"),
    ('{"op":"move","zoom":99}', "zoom must be -1, 0 or 1, got 99"),
    ('{"op":"move","pan":true}', "pan must be an integer, got true"),
    ('{"op":"move","pan":"1"}', 'pan must be an integer, got "1"'),
    ('{"op":"move","pan":1.0}', "pan must be an integer, got 1.0"),
    ('{"op":"move","pan":null}', "pan must be an integer, got null"),
    ('{"op":"move","tilt":NaN}', "tilt must be an integer, got NaN"),
    ('{"op":"move","pan":1,"speed":0}', "speed must be 1..63, got 0"),
    ('{"op":"move","pan":1,"speed":64}', "speed must be 1..63, got 64"),
    ('{"op":"move","pan":1,"speed":255}', "speed must be 1..63, got 255"),
    ('{"op":"move","pan":1,"speed":"fast"}', 'speed must be an integer, got "fast"'),
    ('{"op":"preset","preset":1}', "missing 'action'"),
    ('{"op":"preset","action":"jump","preset":1}',
     'action must be goto, set or clear, got "jump"'),
    ('{"op":"preset","action":7,"preset":1}', "action must be goto, set or clear, got 7"),
    ('{"op":"preset","action":"goto"}', "missing 'preset'"),
    ('{"op":"preset","action":"goto","preset":0}', "preset must be 1..255, got 0"),
    ('{"op":"preset","action":"set","preset":256}', "preset must be 1..255, got 256"),
    ('{"op":"preset","action":"goto","preset":"1"}', 'preset must be an integer, got "1"'),
    ('{"op":"preset","action":"goto","preset":[1]}', "preset must be an integer, got [1]"),
    ('{"op":"move","pan":"' + "x" * 100 + '"}',
     'pan must be an integer, got "' + "x" * 36 + "..."),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_parser_rejects_bad_input_precisely(data: str | bytes, message: str) -> None:
    with pytest.raises(BadControlMessage) as info:
        parse_command(data)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_the_limit_itself_is_accepted() -> None:
    text = '{"op":"stop"}'
    padded = text + " " * (MAX_MESSAGE_BYTES - len(text))
    assert parse_command(padded) == Stop()


FRAMES = [
    (Move(1, 0, 0, 0x20), "ff 01 00 02 20 00 23"),
    (Move(-1, 0, 0, 0x3F), "ff 01 00 04 3f 00 44"),
    (Move(0, 1, 0, 0x10), "ff 01 00 08 00 10 19"),
    (Move(-1, 1, 0, 0x20), "ff 01 00 0c 20 20 4d"),
    (Move(0, 0, 1), "ff 01 00 20 00 00 21"),
    (Move(0, 0, -1), "ff 01 00 40 00 00 41"),
    (Move(0, 0, 0), "ff 01 00 00 00 00 01"),
    (Stop(), "ff 01 00 00 00 00 01"),
    (Preset("set", 1), "ff 01 00 03 00 01 05"),
    (Preset("clear", 1), "ff 01 00 05 00 01 07"),
    (Preset("goto", 1), "ff 01 00 07 00 01 09"),
]


@pytest.mark.parametrize(("command", "expected"), FRAMES)
def test_commands_become_exact_pelco_d_frames(command: Any, expected: str) -> None:
    assert frame_for(command, 1) == h(expected)


def test_cli_actions_become_commands_checked_before_connecting() -> None:
    assert command_for("left") == Move(-1, 0, 0)
    assert command_for("up", speed=63) == Move(0, 1, 0, 63)
    assert command_for("zoom-out") == Move(0, 0, -1)
    assert command_for("stop") == Stop()
    assert command_for("clear", 9) == Preset("clear", 9)
    for args, message in [
        (("goto", None), "goto needs a preset number"),
        (("goto", 256), "preset must be 1..255, got 256"),
        (("left", 3), "left takes no preset number"),
        (("right", None, 64), "speed must be 1..63, got 64"),
        (("fly", None), "unknown action 'fly' (left, right, up, down, zoom-in, zoom-out, "
                        "stop, goto, set, clear)"),
    ]:
        with pytest.raises(ValueError) as info:
            command_for(*args)  # type: ignore[arg-type]
        assert str(info.value) == message


def test_replies_parse_and_bad_replies_are_refused() -> None:
    assert parse_reply('{"type":"ptz","available":true}') == Availability(True)
    assert parse_reply('{"type":"ack","op":"move"}') == Ack("move")
    assert parse_reply('{"type":"error","error":"no"}') == ErrorReply("no")
    assert parse_reply('{"type":"error","error":"no","op":"stop"}') == ErrorReply("no", "stop")
    for bad, message in [
        (b"{}", "binary reply: the camera sends JSON text"),
        ("{", "reply is not JSON: Expecting property name enclosed in double quotes at "
              "character 1"),
        ("[1]", "reply must be a JSON object, got list"),
        ('{"type":"ptz","available":1}', 'not a pan/tilt reply: {"type": "ptz", "available": 1}'),
    ]:
        with pytest.raises(BadReply) as info:
            parse_reply(bad)
        assert str(info.value) == message


# --- PtzControl over loop:// --------------------------------------------------------


class Channel(AsyncIOEventEmitter):
    """What PtzControl uses of aiortc's RTCDataChannel (the same emitter underneath)."""

    def __init__(self, ready_state: str = "open", label: str = "ptz") -> None:
        super().__init__()
        self.label = label
        self.readyState = ready_state
        self.sent: list[dict[str, Any]] = []

    def send(self, data: str) -> None:
        assert self.readyState == "open"
        self.sent.append(json.loads(data))

    def close(self) -> None:
        if self.readyState != "closed":
            self.readyState = "closed"
            self.emit("close")

    def receive(self, message: dict[str, Any] | str | bytes) -> None:
        self.emit("message", message if isinstance(message, str | bytes) else
                  json.dumps(message))

    def replies(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] != "ptz"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A PtzControl on a loop:// head, the port to read back, and who is authorized."""

    def __init__(self, **options: Any) -> None:
        self.port = serial.serial_for_url("loop://", timeout=0)
        self.head = PelcoD(self.port, address=1)
        self.allowed = {"viewer-a", "viewer-b"}
        self.clock = Clock()
        settings: dict[str, Any] = {"rate": 10.0, "clock": self.clock, **options}
        self.ptz = PtzControl(self.head, authorized=lambda key: key in self.allowed, **settings)

    def attach(self, session: str = "s1", key: str | None = "viewer-a") -> Channel:
        channel = Channel()
        self.ptz.attach(channel, session, key)
        return channel

    async def read(self, n: int, timeout: float = 2.0) -> bytes:
        """Exactly n bytes from the wire (fails the test if they do not come)."""
        data = b""
        async with asyncio.timeout(scaled(timeout)):
            while len(data) < n:
                data += self.port.read(n - len(data))
                if len(data) < n:
                    await asyncio.sleep(0.005)
        return data

    async def quiet(self, seconds: float = 0.15) -> bytes:
        """Whatever arrives within ``seconds`` (used to assert that nothing does)."""
        await asyncio.sleep(seconds)
        return bytes(self.port.read(self.port.in_waiting))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.ptz.close()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while not condition():
            await asyncio.sleep(0.005)


async def test_authorized_viewer_moves_the_head_with_exact_bytes(rig: Rig) -> None:
    channel = rig.attach()
    assert channel.sent == [{"type": "ptz", "available": True}]
    channel.receive({"op": "move", "pan": 1})
    channel.receive({"op": "move", "pan": -1, "speed": 63})
    channel.receive({"op": "stop"})
    channel.receive({"op": "preset", "action": "goto", "preset": 1})
    channel.receive({"op": "preset", "action": "set", "preset": 3})
    channel.receive({"op": "preset", "action": "clear", "preset": 3})
    channel.receive({"op": "move", "tilt": 1, "zoom": -1, "speed": 16})
    assert await rig.read(7 * 7) == b"".join([
        RIGHT, LEFT_FAST, STOP, GOTO_1,
        h("ff 01 00 03 00 03 07"), h("ff 01 00 05 00 03 09"), h("ff 01 00 48 00 10 59"),
    ])
    await until(lambda: len(channel.replies()) == 7)
    # In order, and each ack only once its frame was written.
    assert [r["op"] for r in channel.replies()] == [
        "move", "move", "stop", "preset", "preset", "preset", "move"]
    assert all(r["type"] == "ack" for r in channel.replies())
    assert rig.ptz.frames_written == 7 and rig.ptz.moving == "s1"


async def test_viewer_not_in_the_acl_writes_nothing(rig: Rig) -> None:
    channel = rig.attach(key="stranger")
    channel.receive({"op": "move", "pan": 1})
    channel.receive({"op": "preset", "action": "goto", "preset": 1})
    assert await rig.quiet() == b""
    assert channel.replies() == [{"type": "error", "error": NOT_AUTHORIZED}] * 2
    assert rig.ptz.refused == 2 and rig.ptz.frames_written == 0
    # No key at all (not from a signed offer) is never authorized either.
    anonymous = rig.attach("s2", key=None)
    anonymous.receive({"op": "stop"})
    assert await rig.quiet() == b""
    assert anonymous.replies() == [{"type": "error", "error": NOT_AUTHORIZED}]


async def test_revocation_mid_session_takes_effect_at_the_next_message(rig: Rig) -> None:
    channel = rig.attach()
    channel.receive({"op": "preset", "action": "goto", "preset": 1})
    assert await rig.read(7) == GOTO_1
    rig.allowed.discard("viewer-a")  # the ACL changed while the session lives
    channel.receive({"op": "move", "pan": 1})
    assert await rig.quiet() == b""
    await until(lambda: len(channel.replies()) == 2)
    assert channel.replies()[1] == {"type": "error", "error": NOT_AUTHORIZED}


async def test_revoked_while_moving_gets_a_stop_and_nothing_else(rig: Rig) -> None:
    channel = rig.attach()
    channel.receive({"op": "move", "pan": 1})
    assert await rig.read(7) == RIGHT
    rig.allowed.clear()
    channel.receive({"op": "move", "pan": 1})
    assert await rig.read(7) == STOP  # the camera's own stop, not the viewer's move
    assert await rig.quiet() == b""
    assert rig.ptz.moving is None


async def test_bad_messages_are_answered_and_write_nothing(rig: Rig) -> None:
    channel = rig.attach()
    channel.receive("{")
    channel.receive(b"\xff\x01")
    channel.receive({"op": "move", "pan": 5})
    assert await rig.quiet() == b""
    assert [r["error"] for r in channel.replies()] == [
        "not JSON: Expecting property name enclosed in double quotes at character 1",
        "binary message: control messages are JSON text",
        "pan must be -1, 0 or 1, got 5",
    ]


async def test_without_a_head_the_camera_says_unavailable() -> None:
    ptz = PtzControl(None, rate=10, authorized=lambda key: True)
    channel = Channel()
    ptz.attach(channel, "s1", "viewer-a")
    channel.receive({"op": "move", "pan": 1})
    channel.receive({"op": "preset", "action": "goto", "preset": 2})
    assert channel.sent == [
        {"type": "ptz", "available": False},
        {"type": "error", "error": NO_HEAD, "op": "move"},
        {"type": "error", "error": NO_HEAD, "op": "preset"},
    ]
    assert ptz.moving is None
    await ptz.close()
    await ptz.close()


async def test_rate_limit_is_per_session_token_bucket() -> None:
    rig = Rig(rate=2.0, burst=2.0)
    try:
        a, b = rig.attach("s1"), rig.attach("s2", key="viewer-b")
        for _ in range(5):
            a.receive({"op": "preset", "action": "goto", "preset": 1})
        b.receive({"op": "preset", "action": "goto", "preset": 1})  # its own bucket
        assert await rig.read(3 * 7) == GOTO_1 * 3
        assert await rig.quiet() == b""
        await until(lambda: len(a.replies()) == 5)
        limited = {"type": "error", "error": "rate limited: at most 2 control messages per second"}
        assert a.replies()[:3] == [limited] * 3  # refusals go out at once, acks after the write
        assert a.replies()[3:] == [{"type": "ack", "op": "preset"}] * 2
        assert rig.ptz.rate_limited == 3
        rig.clock.now += 0.5  # one token back at 2/s
        a.receive({"op": "preset", "action": "goto", "preset": 1})
        a.receive({"op": "preset", "action": "goto", "preset": 1})
        assert await rig.read(7) == GOTO_1
        assert await rig.quiet() == b""
        await until(lambda: len(a.replies()) == 7)
        # The refusal is immediate; the ack waits for the frame to be written.
        assert a.replies()[5:] == [limited, {"type": "ack", "op": "preset"}]
    finally:
        await rig.ptz.close()


async def test_deadman_stops_a_move_that_is_not_repeated() -> None:
    rig = Rig(move_timeout=0.2)
    try:
        channel = rig.attach()
        # Repeated faster than the timeout: it keeps moving.
        for _ in range(5):
            channel.receive({"op": "move", "pan": 1})
            await asyncio.sleep(0.08)
        assert await rig.read(5 * 7) == RIGHT * 5
        assert rig.ptz.deadman_stops == 0
        # Then the viewer goes quiet (tab frozen, network gone): the camera stops it.
        assert await rig.read(7, timeout=1.0) == STOP
        assert rig.ptz.deadman_stops == 1 and rig.ptz.moving is None
        assert await rig.quiet(0.3) == b""  # once
        assert channel.replies()[-1] == {"type": "ack", "op": "move"}  # no ack for our stop
    finally:
        await rig.ptz.close()


async def test_goto_and_stop_disarm_the_deadman() -> None:
    rig = Rig(move_timeout=0.1)
    try:
        channel = rig.attach()
        channel.receive({"op": "move", "tilt": 1, "speed": 16})
        channel.receive({"op": "preset", "action": "goto", "preset": 1})
        assert await rig.read(14) == h("ff 01 00 08 00 10 19") + GOTO_1
        channel.receive({"op": "move", "zoom": 1})
        channel.receive({"op": "move"})  # all axes still: a stop
        assert await rig.read(14) == h("ff 01 00 20 00 00 21") + STOP
        assert await rig.quiet(0.3) == b""
        assert rig.ptz.deadman_stops == 0
    finally:
        await rig.ptz.close()


async def test_session_closed_while_moving_stops_only_its_own_move(rig: Rig) -> None:
    a, b = rig.attach("s1"), rig.attach("s2", key="viewer-b")
    a.receive({"op": "move", "pan": 1})
    assert await rig.read(7) == RIGHT
    rig.ptz.session_closed("s2")  # not the one moving: nothing to do
    assert await rig.quiet() == b""
    rig.ptz.session_closed("s1")
    assert await rig.read(7) == STOP
    rig.ptz.session_closed("s1")  # twice is fine
    assert await rig.quiet() == b""
    a.receive({"op": "move", "pan": 1})  # a forgotten session's channel is not heard
    assert await rig.quiet() == b""
    assert b.replies() == []


async def test_channel_close_counts_as_the_session_ending(rig: Rig) -> None:
    channel = rig.attach()
    channel.receive({"op": "move", "pan": 1})
    assert await rig.read(7) == RIGHT
    channel.close()
    assert await rig.read(7) == STOP


async def test_one_channel_per_session_and_late_open_gets_the_hello(rig: Rig) -> None:
    first = rig.attach("s1")
    second = Channel()
    rig.ptz.attach(second, "s1", "viewer-a")
    assert second.readyState == "closed" and second.sent == []
    late = Channel(ready_state="connecting")
    rig.ptz.attach(late, "s2", "viewer-b")
    assert late.sent == []
    late.readyState = "open"
    late.emit("open")
    assert late.sent == [{"type": "ptz", "available": True}]
    assert first.sent == [{"type": "ptz", "available": True}]


async def test_close_stops_a_moving_head_joins_the_writer_and_is_idempotent() -> None:
    master, slave = os.openpty()
    try:
        port = serial.Serial(os.ttyname(slave), baudrate=2400)
        ptz = PtzControl(PelcoD(port, address=1), rate=10, authorized=lambda key: True)
        channel = Channel()
        ptz.attach(channel, "s1", "viewer-a")
        channel.receive({"op": "move", "pan": 1})
        await ptz.close()
        assert not port.is_open and ptz.head is not None and ptz.head.closed
        assert ptz._writer is not None and ptz._writer.done()
        # The move and then the camera's own stop reached the line before the port closed.
        assert read_fd(master, 14) == RIGHT + STOP
        await ptz.close()
        channel.receive({"op": "move", "pan": 1})  # after close: ignored, no error
        late = Channel()
        ptz.attach(late, "s2", "viewer-a")
        assert late.readyState == "closed"
    finally:
        os.close(slave)
        os.close(master)


# --- A pty pair: exact bytes through the kernel, and an unplugged adapter -------------


def read_fd(fd: int, n: int, timeout: float = 2.0) -> bytes:
    data = b""
    while len(data) < n:
        ready, _, _ = select.select([fd], [], [], scaled(timeout))
        if not ready:
            break
        data += os.read(fd, n - len(data))
    return data


async def test_exact_bytes_over_a_pty_and_a_serial_error_keeps_serving() -> None:
    master, slave = os.openpty()
    port = serial.Serial(os.ttyname(slave), baudrate=2400)
    ptz = PtzControl(PelcoD(port, address=0x21), rate=10, authorized=lambda key: True)
    try:
        channel = Channel()
        ptz.attach(channel, "s1", "viewer-a")
        channel.receive({"op": "move", "pan": 1})
        channel.receive({"op": "preset", "action": "goto", "preset": 0xFE})
        channel.receive({"op": "stop"})
        data = await asyncio.to_thread(read_fd, master, 21)
        # pyserial puts the tty in raw mode: 0xFF and friends arrive untouched.
        assert data == h("ff 21 00 02 20 00 43") + h("ff 21 00 07 00 fe 26") + \
            h("ff 21 00 00 00 00 21")
        await until(lambda: len(channel.replies()) == 3)
        # The adapter is unplugged: the other end of the line is gone (EIO on write).
        os.close(master)
        master = -1
        channel.receive({"op": "move", "pan": 1})
        await until(lambda: len(channel.replies()) == 4)
        failed = channel.replies()[3]
        assert failed["type"] == "error" and failed["op"] == "move"
        assert failed["error"].startswith("pan/tilt head failed: ")
        assert ptz.write_errors == 1
        # Still serving: the next message is handled (and fails the same way).
        channel.receive({"op": "stop"})
        await until(lambda: len(channel.replies()) == 5)
        assert channel.replies()[4]["op"] == "stop"
    finally:
        await ptz.close()
        os.close(slave)
        if master >= 0:
            os.close(master)


class GatedPort:
    """A port whose writes wait for the test to let them through (a slow RS-485 line)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.written: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.gate.wait(5)
        self.written.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.gate.set()


async def test_a_backed_up_line_refuses_moves_but_a_stop_overtakes_them() -> None:
    port = GatedPort()
    ptz = PtzControl(PelcoD(port, address=1), rate=100, authorized=lambda key: True,
                     max_pending=2)
    try:
        channel = Channel()
        ptz.attach(channel, "s1", "viewer-a")
        for _ in range(4):  # one in the writer, two queued, one refused
            channel.receive({"op": "move", "pan": 1})
            await asyncio.sleep(0.02)
        assert channel.replies() == [
            {"type": "error", "error": "busy: the pan/tilt line is backed up", "op": "move"}]
        channel.receive({"op": "stop"})  # drops the queued moves
        assert channel.replies()[1:] == [
            {"type": "error", "error": "superseded by a stop", "op": "move"}] * 2
        port.gate.set()
        await until(lambda: len(port.written) == 2)
        assert port.written == [RIGHT, STOP]
    finally:
        await ptz.close()


# --- Opening the configured head ----------------------------------------------------


def test_open_head_from_config(caplog: pytest.LogCaptureFixture) -> None:
    assert open_head(HardwareConfig()) is None
    head = open_head(HardwareConfig(ptz_port="loop://", ptz_address=5, ptz_baudrate=9600))
    assert head is not None and head.address == 5
    head.close()
    assert open_head(HardwareConfig(ptz_port="/dev/ttyNOPE-peercam")) is None
    assert open_head(HardwareConfig(ptz_port="nope://x")) is None
    assert "running without pan/tilt" in caplog.text
