"""The camera agent's protocol core, driven without sockets: messages and time in,
actions out. Hostile and out-of-order sequences included."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camera.acl import PairingWindows, ViewerACL
from camera.client.viewer import ViewerIdentity
from camera.core import (
    AddCandidate,
    AgentCore,
    CloseSession,
    PairingUsed,
    Phase,
    Replaced,
    Send,
    StartSession,
    printable,
)
from camera.gatekeeper import Gatekeeper
from camera.identity import DeviceIdentity
from services.signaling import Role, parse
from services.signatures import pair_statement, pairing_proof, sign
from tests.conftest import signed_candidate, signed_offer

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"
S1, S2 = "a" * 20, "b" * 20
LINE = "candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host generation 0 ufrag abcd"
STUN = [{"urls": ["stun:198.51.100.1:3478"]}]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeviceIdentity, ViewerIdentity]:
    base = tmp_path_factory.mktemp("keys")
    return (DeviceIdentity.load_or_create(base / "cam"),
            ViewerIdentity.load_or_create(base / "viewer", name="phone"))


def make_core(tmp: Path, keys: tuple[DeviceIdentity, ViewerIdentity], *, nat_settled: bool = True,
              **options: Any) -> AgentCore:
    identity, viewer = keys
    state = tmp / f"state{len(list(tmp.iterdir()))}"
    gatekeeper = Gatekeeper(identity, ViewerACL(state), PairingWindows(state))
    gatekeeper.acl.add(viewer.key, "phone")
    core = AgentCore(gatekeeper, **options)
    core.nat_settled = nat_settled
    return core


def offer(keys: tuple[DeviceIdentity, ViewerIdentity], session: str = S1) -> str:
    identity, viewer = keys
    fields = signed_offer(viewer, identity.device_id, session, OFFER)
    del fields["device_id"]
    return json.dumps({**fields, "ice_servers": STUN})


def candidate(keys: tuple[DeviceIdentity, ViewerIdentity], seq: int, session: str = S1,
              line: str = LINE) -> str:
    identity, viewer = keys
    fields = signed_candidate(viewer, identity.device_id, session, OFFER, seq, line)
    del fields["device_id"]
    return json.dumps(fields)


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send)]


def test_an_offer_starts_a_session_and_the_answer_goes_out_signed(
    tmp_path: Path, keys: Any
) -> None:
    core = make_core(tmp_path, keys)
    [start] = core.received(offer(keys), 1.0)
    assert isinstance(start, StartSession) and start.session_id == S1
    assert start.ice_servers == STUN and start.viewer_key == keys[1].key
    assert core.sessions[S1].phase is Phase.ANSWERING
    [answer] = sent(core.answered(S1, "v=0\r\nanswer\r\n", 2.0))
    assert answer["type"] == "answer" and answer["session_id"] == S1
    parse(json.dumps(answer), Role.CAMERA)  # a well-formed, signed answer
    assert core.sessions[S1].phase is Phase.LIVE


def test_candidates_wait_with_their_offer_for_the_nat_check_and_follow_it(
    tmp_path: Path, keys: Any
) -> None:
    # Before the fix, a candidate trickled while its offer waited for the NAT check
    # found no session and was dropped.
    core = make_core(tmp_path, keys, nat_settled=False)
    assert core.received(offer(keys), 0.0) == []
    assert core.sessions[S1].phase is Phase.WAITING
    assert core.received(candidate(keys, 0), 0.1) == []
    assert core.received(candidate(keys, 1, line=""), 0.2) == []
    start, first, end = core.nat_checked(True, 0.5)
    assert isinstance(start, StartSession) and start.udp_blocked
    assert isinstance(first, AddCandidate) and first.candidate.line == LINE
    assert isinstance(end, AddCandidate) and end.candidate.line == ""
    # Answering: later candidates go to the session at once.
    [later] = core.received(candidate(keys, 2), 0.6)
    assert isinstance(later, AddCandidate) and later.candidate.seq == 2


def test_an_offer_waits_at_most_nat_wait_for_the_nat_check(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys, nat_settled=False, nat_wait=3.0)
    core.received(offer(keys), 10.0)
    assert core.tick(12.9) == []
    [start] = core.tick(13.0)
    assert isinstance(start, StartSession) and not start.udp_blocked
    assert core.nat_checked(False, 14.0) == []  # nothing left waiting


def test_the_cameras_own_ice_servers_override_the_rendezvous(tmp_path: Path, keys: Any) -> None:
    own = [{"urls": ["stun:203.0.113.9:3478"]}]
    core = make_core(tmp_path, keys, ice_servers=own)
    [start] = core.received(offer(keys), 0.0)
    assert isinstance(start, StartSession) and start.ice_servers == own


def test_a_repeated_candidate_seq_and_a_forged_candidate_are_dropped(
    tmp_path: Path, keys: Any
) -> None:
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    assert len(core.received(candidate(keys, 3), 0.1)) == 1
    assert core.received(candidate(keys, 3), 0.2) == []
    forged = json.loads(candidate(keys, 4))
    forged["candidate"] = LINE.replace("192.0.2.7", "203.0.113.66")
    assert core.received(json.dumps(forged), 0.3) == []
    assert core.refusals == 1


def test_unpaired_offer_gets_a_bye_and_no_session(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    core.gatekeeper.acl.clear()
    [bye] = sent(core.received(offer(keys), 0.0))
    assert bye["type"] == "bye" and "not authorized" in bye["reason"]
    assert core.sessions == {} and core.refusals == 1


def test_capacity_counts_sessions_that_are_not_closing(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys, max_viewers=1)
    core.received(offer(keys, S1), 0.0)
    [bye] = sent(core.received(offer(keys, S2), 0.1))
    assert "too many viewers" in bye["reason"]
    [close] = core.received(json.dumps({"type": "bye", "session_id": S1}), 0.2)
    assert isinstance(close, CloseSession)
    third = "c" * 20
    assert isinstance(core.received(offer(keys, third), 0.3)[0], StartSession)


def test_a_relayed_bye_for_a_live_session_is_advice(tmp_path: Path, keys: Any) -> None:
    # The rendezvous sends "viewer left" when only the viewer's signaling dropped, and
    # a hostile one can send any bye: a live session ends by its media plane.
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    core.answered(S1, "v=0\r\n", 0.5)
    core.media_up(S1)
    assert core.received(json.dumps({"type": "bye", "session_id": S1, "reason": "viewer left"}),
                         1.0) == []
    assert core.sessions[S1].phase is Phase.LIVE
    [bye] = sent(core.session_ended(S1, "peer connection closed"))  # the DTLS close
    assert bye["reason"] == "peer connection closed" and core.sessions == {}


def test_a_bye_before_the_media_is_up_ends_the_session(tmp_path: Path, keys: Any) -> None:
    # The viewer refused the answer (a forged fingerprint) or gave up before ICE.
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    core.answered(S1, "v=0\r\n", 0.5)
    [close] = core.received(json.dumps({"type": "bye", "session_id": S1}), 1.0)
    assert close == CloseSession(S1, "viewer left")


def test_a_bye_from_the_server_closes_without_a_bye_back(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    [close] = core.received(json.dumps({"type": "bye", "session_id": S1, "reason": "gone"}), 1)
    assert close == CloseSession(S1, "gone")
    assert core.session_ended(S1, "peer connection closed") == []
    assert core.sessions == {}


def test_a_session_that_fails_on_its_own_says_bye(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    [bye] = sent(core.session_ended(S1, "ICE did not connect"))
    assert bye == {"type": "bye", "session_id": S1, "reason": "ICE did not connect"}
    assert core.answered(S1, "v=0\r\n", 1.0) == []  # too late: nothing is signed


def test_revocation_ends_the_viewers_sessions(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    core.received(offer(keys), 0.0)
    core.gatekeeper.acl.clear()
    actions = core.end_revoked()
    assert sent(actions)[0]["reason"] == "not authorized: this viewer was revoked"
    assert CloseSession(S1, "not authorized: this viewer was revoked") in actions
    assert core.end_revoked() == []  # once


def test_replaced_is_reported(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    error = {"type": "error", "code": "replaced", "message": "a newer connection registered"}
    assert core.received(json.dumps(error), 0.0) == [Replaced()]


def pair_message(keys: Any, secret: str, name: str, session: str = S2) -> str:
    """A pairing request; a name that cannot be signed gets well-formed junk signatures."""
    identity, viewer = keys
    timestamp = int(time.time() * 1000)
    try:
        statement = pair_statement(identity.device_id, session, timestamp, viewer.key, name)
        signature, proof = sign(viewer.private_key, statement), pairing_proof(secret, statement)
    except UnicodeEncodeError:
        signature, proof = "A" * 86, "A" * 43
    return json.dumps({
        "type": "pair", "session_id": session, "viewer_key": viewer.key, "name": name,
        "timestamp": timestamp, "signature": signature, "proof": proof,
    }, ensure_ascii=True)


def test_pairing_with_the_secret_adds_the_viewer(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    core.gatekeeper.acl.clear()
    secret = core.gatekeeper.pairing.open(60, persist=False).secret
    used, paired = core.received(pair_message(keys, secret, "kitchen tablet"), 0.0)
    assert used == PairingUsed() and json.loads(paired.text)["type"] == "paired"
    assert keys[1].key in core.gatekeeper.acl


def test_pairing_that_cannot_be_saved_says_why_and_can_be_tried_again(
    tmp_path: Path, keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = make_core(tmp_path, keys)
    core.gatekeeper.acl.clear()
    secret = core.gatekeeper.pairing.open(60, persist=False).secret

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("camera.acl.write_private", full)
    [bye] = sent(core.received(pair_message(keys, secret, "kitchen tablet"), 0.0))
    assert bye["type"] == "bye" and "could not save the viewer list" in bye["reason"]
    assert keys[1].key not in core.gatekeeper.acl
    monkeypatch.undo()  # space freed: the same link works
    used, paired = core.received(pair_message(keys, secret, "kitchen tablet", "t" * 20), 1.0)
    assert used == PairingUsed() and json.loads(paired.text)["type"] == "paired"
    assert keys[1].key in core.gatekeeper.acl


def test_a_lone_surrogate_in_a_pairing_name_costs_that_request_only(
    tmp_path: Path, keys: Any
) -> None:
    # One such message used to end the camera's rendezvous link for good.
    core = make_core(tmp_path, keys)
    secret = core.gatekeeper.pairing.open(60, persist=False).secret
    actions = core.received(pair_message(keys, secret, "\ud800"), 0.0)
    assert [m["type"] for m in sent(actions)] == ["bye"]
    [start] = core.received(offer(keys), 1.0)  # and the camera goes on serving
    assert isinstance(start, StartSession)


def test_deep_nesting_from_a_hostile_server_is_refused_quietly(
    tmp_path: Path, keys: Any
) -> None:
    core = make_core(tmp_path, keys)
    for data in ("[" * 60_000 + "]" * 60_000,
                 '{"type":"offer","session_id":' + "[" * 60_000 + "]" * 60_000 + "}"):
        assert core.received(data, 0.0) == []
    assert isinstance(core.received(offer(keys), 1.0)[0], StartSession)


def test_a_malformed_offer_naming_a_session_gets_a_bye(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys)
    bad = json.loads(offer(keys))
    bad["sdp"] = 7
    [bye] = sent(core.received(json.dumps(bad), 0.0))
    assert bye["session_id"] == S1 and bye["reason"].startswith("not authorized: offer: sdp")


def test_close_all_says_bye_once_per_session(tmp_path: Path, keys: Any) -> None:
    core = make_core(tmp_path, keys, nat_settled=False)
    core.received(offer(keys, S1), 0.0)  # waiting: nothing to close
    core.nat_checked(False, 0.1)
    core.received(offer(keys, S2), 0.2)
    actions = core.close_all("camera shutting down")
    assert sorted(m["session_id"] for m in sent(actions)) == [S1, S2]
    assert core.close_all("again") == []


def test_printable_neutralises_what_would_break_a_log_line() -> None:
    assert printable("a\ud800b\x00c\n") == "a\\ud800b?c?"
    assert len(printable("x" * 10_000)) == 200


# -- property tests: nothing a server sends can raise out of the core ---------------

TYPES = ["hello", "registered", "prepared", "offer", "answer", "candidate", "pair", "paired",
         "bye", "error", "register", "nonsense"]
FIELDS = ["session_id", "sdp", "viewer_key", "timestamp", "signature", "ice_servers", "seq",
          "candidate", "sdp_mid", "sdp_mline_index", "name", "proof", "code", "message",
          "reason", "nonce", "server", "device_id", "device_key"]
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "x" * 65_536, "v=0\r\n\ud800", S1,
                     "candidate:\ud800 1 udp 1 1.2.3.4 1 typ host"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_messages(draw: st.DrawFn, keys: Any) -> str:
    kind = draw(st.sampled_from(["valid-offer", "valid-candidate", "mutated", "raw"]))
    if kind == "valid-offer":
        return offer(keys, draw(st.sampled_from([S1, S2])))
    if kind == "valid-candidate":
        return candidate(keys, draw(st.integers(0, 40)), draw(st.sampled_from([S1, S2])))
    if kind == "raw":
        return draw(st.one_of(hostile_text, st.just("[" * 60_000)))
    base = json.loads(offer(keys, draw(st.sampled_from([S1, S2]))))
    base["type"] = draw(st.sampled_from(TYPES))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        base[name] = draw(json_values)
    return json.dumps(base, ensure_ascii=draw(st.booleans()))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_sequence_from_the_server_raises_and_a_paired_viewer_still_gets_in(
    tmp_path: Path, keys: Any, data: st.DataObject
) -> None:
    core = make_core(tmp_path, keys, nat_settled=data.draw(st.booleans()))
    now = 0.0
    for _ in range(data.draw(st.integers(1, 12))):
        now += data.draw(st.floats(0, 2))
        event = data.draw(st.sampled_from(["message", "message", "message", "tick", "nat",
                                           "answered", "ended", "revoke-check"]))
        if event == "message":
            actions = core.received(data.draw(hostile_messages(keys)), now)
        elif event == "tick":
            actions = core.tick(now)
        elif event == "nat":
            actions = core.nat_checked(data.draw(st.booleans()), now)
        elif event == "answered":
            actions = core.answered(data.draw(st.sampled_from([S1, S2])), "v=0\r\n", now)
        elif event == "ended":
            actions = core.session_ended(data.draw(st.sampled_from([S1, S2])), "x\ud800")
        else:
            actions = core.end_revoked()
        for action in actions:
            if isinstance(action, Send):
                parse(action.text, Role.CAMERA)  # whatever goes out is well-formed
    # After any sequence: a fresh offer from the paired viewer is served.
    fresh = "f" * 20 + str(int(now * 1000))
    actions = core.received(offer(keys, fresh), now) + core.nat_checked(False, now + 1)
    assert any(isinstance(a, StartSession) and a.session_id == fresh for a in actions)
