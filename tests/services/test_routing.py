"""The rendezvous state machine, driven without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from camera.gatekeeper import Gatekeeper, server_name
from camera.identity import DeviceIdentity
from services.routing import (
    MAX_SERVER_NAMES,
    REGISTER_WINDOW,
    BadServerName,
    Close,
    Peer,
    Router,
    Send,
    parse_server_names,
    server_name_forms,
)
from services.signaling import Role, encode
from services.signatures import encode_public_key, register_statement, sign

SDP = "v=0\r\n"
SIG = "A" * 86
KEY = "B" * 122
HOST = "rendezvous.test:8080"


class Camera:
    """A camera identity that can make (or fake) its registration."""

    def __init__(self) -> None:
        self.identity = DeviceIdentity.generate()
        self.id = self.identity.device_id

    def register(self, peer: Peer, name: str = HOST, **override: str) -> str:
        """``register`` signed for ``name``, as a camera that dialled ``ws://name`` signs."""
        fields = {
            "device_id": self.id,
            "device_key": encode_public_key(self.identity.private_key.public_key()),
            "signature": sign(self.identity.private_key,
                              register_statement(name, peer.nonce, self.id)),
        }
        fields.update(override)
        return encode(Role.CAMERA, "register", **fields)


def sent(actions: list[Any], peer: Peer) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send) and a.peer is peer]


def closed(actions: list[Any], peer: Peer) -> bool:
    return any(isinstance(a, Close) and a.peer is peer for a in actions)


def online(router: Router, camera: Camera, now: float = 0) -> Peer:
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, now)
    actions = router.received(peer, camera.register(peer), now)
    assert sent(actions, peer)[-1]["type"] == "registered", sent(actions, peer)
    return peer


def offer_text(device: str, session: str) -> str:
    return encode(Role.VIEWER, "offer", device_id=device, session_id=session, sdp=SDP,
                  viewer_key=KEY, timestamp=1, signature=SIG)


def answer_text(session: str, sdp: str = "v=0\r\nanswer") -> str:
    return encode(Role.CAMERA, "answer", session_id=session, sdp=sdp, device_key=KEY,
                  signature=SIG)


def test_registration_needs_a_signature_by_the_ids_key() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    online(router, cam)
    assert cam.id in router.cameras


def test_registration_with_another_key_for_an_existing_id_is_refused() -> None:
    router, victim, attacker = Router(server_names=[HOST]), Camera(), Camera()
    holder = online(router, victim)
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, 0)
    # The attacker signs correctly with its own key but claims the victim's ID.
    actions = router.received(peer, attacker.register(peer, device_id=victim.id), 0)
    assert sent(actions, peer)[0]["code"] == "bad-signature"
    assert closed(actions, peer)
    assert router.cameras[victim.id] is holder


def test_registration_with_a_bad_signature_is_refused() -> None:
    router, cam, other = Router(server_names=[HOST]), Camera(), Camera()
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, 0)
    forged = sign(other.identity.private_key, register_statement(HOST, peer.nonce, cam.id))
    actions = router.received(peer, cam.register(peer, signature=forged), 0)
    assert sent(actions, peer)[0]["code"] == "bad-signature"
    assert cam.id not in router.cameras


def test_registration_signed_for_another_server_or_nonce_is_refused() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    # Signed for another server (a relay attack through a hostile rendezvous) ...
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, 0)
    elsewhere = sign(cam.identity.private_key,
                     register_statement("evil.test", peer.nonce, cam.id))
    assert sent(router.received(peer, cam.register(peer, signature=elsewhere), 0),
                peer)[0]["code"] == "bad-signature"
    # ... or replayed from another connection (another nonce).
    first = Peer(Role.CAMERA, host=HOST)
    router.connected(first, 0)
    replay = cam.register(first)
    second = Peer(Role.CAMERA, host=HOST)
    router.connected(second, 0)
    assert sent(router.received(second, replay, 0), second)[0]["code"] == "bad-signature"
    assert cam.id not in router.cameras


def register_as(router: Router, cam: Camera, signed_for: str, host: str) -> str:
    """What the router answers a registration signed for ``signed_for`` that arrived
    with the Host header ``host``."""
    peer = Peer(Role.CAMERA, host=host)
    router.connected(peer, 0)
    reply = sent(router.received(peer, cam.register(peer, name=signed_for), 0), peer)[-1]
    return str(reply["type"] if reply["type"] == "registered" else reply["code"])


