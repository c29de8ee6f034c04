"""Thin helpers around ip(8), nft(8) and /proc for the lab's namespaces.

Every command is an argv list, and every failure raises ``CommandFailed`` with
the command and its stderr, because a half-built lab is worse than none.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from services.natlab.errors import CommandFailed
from services.natlab.plan import PREFIX

logger = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
"""Where ``ip netns add`` pins named namespaces."""

COMMAND_TIMEOUT = 15.0


def run(argv: list[str], *, stdin: str | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``argv``, return its stdout; raise CommandFailed (with stderr) if it fails."""
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise CommandFailed(f"{argv[0]} is not installed: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{' '.join(argv)} took more than {timeout} s") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        script = f"\n--- input ---\n{stdin}" if stdin else ""
        raise CommandFailed(
            f"{' '.join(argv)} failed with status {done.returncode}: {detail}{script}"
        )
    return done.stdout


def in_namespace(namespace: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``namespace``; ``ip netns exec`` execs, so the pid is argv's."""
    return ["ip", "netns", "exec", namespace, *argv]


def ip_batch(commands: Iterable[str], namespace: str | None = None) -> None:
    """Run many ip(8) commands in one process (one fork instead of dozens)."""
    script = "\n".join(commands) + "\n"
    argv = ["ip"] if namespace is None else ["ip", "-n", namespace]
    run([*argv, "-batch", "-"], stdin=script)


def lab_namespaces() -> list[str]:
    """Every named namespace whose name starts with the lab prefix."""
    try:
        names = sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []
    return [name for name in names if name.startswith(PREFIX)]


NamespaceId = tuple[int, int]
"""(st_dev, st_ino) of a namespace: stays valid after its name is deleted."""


def namespace_ids(namespaces: Iterable[str]) -> dict[NamespaceId, str]:
    """The identity of each named namespace that exists."""
    ids: dict[NamespaceId, str] = {}
    for name in namespaces:
        try:
            info = (NETNS_DIR / name).stat()
        except FileNotFoundError:
            continue
        ids[(info.st_dev, info.st_ino)] = name
    return ids


def namespace_pids(ids: dict[NamespaceId, str]) -> dict[str, list[int]]:
    """Processes living in each namespace: what ``ip netns pids`` finds, in one /proc pass."""
    found: dict[str, list[int]] = {name: [] for name in ids.values()}
    if not ids:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            info = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            # Gone, or a zombie whose namespaces were already released.
            continue
        name = ids.get((info.st_dev, info.st_ino))
        if name is not None:
            found[name].append(int(entry.name))
    return found


QUIET_SECONDS = 0.02
"""How long a scan must stay empty: ``ip netns exec`` opens the namespace before it
enters it, so a process can arrive just after a scan."""


def kill_processes(ids: dict[NamespaceId, str], *, rounds: int = 100) -> int:
    """SIGKILL every process in the namespaces ``ids`` until none is left; return how many.

    Deleting a namespace does not end its processes (they keep it alive, unnamed),
    and a process may fork or enter while we look, so repeat until two scans a
    little apart find nothing.
    """
    killed = 0
    quiet = False
    for _ in range(rounds):
        pids = [pid for found in namespace_pids(ids).values() for pid in found]
        if not pids:
            if quiet:
                return killed
            quiet = True
            time.sleep(QUIET_SECONDS)
            continue
        quiet = False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    raise CommandFailed(f"processes survive SIGKILL in lab namespaces: {namespace_pids(ids)}")


def delete_namespaces(namespaces: Iterable[str]) -> None:
    """Delete named namespaces (their veths, bridge and nft rules go with them)."""
    names = [name for name in namespaces if (NETNS_DIR / name).exists()]
    if names:
        ip_batch(f"netns del {name}" for name in names)


def sweep() -> list[str]:
    """Kill the processes of, and delete, every "pcl-*" namespace; return their names.

    For leftovers of a lab whose owner died (SIGKILL, power loss): a live lab
    holds the lab lock, and ``Lab.up`` sweeps only while holding it.
    """
    names = lab_namespaces()
    if names:
        ids = namespace_ids(names)
        killed = kill_processes(ids)
        delete_namespaces(names)
        # A process that was entering a namespace during the first pass.
        killed += kill_processes(ids)
        logger.info("swept %d namespaces and %d processes: %s", len(names), killed, names)
    return names


CLONE_NEWNET = 0x40000000


def socket_in_namespace(
    namespace: str, family: int, kind: int, protocol: int = 0
) -> socket.socket:
    """A socket that lives in ``namespace``, made without a child process.

    A short-lived thread enters the namespace (setns(2) moves only the calling
    thread) and makes the socket; a socket stays in the namespace it was made in,
    wherever it is used afterwards.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise CommandFailed(f"setns into {namespace}: {os.strerror(errno)}")
                made.append(socket.socket(family, kind, protocol))
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=enter, name=f"setns-{namespace}")
    thread.start()
    thread.join(COMMAND_TIMEOUT)
    if failed:
        if isinstance(failed[0], FileNotFoundError):
            raise CommandFailed(f"namespace {namespace} does not exist") from failed[0]
        raise failed[0]
    if not made:
        raise CommandFailed(f"could not make a socket in {namespace}")
    return made[0]
