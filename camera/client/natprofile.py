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

import json
import logging
import math
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


def save(viewer_dir: Path, report: NatReport, now: float) -> SavedNat | None:
    """Keep ``report``'s allocation for the network it was measured on (mode 0600,
    atomically). None, and nothing written, when the server saw no address."""
    if report.mapped_address is None:
        return None
    saved = SavedNat(report.mapped_address[0], report.allocation, report.allocation_step, now)
    write_private(viewer_dir / PROFILE_FILE, json.dumps({
        "public_ip": saved.public_ip, "allocation": saved.allocation, "step": saved.step,
        "measured_at": saved.measured_at}).encode())
    return saved


def load(viewer_dir: Path, now: float) -> SavedNat | None:
    """The saved measurement if there is one younger than ``MAX_AGE``; a broken file is
    reported and ignored (prediction is an optimisation, never a reason to fail)."""
    path = viewer_dir / PROFILE_FILE
    try:
        data = json.loads(path.read_text())
        saved = SavedNat(str(data["public_ip"]), data["allocation"], data["step"],
                         float(data["measured_at"]))
        if saved.allocation is not None and not isinstance(saved.allocation, str):
            raise TypeError(f"allocation {saved.allocation!r}")
        if saved.step is not None and (isinstance(saved.step, bool)
                                       or not isinstance(saved.step, int)):
            raise TypeError(f"step {saved.step!r}")
        if not math.isfinite(saved.measured_at):
            raise ValueError(f"measured_at {saved.measured_at!r}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        logger.warning("ignoring %s (run peercam natcheck again): %s", path, exc)
        return None
    if not 0 <= now - saved.measured_at <= MAX_AGE:
        return None
    return saved


def _measured_here(sdp: str, saved: SavedNat) -> bool:
    """One of the SDP's server-reflexive candidates has the saved public address."""
    here = f" {saved.public_ip} "
    return any(line.startswith("a=candidate:") and here in line and " typ srflx" in line
               for line in sdp.split("\r\n"))


def profile_here(sdp: str, saved: SavedNat | None) -> NatProfile | None:
    """Our NAT as the saved measurement says, if it was made on this network (the
    SDP's own server-reflexive address); None when unknown here. natcheck measures
    the allocation only where the mapping depends on the destination: one measured
    means a symmetric NAT."""
    if saved is None or not _measured_here(sdp, saved):
        return None
    if saved.allocation is None:
        return NatProfile(symmetric=False)
    return NatProfile(True, ALLOCATIONS.get(saved.allocation, "unknown"), saved.step)


def with_prediction(sdp: str, saved: SavedNat | None, count: int = PREDICTED_PORTS) -> str:
    """``sdp`` with the predicted candidates when ``saved`` is for this network (one of
    the SDP's server-reflexive candidates has its public address) and its NAT
    allocates sequentially; otherwise ``sdp`` unchanged."""
    if saved is None or not saved.predicts() or saved.step is None:
        return sdp
    if not _measured_here(sdp, saved):
        return sdp  # measured on another network
    try:
        return with_predicted_candidates(sdp, saved.step, count)
    except ValueError as exc:  # a step the planner refuses: no prediction
        logger.warning("no port prediction: %s", exc)
        return sdp
