"""The control socket: ``peercam status``/``viewers``/``pair`` against a running device.

A real Device (agent, control socket) on a real rendezvous, a real aiortc
viewer, and the real ``peercam`` command line in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from camera.client.viewer import SessionEnded, view
from camera.config import CameraConfig
from camera.control import ControlError, ControlServer, request
from camera.device import Device
from camera.identity import DeviceIdentity
from tests.conftest import SMALL_VIDEO, Stack, scaled

PEERCAM = [sys.executable, "-m", "camera.cli"]


@pytest.fixture
async def device(stack: Stack, tmp_path: Path) -> AsyncIterator[Device]:
    # A short socket path: AF_UNIX paths are limited to 108 bytes.
    sock_dir = Path(f"/tmp/pc-{os.getpid()}-{id(tmp_path) % 10000}")
    config = CameraConfig(rendezvous=stack.url, state_dir=tmp_path / "dev", video=SMALL_VIDEO,
                          control_socket=sock_dir / "control.sock")
    dev = Device(config)
    agent = await dev.start()
    agent.acl.add(stack.viewer.key, stack.viewer.name)
    await asyncio.wait_for(agent.registered.wait(), scaled(10))
    try:
        yield dev
    finally:
        await dev.close()
        if sock_dir.exists():
            sock_dir.rmdir()


def socket_path(device: Device) -> Path:
    assert device.control is not None
    return device.control.path


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*PEERCAM, *args], capture_output=True, text=True, timeout=60
    )


async def test_socket_is_owner_only(device: Device) -> None:
    path = socket_path(device)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_status_shows_state_network_source_and_each_viewer(
    device: Device, stack: Stack
) -> None:
    agent = device.agent
    assert agent is not None
    # Watching until the checks are done (two `peercam status` processes, each a
    # second or more on a busy machine), not for a fixed time that may end first.
    stop = asyncio.Event()
    watching = asyncio.ensure_future(view(stack.link(agent), stop=stop))
    for _ in range(int(scaled(100))):
        viewers = agent.status().viewers
        if viewers and viewers[0].bitrate is not None and viewers[0].rtt_ms is not None:
            break
        await asyncio.sleep(0.1)
    done = await cli("status", "--socket", str(socket_path(device)), "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "streaming_direct"
    assert status["device_id"] == agent.device_id
    assert status["rendezvous"] == {"url": stack.url, "state": "registered", "connected": True,
                                    "reconnects": 0, "network_down": False,
                                    "last_error": None, "recoveries": 0}
    # fps over the last 2 s: well under 30 only when the machine is starved.
    assert status["source"]["fps"] > 5 and status["source"]["size"] == "320x240"
    [viewer] = status["viewers"]
    assert viewer["name"] == stack.viewer.name and viewer["connected"]
    assert viewer["pair"] == "host->host" and not viewer["relayed"]
    assert 50_000 < viewer["bitrate"] < 5_000_000  # 400 kbit/s configured
    assert 0 <= viewer["rtt_ms"] < 1000
    human = await cli("status", "--socket", str(socket_path(device)))
    assert human.returncode == 0
    assert "state:       streaming_direct" in human.stdout
    assert f"{stack.viewer.name} [" in human.stdout and "host->host" in human.stdout
    stop.set()
    assert (await watching).frames > 30


async def test_the_task_count_returns_to_idle_after_sessions_come_and_go(
    device: Device, stack: Stack
) -> None:
    """``status.tasks`` is what the recovery tests compare with a baseline to find
    leaks: after several sessions ended it is back where it was idle."""
    agent = device.agent
    assert agent is not None

    async def idle_tasks(at_most: int | None = None) -> int:
        """The count once no session is left (and, given ``at_most``, once it is down
        to that: a session's last tasks end a moment after it does)."""
        count = agent.status().tasks
        for _ in range(int(scaled(100))):
            count = agent.status().tasks
            if not agent.sessions and (at_most is None or count <= at_most):
                break
            await asyncio.sleep(0.1)
        return count

    baseline = await idle_tasks()
    assert baseline > 0
    for _ in range(4):
        stats = await view(stack.link(agent), seconds=1.0)
        assert stats.frames > 0
    done = await cli("status", "--socket", str(socket_path(device)), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tasks"] >= 1
    # Four sessions came and went: one task left behind by each would be 4 more.
    assert await idle_tasks(baseline + 2) <= baseline + 2


async def test_viewers_and_pair_go_through_the_running_agent(
    device: Device, stack: Stack
) -> None:
    agent = device.agent
    assert agent is not None
    sock = str(socket_path(device))
    listed = await cli("viewers", "list", "--socket", sock, "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["name"] == stack.viewer.name and row["watching"] is False

    paired = await cli("pair", "--socket", sock, "--ttl", "120")
    assert paired.returncode == 0, paired.stderr
    link = next(line for line in paired.stdout.splitlines() if line.startswith("PAIR "))[5:]
    assert f"#device={agent.device_id}&pair=" in link
    assert agent.state.value == "pairing"  # opened in the agent: its LED shows it
    assert agent.pairing.is_open(include_reusable=False)

    watching = asyncio.ensure_future(view(stack.link(agent), seconds=20))
    for _ in range(int(scaled(100))):
        if any(s.connected.is_set() for s in agent.sessions.values()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(scaled(1.0))  # watching, not only connected
    revoked = await cli("viewers", "revoke", row["fingerprint"], "--socket", sock)
    assert revoked.returncode == 0, revoked.stderr
    assert row["fingerprint"] in revoked.stdout
    assert stack.viewer.key not in agent.acl
    # Through the socket the session ends at once, not at the next ACL poll; the
    # viewer says the camera ended it (exit status 3 for peercam view).
    with pytest.raises(SessionEnded, match="revoked") as ended:
        await asyncio.wait_for(watching, scaled(10))
    assert ended.value.stats is not None and ended.value.stats.frames > 0
    missing = await cli("viewers", "revoke", "nobody", "--socket", sock)
    assert missing.returncode == 1 and "no paired viewer" in missing.stderr


async def test_bad_requests_get_errors_and_the_socket_keeps_serving(device: Device) -> None:
    path = socket_path(device)
    reader, writer = await asyncio.open_unix_connection(str(path))
    replies: list[dict[str, Any]] = []
    for line in [b"not json\n", b"[1, 2]\n", b'{"op": "launch"}\n', b'{"op": "revoke"}\n',
                 b'{"op": "pair", "ttl": 1e9}\n', b'{"op": "pair", "ttl": true}\n',
                 b'{"op": "status"}\n']:
        writer.write(line)
        await writer.drain()
        replies.append(json.loads(await reader.readline()))
    assert [r["ok"] for r in replies] == [False] * 6 + [True]
    assert replies[0]["error"] == "request is not JSON"
    assert "unknown op 'launch'" in replies[2]["error"]
    assert "ttl" in replies[4]["error"] and "ttl" in replies[5]["error"]
    writer.write(b"x" * 10_000 + b"\n")  # oversized: an error, then hang up
    await writer.drain()
    reply = json.loads(await reader.readline())
    assert not reply["ok"] and "over 4096 bytes" in reply["error"]
    assert await reader.read() == b""
    writer.close()
    assert (await request(path, "status"))["ok"]  # still serving


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
async def test_other_users_are_refused_even_if_the_file_mode_is_loosened(
    device: Device,
) -> None:
    path = socket_path(device)
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o666)  # a mistake on the box: the peer-credential check still holds
    code = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(path)!r})\n"
        "try:\n"
        "    s.sendall(b'{\"op\": \"status\"}\\n')\n"
        "    reply = s.recv(100)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    reply = b''\n"
        "sys.stdout.write(repr(reply))\n"
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "b''"  # hung up without a word
    assert device.agent is not None and device.agent.status().state  # still fine


async def test_no_agent_gives_a_clear_error_and_files_are_used_offline(
    tmp_path: Path, stack: Stack
) -> None:
    state = tmp_path / "offline"
    done = await cli("status", "--state-dir", str(state))
    assert done.returncode == 4 and "no camera agent on" in done.stderr
    # No device key there: no camera to act on, and nothing is created.
    listed = await cli("viewers", "list", "--state-dir", str(state))
    assert listed.returncode == 4 and "no device key" in listed.stderr
    assert not (state / "device_key.pem").exists()
    DeviceIdentity.load_or_create(state)
    listed = await cli("viewers", "list", "--state-dir", str(state))
    assert listed.returncode == 0 and "no paired viewers" in listed.stdout


async def test_stale_socket_is_replaced_and_a_live_one_is_not(
    device: Device, tmp_path: Path
) -> None:
    assert device.agent is not None
    path = socket_path(device)
    with pytest.raises(ControlError, match="already running"):
        await ControlServer(path, device.agent).start()
    stale = Path(f"/tmp/pc-stale-{os.getpid()}.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, nobody listens: a crashed agent's socket
    server = ControlServer(stale, device.agent)
    try:
        await server.start()
        assert (await request(stale, "viewers"))["ok"]
    finally:
        await server.close()
    assert not stale.exists()
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(regular, device.agent).start()
    assert regular.read_text() == "keep me"
