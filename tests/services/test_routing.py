"""The rendezvous state machine, driven without sockets."""

import hashlib
import json
from typing import Any

from services.routing import Close, Peer, Router, Send
from services.signaling import Role, device_id_from_digest, encode

DEVICE = device_id_from_digest(hashlib.sha256(b"cam-1").digest())
OTHER = device_id_from_digest(hashlib.sha256(b"cam-2").digest())
SDP = "v=0\r\n"


def sent(actions: list[Any], peer: Peer) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send) and a.peer is peer]


def online(router: Router, device: str = DEVICE) -> Peer:
    camera = Peer(Role.CAMERA)
    router.connected(camera)
    actions = router.received(camera, encode(Role.CAMERA, "register", device_id=device), 0)
    assert sent(actions, camera)[-1]["type"] == "registered"
    return camera


def offer(router: Router, viewer: Peer, session: str, device: str = DEVICE) -> list[Any]:
    text = encode(Role.VIEWER, "offer", device_id=device, session_id=session, sdp=SDP)
    return router.received(viewer, text, 0)


def test_offer_and_answer_are_routed() -> None:
    router = Router(ice_servers=[{"urls": ["stun:198.51.100.1:3478"]}])
    camera = online(router)
    viewer = Peer(Role.VIEWER)
    hello = sent(router.connected(viewer), viewer)[0]
    assert hello["type"] == "hello"
    assert hello["ice_servers"][0]["urls"] == ["stun:198.51.100.1:3478"]
    to_camera = sent(offer(router, viewer, "a" * 20), camera)
    assert to_camera == [{"type": "offer", "session_id": "a" * 20, "sdp": SDP}]
    answer = encode(Role.CAMERA, "answer", session_id="a" * 20, sdp="v=0\r\nanswer")
    assert sent(router.received(camera, answer, 0), viewer)[0]["sdp"] == "v=0\r\nanswer"


def test_unknown_and_offline_ids_get_the_same_answer() -> None:
    router = Router()
    camera = online(router, OTHER)
    viewer = Peer(Role.VIEWER)
    unknown = sent(offer(router, viewer, "b" * 20, DEVICE), viewer)
    router.disconnected(camera)
    offline = sent(offer(router, viewer, "c" * 20, OTHER), viewer)
    assert unknown == offline
    assert unknown[0]["code"] == "unavailable"


def test_camera_cannot_answer_a_session_of_another_camera() -> None:
    router = Router()
    camera = online(router)
    intruder = online(router, OTHER)
    viewer = Peer(Role.VIEWER)
    offer(router, viewer, "d" * 20)
    answer = encode(Role.CAMERA, "answer", session_id="d" * 20, sdp="v=0\r\nevil")
    actions = router.received(intruder, answer, 0)
    assert sent(actions, viewer) == []
    assert sent(actions, intruder)[0]["code"] == "unknown-session"
    assert sent(router.received(camera, answer, 0), viewer)[0]["type"] == "answer"


def test_unregistered_camera_is_told_so() -> None:
    router = Router()
    camera = Peer(Role.CAMERA)
    answer = encode(Role.CAMERA, "answer", session_id="e" * 20, sdp=SDP)
    assert sent(router.received(camera, answer, 0), camera)[0]["code"] == "not-registered"


def test_viewer_vanishing_sends_bye_to_camera() -> None:
    router = Router()
    camera = online(router)
    viewer = Peer(Role.VIEWER)
    offer(router, viewer, "f" * 20)
    byes = sent(router.disconnected(viewer), camera)
    assert byes == [{"type": "bye", "session_id": "f" * 20, "reason": "viewer left"}]
    assert router.stats()["sessions"] == 0


def test_camera_vanishing_sends_bye_to_viewers() -> None:
    router = Router()
    camera = online(router)
    viewer = Peer(Role.VIEWER)
    offer(router, viewer, "g" * 20)
    assert sent(router.disconnected(camera), viewer)[0]["type"] == "bye"
    assert router.stats() == {"cameras": 0, "viewers": 0, "sessions": 0}


def test_newer_registration_replaces_older() -> None:
    router = Router()
    old = online(router)
    new = Peer(Role.CAMERA)
    router.connected(new)
    actions = router.received(new, encode(Role.CAMERA, "register", device_id=DEVICE), 0)
    assert any(isinstance(a, Close) and a.peer is old for a in actions)
    assert sent(actions, old)[0]["code"] == "replaced"
    assert router.cameras[DEVICE] is new
    router.disconnected(old)  # the old socket closing later must not unregister the new one
    assert router.cameras[DEVICE] is new


def test_duplicate_session_id_conflicts() -> None:
    router = Router()
    online(router)
    viewer, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    offer(router, viewer, "h" * 20)
    assert sent(offer(router, other, "h" * 20), other)[0]["code"] == "conflict"


def test_unanswered_offer_times_out() -> None:
    router = Router(answer_timeout=5)
    camera = online(router)
    viewer = Peer(Role.VIEWER)
    offer(router, viewer, "i" * 20)
    assert router.expire(4.9) == []
    actions = router.expire(5.0)
    assert sent(actions, viewer)[0]["code"] == "timeout"
    assert sent(actions, camera)[0]["type"] == "bye"
    assert router.stats()["sessions"] == 0


def test_viewer_cannot_bye_someone_elses_session() -> None:
    router = Router()
    online(router)
    viewer, other = Peer(Role.VIEWER), Peer(Role.VIEWER)
    offer(router, viewer, "j" * 20)
    actions = router.received(other, encode(Role.VIEWER, "bye", session_id="j" * 20), 0)
    assert sent(actions, other)[0]["code"] == "unknown-session"
    assert router.stats()["sessions"] == 1
