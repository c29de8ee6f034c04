"""The NAT lab suite: real namespaces and nftables, so it needs root.

One lab (every site, UDP conntrack timeouts shortened to 20 s) serves a test
module; tests that build their own labs live in test_teardown.py, because only
one lab can be up per machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.natlab import Lab
from tests.conftest import scaled

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNTRACK_UDP_TIMEOUT = 20

needs_lab = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None,
    reason="needs root and nftables (CI runs as root)",
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(conntrack_udp_timeout=CONNTRACK_UDP_TIMEOUT) as running:
        yield running


def tool_argv(*args: str | float) -> list[str]:
    return [sys.executable, "-m", "tests.lab.udp_tools", *(str(arg) for arg in args)]


def start_tool(lab: Lab, where: str, *args: str | float) -> subprocess.Popen[str]:
    """Start a udp_tools program in a namespace and wait for its "ready"."""
    process: subprocess.Popen[str] = lab.popen(
        where, tool_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO_ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != "ready":
        _, err = process.communicate(timeout=scaled(5))
        raise AssertionError(f"{args[0]} in {where} did not start: {line!r} {err}")
    return process


def finish_tool(process: subprocess.Popen[str]) -> list[str]:
    """The lines a started tool printed after "ready", once it exits by itself."""
    out, err = process.communicate(timeout=scaled(10))
    assert process.returncode == 0, err
    return out.splitlines()


def run_tool(lab: Lab, where: str, *args: str | float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.namespace(where), *tool_argv(*args)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=scaled(10), check=False,
    )
