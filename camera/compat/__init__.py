"""One home for peercam's hooks into aiortc's and aioice's private members.

aiortc (pinned 1.16.*) and aioice (pinned 0.13.*) lack three things peercam
needs, so it reaches into their internals, here and nowhere else:

* the camera's RTP senders send payloads cut once per access unit for every
  viewer, with a per-packet path of a header pack, SRTP and one ``sendto``
  (:func:`share_packetization`, :mod:`camera.compat.fastsend`);
* the camera's RTP senders turn PLI/FIR and NACKs beyond the retransmit history
  into keyframe requests (:func:`hook_sender`, :mod:`camera.compat.sender`);
* the CLI viewer's receivers release a frame on its marker packet and bound their
  decoder queue (:mod:`camera.compat.receiver`);
* the camera answers the playout-delay header extension a browser offers and
  writes it into its video packets, so the browser renders each frame as soon
  as it is decoded (:func:`negotiate_playout_delay`, :mod:`camera.compat.playout`);
* the camera answers as the DTLS server, so the viewer starts the handshake
  (:func:`answer_as_dtls_server`, :mod:`camera.compat.dtls`);
* aioice's connectivity checks try direct paths first and retransmit sooner
  (:mod:`camera.compat.ice`; the rules are in :mod:`camera.ice` and, for the
  viewer, :mod:`camera.client.ice`), gather host candidates only on chosen
  addresses (:func:`restrict_host_addresses`), ask a TURN server again when it
  refuses an allocation, and punch through symmetric NATs (:func:`arm_punch`);
* aioice gathers and checks ICE candidates over TCP too (RFC 6544:
  :mod:`camera.compat.icetcp`, switched by :func:`set_ice_tcp`).

Before any of it is used, the installed versions and every private member a hook
touches are checked (existence, callable or coroutine, parameter names), and a
mismatch raises :class:`IncompatibleLibrary` naming the library, its version and
the member. The process-wide part (aioice's two methods) is installed once per
process by :func:`install` with its :class:`Settings`; installing again with the
same settings does nothing, with other settings raises :class:`HooksConflict`:
changing them is :func:`reconfigure`, on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import aioice
import aiortc
from aioice.ice import CandidatePair, Connection
from aiortc import RTCIceTransport

from camera.compat import dtls, fastsend, ice, receiver, sender
from camera.compat.dtls import answer_as_dtls_server
from camera.compat.fastsend import SharedSendStats, packetize_h264, share_packetization
from camera.compat.guard import (
    AIOICE,
    AIORTC,
    HooksConflict,
    IncompatibleLibrary,
    Library,
    Member,
    check_version,
    instance_attribute,
)
from camera.compat.ice import restrict_host_addresses
from camera.compat.ice import timing as ice_timing
from camera.compat.playout import PlayoutDelay
from camera.compat.playout import negotiate as negotiate_playout_delay
from camera.compat.sender import hook_sender, watch_rtcp, watch_rtt
from camera.ice import DirectFirst, Upgrade
from camera.punch import NatProfile, PunchConfig

__all__ = [
    "AIOICE",
    "answer_as_dtls_server",
    "AIORTC",
    "arm_punch",
    "HooksConflict",
    "IncompatibleLibrary",
    "Library",
    "Member",
    "Settings",
    "SharedSendStats",
    "check_libraries",
    "ensure_installed",
    "hook_sender",
    "ice_timing",
    "watch_rtcp",
    "watch_rtt",
    "install",
    "installed",
    "negotiate_playout_delay",
    "nominated_pair",
    "packetize_h264",
    "PlayoutDelay",
    "reconfigure",
    "rearm_upgrade",
    "reflexive_checked",
    "restrict_host_addresses",
    "set_ice_tcp",
    "share_packetization",
    "uninstall",
]


@dataclass(frozen=True)
class Settings:
    """What the process-wide hooks are installed with."""

    direct_first: DirectFirst = field(default_factory=DirectFirst)
    """Timers of the direct-first ICE rules (camera.ice)."""
    upgrade: Upgrade = field(default_factory=Upgrade)
    """The background search for a direct path after ICE selected a relay (camera.ice)."""


def check_libraries(aiortc_module: Any = aiortc, aioice_module: Any = aioice) -> None:
    """The versions, then every private member any hook uses: before any is used."""
    check_version(AIORTC, aiortc_module)
    check_version(AIOICE, aioice_module)
    sender.check_members(aiortc_module)
    fastsend.check_members(aiortc_module)
    receiver.check_members(aiortc_module)
    dtls.check_members(aiortc_module)
    ice.check_members(aioice_module)


_lock = threading.Lock()
_installed: Settings | None = None


def install(settings: Settings | None = None) -> Settings:
    """Check the libraries and patch aioice, once per process; returns the settings in force.

    Again with equal settings: nothing happens. With other settings:
    :class:`HooksConflict` (two parts of one process disagree; :func:`reconfigure`
    changes them on purpose).
    """
    global _installed
    wanted = settings if settings is not None else Settings()
    with _lock:
        if _installed is not None:
            if _installed != wanted:
                raise HooksConflict(
                    f"peercam's library hooks are installed with {_installed}; "
                    f"install({wanted}) would change them (reconfigure() does that on purpose)"
                )
            return _installed
        check_libraries()
        ice.patch(wanted.direct_first, wanted.upgrade)
        _installed = wanted
        return wanted


def ensure_installed() -> Settings:
    """The settings in force, installing the defaults if nothing was installed yet."""
    current = _installed
    return current if current is not None else install()


def installed() -> Settings | None:
    return _installed


def reconfigure(settings: Settings) -> Settings:
    """Change the settings of installed hooks (or install them with these)."""
    global _installed
    with _lock:
        if _installed is None:
            check_libraries()
            ice.patch(settings.direct_first, settings.upgrade)
        else:
            ice.set_timing(settings.direct_first)
            ice.set_upgrade(settings.upgrade)
        _installed = settings
        return settings


def set_direct_upgrade(enabled: bool) -> Settings:
    """Turn the background search for a direct path after a relay on or off for the
    process (an operator setting: off leaves relayed sessions where plain ICE put
    them); the other settings stay as installed."""
    current = ensure_installed()
    if current.upgrade.enabled == enabled:
        return current
    return reconfigure(replace(current, upgrade=replace(current.upgrade, enabled=enabled)))


def set_ice_tcp(enabled: bool) -> None:
    """Offer ICE candidates over TCP (:mod:`camera.compat.icetcp`) in the peer
    connections made from now on, or UDP ones only (an operator setting)."""
    ensure_installed()
    ice.set_tcp(enabled)


def uninstall() -> None:
    """Put aioice's own methods back (tests); the next install checks and patches again."""
    global _installed
    with _lock:
        ice.unpatch()
        ice.set_relay_policy(None)
        _installed = None


