"""What is signed, byte for byte, and how (docs/protocol.md, Statements). No I/O.

Keys travel as base64url SubjectPublicKeyInfo DER; signatures as base64url
IEEE P1363 (r||s), which is what browsers' WebCrypto produces and accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from services.signaling import device_id_from_digest

REGISTER = "peercam/register/v1"
OFFER = "peercam/offer/v1"
ANSWER = "peercam/answer/v1"
CANDIDATE = "peercam/candidate/v1"
PAIR = "peercam/pair/v1"
PAIRED = "peercam/paired/v1"

_COORD = 32  # bytes per P-256 coordinate / signature half


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url without padding; ValueError on anything else."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise ValueError("not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url without padding") from None


def sdp_hash(sdp: str) -> str:
    return hashlib.sha256(sdp.encode("utf-8")).hexdigest()


def statement(*lines: str) -> bytes:
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError("a statement line contains a newline")
    return "\n".join(lines).encode("utf-8")


def register_statement(server: str, nonce: str, device_id: str) -> bytes:
    return statement(REGISTER, server.lower(), nonce, device_id)


def offer_statement(
    device_id: str, session_id: str, timestamp: int, viewer_key: str, sdp: str
) -> bytes:
    return statement(OFFER, device_id, session_id, str(timestamp), viewer_key, sdp_hash(sdp))


def answer_statement(device_id: str, session_id: str, offer_sdp: str, answer_sdp: str) -> bytes:
    return statement(ANSWER, device_id, session_id, sdp_hash(offer_sdp), sdp_hash(answer_sdp))


def candidate_statement(
    device_id: str,
    session_id: str,
    offer_sdp: str,
    seq: int,
    candidate: str,
    sdp_mid: str | None,
    sdp_mline_index: int | None,
) -> bytes:
    """A trickled candidate, bound to the signed offer it belongs to by the offer's hash.

    ``candidate`` "" is end-of-candidates; an absent ``sdp_mid`` / ``sdp_mline_index``
    is an empty line (a present mid is never empty, the schema says so).
    """
    return statement(
        CANDIDATE,
        device_id,
        session_id,
        sdp_hash(offer_sdp),
        str(seq),
        "" if sdp_mid is None else sdp_mid,
        "" if sdp_mline_index is None else str(sdp_mline_index),
        candidate,
    )


def pair_statement(
    device_id: str, session_id: str, timestamp: int, viewer_key: str, name: str
) -> bytes:
    return statement(PAIR, device_id, session_id, str(timestamp), viewer_key, name)


def paired_statement(device_id: str, session_id: str, viewer_key: str, name: str) -> bytes:
    return statement(PAIRED, device_id, session_id, viewer_key, name)


# -- keys and signatures ---------------------------------------------------------


def encode_public_key(key: ec.EllipticCurvePublicKey) -> str:
    return b64url(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def decode_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from base64url SPKI; ValueError for anything else."""
    der = unb64url(text)
    if len(der) > 200:
        raise ValueError("public key: too long for P-256")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise ValueError("public key: not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("public key: not ECDSA P-256")
    return key


def device_id_of(key_text: str) -> str:
    """The device ID a public key (base64url SPKI) stands for."""
    return device_id_from_digest(hashlib.sha256(unb64url(key_text)).digest())


def sign(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
    return b64url(r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big"))


def verify(public_key: ec.EllipticCurvePublicKey | str, message: bytes, signature: str) -> bool:
    """True only for a valid P1363 signature by ``public_key`` over ``message``."""
    try:
        key = decode_public_key(public_key) if isinstance(public_key, str) else public_key
        raw = unb64url(signature)
    except ValueError:
        return False
    if len(raw) != 2 * _COORD:
        return False
    r = int.from_bytes(raw[:_COORD], "big")
    s = int.from_bytes(raw[_COORD:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def pairing_proof(secret: str, message: bytes) -> str:
    return b64url(hmac.new(secret.encode("ascii"), message, hashlib.sha256).digest())


def check_pairing_proof(secret: str, message: bytes, proof: str) -> bool:
    return hmac.compare_digest(pairing_proof(secret, message), proof)
