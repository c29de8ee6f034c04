"""No client input knocks the rendezvous over (hypothesis).

Arbitrary JSON values and arbitrary Unicode (lone surrogates, NUL, 64 KiB
strings, 60,000 levels of nesting) in every field of every message type, from
cameras and viewers, in any order. Fed to the router without sockets, and to
the real server over real WebSockets. After every sequence the server still
serves: a legitimate register/offer/answer round routes; after the run a real
camera agent registers and a paired viewer gets video. Nothing the server
sends or logs on the way fails to encode as UTF-8.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from camera.client.viewer import view
from camera.identity import DeviceIdentity
from services.rendezvous import RendezvousConfig, start_rendezvous
from services.routing import Close, Peer, Router, Send
from services.signaling import Role, parse
from services.signatures import encode_public_key, register_statement, sign
from tests.conftest import Stack, scaled
from tests.services.messages import TYPES, legal, replaced, string_paths

HOST = "rendezvous.test:8080"

# -- what hostile clients send ----------------------------------------------------------

hostile_text = st.one_of(
    st.text(st.characters(codec=None), max_size=40),  # surrogates, NUL, controls included
    st.builds(lambda text, bad: text + bad, st.text(max_size=8),
              st.characters(categories=["Cs"]) | st.just("\x00")),
    st.text(st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=8),
    st.sampled_from([
        "\ud800", "\udfff", "a\udc80b", "\x00", "v=0\r\n\x00", "v=0\r\n\ud800",
        "x" * 65_536, "\ud800" * 4096, "\x00" * 1000,
    ]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text
    | st.sampled_from([2**64, -(2**63), 10**100, 1e308]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=12,
)

#: Nesting the parser never gets to the bottom of: 60,000 levels is over the
#: size limit; 30,000 fits in 64 KiB and exhausts json's recursion limit.
DEEP = [
    "[" * 60_000 + "]" * 60_000,
    '{"type":"offer","sdp":' + "[" * 30_000 + "]" * 30_000 + "}",
    '{"type":"register","device_id":' + '{"a":' * 13_000 + "1" + "}" * 13_000 + "}",
    "[" * 32_000 + "]" * 32_000,
    '{"type":"offer","timestamp":' + "9" * 5000 + "}",  # past int's 4300-digit limit
]


@st.composite
def frames(draw: st.DrawFn, device: str) -> tuple[Role, str | bytes]:
    """One WebSocket frame and the role of the connection that sends it."""
    kind = draw(st.sampled_from(
        ["string"] * 4 + ["field"] * 2 + ["extra", "whole", "bytes", "deep", "legal"]))
    sender = draw(st.sampled_from([Role.CAMERA, Role.VIEWER]))
    # Mostly the sender's own types (they get furthest); any type, the server's
    # and the other role's included, now and then.
    own = [t for t in TYPES if t[0] is sender]
    obj = legal(*draw(st.sampled_from(own) if draw(st.integers(0, 3)) else st.sampled_from(TYPES)))
    if "device_id" in obj and draw(st.integers(0, 3)):
        obj["device_id"] = device  # aimed at the camera that is online
    if kind == "field":
        name = draw(st.sampled_from(sorted(obj)))
        obj[name] = draw(json_values)
    elif kind == "string":
        paths = string_paths(obj)
        obj = replaced(obj, draw(st.sampled_from(paths)), draw(hostile_text))
    elif kind == "extra":
        obj[draw(hostile_text)] = draw(json_values)
    elif kind == "whole":
        return sender, json.dumps(draw(json_values))
    elif kind == "bytes":
        return sender, draw(st.binary(max_size=300) | st.sampled_from(
            [b"\xed\xa0\x80", b'{"type":"bye","session_id":"\xed\xa0\x80"}', b"\x00" * 64]))
    elif kind == "deep":
        return sender, draw(st.sampled_from(DEEP))
    text = json.dumps(obj)
    return sender, text.encode() if draw(st.booleans()) else text


def sequences(device: str) -> st.SearchStrategy[list[tuple[Role, str | bytes]]]:
    return st.lists(frames(device), min_size=1, max_size=12)


# -- what the server may say and log -------------------------------------------------------


class StrictUTF8(logging.Handler):
    """Formats every record and encodes it as UTF-8, strictly, as a log file would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.failures: list[str] = []
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            self.format(record).encode("utf-8")
        except Exception as exc:  # noqa: BLE001 - any failure to log is what we look for
            self.failures.append(f"{record.name}: {exc!r}")