def test_registration_is_checked_against_the_servers_own_name_never_host() -> None:
    router, cam = Router(server_names=["rendezvous.test:8080"]), Camera()
    # A hostile server at evil.test relays the camera's connection here and sets the
    # Host header to its own name (the name the camera signed): refused.
    assert register_as(router, cam, "evil.test", host="evil.test") == "bad-signature"
    # ... or to ours: refused too, the signature names evil.test.
    assert register_as(router, cam, "evil.test", host="rendezvous.test:8080") == "bad-signature"
    assert cam.id not in router.cameras
    # Signed for our name: accepted whatever Host says (a proxy may rewrite it).
    assert register_as(router, cam, "rendezvous.test:8080", host="127.0.0.1:9000") == "registered"
    assert cam.id in router.cameras


def test_a_server_without_a_name_refuses_every_registration() -> None:
    router, cam = Router(), Camera()
    assert router.server_names == frozenset()
    assert register_as(router, cam, HOST, host=HOST) == "bad-signature"
    assert cam.id not in router.cameras


@pytest.mark.parametrize(("configured", "url"), [
    ("Rendezvous.Test:8080", "ws://rendezvous.test:8080/ws/camera"),
    ("rendezvous.test", "wss://RENDEZVOUS.test/ws/camera"),
    ("rendezvous.test:443", "wss://rendezvous.test:443/ws/camera"),
    ("rendezvous.test:443", "ws://rendezvous.test:443/ws/camera"),
    ("rendezvous.test:80", "ws://rendezvous.test/ws/camera"),
    ("[2001:DB8::1]:8080", "ws://[2001:db8::1]:8080/ws/camera"),
    ("2001:db8::1", "wss://[2001:db8::1]/ws/camera"),
    ("127.0.0.1:8080", "ws://127.0.0.1:8080"),
])
def test_names_compare_like_the_camera_signs_them(configured: str, url: str) -> None:
    """Case-insensitive, default ports elided: the camera's own normalisation."""
    router, cam = Router(server_names=[configured]), Camera()
    assert server_name(url) in server_name_forms(configured)
    assert register_as(router, cam, server_name(url), host="proxy.test") == "registered"


@pytest.mark.parametrize(("configured", "url"), [
    ("rendezvous.test:8080", "ws://rendezvous.test:8081"),
    ("rendezvous.test:8080", "ws://rendezvous.test"),
    ("rendezvous.test", "ws://rendezvous.test:8080"),
    ("rendezvous.test", "ws://rendezvous.test.evil.test"),
    ("127.0.0.1:8080", "ws://localhost:8080"),
])
def test_other_names_and_ports_do_not_match(configured: str, url: str) -> None:
    router, cam = Router(server_names=[configured]), Camera()
    assert register_as(router, cam, server_name(url), host=server_name(url)) == "bad-signature"


def test_several_names_each_work() -> None:
    router = Router(server_names=["cam.example.net", "192.0.2.7:8080"])
    for name in ("cam.example.net", "192.0.2.7:8080"):
        cam = Camera()
        assert register_as(router, cam, name, host="whatever") == "registered"


@pytest.mark.parametrize("bad", [
    "", "host name", "http://host", "host/path", "user@host", "host:0", "host:65536",
    "host:x", "host:", "[::1", "[::1]x", "hôst", "host\n", "a" * 300,
])
def test_bad_server_names_are_refused_with_the_value_named(bad: str) -> None:
    with pytest.raises(BadServerName, match="server name|port") as caught:
        parse_server_names([bad])
    assert isinstance(caught.value, ValueError)
    with pytest.raises(BadServerName):
        Router(server_names=[bad])


def test_the_number_of_names_is_bounded() -> None:
    names = [f"n{i}.test:8080" for i in range(MAX_SERVER_NAMES)]
    assert len(parse_server_names(names)) == MAX_SERVER_NAMES
    with pytest.raises(BadServerName, match="limit"):
        parse_server_names([*names, "one-more.test:8080"])


def test_stale_nonce_and_second_registration_are_refused() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    late = Peer(Role.CAMERA, host=HOST)
    router.connected(late, 0)
    actions = router.received(late, cam.register(late), REGISTER_WINDOW + 1)
    assert "stale" in sent(actions, late)[0]["message"]
    peer = online(router, cam)
    again = router.received(peer, cam.register(peer), 1)
    assert sent(again, peer)[0]["code"] == "bad-signature"


def test_newer_registration_replaces_older() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    old = online(router, cam)
    new = Peer(Role.CAMERA, host=HOST)
    router.connected(new, 0)
    actions = router.received(new, cam.register(new), 0)
    assert closed(actions, old)
    assert sent(actions, old)[0]["code"] == "replaced"
    assert router.cameras[cam.id] is new
    router.disconnected(old)  # the old socket closing later must not unregister the new one
    assert router.cameras[cam.id] is new


