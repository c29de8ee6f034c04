"""The running camera's record: written 0600 where commands look, stale ones ignored."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from camera.runtime import find_running, record_dir, record_running, remove_record, search_dirs


def listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


def test_record_is_found_then_removed(tmp_path: Path) -> None:
    env = {"PEERCAM_RUNTIME_DIR": str(tmp_path / "run")}
    with listening_socket(tmp_path / "control.sock"):
        path = record_running(tmp_path / "control.sock", tmp_path / "state", "ABCD", env)
        assert path is not None and path.parent == tmp_path / "run"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        [found] = find_running(env)
        assert found.device_id == "ABCD" and found.pid == os.getpid()
        assert found.control_socket == (tmp_path / "control.sock").resolve()
        assert found.state_dir == (tmp_path / "state").resolve()
        remove_record(path)
        assert find_running(env) == []


def test_a_record_left_by_a_dead_process_is_ignored_and_tidied(tmp_path: Path) -> None:
    env = {"PEERCAM_RUNTIME_DIR": str(tmp_path)}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / f"camera-{pid}.json"
    stale.write_text('{"control_socket": "/nonexistent.sock", "state_dir": "/x", '
                     f'"device_id": "X", "pid": {pid}}}')
    (tmp_path / "camera-1.json").write_text("not json")
    assert find_running(env) == []
    assert not stale.exists()


def test_where_records_go() -> None:
    assert record_dir({"RUNTIME_DIRECTORY": "/run/peercam"}) == Path("/run/peercam")
    assert record_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/peercam")
    # Readers look where the service writes, whoever they are.
    assert Path("/run/peercam") in search_dirs({"XDG_RUNTIME_DIR": "/run/user/1000"})