@pytest.fixture
def strict_log() -> Iterator[StrictUTF8]:
    handler = StrictUTF8()
    services = logging.getLogger("services")
    level = services.level
    services.addHandler(handler)
    services.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        services.removeHandler(handler)
        services.setLevel(level)
    assert handler.failures == []


def utf8(value: Any) -> None:
    """Every string in a decoded JSON value encodes as UTF-8 (no lone surrogate)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            utf8(key)
            utf8(item)
    elif isinstance(value, list):
        for item in value:
            utf8(item)


def check_output(text: str) -> dict[str, Any]:
    """Whatever the server sends is UTF-8 text, once decoded too, and a legal server
    message: what a camera would sign or log from it cannot fail to encode."""
    text.encode("utf-8")
    utf8(json.loads(text))
    message = parse(text, Role.SERVER)
    return {"type": message.type, **message.fields}


# -- the router, without sockets --------------------------------------------------------------

IDENTITY = DeviceIdentity.generate()


def _aimed(role: Role, mtype: str, **fields: Any) -> tuple[Role, str]:
    obj = {**legal(role, mtype), "device_id": IDENTITY.device_id, **fields}
    return role, json.dumps(obj)


#: The known bug class, spelled out: a lone surrogate in a field the server
#: forwards (a pairing name, a trickled candidate, a bye's reason) must stop here.
KNOWN = [
    _aimed(Role.VIEWER, "pair", name="kitchen \ud800"),
    _aimed(Role.VIEWER, "offer", sdp="v=0\r\n\udfff"),
    (Role.VIEWER, json.dumps({"type": "bye", "session_id": "s" * 22, "reason": "\ud800"})),
    (Role.CAMERA, json.dumps({"type": "bye", "session_id": "s" * 22, "reason": "a\x00b"})),
    (Role.CAMERA, json.dumps({"type": "register\ud800"})),
    (Role.VIEWER, DEEP[0]),
    (Role.CAMERA, DEEP[1]),
]


def registration(nonce: str, name: str = HOST, identity: DeviceIdentity = IDENTITY) -> str:
    return json.dumps({
        "type": "register",
        "device_id": identity.device_id,
        "device_key": encode_public_key(identity.private_key.public_key()),
        "signature": sign(identity.private_key,
                          register_statement(name, nonce, identity.device_id)),
    })


def replies(actions: list[Any], peer: Peer) -> list[dict[str, Any]]:
    out = []
    for action in actions:
        assert isinstance(action, (Send, Close))
        if isinstance(action, Send):
            message = check_output(action.text)
            if action.peer is peer:
                out.append(message)
    return out


def legit_round(router: Router, now: float) -> None:
    """A fresh camera registers, a fresh viewer's offer reaches it, its answer comes back."""
    identity = DeviceIdentity.generate()
    camera, viewer = Peer(Role.CAMERA, host="anything"), Peer(Role.VIEWER)
    assert replies(router.connected(camera, now), camera)[0]["type"] == "hello"
    router.connected(viewer, now)
    got = replies(router.received(camera, registration(camera.nonce, identity=identity), now),
                  camera)
    assert got[-1]["type"] == "registered", got
    offer = {**legal(Role.VIEWER, "offer"), "device_id": identity.device_id,
             "session_id": "legit-session-0001"}
    forwarded = replies(router.received(viewer, json.dumps(offer), now), camera)
    assert [m["type"] for m in forwarded] == ["offer"]
    assert forwarded[0]["signature"] == offer["signature"]
    answer = legal(Role.CAMERA, "answer") | {"session_id": "legit-session-0001"}
    back = replies(router.received(camera, json.dumps(answer), now), viewer)
    assert back[0]["type"] == "answer" and back[0]["sdp"] == answer["sdp"]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(sequences(IDENTITY.device_id), st.lists(st.integers(0, 3), min_size=12, max_size=12))
