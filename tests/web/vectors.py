"""Test vectors made by the Python implementation, for the web viewer's modules.

The viewer re-implements device IDs, base64url and the signed statements in
JavaScript (services/web/codec.mjs). These vectors are what the Python side
(services/signaling.py, services/signatures.py, camera/identity.py) says each
input must give; tests/web/*.test.mjs check the JavaScript gives the same.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from camera.identity import device_id_for
from services import signatures as sig
from services.signaling import SCHEMAS, Role, device_id_from_digest, normalize_device_id


def _name_ok(name: str) -> bool:
    check = SCHEMAS[(Role.VIEWER, "pair")].required["name"]
    try:
        check(name)
    except ValueError:
        return False
    return True


def _normalized(text: str) -> str | None:
    try:
        return normalize_device_id(text)
    except ValueError:
        return None


def make_vectors(seed: int = 13) -> dict[str, Any]:
    rng = random.Random(seed)
    digests = [bytes(32), b"\xff" * 32] + [rng.randbytes(32) for _ in range(30)]
    device_ids = [{"digest": d.hex(), "id": device_id_from_digest(d)} for d in digests]

    keys = []
    for _ in range(4):
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        text = sig.encode_public_key(public)
        keys.append({"key": text, "id": device_id_for(public)})
        assert sig.device_id_of(text) == keys[-1]["id"]

    ids = [v["id"] for v in device_ids[:8]]
    normalize: list[dict[str, Any]] = []
    for good in ids:
        raw = good.replace("-", "")
        swapped = raw[:26] + ("0" if raw[26] != "0" else "1")
        typo = ("1" if raw[0] != "1" else "2") + raw[1:]
        for text in (good, raw.lower(), raw, good.lower(), swapped, typo, raw[:-1], raw + "0"):
            normalize.append({"text": text, "id": _normalized(text)})
    for text in ("", "I" * 27, "O" * 27, "hello"):
        normalize.append({"text": text, "id": _normalized(text)})

    b64 = []
    for n in list(range(0, 12)) + [31, 32, 33, 64, 65, 91]:
        data = rng.randbytes(n)
        b64.append({"hex": data.hex(), "text": sig.b64url(data)})
    bad_b64 = ["A", "AAAAA", "AA==", "AB=C"]
    for text in bad_b64:
        try:
            sig.unb64url(text)
        except ValueError:
            continue
        raise AssertionError(f"Python took {text!r}")

    device = ids[0]
    session = "S" * 8 + "abc_-123XYZ0"
    offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    answer = offer.replace("o=- 1 2", "o=- 9 9") + "a=sendonly\r\n"
    viewer_key = keys[0]["key"]
    names = ["Pixel 7 — Chrome", "Chrome on Linux", "cuisine 🍳 caméra", "x"]
    statements: list[dict[str, Any]] = []

    def add(kind: str, args: list[Any], data: bytes) -> None:
        statements.append({"kind": kind, "args": args, "b64": sig.b64url(data)})

    add("offer", [device, session, 1733500000123, viewer_key, offer],
        sig.offer_statement(device, session, 1733500000123, viewer_key, offer))
    add("answer", [device, session, offer, answer],
        sig.answer_statement(device, session, offer, answer))
    line = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
    for seq, cand, mid, index in ((0, line, "0", 0), (1, line, None, None), (2, "", "0", None)):
        add("candidate", [device, session, sig.sdp_hash(offer), seq, cand, mid, index],
            sig.candidate_statement(device, session, offer, seq, cand, mid, index))
    for name in names:
        add("pair", [device, session, 1733500000999, viewer_key, name],
            sig.pair_statement(device, session, 1733500000999, viewer_key, name))
        add("paired", [device, session, viewer_key, name],
            sig.paired_statement(device, session, viewer_key, name))
    refused = []
    for bad in ("two\nlines", "carriage\rreturn"):
        try:
            sig.pair_statement(device, session, 1, viewer_key, bad)
        except ValueError:
            refused.append(["pair", [device, session, 1, viewer_key, bad]])

    sdp_hashes = [{"text": t, "hex": hashlib.sha256(t.encode()).hexdigest()}
                  for t in (offer, answer, "", "é🍳")]

    name_cases = ["Pixel 7 — Chrome", "", " padded ", "a" * 64, "a" * 65, "🍳" * 64,
                  "🍳" * 65, "tab\there", "del\x7f", "c1\x85", "nbsp\xa0ok", "Chrome on Android"]
    viewer_names = [{"name": n, "ok": _name_ok(n)} for n in name_cases]

    # A camera's signature on a "paired" reply, and a pairing proof (HMAC).
    camera_key = ec.generate_private_key(ec.SECP256R1())
    camera_text = sig.encode_public_key(camera_key.public_key())
    camera_id = sig.device_id_of(camera_text)
    message = sig.paired_statement(camera_id, session, viewer_key, names[0])
    secret = "K3M$x*~=" + "a" * 20
    signed = {
        "device_id": camera_id, "device_key": camera_text,
        "message": sig.b64url(message), "signature": sig.sign(camera_key, message),
        "other_id": ids[1], "secret": secret, "proof": sig.pairing_proof(secret, message),
    }

    return {
        "signed": signed,
        "device_ids": device_ids, "keys": keys, "normalize": normalize, "b64url": b64,
        "bad_b64url": bad_b64, "statements": statements, "refused": refused,
        "sdp_hashes": sdp_hashes, "viewer_names": viewer_names,
    }
