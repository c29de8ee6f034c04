"""The camera's trust decisions: who may watch, who may pair, what the camera signs.

No I/O besides the ACL and pairing files: messages in, a refusal reason or
signed fields out. The agent asks here before doing any WebRTC work, so a
forged, replayed or re-addressed offer costs the camera one signature check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from camera.acl import PairingWindows, ViewerACL, fingerprint
from camera.errors import PeercamError
from camera.identity import DeviceIdentity
from services.signaling import Message
from services.signatures import (
    answer_statement,
    candidate_statement,
    encode_public_key,
    offer_statement,
    pair_statement,
    paired_statement,
    register_statement,
    sign,
    verify,
)

logger = logging.getLogger(__name__)

#: How far a viewer's clock may be from ours (ms). Wide, because a Pi without a
#: real-time clock may boot before NTP; replays inside it are caught by the cache.
CLOCK_SKEW_MS = 300_000


class Refused(PeercamError, PermissionError):
    """A viewer's request is not allowed; the message is safe to send back."""


def server_name(url: str) -> str:
    """The ``host[:port]`` a client sends as its Host header for ``url`` (lower case)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme in ("wss", "https") else 80
    if parts.port is not None and parts.port != default:
        host = f"{host}:{parts.port}"
    return host.lower()


class Gatekeeper:
    """Checks offers and pairing requests against the ACL; signs for the camera."""

    def __init__(
        self,
        identity: DeviceIdentity,
        acl: ViewerACL,
        pairing: PairingWindows,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.acl = acl
        self.pairing = pairing
        self._clock = clock
        self.device_key = encode_public_key(identity.private_key.public_key())
        self._seen: dict[tuple[str, str], float] = {}
        """(viewer_key, session_id) -> when it may be forgotten: the replay cache."""

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    # -- what the camera signs ----------------------------------------------

    def registration(self, url: str, nonce: str) -> dict[str, str]:
        """Fields of ``register``: proof that we hold the key our ID names."""
        signed = register_statement(server_name(url), nonce, self.device_id)
        return {
            "device_id": self.device_id,
            "device_key": self.device_key,
            "signature": sign(self.identity.private_key, signed),
        }

    def answer(self, session_id: str, offer_sdp: str, answer_sdp: str) -> dict[str, str]:
        """Fields of ``answer``: binds our DTLS fingerprint to the device key."""
        signed = answer_statement(self.device_id, session_id, offer_sdp, answer_sdp)
        return {
            "session_id": session_id,
            "sdp": answer_sdp,
            "device_key": self.device_key,
            "signature": sign(self.identity.private_key, signed),
        }

    # -- what the camera checks --------------------------------------------------

    def _fresh(self, viewer_key: str, session_id: str, timestamp: int) -> None:
        now_ms = int(self._clock() * 1000)
        if abs(now_ms - timestamp) > CLOCK_SKEW_MS:
            raise Refused("stale: the request's timestamp is too far from the camera's clock")
        self._seen = {k: t for k, t in self._seen.items() if t > now_ms}
        if (viewer_key, session_id) in self._seen:
            raise Refused("replayed: this request was already used")

    def _remember(self, viewer_key: str, session_id: str) -> None:
        now_ms = int(self._clock() * 1000)
        self._seen[(viewer_key, session_id)] = now_ms + 2 * CLOCK_SKEW_MS

    def check_offer(self, message: Message) -> str:
        """Return the viewer key of a valid offer, or raise Refused."""
        viewer_key = message["viewer_key"]
        self.acl.reload()
        if viewer_key not in self.acl:
            raise Refused("not authorized: this viewer is not paired with the camera")
        signed = offer_statement(
            self.device_id,
            message["session_id"],
            message["timestamp"],
            viewer_key,
            message["sdp"],
        )
        if not verify(viewer_key, signed, message["signature"]):
            raise Refused("not authorized: the offer's signature does not verify")
        self._fresh(viewer_key, message["session_id"], message["timestamp"])
        self._remember(viewer_key, message["session_id"])
        return str(viewer_key)

    def check_candidate(self, message: Message, viewer_key: str, offer_sdp: str) -> None:
        """Refuse a trickled candidate unless the session's viewer signed it for its offer.

        The rendezvous knows the offer's ICE ufrag/pwd (they are in the SDP): a
        candidate it made up could put it in the media path as a relay. It still
        could not decrypt (the DTLS fingerprints are in the signed SDPs), but a
        candidate must not weaken what the signed offer promised.
        """
        if viewer_key not in self.acl:
            raise Refused("not authorized: this viewer is not paired with the camera")
        signed = candidate_statement(
            self.device_id,
            message["session_id"],
            offer_sdp,
            message["seq"],
            message["candidate"],
            message.get("sdp_mid"),
            message.get("sdp_mline_index"),
        )
        if not verify(viewer_key, signed, message["signature"]):
            raise Refused("not authorized: the candidate's signature does not verify")

    def check_pair(self, message: Message) -> dict[str, Any]:
        """Add a viewer whose request proves the pairing secret; return ``paired`` fields."""
        viewer_key, name = message["viewer_key"], message["name"]
        session_id = message["session_id"]
        signed = pair_statement(
            self.device_id, session_id, message["timestamp"], viewer_key, name
        )
        if not verify(viewer_key, signed, message["signature"]):
            raise Refused("pairing refused: the request's signature does not verify")
        self._fresh(viewer_key, session_id, message["timestamp"])
        window = self.pairing.match(signed, message["proof"])
        if window is None:
            raise Refused("pairing refused: no open pairing window has that secret")
        # Stored first: a viewer list that cannot be written (a full or read-only
        # card) raises OSError here, and the secret stays open for another try.
        self.acl.add(viewer_key, name)
        self.pairing.consume(window)
        self._remember(viewer_key, session_id)
        logger.info("paired viewer %s (%s)", fingerprint(viewer_key), name)
        return {
            "session_id": session_id,
            "device_key": self.device_key,
            "signature": sign(
                self.identity.private_key,
                paired_statement(self.device_id, session_id, viewer_key, name),
            ),
        }
