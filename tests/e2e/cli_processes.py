"""Running `peercam` commands as real processes: start, read their first lines, stop."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

from tests.conftest import scaled

PEERCAM = [sys.executable, "-m", "camera.cli"]


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*PEERCAM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def first_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """The rest of the first stdout line starting with ``prefix`` (``LISTENING``, ``VIEWER``)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.split(None, 1)[1].strip()
    raise AssertionError(f"no {prefix} line; stderr: {proc.stderr.read() if proc.stderr else ''}")


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGINT, as Ctrl-C would; the exit status, or a failure if it does not stop."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(scaled(15))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("process did not stop on SIGINT") from None


def reaped() -> Iterator[list[subprocess.Popen[str]]]:
    """A list to put processes in; whatever still runs at the end is killed (a fixture body)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
