"""The impaired wire: a user-space Ethernet forwarder between a site's host and its
uplink, run inside the site's wire namespace while the site is impaired.

    python -m services.natlab.wire --host-side h0 --uplink-side u0 --control PATH [--seed N]

It reads whole frames from two AF_PACKET sockets and writes them to the other side
when ``services.natlab.shaping.LinkModel`` says (or never). The model is offered
each frame at the time the kernel received it (SO_TIMESTAMPNS), not when this
process got round to reading it: on a loaded machine the forwarder may go
unscheduled for tens of milliseconds, and frames that arrived spread out over that
time must not meet the rate cap's queue (or start their delay) as one burst.

Frames keep their virtio-net header (PACKET_VNET_HDR), so checksum offload and TCP
segmentation offload of the veths survive the trip: the kernel on the far side
finishes them.

It prints "ready" once its sockets are bound, then serves JSON lines on the Unix
socket ``PATH`` (one request, one reply):

    {"op": "set", "up": {...}, "down": {...}}   -> {"ok": true}
    {"op": "stats"}                             -> {"ok": true, "up": {...}, "down": {...}}
    {"op": "stop"}                              -> sends every frame still delayed at
                                                   once, replies {"ok": true}, exits

"up" is host -> uplink, "down" uplink -> host; the settings are
``Impairment.to_json`` objects and start as "no impairment".

It runs at nice ``NICE`` (root may raise a process's priority): it stands in for
a link, whose timing does not depend on how busy the hosts are, and whoever
started the lab may run at a lower priority (the test script runs the lab suite at
nice 10). Without the right to, it keeps the priority it inherited and says so.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import random
import selectors
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.natlab.shaping import BadImpairment, Impairment, LinkCounters, LinkModel

logger = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
VNET_HDR_BYTES = 10
"""struct virtio_net_hdr in front of every frame read or written."""

MAX_READ = 65_536 + VNET_HDR_BYTES
"""A TSO/GSO frame can be up to 64 KiB; the kernel segments it on the way out."""

READS_PER_WAKEUP = 256
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
UP = "up"
DOWN = "down"

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's SO_TIMESTAMPNS (Python does not name it): every datagram read with
recvmsg carries the kernel's receive time, CLOCK_REALTIME, as a struct timespec."""
_TIMESPEC = struct.Struct("@ll")
STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
"""The ancillary buffer recvmsg needs for that stamp."""
STALE_STAMP = 10.0
"""Seconds; a stamp further than this from the read time is not believed (a clock
step, or a stamp the kernel did not set): the frame counts as arriving when read."""


