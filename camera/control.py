"""The agent's local control socket: what ``peercam status``/``viewers``/``pair`` talk to.

A Unix stream socket, owner-only: the socket file is mode 0600 in a directory
we create 0700 (under systemd, ``RuntimeDirectory=`` makes ``/run/peercam``),
and every connection's peer credentials (``SO_PEERCRED``) must be our own uid
or root. Nothing listens on the network: the owner reaches it over SSH.

Wire format: one JSON object per line each way. Requests are
``{"op": "status"}``, ``{"op": "viewers"}``, ``{"op": "revoke", "handle": H}``,
``{"op": "clear"}`` and ``{"op": "pair", "ttl": seconds}``; every reply has
``"ok"`` and either the result or ``"error"``. A bad request gets an error reply
and the connection stays usable; a line over 4 KiB or a silent client
(``IDLE_TIMEOUT``) is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camera.errors import PeercamError
from camera.runtime import record_running, remove_record

if TYPE_CHECKING:
    from camera.agent import CameraAgent

logger = logging.getLogger(__name__)

MAX_LINE = 4096
IDLE_TIMEOUT = 30.0
MAX_CLIENTS = 8
REQUEST_TIMEOUT = 10.0


class ControlError(PeercamError, OSError):
    """The control socket cannot be served or reached."""


class AgentNotRunning(ControlError):
    """Nobody listens on the control socket (the camera agent is not running)."""


def handle(agent: CameraAgent, request: Any) -> dict[str, Any]:
    """One request in, one reply out. Never raises for a bad request."""
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": 'a request is a JSON object with an "op" string'}
    op = request["op"]
    if op == "status":
        return {"ok": True, "status": agent.status().as_dict()}
    if op == "viewers":
        return {"ok": True, "viewers": _viewer_rows(agent)}
    if op == "revoke":
        handle_ = request.get("handle")
        if not isinstance(handle_, str) or not 0 < len(handle_) <= 200:
            return {"ok": False, "error": "revoke needs a fingerprint or name as handle"}
        gone = agent.acl.revoke(handle_)
        ended = agent.end_revoked_sessions()
        return {"ok": True, "revoked": [{"fingerprint": v.fingerprint, "name": v.name}
                                        for v in gone], "sessions_ended": ended}
    if op == "clear":
        return {"ok": True, "revoked": agent.forget_viewers()}
    if op == "pair":
        ttl = request.get("ttl", agent.config.hardware.pairing_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 10 <= ttl <= 86400:
            return {"ok": False, "error": f"ttl {ttl!r}: need 10..86400 seconds"}
        link, ttl = agent.open_pairing_link(float(ttl))
        return {"ok": True, "link": link, "ttl": ttl}
    return {"ok": False, "error": f"unknown op {op[:40]!r}"}


def _viewer_rows(agent: CameraAgent) -> list[dict[str, Any]]:
    watching = {s.viewer_key for s in agent.sessions.values() if s.connected.is_set()}
    return [{"fingerprint": v.fingerprint, "name": v.name, "added": v.added,
             "watching": v.key in watching} for v in agent.acl.viewers()]


class ControlServer:
    """Serves :func:`handle` on ``path`` from :meth:`start` until :meth:`close`."""

    def __init__(self, path: Path, agent: CameraAgent) -> None:
        self.path = path
        self._agent = agent
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._record: Path | None = None

    async def start(self) -> None:
        self._prepare_directory()
        await self._remove_stale()
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise ControlError(f"control socket {self.path}: {exc.strerror or exc}") from None
        logger.info("control socket on %s", self.path)
        # So that peercam status/pair/viewers find this camera without flags.
        self._record = record_running(
            self.path, self._agent.config.state_dir, self._agent.device_id
        )

    def _prepare_directory(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            try:
                parent.mkdir(mode=0o700, parents=True)
            except OSError as exc:
                raise ControlError(f"cannot create {parent}: {exc.strerror}") from None
        mode = parent.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            raise ControlError(f"{parent} is world-writable: refusing to put the socket there")

    async def _remove_stale(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not stat.S_ISSOCK(self.path.lstat().st_mode):
            raise ControlError(f"{self.path} exists and is not a socket: not replacing it")
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path)), 2.0
            )
        except (OSError, TimeoutError):
            self.path.unlink(missing_ok=True)  # left by a process that died
            return
        writer.close()
        raise ControlError(f"{self.path}: another camera agent is already running")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if not self._allowed(writer) or len(self._clients) > MAX_CLIENTS:
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (os.getuid(), 0):
            logger.warning("control socket: refused a client with uid %d", uid)
            return False
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except ValueError:  # over MAX_LINE: the stream is out of step, hang up
                writer.write(_line({"ok": False, "error": f"request over {MAX_LINE} bytes"}))
                await writer.drain()
                return
            if not line:
                return
            try:
                request = json.loads(line)
            except ValueError:
                reply: dict[str, Any] = {"ok": False, "error": "request is not JSON"}
            else:
                try:
                    reply = handle(self._agent, request)
                except PeercamError as exc:
                    reply = {"ok": False, "error": str(exc)}
            writer.write(_line(reply))
            await writer.drain()

    async def close(self) -> None:
        """Stop listening, hang up on clients, remove the socket. Safe twice."""
        server, self._server = self._server, None
        if server is None:
            return
        remove_record(self._record)
        self._record = None
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        self.path.unlink(missing_ok=True)


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()


async def request(path: Path, op: str, **fields: Any) -> dict[str, Any]:
    """Ask the running agent; raises :class:`AgentNotRunning` when nobody listens."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=1 << 20), REQUEST_TIMEOUT
        )
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentNotRunning(f"no camera agent on {path} ({exc.strerror})") from None
    except PermissionError:
        raise ControlError(
            f"{path}: permission denied (run as the camera's user, e.g. "
            f"sudo -u peercam peercam ..., or as root)"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"{path}: {exc}") from None
    try:
        writer.write(_line({"op": op, **fields}))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ControlError(f"{path}: no answer ({exc})") from None
    finally:
        writer.close()
    if not line:
        raise ControlError(f"{path}: the agent hung up (not allowed?)")
    reply: dict[str, Any] = json.loads(line)
    return reply