def test_gatekeeper_registration_matches_what_the_router_checks() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, 0)
    keeper = Gatekeeper.__new__(Gatekeeper)  # only its signing half is needed here
    keeper.identity = cam.identity
    keeper.device_key = encode_public_key(cam.identity.private_key.public_key())
    fields = keeper.registration(f"ws://{HOST}/ws/camera", peer.nonce)
    actions = router.received(peer, encode(Role.CAMERA, "register", **fields), 0)
    assert sent(actions, peer)[-1]["type"] == "registered"


def test_offer_and_answer_are_routed_with_signed_fields_untouched() -> None:
    router = Router(server_names=[HOST], ice_servers=[{"urls": ["stun:198.51.100.1:3478"]}],
                    credentials=lambda tag: [{"urls": ["turn:198.51.100.1:3478"],
                                              "username": f"9:{tag}", "credential": "x"}])
    cam = Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    hello = sent(router.connected(viewer), viewer)[0]
    assert hello["ice_servers"] == [{"urls": ["stun:198.51.100.1:3478"]}]  # no credentials
    to_camera = sent(router.received(viewer, offer_text(cam.id, "a" * 20), 0), camera)[0]
    assert to_camera["viewer_key"] == KEY and to_camera["signature"] == SIG
    assert to_camera["ice_servers"][1]["username"] == "9:" + "a" * 20
    reply = sent(router.received(camera, answer_text("a" * 20), 0), viewer)[0]
    assert reply == {"type": "answer", "session_id": "a" * 20, "sdp": "v=0\r\nanswer",
                     "device_key": KEY, "signature": SIG}


def test_prepare_hands_turn_credentials_only_for_an_online_camera() -> None:
    minted: list[str] = []

    def credentials(tag: str) -> list[dict[str, Any]]:
        minted.append(tag)
        return [{"urls": ["turn:198.51.100.1:3478"], "username": f"9:{tag}", "credential": "c"}]

    router, cam = Router(server_names=[HOST], credentials=credentials), Camera()
    viewer = Peer(Role.VIEWER)
    prepare = encode(Role.VIEWER, "prepare", device_id=cam.id, session_id="q" * 20)
    assert sent(router.received(viewer, prepare, 0), viewer)[0]["code"] == "unavailable"
    assert minted == []
    online(router, cam)
    minted.clear()
    reply = sent(router.received(viewer, prepare, 0), viewer)[0]
    assert reply["type"] == "prepared" and reply["ice_servers"][0]["username"] == "9:" + "q" * 20
    # Rate-limited: a viewer cannot farm credentials.
    replies = [sent(router.received(viewer, prepare, 0), viewer)[0] for _ in range(20)]
    assert replies[-1]["code"] == "rate-limited"


def test_pairing_request_is_routed_and_ends_at_paired() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    pair = encode(Role.VIEWER, "pair", device_id=cam.id, session_id="r" * 20, viewer_key=KEY,
                  name="phone", timestamp=1, signature=SIG, proof="P" * 43)
    to_camera = sent(router.received(viewer, pair, 0), camera)[0]
    assert to_camera["type"] == "pair" and to_camera["proof"] == "P" * 43
    paired = encode(Role.CAMERA, "paired", session_id="r" * 20, device_key=KEY, signature=SIG)
    assert sent(router.received(camera, paired, 0), viewer)[0]["type"] == "paired"
    assert router.stats()["sessions"] == 0


def test_unknown_and_offline_ids_get_the_same_answer() -> None:
    router, cam, other = Router(server_names=[HOST]), Camera(), Camera()
    camera = online(router, other)
    viewer = Peer(Role.VIEWER)
    unknown = sent(router.received(viewer, offer_text(cam.id, "b" * 20), 0), viewer)
    router.disconnected(camera)
    offline = sent(router.received(viewer, offer_text(other.id, "c" * 20), 0), viewer)
    assert unknown == offline
    assert unknown[0]["code"] == "unavailable"


def test_camera_cannot_answer_a_session_of_another_camera() -> None:
    router, cam, bad = Router(server_names=[HOST]), Camera(), Camera()
    camera = online(router, cam)
    intruder = online(router, bad)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "d" * 20), 0)
    actions = router.received(intruder, answer_text("d" * 20, "v=0\r\nevil"), 0)
    assert sent(actions, viewer) == []
    assert sent(actions, intruder)[0]["code"] == "unknown-session"
    assert sent(router.received(camera, answer_text("d" * 20), 0), viewer)[0]["type"] == "answer"


