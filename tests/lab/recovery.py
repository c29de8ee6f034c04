"""Faults at the worst moment, in the NAT lab: what the recovery tests and
``scripts/bench recovery`` share.

The matrix's servers (rendezvous, our STUN server, coturn) run on the lab's
public segment; one ``peercam camera`` runs behind a camera site (or on the
lab's roaming host), a ``peercam view --json`` behind a viewer site. Each event
breaks one thing (a link, the rendezvous, the camera process, the NAT's
mappings, the camera's whole network) and :func:`video_back` reads from the
viewer's own frame log (``gaps``, on the machine-wide monotonic clock) how long
after the repair its video came back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camera.acl import ViewerACL
from camera.client.viewer import ViewerIdentity
from services.natlab.lab import Lab
from tests.lab.matrix import PEERCAM, RENDEZVOUS, Matrix

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Watch:
    """One ``peercam view --json`` running behind a site."""

    proc: subprocess.Popen[str]
    started: float
    result: dict[str, Any] = field(default_factory=dict)

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)  # the viewer prints its stats on Ctrl-C
            out, _ = self.proc.communicate(timeout=30)
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        self.result = json.loads(lines[-1]) if lines else {"error": "no output", "frames": 0}
        return self.result


def video_back(result: dict[str, Any], repaired_at: float, broken_at: float) -> float | None:
    """Seconds after ``repaired_at`` until the viewer showed frames again (0: it never
    stopped, or it resumed before the repair); None when no gap covers the fault and
    frames never came after it."""
    for start, end in result.get("gaps", []):
        if start <= repaired_at and end >= broken_at:
            return max(0.0, end - repaired_at)
        if broken_at <= start <= repaired_at and end >= repaired_at:
            return max(0.0, end - repaired_at)
    return 0.0 if result.get("frames", 0) else None


def block_direct(lab: Lab, *sites: str) -> None:
    """Each site's NAT drops UDP and TCP arriving from the other sites' public
    addresses: only the relay (coturn, on the public segment) connects them."""
    for site in sites:
        others = ", ".join(lab.public_ip(s) for s in sites if s != site)
        lab.run(f"{site}-nat", ["nft", "-f", "-"], input=(
            "table ip peercam_block {\n"
            "  chain pre { type filter hook prerouting priority -300; policy accept;\n"
            f"    ip saddr {{ {others} }} meta l4proto {{ udp, tcp }} drop\n"
            "  }\n}\n"))


def unblock_direct(lab: Lab, *sites: str) -> None:
    for site in sites:
        lab.run(f"{site}-nat", ["nft", "delete", "table", "ip", "peercam_block"], check=False)



class RecoveryLab(Matrix):
    """The matrix's servers, one camera, and the faults."""

    def __init__(self, lab: Lab, tmp: Path, camera_site: str) -> None:
        super().__init__(lab, tmp, sites=())
        self.camera_site = camera_site
        self.camera: subprocess.Popen[str] | None = None
        self.device_id = ""
        self.rendezvous_proc: subprocess.Popen[str] | None = None
        self.rendezvous_argv: list[str] = []

    def _spawn(self, where: str, argv: list[str], log: str) -> subprocess.Popen[Any]:
        proc = super()._spawn(where, argv, log)
        if log == "rendezvous.log":
            self.rendezvous_proc, self.rendezvous_argv = proc, argv
        return proc

    def start(self) -> None:
        super().start()
        viewer = ViewerIdentity.load_or_create(self.viewer_dir, name="recovery viewer")
        ViewerACL(self.tmp / "camera").add(viewer.key, viewer.name)
        self.start_camera()

    # -- the camera ---------------------------------------------------------------

    def start_camera(self) -> float:
        """``peercam camera`` behind the camera site; when it was started (monotonic)."""
        started = time.monotonic()
        self.camera = self._spawn(self.camera_site, [
            *PEERCAM, "camera", "--rendezvous", RENDEZVOUS, "--state-dir",
            str(self.tmp / "camera"), "--width", "320", "--height", "240",
            "--bitrate", "400000"], f"camera-{len(self.procs)}.log")
        assert self.camera.stdout is not None
        line = self.camera.stdout.readline()
        if not line.startswith("DEVICE "):
            raise RuntimeError(f"camera did not start: {self.log('camera.log')}")
        self.device_id = line.split()[1]
        return started

    def kill_camera(self) -> float:
        """SIGKILL (a crash, a power cut): no bye, no DTLS close."""
        assert self.camera is not None
        self.camera.kill()
        self.camera.wait(10)
        return time.monotonic()

    def camera_fds(self) -> int:
        assert self.camera is not None
        return len(os.listdir(f"/proc/{self.camera.pid}/fd"))

    def camera_status(self) -> dict[str, Any]:
        """The camera's ``peercam status --json`` (run in its namespace)."""
        result = self.lab.run(self.camera_site, [
            *PEERCAM, "status", "--json", "--state-dir", str(self.tmp / "camera")],
            check=False, timeout=30)
        out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
        status: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return status

    def wait_playing(self, viewers: int = 1, timeout: float = 60.0) -> None:
        """Until the camera has ``viewers`` connected sessions (the watch is playing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                sessions = self.camera_status()["viewers"]
            except (ValueError, KeyError, IndexError):
                sessions = []
            if sum(1 for s in sessions if s.get("connected")) >= viewers:
                time.sleep(1.0)  # a second of video before anything breaks
                return
            time.sleep(0.2)
        raise RuntimeError(f"no viewer connected within {timeout} s")

    # -- the rendezvous -------------------------------------------------------------

    def kill_rendezvous(self) -> float:
        assert self.rendezvous_proc is not None
        self.rendezvous_proc.kill()
        self.rendezvous_proc.wait(10)
        return time.monotonic()

    def start_rendezvous(self) -> float:
        """The rendezvous again, same address; when it listened (monotonic)."""
        proc = self._spawn("server", self.rendezvous_argv, "rendezvous.log")
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith("LISTENING"):
            raise RuntimeError(f"rendezvous did not restart: {self.log('rendezvous.log')}")
        return time.monotonic()

    # -- viewers --------------------------------------------------------------------

    def watch(self, site: str, seconds: float, *, stall: float | None = None,
              wait: float | None = None) -> Watch:
        argv = [*PEERCAM, "view", self.device_id, "--rendezvous", RENDEZVOUS, "--json",
                "--seconds", str(seconds)]
        if stall is not None:
            argv += ["--stall", str(stall)]
        if wait is not None:
            argv += ["--wait", str(wait)]
        started = time.monotonic()
        proc = self.lab.popen(site, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=self.env, cwd=ROOT)
        self.procs.append(proc)
        return Watch(proc, started)

    def camera_pair_link(self) -> str:
        """A one-time pairing link for this lab's camera (``peercam pair`` over SSH)."""
        result = subprocess.run(
            [*PEERCAM, "pair", "--state-dir", str(self.tmp / "camera"), "--rendezvous",
             RENDEZVOUS], capture_output=True, text=True, check=True, env=self.env)
        return next(line.split(None, 1)[1] for line in result.stdout.splitlines()
                    if line.startswith("PAIR "))

    def browser_watch(self, site: str, seconds: float) -> Watch:
        """Headless Chromium behind ``site`` pairs (a fresh profile) and watches
        ``seconds`` once it plays; its frame log is what :meth:`Watch.finish` reads."""
        argv = [sys.executable, "-m", "tests.lab.browser_watch", self.camera_pair_link(),
                str(seconds)]
        started = time.monotonic()
        proc = self.lab.popen(site, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=self.env, cwd=ROOT)
        self.procs.append(proc)
        return Watch(proc, started)

    def first_frame_after(self, site: str, since: float, timeout: float) -> float | None:
        """A new viewer that waits for the camera (``peercam view --wait``; started again
        if it still gives up): seconds from ``since`` to its first frame; None if none
        within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            result = self.watch(site, 0.5, wait=max(1.0, left - 5)).finish(
                timeout=max(5.0, left))
            clock = result.get("first_frame_clock")
            if result.get("frames") and clock is not None:
                return float(clock) - since
            time.sleep(0.2)
        return None


def main() -> None:  # pragma: no cover - a manual smoke run: python -m tests.lab.recovery
    lab = Lab(sites=["port-restricted", "full-cone"])
    lab.up()
    try:
        with RecoveryLab(lab, Path("/tmp/peercam-recovery"), "port-restricted") as run:
            watch = run.watch("full-cone", 6)
            time.sleep(2)
            with lab.link_down("port-restricted", 2.0) as fault:
                fault.wait(10)
            print(json.dumps(watch.finish(30)), file=sys.stderr)
    finally:
        lab.down()


if __name__ == "__main__":
    main()
