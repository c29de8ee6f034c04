"""Connections a stopping process has said goodbye to, watched until it may exit.

A rendezvous that ends its process at once (``os._exit``) after writing every
close frame leaves the kernel to close the sockets, and the kernel sends a
reset (RST), not a FIN, for a socket closed with bytes still unread in its
receive buffer; a reset also throws away what the socket has not yet
delivered, which may be the close frame itself. So before the process ends,
each connection whose close frame and FIN are written is watched (its own
epoll set, beside the event loop's, with reading paused in asyncio): what its
peer sends (its own close frame, a ping) is read away, and the wait ends once
the peer has ended its side (EOF: nothing more can arrive), or, past a short
wait, once everything written to it has been acknowledged (the kernel's send
queue, ``SIOCOUTQ``, is empty: the close frame and the FIN are in the peer's
kernel), or at a hard deadline (a peer that is gone acknowledges nothing).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import struct
import termios
from dataclasses import dataclass

_READ = 65536
_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLHUP


@dataclass(frozen=True)
class DrainReport:
    """How the watched connections stood when the wait ended."""

    watched: int
    ended: int
    """Peers that ended their side (EOF or an error) before the wait ended."""
    acknowledged: int
    """Of the rest, those with everything written acknowledged by the peer."""
    unacknowledged: int
    """Of the rest, those with bytes still unacknowledged (a slow or gone peer)."""


def unacknowledged_bytes(fd: int) -> int:
    """Bytes written to a TCP socket and not yet acknowledged by its peer (a FIN
    counts one): the kernel's ``SIOCOUTQ``."""
    raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    value: int = struct.unpack("i", raw)[0]
    return value


class PeerDrain:
    """Transports whose close frame is written, until each peer ends its side."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._open: dict[int, asyncio.Transport] = {}
        """By descriptor: the transports whose peer has not ended its side yet."""
        self.watched = 0
        self.ended = 0

    def add(self, transport: asyncio.Transport) -> None:
        """Watch a transport (its reading paused, its close frame written)."""
        fd = _fd(transport)
        if fd < 0 or fd in self._open:
            return
        self.watched += 1
        try:
            self._epoll.register(fd, _EVENTS)
        except OSError:
            self.ended += 1
            return
        self._open[fd] = transport
        self._read(fd)

    @property
    def waiting(self) -> int:
        """Watched connections whose peer has not ended its side."""
        return len(self._open)

    def poll(self, limit: int = 4096) -> int:
        """Read away what the peers sent, without blocking; how many ended now."""
        before = len(self._open)
        if self._open:
            for fd, _events in self._epoll.poll(0, limit):
                self._read(fd)
        return before - len(self._open)

    def read_all(self) -> None:
        """Read every watched socket's receive buffer empty (the last step before
        the process ends: an unread byte there makes the kernel's close a reset)."""
        for fd in list(self._open):
            self._read(fd)

    def unacknowledged(self) -> int:
        """Waiting connections with bytes not yet handed to the kernel or not yet
        acknowledged by the peer."""
        count = 0
        for fd, transport in self._open.items():
            if transport.get_write_buffer_size() > 0:
                count += 1
                continue
            try:
                if unacknowledged_bytes(fd) > 0:
                    count += 1
            except OSError:
                continue
        return count

    def report(self) -> DrainReport:
        unacknowledged = self.unacknowledged()
        return DrainReport(self.watched, self.ended, self.waiting - unacknowledged,
                           unacknowledged)

    def close(self) -> None:
        self._epoll.close()
        self._open.clear()

    def _read(self, fd: int) -> None:
        transport = self._open.get(fd)
        if transport is None:
            return
        # The descriptor is still this transport's (asyncio closes a socket only
        # through its transport, and a closed one's number may be reused).
        if _fd(transport) != fd:
            self._end(fd, registered=False)
            return
        while True:
            try:
                data = os.read(fd, _READ)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                self._end(fd)
                return
            if not data:
                self._end(fd)
                return

    def _end(self, fd: int, *, registered: bool = True) -> None:
        del self._open[fd]
        self.ended += 1
        if registered:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass


def _fd(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    fd: int = sock.fileno()
    return fd