def test_unregistered_camera_is_told_so() -> None:
    router = Router(server_names=[HOST])
    camera = Peer(Role.CAMERA)
    assert sent(router.received(camera, answer_text("e" * 20), 0),
                camera)[0]["code"] == "not-registered"


def test_viewer_vanishing_sends_bye_to_camera() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "f" * 20), 0)
    byes = sent(router.disconnected(viewer), camera)
    assert byes == [{"type": "bye", "session_id": "f" * 20, "reason": "viewer left"}]
    assert router.stats()["sessions"] == 0


def test_camera_vanishing_sends_bye_to_viewers() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "g" * 20), 0)
    assert sent(router.disconnected(camera), viewer)[0]["type"] == "bye"
    assert router.stats() == {"cameras": 0, "viewers": 0, "sessions": 0}


def test_duplicate_session_id_conflicts() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    online(router, cam)
    viewer, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "h" * 20), 0)
    assert sent(router.received(other, offer_text(cam.id, "h" * 20), 0),
                other)[0]["code"] == "conflict"


def test_unanswered_offer_times_out() -> None:
    router, cam = Router(server_names=[HOST], answer_timeout=5), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "i" * 20), 0)
    assert router.expire(4.9) == []
    actions = router.expire(5.0)
    assert sent(actions, viewer)[0]["code"] == "timeout"
    assert sent(actions, camera)[0]["type"] == "bye"
    assert router.stats()["sessions"] == 0


def test_viewer_cannot_bye_someone_elses_session() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    online(router, cam)
    viewer, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "j" * 20), 0)
    actions = router.received(other, encode(Role.VIEWER, "bye", session_id="j" * 20), 0)
    assert sent(actions, other)[0]["code"] == "unknown-session"
    assert router.stats()["sessions"] == 1


def test_turn_tags_are_safe_for_any_device_id() -> None:
    tags: list[str] = []

    def credentials(tag: str) -> list[dict[str, Any]]:
        from services.turn import TAG_PATTERN

        assert TAG_PATTERN.fullmatch(tag), tag
        tags.append(tag)
        return []

    router = Router(server_names=[HOST], credentials=credentials)
    for _ in range(40):  # about one ID in 37 ends in '$', '*', '~' or '='
        online(router, Camera())
    assert len(tags) == 40 and all(len(t) >= 26 for t in tags)


# -- trickled candidates (docs/protocol.md, candidate) ---------------------------

LINE = "candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host"


def candidate_text(device: str, session: str, seq: int = 0, line: str = LINE) -> str:
    return encode(Role.VIEWER, "candidate", device_id=device, session_id=session, seq=seq,
                  candidate=line, sdp_mid="0", sdp_mline_index=0, signature=SIG)


def test_candidate_goes_to_the_sessions_camera_with_signed_fields_untouched() -> None:
    router, cam, other = Router(server_names=[HOST]), Camera(), Camera()
    camera = online(router, cam)
    bystander = online(router, other)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "k" * 20), 0)
    actions = router.received(viewer, candidate_text(cam.id, "k" * 20), 0)
    assert sent(actions, camera) == [{"type": "candidate", "session_id": "k" * 20, "seq": 0,
                                      "candidate": LINE, "sdp_mid": "0",
                                      "sdp_mline_index": 0, "signature": SIG}]
    assert sent(actions, viewer) == [] and sent(actions, bystander) == []
    # After the answer too (late srflx/relay candidates), and end-of-candidates ("").
    router.received(camera, answer_text("k" * 20), 0)
    end = encode(Role.VIEWER, "candidate", device_id=cam.id, session_id="k" * 20, seq=1,
                 candidate="", signature=SIG)
    assert sent(router.received(viewer, end, 0), camera)[0]["candidate"] == ""


def test_candidate_only_from_the_connection_that_owns_the_session() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    owner, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    router.received(owner, offer_text(cam.id, "l" * 20), 0)
    actions = router.received(other, candidate_text(cam.id, "l" * 20), 0)
    assert sent(actions, camera) == []
    assert sent(actions, other)[0]["code"] == "unknown-session"


