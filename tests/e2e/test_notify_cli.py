"""``Type=notify`` as systemd sees it: each service process, a real notify socket.

The processes are the real ``peercam`` commands; the test plays systemd's part
(``NOTIFY_SOCKET``, ``WATCHDOG_USEC``) with an AF_UNIX datagram socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import scaled
from tests.e2e.test_device import NotifyListener

PEERCAM = [sys.executable, "-m", "camera.cli"]


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def spawn(args: list[str], notify: str, **env: str) -> subprocess.Popen[str]:
    full = {**os.environ, "NOTIFY_SOCKET": notify, "PEERCAM_LOG_LEVEL": "WARNING",
            "PEERCAM_ICE_ADDRESSES": "127.0.0.1", **env}
    return subprocess.Popen([*PEERCAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full)


def line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for text in proc.stdout:
        if text.startswith(prefix):
            return text.split(None, 1)[1].strip()
    raise AssertionError(f"no {prefix}; stderr: {proc.stderr.read() if proc.stderr else ''}")


def terminate(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)  # what systemctl stop sends
    try:
        return proc.wait(scaled(20))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("did not stop on SIGTERM") from None


async def test_rendezvous_stun_and_camera_notify_ready_watchdog_stopping(
    tmp_path: Path, systemd: NotifyListener
) -> None:
    rendezvous = spawn(["rendezvous", "--listen", "127.0.0.1:0"], systemd.path)
    stun = spawn(["stun", "--listen", "127.0.0.1", "--port", "0", "--alt-port", "0"],
                 systemd.path)
    camera = None
    try:
        address = await asyncio.to_thread(line, rendezvous, "LISTENING")
        await asyncio.to_thread(line, stun, "LISTENING")
        await systemd.wait_for("READY=1")

        def readies() -> list[str]:
            return [m for _t, m in systemd.messages if m.startswith("READY=1")]

        for _ in range(50):
            if len(readies()) >= 2:
                break
            await asyncio.sleep(0.1)
        assert any("listening on 127.0.0.1" in m for m in readies()), systemd.messages
        assert any("serving STUN" in m for m in readies()), systemd.messages
        systemd.messages.clear()

        camera = spawn(["camera", "--rendezvous", f"ws://{address}", "--state-dir",
                        str(tmp_path / "cam"), "--width", "320", "--height", "240"],
                       systemd.path, WATCHDOG_USEC="1000000")
        await asyncio.to_thread(line, camera, "DEVICE")
        ready = await systemd.wait_for("READY=1")
        assert any("streaming as" in m for _t, m in systemd.messages)
        await asyncio.sleep(scaled(1.5))
        pings = [t for t in systemd.times("WATCHDOG=1") if t > ready]
        assert len(pings) >= 2, systemd.messages  # every 0.5 s (half of WATCHDOG_USEC)
        assert await asyncio.to_thread(terminate, camera) == 0
        assert systemd.times("STOPPING=1")
    finally:
        for proc in (camera, rendezvous, stun):
            if proc is not None and proc.poll() is None:
                await asyncio.to_thread(terminate, proc)
    assert len(systemd.times("STOPPING=1")) == 3
