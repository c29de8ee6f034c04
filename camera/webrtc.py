"""aiortc plumbing shared by the camera and the CLI viewer."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from camera import compat
from camera.h264 import is_constrained_baseline
from camera.punch import NatProfile, PunchConfig


def make_peer_connection(ice_servers: list[dict[str, Any]], *,
                         max_bundle: bool = False) -> RTCPeerConnection:
    """A peer connection with exactly these ICE servers.

    ``max_bundle`` (an offerer's choice): every m-line on one transport from the
    start, so one set of candidates is gathered (one TURN allocation, not one per
    m-line) and none is torn down when the answer arrives: aiortc stops a
    bundled-away transport, a TURN Refresh round trip, before its checks start.

    aiortc falls back to Google's public STUN server when ``iceServers`` is
    None, so we always pass a list; an empty one means host candidates only.
    The library hooks (camera/compat: version and member checks, the direct-first
    ICE rules of camera/ice.py) are installed once per process, by the first
    connection if nothing installed them before; later connections leave them be.
    """
    compat.ensure_installed()
    servers = [
        RTCIceServer(
            urls=entry["urls"],
            username=entry.get("username"),
            credential=entry.get("credential"),
        )
        for entry in ice_servers
    ]
    policy = RTCBundlePolicy.MAX_BUNDLE if max_bundle else RTCBundlePolicy.BALANCED
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=policy))


def h264_preferences() -> list[RTCRtpCodecCapability]:
    """H.264 only, constrained baseline first, with its RTX: never VP8."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    h264 = [c for c in codecs if c.mimeType.lower() == "video/h264"]
    h264.sort(key=lambda c: 0 if str(c.parameters.get("profile-level-id", "")).lower()
              .startswith("42e0") else 1)
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    return h264 + rtx


def prefer_h264(transceiver: RTCRtpTransceiver) -> None:
    transceiver.setCodecPreferences(h264_preferences())


_PLI_RE = re.compile(r"(a=fmtp:\d+ [^\r\n]*profile-level-id=)([0-9a-fA-F]{6})")


def set_profile_level_id(sdp: str, actual: str | None) -> str:
    """Write the profile-level-id the encoder really emits into an answer's fmtp lines.

    aiortc answers with the level of its capability table (3.1) whatever the
    stream is; browsers size decoders by it, so it must say what the SPS says.
    Only constrained-baseline fmtp lines are rewritten, and only with a
    constrained-baseline value.
    """
    if actual is None or not is_constrained_baseline(actual):
        return sdp

    def fix(match: re.Match[str]) -> str:
        if is_constrained_baseline(match.group(2)):
            return match.group(1) + actual.lower()
        return match.group(0)

    return _PLI_RE.sub(fix, sdp)


def selected_pair(pc: RTCPeerConnection) -> tuple[str | None, str | None, str | None]:
    """(local type, remote type, remote address) of the nominated ICE pair, if any."""
    transports = [t.receiver.transport or t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)  # a data-channel-only session (peercam ptz)
    for dtls in transports:
        if dtls is None:
            continue
        pair = compat.nominated_pair(dtls.transport)
        if pair is not None:
            remote = pair.remote_candidate
            return pair.local_candidate.type, remote.type, remote.host
    return None, None, None


def selected_transport(pc: RTCPeerConnection) -> str | None:
    """"udp" or "tcp": what the nominated ICE pair runs over (None: none yet)."""
    transport = _ice_transport(pc)
    pair = None if transport is None else compat.nominated_pair(transport)
    return None if pair is None else str(pair.local_candidate.transport).lower()


def _ice_transport(pc: RTCPeerConnection) -> RTCIceTransport | None:
    """The session's one ICE transport (everything is bundled), if it has one yet."""
    transports = [t.receiver.transport or t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    return next((dtls.transport for dtls in transports if dtls is not None), None)


def search_direct_again(pc: RTCPeerConnection) -> bool:
    """After a network change: if this session's media is on a relay, look for a
    direct path again (the background search, from its first round). True if it does."""
    transport = _ice_transport(pc)
    return transport is not None and compat.rearm_upgrade(transport)


def reflexive_checked(pc: RTCPeerConnection) -> asyncio.Event | None:
    """Set once this session's ICE agent has sent a check to one of the peer's
    server-reflexive or relayed candidates (None: no ICE transport yet)."""
    transport = _ice_transport(pc)
    return None if transport is None else compat.reflexive_checked(transport)


def arm_punch(pc: RTCPeerConnection, local: NatProfile, remote: NatProfile,
              config: PunchConfig) -> bool:
    """Let this session's background search (after it completed on a relay) make a
    punching attempt through the two NATs (:mod:`camera.punch`). True if armed."""
    transport = _ice_transport(pc)
    if transport is None:
        return False
    compat.arm_punch(transport, local, remote, config)
    return True


def selected_pair_types(pc: RTCPeerConnection) -> tuple[str | None, str | None]:
    """Candidate types (host/srflx/prflx/relay) of the nominated ICE pair, if any."""
    local, remote, _address = selected_pair(pc)
    return local, remote


def restrict_host_addresses(addresses: list[str] | None) -> None:
    """Offer ICE host candidates only on these local addresses (None: every interface).

    For multi-homed devices (keep a VPN or container bridge out of ICE) and for
    loopback-only runs: aioice never offers 127.0.0.1 by itself, but does when
    it is listed here. Process-wide, as aioice's address lookup is (camera/compat).
    """
    compat.restrict_host_addresses(addresses)


def host_addresses_from_env(env: dict[str, str] | None = None) -> list[str] | None:
    """``PEERCAM_ICE_ADDRESSES=127.0.0.1,::1`` → the list; unset → None."""
    import os

    value = (env if env is not None else dict(os.environ)).get("PEERCAM_ICE_ADDRESSES", "")
    items = [a.strip() for a in value.split(",") if a.strip()]
    return items or None


def stun_server_of(ice_servers: list[dict[str, Any]]) -> tuple[str, int] | None:
    """The first plain ``stun:`` server in a list, as (host, port)."""
    from services.stun.natcheck import parse_hostport

    for entry in ice_servers:
        for url in entry["urls"]:
            if url.startswith("stun:"):
                try:
                    return parse_hostport(url[5:].split("?", 1)[0])
                except ValueError:
                    continue
    return None


def order_turn(ice_servers: list[dict[str, Any]], udp_blocked: bool) -> list[dict[str, Any]]:
    """One entry per URL; where outbound UDP is blocked, only TURN over TCP/TLS.

    aiortc uses only the first TURN URL it finds, so without UDP it must be the
    TCP (or TLS, port 443) one or there is no path at all; and a STUN query that
    cannot be answered would hold up candidate gathering for seconds.
    """
    flat = [{**entry, "urls": [url]} for entry in ice_servers for url in entry["urls"]]
    if not udp_blocked:
        return flat
    return [e for e in flat
            if e["urls"][0].startswith("turns:") or "transport=tcp" in e["urls"][0]]


async def udp_blocked(ice_servers: list[dict[str, Any]], timeout: float = 0.25) -> bool:
    """True if the list's STUN server does not answer a Binding over UDP (two tries).

    One request, not a whole RFC 5780 run: a viewer pays this before every
    session. Without a STUN server in the list there is nothing to learn: False.
    """
    import asyncio

    from services.stun.message import Message, MessageClass, Method, parse

    server = stun_server_of(ice_servers)
    if server is None:
        return False
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    request = Message(Method.BINDING, MessageClass.REQUEST)

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            try:
                reply = parse(data)
            except ValueError:
                return
            if reply.transaction_id == request.transaction_id and not answered.done():
                answered.set_result(True)

    try:
        transport, _ = await loop.create_datagram_endpoint(Probe, remote_addr=server)
    except OSError:
        return True  # no route for UDP at all
    try:
        for wait in (timeout, 2 * timeout):
            transport.sendto(request.encode())
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(answered)
                return False
            except TimeoutError:
                continue
        return True
    finally:
        transport.close()
