"""Trickled candidates on the camera: the gatekeeper's signature check and the session's
buffer, with a real aiortc peer connection and no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from camera.acl import PairingWindows, ViewerACL
from camera.broadcaster import Broadcaster
from camera.client.viewer import ViewerIdentity
from camera.compat import Settings, reconfigure
from camera.gatekeeper import Gatekeeper, Refused
from camera.ice import DirectFirst, answer_waits
from camera.identity import DeviceIdentity
from camera.session import BadCandidate, ViewerSession, parse_candidate
from services.signaling import MAX_CANDIDATES, Message, Role, encode, parse
from services.signatures import candidate_statement, sign
from services.stun.server import run_stun_server
from tests.conftest import scaled

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"
SESSION = "t" * 20
LINE = "candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host generation 0 ufrag abcd"


@pytest.fixture
def viewer(tmp_path: Path) -> ViewerIdentity:
    return ViewerIdentity.load_or_create(tmp_path / "viewer", name="phone")


@pytest.fixture
def gatekeeper(tmp_path: Path, viewer: ViewerIdentity) -> Gatekeeper:
    identity = DeviceIdentity.load_or_create(tmp_path / "cam")
    gk = Gatekeeper(identity, ViewerACL(tmp_path / "cam"), PairingWindows(tmp_path / "cam"))
    gk.acl.add(viewer.key, "phone")
    return gk


def signed_candidate(
    signer: ViewerIdentity,
    device_id: str,
    *,
    session: str = SESSION,
    offer: str = OFFER,
    seq: int = 0,
    line: str = LINE,
    mid: str | None = "0",
    index: int | None = 0,
    **override: Any,
) -> Message:
    """A ``candidate`` as the camera receives it from the rendezvous."""
    fields: dict[str, Any] = {
        "session_id": session, "seq": seq, "candidate": line, "sdp_mid": mid,
        "sdp_mline_index": index,
        "signature": sign(signer.private_key,
                          candidate_statement(device_id, session, offer, seq, line, mid, index)),
    }
    fields.update(override)
    return parse(encode(Role.SERVER, "candidate", **fields), Role.SERVER)


# -- the gatekeeper --------------------------------------------------------------


def test_a_candidate_signed_by_the_sessions_viewer_for_its_offer_passes(
    gatekeeper: Gatekeeper, viewer: ViewerIdentity
) -> None:
    gatekeeper.check_candidate(signed_candidate(viewer, gatekeeper.device_id), viewer.key, OFFER)
    end = signed_candidate(viewer, gatekeeper.device_id, seq=5, line="", mid=None, index=None)
    gatekeeper.check_candidate(end, viewer.key, OFFER)


def test_a_candidate_signed_by_another_key_is_refused(
    gatekeeper: Gatekeeper, viewer: ViewerIdentity, tmp_path: Path
) -> None:
    # The rendezvous' own key; even a key in the ACL is not the session's key.
    for name in ("server", "other-paired"):
        other = ViewerIdentity.load_or_create(tmp_path / name)
        if name == "other-paired":
            gatekeeper.acl.add(other.key, "laptop")
        forged = signed_candidate(other, gatekeeper.device_id)
        with pytest.raises(Refused, match="signature does not verify"):
            gatekeeper.check_candidate(forged, viewer.key, OFFER)


@pytest.mark.parametrize(
    "changed",
    [
        {"session": "u" * 20},                           # another session of the same viewer
        {"offer": OFFER + "a=ice-ufrag:zzzz\r\n"},       # another offer (a replayed session ID)
        {"seq": 1},                                      # signed as another seq
        {"line": LINE.replace("192.0.2.7", "198.51.100.66")},  # another address
        {"mid": "1"},
        {"index": 1},
    ],
)
def test_a_candidate_signed_for_something_else_is_refused(
    gatekeeper: Gatekeeper, viewer: ViewerIdentity, changed: dict[str, Any]
) -> None:
    # What arrives names this session/offer/seq/line; what was signed differs in one place.
    signed = signed_candidate(viewer, gatekeeper.device_id, **changed)
    arrived = signed_candidate(viewer, gatekeeper.device_id, signature=signed["signature"])
    with pytest.raises(Refused, match="signature does not verify"):
        gatekeeper.check_candidate(arrived, viewer.key, OFFER)


def test_a_candidate_signed_for_another_camera_is_refused(
    gatekeeper: Gatekeeper, viewer: ViewerIdentity
) -> None:
    other = DeviceIdentity.generate().device_id
    with pytest.raises(Refused, match="signature does not verify"):
        gatekeeper.check_candidate(signed_candidate(viewer, other), viewer.key, OFFER)


def test_a_revoked_viewers_candidate_is_refused(
    gatekeeper: Gatekeeper, viewer: ViewerIdentity
) -> None:
    gatekeeper.acl.revoke("phone")
    with pytest.raises(Refused, match="not paired"):
        gatekeeper.check_candidate(signed_candidate(viewer, gatekeeper.device_id), viewer.key,
                                   OFFER)


# -- parsing -----------------------------------------------------------------------


def test_a_browser_candidate_line_becomes_aiortcs_candidate() -> None:
    line = ("candidate:3 1 udp 41885439 203.0.113.9 50000 typ relay raddr 198.51.100.2 "
            "rport 40000 generation 0 ufrag 2tFj network-id 1")
    candidate = parse_candidate(line, "0", 0)
    assert candidate is not None
    assert (candidate.foundation, candidate.component, candidate.protocol) == ("3", 1, "udp")
    assert (candidate.ip, candidate.port, candidate.type) == ("203.0.113.9", 50000, "relay")
    assert (candidate.relatedAddress, candidate.relatedPort) == ("198.51.100.2", 40000)
    assert (candidate.sdpMid, candidate.sdpMLineIndex) == ("0", 0)
    assert parse_candidate("", None, None) is None  # end-of-candidates


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("1 1 udp 2130706431 192.0.2.7 50000 typ host", "does not start with 'candidate:'"),
        ("candidate:1 1 udp", "too few fields"),
        ("candidate:1 x udp 1 192.0.2.7 5 typ host", "invalid literal"),
        ("candidate:1 0 udp 1 192.0.2.7 5 typ host", "component or priority"),
        ("candidate:1 1 udp 0 192.0.2.7 5 typ host", "component or priority"),
        ("candidate:1 1 udp 1 192.0.2.7 0 typ host", "port 0 out of range"),
        ("candidate:1 1 udp 1 192.0.2.7 70000 typ host", "port 70000 out of range"),
        ("candidate:1 1 udp 1 192.0.2.7 5 typ relay raddr 192.0.2.1 rport x", "invalid literal"),
    ],
)
def test_unusable_candidate_lines_are_bad_candidates(line: str, fragment: str) -> None:
    with pytest.raises(BadCandidate, match=fragment):
        parse_candidate(line, "0", 0)


# -- the session's buffer, with a real aiortc peer connection -------------------------


def without_candidates(sdp: str) -> str:
    """An offer as a trickling browser sends it: no candidates, no end-of-candidates.

    (aiortc gathers before setLocalDescription returns, so its offers have both; after
    ``a=end-of-candidates`` a trickled candidate would rightly be ignored.)
    """
    return "".join(line for line in sdp.splitlines(keepends=True)
                   if not line.startswith(("a=candidate:", "a=end-of-candidates")))


async def _offer() -> tuple[RTCPeerConnection, str]:
    viewer = RTCPeerConnection()
    viewer.createDataChannel("ptz")  # a control-only offer: no video source needed
    await viewer.setLocalDescription(await viewer.createOffer())
    return viewer, without_candidates(viewer.localDescription.sdp)


def _remote_addresses(session: ViewerSession) -> list[tuple[str, int]]:
    assert session.pc.sctp is not None
    ice = session.pc.sctp.transport.transport
    return [(c.ip, c.port) for c in ice.getRemoteCandidates() if c.type == "host"]


def _remote_end(session: ViewerSession) -> bool:
    assert session.pc.sctp is not None
    return bool(session.pc.sctp.transport.transport._connection._remote_candidates_end)


async def test_candidates_before_the_offer_wait_for_it_then_later_ones_apply_at_once() -> None:
    closed: list[str] = []
    session = ViewerSession(SESSION, Broadcaster(lambda: None), [],
                            lambda _s, reason: closed.append(reason), ice_timeout=30)
    viewer, offer = await _offer()
    try:
        # Trickled faster than the camera applies the offer: nowhere to put it yet.
        await session.add_candidate(0, LINE, "0", 0)
        assert session.offer_sdp is None and session.trickled == 1
        await session.answer(offer)
        assert session.offer_sdp == offer
        assert ("192.0.2.7", 50000) in _remote_addresses(session)
        late = LINE.replace("192.0.2.7 50000", "192.0.2.8 50001")
        await session.add_candidate(1, late, "0", 0)
        assert ("192.0.2.8", 50001) in _remote_addresses(session)
        # A seq is taken once: a replayed candidate is refused, even a valid one.
        with pytest.raises(BadCandidate, match="already used"):
            await session.add_candidate(1, late, "0", 0)
        with pytest.raises(BadCandidate, match="out of range"):
            await session.add_candidate(MAX_CANDIDATES, late, "0", 0)
        assert not _remote_end(session)
        await session.add_candidate(2, "", None, None)
        assert _remote_end(session)
        assert session.trickled == 3 and closed == []
    finally:
        await session.close("test over")
        await viewer.close()


async def test_end_of_candidates_before_the_offer_is_applied_after_the_candidates() -> None:
    session = ViewerSession(SESSION, Broadcaster(lambda: None), [], lambda _s, _r: None)
    viewer, offer = await _offer()
    try:
        await session.add_candidate(1, "", None, None)
        await session.add_candidate(0, LINE, "0", 0)  # arrived out of order
        await session.answer(offer)
        assert ("192.0.2.7", 50000) in _remote_addresses(session)
        assert _remote_end(session)
    finally:
        await session.close("test over")
        await viewer.close()


# -- the answer waits for a trickling viewer's server-reflexive candidate (camera.ice 6) ---

SRFLX = ("candidate:2 1 udp 1686052607 198.51.100.9 40000 typ srflx raddr 192.0.2.7 "
         "rport 50000 generation 0 ufrag abcd")


def test_only_a_trickling_viewer_with_servers_and_no_reflexive_candidate_waits() -> None:
    assert answer_waits(trickled=True, servers=True, offered_types=[])
    assert answer_waits(trickled=True, servers=True, offered_types=["host"])
    assert not answer_waits(trickled=True, servers=True, offered_types=["host", "srflx"])
    assert not answer_waits(trickled=True, servers=True, offered_types=["relay"])
    assert not answer_waits(trickled=False, servers=True, offered_types=["host"])
    assert not answer_waits(trickled=True, servers=False, offered_types=[])


@pytest.fixture
async def stun_servers() -> AsyncIterator[list[dict[str, Any]]]:
    stun = await run_stun_server("127.0.0.1", None, 0, 0, tcp=False)
    host, port = stun.addresses[(0, 0)]
    yield [{"urls": [f"stun:{host}:{port}"]}]
    await stun.close()


@pytest.mark.parametrize("hold", [True, False])
async def test_the_answer_waits_for_the_viewers_srflx_candidate(
    stun_servers: list[dict[str, Any]], hold: bool
) -> None:
    # A hold far longer than the test: only the candidate can end it.
    long = scaled(30)
    reconfigure(Settings(direct_first=DirectFirst(answer_hold=long if hold else 0.0,
                                                  answer_hold_after_host=long)))
    session = ViewerSession(SESSION, Broadcaster(lambda: None), stun_servers,
                            lambda _s, _r: None)
    viewer, offer = await _offer()
    answering = asyncio.create_task(session.answer(offer))
    try:
        await session.add_candidate(0, LINE, "0", 0)  # a host candidate: not enough
        async with asyncio.timeout(scaled(10)):
            while session.pc.localDescription is None:
                await asyncio.sleep(0.005)
            if not hold:
                await answering
                return
            await asyncio.sleep(0.05)
            assert not answering.done()  # checking, the answer held back
            await session.add_candidate(1, SRFLX, "0", 0)
            answer = await answering
        assert "a=fingerprint" in answer
        assert ("198.51.100.9", 40000) in [
            (c.ip, c.port) for c in session.pc.sctp.transport.transport.getRemoteCandidates()]
    finally:
        answering.cancel()
        await session.close("test over")
        await viewer.close()
        reconfigure(Settings())


async def test_without_a_srflx_candidate_soon_after_its_host_one_the_answer_goes(
    stun_servers: list[dict[str, Any]]
) -> None:
    """A viewer whose UDP is blocked never sends a server-reflexive candidate: the
    answer goes ``answer_hold_after_host`` after its host candidate, not at the hold's
    end (here far longer than the test)."""
    reconfigure(Settings(direct_first=DirectFirst(answer_hold=scaled(30),
                                                  answer_hold_after_host=0.05)))
    session = ViewerSession(SESSION, Broadcaster(lambda: None), stun_servers,
                            lambda _s, _r: None)
    viewer, offer = await _offer()
    try:
        await session.add_candidate(0, LINE, "0", 0)
        async with asyncio.timeout(scaled(10)):
            answer = await session.answer(offer)
        assert "a=fingerprint" in answer
    finally:
        await session.close("test over")
        await viewer.close()
        reconfigure(Settings())
