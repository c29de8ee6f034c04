"""The systemd notify protocol, implemented directly (no libsystemd binding).

A service of ``Type=notify`` tells the manager about itself by sending one
datagram of ``KEY=value`` lines to the ``AF_UNIX`` socket named in
``$NOTIFY_SOCKET`` (an address starting with ``@`` is in the abstract
namespace). ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, when set, must be our pid)
says how often the manager wants ``WATCHDOG=1``; half of it is the usual
interval. See sd_notify(3) and sd_watchdog_enabled(3).

Outside systemd ``$NOTIFY_SOCKET`` is unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notify datagrams; without a socket address every call is a no-op."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent: list[str] = []
        """Every message sent, in order (what status and tests look at)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; False if it could not be sent.

        A failed send is logged once and never raised: a camera must not stop
        streaming because its supervisor went away.
        """
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), target)
        except OSError as exc:
            if not self._failed:
                logger.warning("sd_notify to %s failed: %s", self.address, exc)
                self._failed = True
            return False
        self._failed = False
        self.sent.append(text)
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings systemd asked for (half its timeout), or None."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None  # meant for another process (we were started by the service's main)
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None
    return timeout / 2 if timeout > 0 else None