def test_candidate_for_an_unknown_ended_or_pairing_session_is_refused() -> None:
    router, cam, elsewhere = Router(server_names=[HOST]), Camera(), Camera()
    camera = online(router, cam)
    online(router, elsewhere)
    viewer = Peer(Role.VIEWER)

    def refused(text: str) -> str:
        actions = router.received(viewer, text, 0)
        assert sent(actions, camera) == []
        return str(sent(actions, viewer)[0]["code"])

    assert refused(candidate_text(cam.id, "m" * 20)) == "unknown-session"  # never offered
    router.received(viewer, offer_text(cam.id, "m" * 20), 0)
    # Re-addressed to another camera: that camera has no such session from us.
    assert refused(candidate_text(elsewhere.id, "m" * 20)) == "unknown-session"
    router.received(viewer, encode(Role.VIEWER, "bye", session_id="m" * 20), 0)
    assert refused(candidate_text(cam.id, "m" * 20)) == "unknown-session"  # ended
    pair = encode(Role.VIEWER, "pair", device_id=cam.id, session_id="n" * 20, viewer_key=KEY,
                  name="phone", timestamp=1, signature=SIG, proof="P" * 43)
    router.received(viewer, pair, 0)
    assert refused(candidate_text(cam.id, "n" * 20)) == "unknown-session"  # not an offer


def test_candidates_per_session_are_capped() -> None:
    from services.signaling import MAX_CANDIDATES

    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "o" * 20), 0)
    for seq in range(MAX_CANDIDATES):
        assert sent(router.received(viewer, candidate_text(cam.id, "o" * 20, seq), 0), camera)
    # Copies of a valid seq do not get past the cap either.
    actions = router.received(viewer, candidate_text(cam.id, "o" * 20, 0), 0)
    assert sent(actions, camera) == []
    reply = sent(actions, viewer)[0]
    assert reply["code"] == "bad-message" and f"at most {MAX_CANDIDATES}" in reply["message"]
    # The cap is per session: a new session starts again.
    router.received(viewer, offer_text(cam.id, "p" * 20), 0)
    assert sent(router.received(viewer, candidate_text(cam.id, "p" * 20), 0), camera)


def test_candidates_are_not_accepted_from_cameras() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    camera = online(router, cam)
    viewer = Peer(Role.VIEWER)
    router.received(viewer, offer_text(cam.id, "q" * 20), 0)
    text = json.dumps({"type": "candidate", "session_id": "q" * 20, "seq": 0,
                       "candidate": LINE, "sdp_mid": "0", "signature": SIG})
    actions = router.received(camera, text, 0)
    assert sent(actions, viewer) == []
    assert "not allowed from a camera" in sent(actions, camera)[0]["message"]


def test_a_watch_says_online_once_when_the_camera_registers() -> None:
    router, cam = Router(server_names=[HOST]), Camera()
    viewer, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    for peer in (viewer, other):
        router.connected(peer, 0)
    watch = encode(Role.VIEWER, "watch", device_id=cam.id)
    assert router.received(viewer, watch, 0) == []  # offline (or unknown: the same)
    assert router.received(other, watch, 0) == []
    router.disconnected(other)  # a watcher that left is not told, and not kept
    camera = Peer(Role.CAMERA, host=HOST)
    router.connected(camera, 1)
    actions = router.received(camera, cam.register(camera), 1)
    assert sent(actions, viewer) == [{"type": "online", "device_id": cam.id}]
    assert sent(actions, other) == [] and router.watchers == {}
    # One-shot; and for a camera already online the answer comes at once.
    router.disconnected(camera)
    assert sent(router.received(camera, cam.register(camera), 2), viewer) == []
    online(router, cam, 3)
    assert sent(router.received(viewer, watch, 3), viewer)[0]["type"] == "online"


def test_watch_spam_is_bounded_and_watches_expire() -> None:
    from services.routing import MAX_WATCHES, WATCH_TTL

    router, viewer = Router(server_names=[HOST]), Peer(Role.VIEWER)
    router.connected(viewer, 0)
    cams = [Camera() for _ in range(MAX_WATCHES + 1)]
    for cam in cams[:MAX_WATCHES]:
        text = encode(Role.VIEWER, "watch", device_id=cam.id)
        assert router.received(viewer, text, 0) == []
        assert router.received(viewer, text, 0) == []  # the same one again costs nothing
    spam = encode(Role.VIEWER, "watch", device_id=cams[-1].id)
    assert sent(router.received(viewer, spam, 1), viewer)[0]["code"] == "rate-limited"
    assert len(viewer.watches) == MAX_WATCHES and cams[-1].id not in router.watchers
    # Expired ones make room, and an expired watch is never answered.
    assert router.received(viewer, spam, WATCH_TTL + 1) == []
    assert list(viewer.watches) == [cams[-1].id]
    assert sent(online_actions(router, cams[0], WATCH_TTL + 2), viewer) == []
    router.disconnected(viewer)
    assert router.watchers == {}


def online_actions(router: Router, cam: Camera, now: float) -> list[Any]:
    peer = Peer(Role.CAMERA, host=HOST)
    router.connected(peer, now)
    return router.received(peer, cam.register(peer), now)