@example(KNOWN, [0] * 12)
def test_the_router_survives_any_sequence(
    strict_log: StrictUTF8, sequence: list[tuple[Role, str | bytes]], senders: list[int]
) -> None:
    router = Router(server_names=[HOST])
    peers = [Peer(Role.CAMERA, host=HOST), Peer(Role.CAMERA, host=HOST),
             Peer(Role.VIEWER), Peer(Role.VIEWER)]
    now = 0.0
    for peer in peers:
        replies(router.connected(peer, now), peer)
    assert replies(router.received(peers[0], registration(peers[0].nonce), now),
                   peers[0])[-1]["type"] == "registered"
    for i, (role, frame) in enumerate(sequence):
        now += 0.5
        candidates = [p for p in peers if p.role is role]
        peer = candidates[senders[i] % len(candidates)]
        replies(router.received(peer, frame, now), peer)
        replies(router.expire(now), peer)
    for peer in peers:
        replies(router.disconnected(peer), peer)
    legit_round(router, now)
    assert strict_log.failures == []


# -- the real server, over WebSockets -----------------------------------------------------------


@dataclass
class ServerThread:
    """The real rendezvous on its own event loop, as a separate process would run it."""

    port: int
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread
    server: Any


def serve_in_thread(config: RendezvousConfig) -> ServerThread:
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        server, runner, port = await start_rendezvous("127.0.0.1", 0, config)
        ready.update(port=port, loop=asyncio.get_running_loop(), stop=asyncio.Event(),
                     server=server)
        started.set()
        try:
            await ready["stop"].wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="rendezvous")
    thread.start()
    assert started.wait(10)
    return ServerThread(ready["port"], ready["loop"], ready["stop"], thread, ready["server"])