def enable_receive_stamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp each datagram ``sock`` receives (read them with recvmsg)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def receive_stamp(ancdata: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time (ns, CLOCK_REALTIME) in recvmsg's ancillary data, if any."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return None


class ArrivalClock:
    """When each frame of one queue arrived, on the reader's monotonic clock (sans-I/O).

    ``arrival`` is given the kernel's stamp (realtime) and a pair of readings taken
    together: the monotonic time and the realtime of the read. The frame arrived
    the stamp's age before the read. Arrival times never go back (one FIFO queue).
    """

    def __init__(self) -> None:
        self._last = float("-inf")

    def arrival(self, stamp_ns: int | None, now: float, wall_ns: int) -> float:
        at = now
        if stamp_ns is not None:
            age = (wall_ns - stamp_ns) / 1e9
            # Below 0: it arrived while this wakeup's frames were being read.
            if 0.0 < age <= STALE_STAMP:
                at = now - age
        at = max(at, self._last)
        self._last = at
        return at


def packet_socket(interface: str) -> socket.socket:
    """A raw socket on ``interface`` that reads and writes frames with a vnet header."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    enable_receive_stamps(sock)
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


@dataclass
class _Direction:
    name: str
    source: socket.socket
    sink: socket.socket
    model: LinkModel
    arrivals: ArrivalClock = field(default_factory=ArrivalClock)
    delivered: int = 0
    send_errors: int = 0

    def stats(self) -> dict[str, object]:
        counters: LinkCounters = self.model.counters
        return {
            **counters.to_json(),
            "delivered": self.delivered,
            "send_errors": self.send_errors,
            "settings": self.model.settings.to_json(),
        }


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    direction: _Direction = field(compare=False)
    frame: bytes = field(compare=False)


class Wire:
    """The forwarding loop; one thread, one selector, a heap of delayed frames."""

    def __init__(self, host_side: str, uplink_side: str, control: str, seed: int | None) -> None:
        self._rng = random.Random(seed)
        host = packet_socket(host_side)
        uplink = packet_socket(uplink_side)
        self._directions = {
            UP: _Direction(UP, host, uplink, LinkModel(Impairment(), self._rng)),
            DOWN: _Direction(DOWN, uplink, host, LinkModel(Impairment(), self._rng)),
        }
        self._pending: list[_Pending] = []
        self._seq = 0
        self._selector = selectors.DefaultSelector()
        for direction in self._directions.values():
            self._selector.register(direction.source, selectors.EVENT_READ, direction)
        if os.path.exists(control):
            os.unlink(control)
        self._control_path = control
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(control)
        self._listener.listen(8)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._buffers: dict[socket.socket, bytes] = {}
        self._running = True

    def run(self) -> None:
        try:
            while self._running:
                timeout = None
                if self._pending:
                    timeout = max(0.0, self._pending[0].due - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if isinstance(key.data, _Direction):
                        self._read(key.data)
                    elif key.data == "listener":
                        self._accept()
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._control(key.fileobj)
                self._send_due(time.monotonic())
        finally:
            self._close()

    def _read(self, direction: _Direction) -> None:
        # One pair of clock readings per wakeup: a frame's arrival is its stamp's age
        # before them (the frames read now may have waited in the socket for a while).
        now, wall_ns = time.monotonic(), time.time_ns()
        for _ in range(READS_PER_WAKEUP):
            try:
                frame, ancdata, _flags, address = direction.source.recvmsg(MAX_READ, STAMP_SPACE)
            except BlockingIOError:
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own writes to this side, seen on the way out
            arrived = direction.arrivals.arrival(receive_stamp(ancdata), now, wall_ns)
            due = direction.model.offer(arrived, len(frame) - VNET_HDR_BYTES)
            if due is None:
                continue
            self._seq += 1
            heapq.heappush(self._pending, _Pending(due, self._seq, direction, frame))

    def _send_due(self, now: float) -> None:
        while self._pending and self._pending[0].due <= now:
            self._send(heapq.heappop(self._pending))

    def _send(self, item: _Pending) -> None:
        try:
            item.direction.sink.send(item.frame)
            item.direction.delivered += 1
        except OSError as exc:
            # The far side is down (a link fault) or its queue is full: the frame
            # is lost, as on a wire.
            item.direction.send_errors += 1
            logger.debug("%s: frame lost: %s", item.direction.name, exc)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._buffers[conn] = b""
        self._selector.register(conn, selectors.EVENT_READ, "control")

    def _control(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65_536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers[conn] + data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            reply = self._handle(line)
            conn.setblocking(True)
            conn.settimeout(1.0)
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                self._drop(conn)
                return
            conn.setblocking(False)
        self._buffers[conn] = buffer

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        self._buffers.pop(conn, None)
        conn.close()

    def _handle(self, line: bytes) -> dict[str, object]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError(f"a request is a JSON object, not {line[:80]!r}")
            op = request.get("op")
            if op == "set":
                settings = {
                    name: Impairment.from_json(request.get(name, {})) for name in (UP, DOWN)
                }
                for name, impairment in settings.items():
                    # Frames already delayed keep their times; new ones meet the new link.
                    self._directions[name].model = LinkModel(impairment, self._rng)
                return {"ok": True}
            if op == "stats":
                return {
                    "ok": True,
                    **{name: d.stats() for name, d in self._directions.items()},
                    "pending": len(self._pending),
                }
            if op == "stop":
                while self._pending:
                    self._send(heapq.heappop(self._pending))
                self._running = False
                return {"ok": True}
            raise ValueError(f"unknown op {op!r}")
        except (ValueError, BadImpairment) as exc:
            return {"ok": False, "error": str(exc)}

    def _close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        self._selector.close()
        self._listener.close()
        for direction in self._directions.values():
            direction.source.close()
        try:
            os.unlink(self._control_path)
        except FileNotFoundError:
            pass


NICE = -5
"""The forwarder's scheduling priority (lower is sooner; 0 is the default)."""


def raise_priority(nice: int = NICE) -> bool:
    """Run this process at ``nice``; False (and a log line) if not allowed to."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        logger.warning("could not raise the forwarder's priority to nice %d: its delays "
                    "include the machine's scheduling", nice)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.natlab.wire")
    parser.add_argument("--host-side", required=True)
    parser.add_argument("--uplink-side", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise_priority()
    wire = Wire(args.host_side, args.uplink_side, args.control, args.seed)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    wire.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