def nominated_pair(transport: RTCIceTransport, component: int = 1) -> CandidatePair | None:
    """The ICE pair aioice selected under this aiortc ICE transport, if any."""
    connection = instance_attribute(AIORTC, aiortc, transport, "_connection", Connection)
    return ice.nominated_pair(connection, component)


def reflexive_checked(transport: RTCIceTransport) -> asyncio.Event:
    """Set once the ICE agent under this aiortc transport has sent a check to one of the
    peer's server-reflexive or relayed candidates (see camera.ice, rule 6)."""
    connection = instance_attribute(AIORTC, aiortc, transport, "_connection", Connection)
    return ice.reflexive_checked(connection)


def arm_punch(transport: RTCIceTransport, local: NatProfile, remote: NatProfile,
              config: PunchConfig) -> None:
    """Let the searches under this aiortc ICE transport punch (see
    :func:`camera.compat.ice.arm_punch`)."""
    connection = instance_attribute(AIORTC, aiortc, transport, "_connection", Connection)
    ice.arm_punch(connection, local, remote, config)


def rearm_upgrade(transport: RTCIceTransport) -> bool:
    """After a network change: search again for a direct path if the media under
    this aiortc ICE transport is on a relay pair (see :func:`camera.compat.ice.rearm`)."""
    connection = instance_attribute(AIORTC, aiortc, transport, "_connection", Connection)
    return ice.rearm(connection)