class Client:
    """One raw WebSocket client that reconnects when the server closed it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.nonce = ""

    async def open(self) -> None:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0)
        hello = check_output((await self.ws.receive(timeout=scaled(5))).data)
        assert hello["type"] == "hello"
        self.nonce = hello["nonce"]

    async def send(self, frame: str | bytes) -> None:
        if self.ws is None or self.ws.closed:
            await self.open()
        assert self.ws is not None
        try:
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            self.ws = None  # closed by the server (a refused registration): reopen next time

    async def drain(self) -> None:
        """Read what the server sent until it goes quiet; all of it must be legal."""
        while self.ws is not None and not self.ws.closed:
            try:
                msg = await self.ws.receive(timeout=0.05)
            except TimeoutError:
                return
            if msg.type is aiohttp.WSMsgType.TEXT:
                check_output(msg.data)
            else:
                return

    async def expect(self, mtype: str, session_id: str | None = None) -> dict[str, Any]:
        """The next ``mtype`` (for ``session_id``), skipping what the hostile frames caused."""
        assert self.ws is not None
        async with asyncio.timeout(scaled(5)):
            while True:
                msg = await self.ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                message = check_output(msg.data)
                if message["type"] == mtype and message.get("session_id") == session_id:
                    return message

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def hostile_then_legit(port: int, sequence: list[tuple[Role, str | bytes]]) -> None:
    base = f"ws://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=scaled(30))
    async with aiohttp.ClientSession(timeout=timeout) as http:
        online = Client(http, f"{base}/ws/camera")  # the camera the frames aim at
        await online.open()
        await online.send(registration(online.nonce, name=f"127.0.0.1:{port}"))
        await online.expect("registered")
        clients = {Role.CAMERA: Client(http, f"{base}/ws/camera"),
                   Role.VIEWER: Client(http, f"{base}/ws/viewer")}
        for role, frame in sequence:
            await clients[role].send(frame)
        for client in clients.values():
            await client.drain()
            await client.close()
        # Still serving: a viewer's offer reaches the camera, its answer comes back.
        viewer = Client(http, f"{base}/ws/viewer")
        await viewer.open()
        offer = {**legal(Role.VIEWER, "offer"), "device_id": IDENTITY.device_id,
                 "session_id": f"legit-{viewer.nonce[:20]}"}
        await viewer.send(json.dumps(offer))
        await online.expect("offer", offer["session_id"])
        await online.send(json.dumps(legal(Role.CAMERA, "answer")
                                     | {"session_id": offer["session_id"]}))
        await viewer.expect("answer", offer["session_id"])
        await viewer.close()
        await online.close()


def test_the_real_rendezvous_survives_any_sequence(
    strict_log: StrictUTF8, tmp_path: Path, viewer_dir: Path
) -> None:
    # The per-IP connection and per-connection message limits would stop most
    # frames before the parser: opened wide, so everything reaches it.
    config = RendezvousConfig(connection_rate=1e6, connection_burst=1e6, message_rate=1e6,
                              message_burst=1e6)
    served = serve_in_thread(config)
    try:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(sequences(IDENTITY.device_id))
        @example(KNOWN)
        def any_sequence(sequence: list[tuple[Role, str | bytes]]) -> None:
            asyncio.run(hostile_then_legit(served.port, sequence))

        any_sequence()

        async def real_camera_and_viewer() -> None:
            stack = Stack(served.server, f"ws://127.0.0.1:{served.port}", tmp_path)
            try:
                camera = await stack.camera()
                stats = await view(stack.link(camera), seconds=1)
                assert stats.frames > 10
            finally:
                for agent in stack.agents:
                    await agent.close()

        asyncio.run(real_camera_and_viewer())
    finally:
        served.loop.call_soon_threadsafe(served.stop.set)
        served.thread.join(10)
    assert not served.thread.is_alive()
    assert strict_log.records > 0 and strict_log.failures == []



def ws_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455 section 5.2), for a hand-made connection."""
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    length = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | length]) if length < 126
                            else bytes([0x80 | 126]) + length.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return check_output((await reader.readexactly(length)).decode())


def handshake(host: bytes) -> bytes:
    return (b"GET /ws/camera HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def test_a_host_header_that_is_not_utf8_is_only_logged(strict_log: StrictUTF8) -> None:
    """aiohttp decodes header bytes with surrogateescape: the Host a camera connects with
    may hold lone surrogates. It is never signed over or encoded; logging it is safe."""
    server, runner, port = await start_rendezvous("127.0.0.1", 0)
    writers: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(scaled(5)):
            # Signed for the server's name: registered, whatever the Host bytes.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(handshake(b"\xff\xfe\xed\xa0\x80:1"))
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            hello = await read_frame(reader)
            writer.write(ws_frame(registration(hello["nonce"], name=f"127.0.0.1:{port}")))
            assert (await read_frame(reader))["type"] == "registered"
            # Signed for another name: refused and logged (with the Host), no crash.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(handshake(b"\xc3\x28:1"))
            await reader.readuntil(b"\r\n\r\n")
            hello = await read_frame(reader)
            assert any(p.host == "\udcc3(:1" for p in server._sockets)
            writer.write(ws_frame(registration(hello["nonce"], name="evil.test")))
            assert (await read_frame(reader))["code"] == "bad-signature"
        assert list(server.router.cameras) == [IDENTITY.device_id]
        assert strict_log.records > 0 and strict_log.failures == []
    finally:
        for writer in writers:
            writer.close()
        await runner.cleanup()
