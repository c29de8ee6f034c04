"""Where the running camera is: one small record per running agent.

When its control socket starts, a camera agent (``peercam camera``, the
systemd service, ``peercam demo``) writes ``camera-<pid>.json`` (its control
socket, state directory, device ID and pid) atomically, mode 0600, into a
well-known runtime directory, and removes it when it stops. ``peercam status``,
``pair``, ``viewers`` and ``camera identity`` look there first, so they find
the camera without flags whichever way it was started. A record whose process
is gone (killed, power cut on a persistent directory) is ignored and tidied.

The directory, first that applies:

- ``$PEERCAM_RUNTIME_DIR`` (tests, or several installations on one machine);
- ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``, ``/run/peercam``);
- ``$XDG_RUNTIME_DIR/peercam`` (a desktop login);
- ``/run/peercam`` for root;
- ``~/.local/state/peercam/run`` otherwise.

Readers look in every one of these that exists, so ``sudo peercam status``
finds the service's record and a user's own ``peercam demo`` alike.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from services.files import write_private

logger = logging.getLogger(__name__)

RECORD_PREFIX = "camera-"


@dataclass(frozen=True)
class RunningCamera:
    """One running camera agent, as its record says."""

    control_socket: Path
    state_dir: Path
    device_id: str
    pid: int


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def record_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where this process writes its record."""
    env = _env(env)
    if env.get("PEERCAM_RUNTIME_DIR"):
        return Path(env["PEERCAM_RUNTIME_DIR"])
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime)
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "peercam"
    if os.geteuid() == 0:
        return Path("/run/peercam")
    return Path.home() / ".local/state/peercam/run"


def search_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where readers look, in order, without duplicates."""
    env = _env(env)
    if env.get("PEERCAM_RUNTIME_DIR"):
        return [Path(env["PEERCAM_RUNTIME_DIR"])]
    candidates = [record_dir(env), Path("/run/peercam")]
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "peercam")
    candidates.append(Path.home() / ".local/state/peercam/run")
    out: list[Path] = []
    for path in candidates:
        if path not in out:
            out.append(path)
    return out


def record_running(
    socket_path: Path, state_dir: Path, device_id: str, env: Mapping[str, str] | None = None
) -> Path | None:
    """Write this process's record; its path, or None if it cannot be written (logged)."""
    record = RunningCamera(socket_path.resolve(), state_dir.resolve(), device_id, os.getpid())
    data = {**asdict(record), "control_socket": str(record.control_socket),
            "state_dir": str(record.state_dir)}
    path = record_dir(env) / f"{RECORD_PREFIX}{record.pid}.json"
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        write_private(path, (json.dumps(data) + "\n").encode())
    except OSError as exc:
        logger.warning("cannot write %s (%s): peercam status needs --socket", path, exc)
        return None
    return path


def remove_record(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove %s (%s)", path, exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _read(path: Path) -> RunningCamera | None:
    try:
        data = json.loads(path.read_text())
        record = RunningCamera(Path(data["control_socket"]), Path(data["state_dir"]),
                               str(data["device_id"]), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.debug("ignoring unreadable runtime record %s (%s)", path, exc)
        return None
    if not _alive(record.pid) or not record.control_socket.exists():
        # Left by a process that died: tidy it if we may.
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return record


def find_running(env: Mapping[str, str] | None = None) -> list[RunningCamera]:
    """Every camera agent running here (live pid, socket present), in a stable order."""
    found: list[RunningCamera] = []
    for directory in search_dirs(env):
        try:
            paths = sorted(directory.glob(f"{RECORD_PREFIX}*.json"))
        except OSError:
            continue
        for path in paths:
            record = _read(path)
            if record is not None and record not in found:
                found.append(record)
    return found
