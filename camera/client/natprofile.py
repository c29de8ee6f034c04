"""What a viewer remembers about the NAT it sits behind, for port prediction.

``peercam natcheck`` measures the NAT (RFC 5780, and the ports of consecutive new
flows) and saves here what prediction needs, with the public address the STUN
server saw. ``peercam view`` reads it: when the server-reflexive candidate of its
offer has that public address and the NAT allocates ports sequentially, the
signed offer also carries the ports the NAT will likely map next
(:func:`camera.punch.with_predicted_candidates`). A camera behind a NAT that
filters on the remote port checks them, which opens its filter for the port our
own check to it leaves from: plain ICE cannot connect those two NATs.

The measurement takes seconds (the filtering tests wait out what a NAT drops),
so a viewer does not run it before every session; a saved one is used only on
the network it was measured on (same public address) and for ``MAX_AGE``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from camera.punch import ALLOCATIONS, NatProfile, with_predicted_candidates
from services.files import write_private
from services.stun.discovery import NatReport

logger = logging.getLogger(__name__)

PROFILE_FILE = "nat.json"
MAX_AGE = 7 * 24 * 3600.0
"""Seconds a saved measurement is trusted (an ISP may change its NAT)."""
PREDICTED_PORTS = 8
"""Ports offered past the measured mapping: the session's own first flows take some."""


@dataclass(frozen=True)
class SavedNat:
    """One measurement: where it was made, and how that NAT allocates ports."""

    public_ip: str
    allocation: str | None
    """"sequential", "random", "preserving" ... or None (not measured: no symmetric NAT)."""
    step: int | None
    """For a sequential allocator: the usual delta between consecutive mappings."""
    measured_at: float
    """``time.time()`` of the measurement."""

    def predicts(self) -> bool:
        return self.allocation == "sequential" and bool(self.step)


MAX_NETWORKS = 16
"""Networks remembered (a laptop's home, office, phone hotspot ...); the oldest go."""


def save(viewer_dir: Path, report: NatReport, now: float) -> SavedNat | None:
    """Keep ``report``'s allocation for the network it was measured on, beside the
    other networks' (mode 0600, atomically). None, and nothing written, when the
    server saw no address."""
    if report.mapped_address is None:
        return None
    saved = SavedNat(report.mapped_address[0], report.allocation, report.allocation_step, now)
    # Read, add, write back under a lock: natchecks run at once (one per network
    # interface, or a script's loop) would otherwise each write the list they read,
    # and all but the last would lose their network.
    viewer_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(viewer_dir / f".{PROFILE_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        others = [n for n in load(viewer_dir, now) if n.public_ip != saved.public_ip]
        networks = [saved, *others][:MAX_NETWORKS]
        write_private(viewer_dir / PROFILE_FILE, json.dumps({"networks": [
            {"public_ip": n.public_ip, "allocation": n.allocation, "step": n.step,
             "measured_at": n.measured_at} for n in networks]}).encode())
    finally:
        os.close(lock)  # and with it the lock
    return saved


def _entry(data: object) -> SavedNat:
    if not isinstance(data, dict):
        raise TypeError(f"entry {data!r}")
    saved = SavedNat(str(data["public_ip"]), data["allocation"], data["step"],
                     float(data["measured_at"]))
    if saved.allocation is not None and not isinstance(saved.allocation, str):
        raise TypeError(f"allocation {saved.allocation!r}")
    if saved.step is not None and (isinstance(saved.step, bool)
                                   or not isinstance(saved.step, int)):
        raise TypeError(f"step {saved.step!r}")
    if not math.isfinite(saved.measured_at):
        raise ValueError(f"measured_at {saved.measured_at!r}")
    return saved


def load(viewer_dir: Path, now: float) -> tuple[SavedNat, ...]:
    """The saved measurements younger than ``MAX_AGE``, newest first; a broken file is
    reported and ignored (prediction is an optimisation, never a reason to fail)."""
    path = viewer_dir / PROFILE_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("networks"), list):
            raise TypeError("no list of networks")
        networks = [_entry(entry) for entry in data["networks"]]
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("ignoring %s (run peercam natcheck again): %s", path, exc)
        return ()
    fresh = [n for n in networks if 0 <= now - n.measured_at <= MAX_AGE]
    return tuple(sorted(fresh, key=lambda n: -n.measured_at))


def measured_here(sdp: str, saved: Sequence[SavedNat]) -> SavedNat | None:
    """The measurement of the network this SDP was made on: the one whose public
    address one of its server-reflexive candidates has; None if none is."""
    srflx = {line.split()[4] for line in sdp.split("\r\n")
             if line.startswith("a=candidate:") and " typ srflx" in line
             and len(line.split()) > 5}
    return next((n for n in saved if n.public_ip in srflx), None)


def profile_here(sdp: str, saved: Sequence[SavedNat]) -> NatProfile | None:
    """Our NAT as the saved measurement of this network says (:func:`measured_here`);
    None when this network was not measured. natcheck measures the allocation only
    where the mapping depends on the destination: one measured means a symmetric NAT."""
    here = measured_here(sdp, saved)
    if here is None:
        return None
    if here.allocation is None:
        return NatProfile(symmetric=False)
    return NatProfile(True, ALLOCATIONS.get(here.allocation, "unknown"), here.step)


def with_prediction(sdp: str, saved: Sequence[SavedNat], count: int = PREDICTED_PORTS) -> str:
    """``sdp`` with the predicted candidates when this network was measured
    (:func:`measured_here`) and its NAT allocates sequentially; otherwise unchanged."""
    here = measured_here(sdp, saved)
    if here is None or not here.predicts() or here.step is None:
        return sdp
    try:
        return with_predicted_candidates(sdp, here.step, count)
    except ValueError as exc:  # a step the planner refuses: no prediction
        logger.warning("no port prediction: %s", exc)
        return sdp
