"""What lets one rendezvous process hold many idle cameras: the heartbeat wheel,
frozen objects that still go when their connection goes, the spread shutdown,
and the connection settings from a config file.

Real servers on loopback; the clients are plain blocking sockets in a thread
(no client-side objects of their own for the collector), speaking just enough
WebSocket to upgrade, ignore or answer pings, and read the server's close.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import gc
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from camera.link import reconnect_hint
from services.drain import DrainReport
from services.heartbeat import BadHeartbeat, HeartbeatWheel
from services.rendezvous import (
    BadRendezvousConfig,
    ConnectionSettings,
    RendezvousConfig,
    load_settings,
    start_rendezvous,
)
from tests.conftest import Stack, scaled

# -- the wheel, no I/O ---------------------------------------------------------------


@dataclass(eq=False)
class Conn:
    id: int
    seen_at: float = 0.0
    pinged_at: float = -1.0


def test_the_wheel_pings_the_quiet_drops_the_silent_and_leaves_the_talkative() -> None:
    wheel: HeartbeatWheel[Conn] = HeartbeatWheel(20.0, 1.0)
    quiet, talkative, silent = Conn(1), Conn(2), Conn(3)
    for conn in (quiet, talkative, silent):
        wheel.add(conn, 0.0)
    pinged: dict[int, list[float]] = {}
    dropped: dict[int, float] = {}
    for second in range(1, 80):
        now = float(second)
        HeartbeatWheel.seen(talkative, now)  # sends something every second
        ping, dead = wheel.tick(now)
        for conn in ping:
            pinged.setdefault(conn.id, []).append(now)
            if conn is quiet:
                HeartbeatWheel.seen(quiet, now + 0.1)  # its pong
        for conn in dead:
            dropped[conn.id] = now
    assert 2 not in pinged and 2 not in dropped
    # Visited once per interval (20 slots of 1 s): pinged every 20 s, never dropped.
    gaps = [b - a for a, b in zip(pinged[1], pinged[1][1:], strict=False)]
    assert len(pinged[1]) >= 3 and set(gaps) == {20}
    assert 1 not in dropped
    # Silent since 0: pinged at its first visit past half an interval, dropped one
    # interval later, and gone from the wheel.
    assert len(pinged[3]) == 1 and 10 <= pinged[3][0] < 30
    assert dropped[3] == pinged[3][0] + 20 and dropped[3] <= 2.5 * 20
    assert len(wheel) == 2


def test_the_wheel_refuses_nonsense_intervals() -> None:
    for interval, tick in ((0.0, 1.0), (float("nan"), 1.0), (5.0, 6.0), (5.0, 0.0)):
        with pytest.raises(BadHeartbeat, match="heartbeat"):
            HeartbeatWheel(interval, tick)


def test_the_reconnect_hint_is_read_only_from_a_restart_close() -> None:
    assert reconnect_hint(1012, "server restarting; reconnect in 2500 ms") == 2.5
    assert reconnect_hint(1012, "reconnect in 999999 ms") == 30.0  # capped
    assert reconnect_hint(1001, "reconnect in 2500 ms") is None
    assert reconnect_hint(1012, "server restarting") is None
    assert reconnect_hint(None, "") is None


# -- settings from a file --------------------------------------------------------------


def test_settings_come_from_the_file_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "rendezvous.toml"
    path.write_text("heartbeat = 10\nconnection_burst = 80\ngc_freeze = false\n")
    settings = load_settings(path)
    assert (settings.heartbeat, settings.connection_burst, settings.gc_freeze) == (10.0, 80.0,
                                                                                   False)
    assert settings.connection_rate == ConnectionSettings().connection_rate == 5.0
    merged = settings.merged({"heartbeat": 30.0, "connection_burst": None})
    assert (merged.heartbeat, merged.connection_burst) == (30.0, 80.0)
    config = merged.applied_to(RendezvousConfig())
    assert (config.heartbeat, config.connection_burst, config.gc_freeze) == (30.0, 80.0, False)
    assert load_settings(None) == ConnectionSettings()


@pytest.mark.parametrize(("text", "error"), [
    ("hartbeat = 3\n", "unknown setting 'hartbeat'"),
    ('heartbeat = "20"\n', "heartbeat = '20': need a number"),
    ("max_pending_per_ip = 1.5\n", "max_pending_per_ip = 1.5: need a whole number"),
    ("connection_rate = 0\n", "connection_rate = 0.0: need more than 0"),
    ("reconnect_spread = -1\n", "reconnect_spread = -1.0: need 0 or more"),
    ("gc_freeze = 1\n", "gc_freeze = 1: need true or false"),
    ("heartbeat = \n", "not TOML"),
])
def test_a_bad_settings_file_is_one_clear_error(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "rendezvous.toml"
    path.write_text(text)
    with pytest.raises(BadRendezvousConfig, match=re.escape(error)):
        load_settings(path)
    with pytest.raises(BadRendezvousConfig, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


# -- real servers, raw clients ---------------------------------------------------------


def _upgrade(port: int, path: str, source: str, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
    sock.settimeout(scaled(10))
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def _open(port: int, n: int, net: int) -> list[socket.socket]:
    """``n`` upgraded sockets, cameras and viewers, 10 per loopback address."""
    return [_upgrade(port, "/ws/camera" if i % 2 else "/ws/viewer", f"127.{net}.0.{1 + i // 10}")
            for i in range(n)]


def _frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every frame until the server closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    out = []
    while len(data) >= 2:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = struct.unpack("!H", data[2:4])[0], 4
        out.append((data[0] & 0x0F, data[at:at + length]))
        data = data[at + length:]
    return out


async def _until(condition: object, seconds: float) -> None:
    async with asyncio.timeout(scaled(seconds)):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_closed_connections_are_freed_with_their_objects_frozen() -> None:
    """Churn: connect N, freeze (as after a registration burst), disconnect them all
    (half with a FIN, half with a reset): every server-side WebSocket and transport
    is freed by reference counting alone, and the frozen objects return to what
    they were, so a frozen process does not keep its departed cameras."""
    n = 120
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), gc_freeze=True, handshake_timeout=0.5))
    try:
        assert server.freezer.freezes >= 1  # at start-up
        # One round first: the thread pool and the per-address limiters are made once.
        for sock in await asyncio.to_thread(_open, port, n, 61):
            sock.close()
        await _until(lambda: not server._sockets and server.budget.open == 0, 10)
        server.freezer.freeze(0.0)
        before = gc.get_freeze_count()
        socks = await asyncio.to_thread(_open, port, n, 61)
        await _until(lambda: len(server._sockets) == n, 10)
        refs: list[weakref.ref[object]] = [weakref.ref(ws) for ws in server._sockets.values()]
        refs += [weakref.ref(t) for t in server._transports.values()]
        server.freezer.freeze(0.0)
        held = gc.get_freeze_count()
        assert held - before >= 30 * n  # what N connections cost, now out of the GC's walks
        for i, sock in enumerate(socks):
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await _until(lambda: not server._sockets and server.budget.open == 0, 10)
        await _until(lambda: all(ref() is None for ref in refs), 5)
        socks.clear()  # the test's own frozen objects
        refs.clear()
        await asyncio.sleep(0.6)  # the cancelled handshake timers leave the loop's heap
        left = gc.get_freeze_count() - before
        assert left < n, f"{left} frozen objects left by {n} closed connections"
        assert len(server.wheel) == 0 and not server._transports
    finally:
        await runner.cleanup()
    assert gc.get_freeze_count() == 0  # a stopped server leaves nothing frozen


async def test_a_burst_of_connections_is_frozen_batch_by_batch() -> None:
    """A registration burst brings more connections in a second than one collection
    should walk: each batch is frozen as soon as it is in, not at the next tick."""
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), gc_freeze=True))
    try:
        server.freezer.batch, server.freezer.period = 8, 3600.0  # no tick within the test
        server.freezer.freeze(0.0)
        freezes, server.freezer.largest = server.freezer.freezes, 0
        socks = await asyncio.to_thread(_open, port, 60, 63)
        await _until(lambda: len(server._sockets) == 60, 10)
        assert server.freezer.freezes - freezes >= 60 // 8
        assert 8 <= server.freezer.largest <= 2 * 8
        for sock in socks:
            sock.close()
        await _until(lambda: not server._sockets, 10)
    finally:
        await runner.cleanup()


async def test_the_heartbeat_drops_a_silent_peer_and_keeps_one_that_answers() -> None:
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), heartbeat=0.4))
    try:
        silent = await asyncio.to_thread(_upgrade, port, "/ws/viewer", "127.0.62.1")
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"http://127.0.0.1:{port}/ws/viewer") as alive:
            await alive.receive(timeout=scaled(5))  # hello
            reader = asyncio.create_task(alive.receive())  # answers pings meanwhile
            frames = await asyncio.wait_for(asyncio.to_thread(_frames, silent), scaled(10))
            assert (0x9, b"") in frames  # it was pinged before it was dropped
            await asyncio.sleep(1.2)  # three intervals: the answering one stays
            assert not reader.done() and len(server._sockets) == 1
            reader.cancel()
        silent.close()
    finally:
        await runner.cleanup()


async def test_shutdown_closes_everyone_with_a_spread_reconnect_hint() -> None:
    n, spread = 40, 2.0
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), shutdown_window=0.3, reconnect_spread=spread))
    socks = await asyncio.to_thread(_open, port, n, 63)
    await _until(lambda: len(server._sockets) == n, 10)
    reads = [asyncio.to_thread(_frames, sock) for sock in socks]
    await runner.cleanup()
    hints = []
    for frames in await asyncio.wait_for(asyncio.gather(*reads), scaled(10)):
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert len(closes) == 1, frames
        code = struct.unpack("!H", closes[0][:2])[0]
        hint = reconnect_hint(code, closes[0][2:].decode())
        assert hint is not None and 0 <= hint <= spread, closes[0]
        hints.append(hint)
    assert len(set(hints)) > n // 2  # spread, not one value for everyone
    for sock in socks:
        sock.close()


async def test_a_camera_waits_the_reconnect_delay_its_stopping_server_asks_for(
        stack: Stack) -> None:
    """The real camera agent, closed with code 1012 and a 1.6 s hint: it comes back no
    sooner (its own backoff here is at most 1 s), and it does come back."""
    camera = await stack.camera()  # backoff cap 1 s
    server = stack.rendezvous
    peer = server.router.cameras[camera.device_id]
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    server._close_now(peer, 1012, "server restarting; reconnect in 1600 ms")
    await _until(lambda: not camera.registered.is_set(), 5)
    await asyncio.wait_for(camera.registered.wait(), scaled(10))
    assert loop.time() - closed_at >= 1.6
    assert server.router.cameras[camera.device_id] is not peer


async def test_shutdown_writes_every_close_frame_before_any_handler_unwinds() -> None:
    """A few hundred connections closed in batches: each gets one close frame (1012,
    a hint within the spread) before its connection goes, the batches are planned
    evenly inside the window, and every handler has unwound by the end."""
    n, window, spread = 300, 0.3, 1.0
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), shutdown_window=window, reconnect_spread=spread))
    try:
        socks = await asyncio.to_thread(_open, port, n, 64)
        await _until(lambda: len(server._sockets) == n, 10)
        report = await server.close_all(window, spread, min_batch=25)
        assert not server._sockets and server.budget.open == 0
    finally:
        await runner.cleanup()
    assert report.connections == n and sum(count for _at, count in report.batches) == n
    planned = [at for at, _count in report.batches]
    assert len(planned) == 6  # 300 / 25 = 12 batches wanted, one per 50 ms of the window
    assert planned[0] == 0.0 and planned == sorted(set(planned)) and planned[-1] < window
    assert report.late >= 0 and 0 <= report.unwound_early <= n
    assert report.unwound_in is not None
    read = await asyncio.wait_for(asyncio.to_thread(lambda: [_frames(s) for s in socks]),
                                  scaled(20))
    for frames in read:
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert len(closes) == 1, frames
        hint = reconnect_hint(struct.unpack("!H", closes[0][:2])[0], closes[0][2:].decode())
        assert hint is not None and 0 <= hint <= spread, closes[0]
    for sock in socks:
        sock.close()


async def test_an_upgraded_connection_keeps_no_http_request_state() -> None:
    """What an idle connection no longer holds (its request's headers, the HTTP
    parser, the keep-alive timer, the sent response headers), and that it still
    serves: its Host is kept on the peer record and a message still gets a reply."""
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",)))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                f"http://127.0.0.1:{port}/ws/viewer", headers={"X-Pad": "x" * 300}) as ws:
            hello = await ws.receive(timeout=scaled(5))
            assert '"hello"' in hello.data
            [(peer, held)] = server._sockets.items()
            request = held._req
            assert request is not None and not request.headers and not held.headers
            assert request.protocol._parser is None
            assert request.protocol._keepalive_handle is None
            assert peer.host == f"127.0.0.1:{port}" and peer.remote == "127.0.0.1"
            await ws.send_str('{"type": "nonsense"}')
            reply = await ws.receive(timeout=scaled(5))
            assert '"error"' in reply.data
    finally:
        await runner.cleanup()



def _masked(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    return (bytes((0x80 | opcode, 0x80 | len(payload))) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _to_the_end(sock: socket.socket, answer: bool) -> tuple[list[tuple[int, bytes]], str]:
    """Every frame until the connection ends (answering a close frame with one, if
    ``answer``), and how it ended: ``eof`` or ``reset``."""
    data, answered = b"", False
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if answer and not answered and any(op == 0x8 for op, _p in _frames_of(data)):
                answered = True
                sock.sendall(_masked(0x8, struct.pack("!H", 1000)))
    except ConnectionResetError:
        return _frames_of(data), "reset"
    return _frames_of(data), "eof"


def _frames_of(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(data) >= 2:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = struct.unpack("!H", data[2:4])[0], 4
        if len(data) < at + length:
            break
        out.append((data[0] & 0x0F, data[at:at + length]))
        data = data[at + length:]
    return out


def test_a_stopped_rendezvous_exits_without_unwinding_and_resets_no_one(
        tmp_path: Path) -> None:
    """``peercam rendezvous`` as shipped, stopped with SIGTERM while it holds
    connections that answer the close at once and connections that read nothing
    for a second (their receive window full of pongs, so the close frame waits in
    the server's send queue) and ping on (so the server has bytes unread): it exits
    by itself, without unwinding, once everything it wrote is through, and every
    client reads its close frame and then a clean end of stream, not a reset. (A
    socket closed with bytes unread sends a reset, and the reset throws away what
    it had not delivered yet: the slow clients' pongs and their close frame.)"""
    log = tmp_path / "rendezvous.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "camera.cli", "rendezvous", "--listen", "127.0.0.1:0",
             "--shutdown-window", "0.2"],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PEERCAM_LOG_LEVEL": "INFO"})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        prompt = [_upgrade(port, "/ws/viewer", "127.65.0.1") for _ in range(4)]
        slow = [_upgrade(port, "/ws/viewer", "127.65.0.2", rcvbuf=2048) for _ in range(4)]
        for sock in slow:
            sock.sendall(b"".join(_masked(0x9, os.urandom(125)) for _ in range(300)))
        time.sleep(0.3)  # the server answers: pongs fill the slow clients' windows
        stop_pinging = threading.Event()

        def ping_on() -> None:
            while not stop_pinging.wait(0.02):
                for sock in slow:
                    with contextlib.suppress(OSError):  # the checks below say what went
                        sock.sendall(_masked(0x9, b"still here"))

        pinger = threading.Thread(target=ping_on)
        pinger.start()
        proc.send_signal(signal.SIGTERM)
        prompt_ends = [_to_the_end(sock, answer=True) for sock in prompt]
        time.sleep(1.0)  # the slow clients keep pinging and read nothing
        stop_pinging.set()
        pinger.join()
        slow_ends = [_to_the_end(sock, answer=False) for sock in slow]
        assert proc.wait(scaled(20)) == 0
    finally:
        proc.kill()
        proc.wait()
    for frames, how in prompt_ends + slow_ends:
        assert how == "eof", (how, frames[-3:])
        closes = [payload for opcode, payload in frames if opcode == 0x8]
        assert len(closes) == 1 and closes[0][:2] == struct.pack("!H", 1012), frames[-3:]
    for frames, _how in slow_ends:
        assert sum(1 for opcode, _p in frames if opcode == 0xA) >= 300  # nothing lost
    for sock in prompt + slow:
        sock.close()
    text = log.read_text()
    said = re.search(r"closed 8 connections in .*exiting without unwinding .*: (\d+) peers "
                     r"ended their side, (\d+) acknowledged everything, (\d+) did not", text)
    assert said is not None, text[-2000:]
    assert int(said.group(3)) == 0 and "rendezvous stopped" in text


async def test_a_parked_shutdown_waits_for_its_peers_and_leaves_nothing_unread() -> None:
    """``close_all(unwind=False)``, as the ``rendezvous`` command stops: no transport is
    closed and no handler unwinds; the wait ends when every peer has answered the close
    and ended its side, and nothing they sent is left unread (what would make the
    kernel's close at exit a reset)."""
    n = 20
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig(
        server_names=("127.0.0.1",), shutdown_window=0.1))
    try:
        socks = await asyncio.to_thread(_open, port, n, 66)
        await _until(lambda: len(server._sockets) == n, 10)

        def answer(sock: socket.socket) -> tuple[list[tuple[int, bytes]], str]:
            ended = _to_the_end(sock, answer=True)
            sock.shutdown(socket.SHUT_WR)  # the client's end of stream after its close
            return ended

        answers = [asyncio.ensure_future(asyncio.to_thread(answer, sock)) for sock in socks]
        report = await server.close_all(0.1, 1.0, unwind=False, peer_wait=scaled(10))
        assert report.drained == DrainReport(watched=n, ended=n, acknowledged=0,
                                             unacknowledged=0)
        assert report.drained_in is not None and report.unwound_in is None
        assert len(server._sockets) == n  # nothing unwound
        for transport in server._transports.values():
            unread = fcntl.ioctl(transport.get_extra_info("socket").fileno(),
                                 termios.FIONREAD, b"\0\0\0\0")
            assert struct.unpack("i", unread)[0] == 0
        for frames, how in await asyncio.wait_for(asyncio.gather(*answers), scaled(10)):
            assert how == "eof"
            assert [p[:2] for op, p in frames if op == 0x8] == [struct.pack("!H", 1012)]
        for transport in list(server._transports.values()):
            transport.close()
        await _until(lambda: not server._sockets, 10)
    finally:
        await runner.cleanup()
    for sock in socks:
        sock.close()
