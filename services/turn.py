"""TURN credentials for coturn's ``use-auth-secret`` mode. No I/O but reading the secret.

The rendezvous and coturn share one secret. For each camera or viewer session the
rendezvous mints a short-lived credential (TURN REST API,
draft-uberti-behave-turn-rest-00 §2.2):

    username   = "<expiry unix time>:<tag>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the HMAC and refuses the username once the expiry has passed,
so nothing is stored per credential and a leaked one dies by itself. The
credential is then the password of the long-term credential mechanism (RFC 8489
§9.2) that RFC 8656 §5 requires for every request.

Never log the secret or a credential: the username (expiry and tag) is enough
to trace a session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.errors import ServiceError

logger = logging.getLogger(__name__)

# The tag identifies the session in coturn's log and must not contain coturn's
# REST API separator ":" (its --rest-api-separator default).
TAG_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BadSecret(ServiceError, ValueError):
    """The TURN secret file is missing, empty or readable by others."""


@dataclass(frozen=True)
class TurnConfig:
    """What the rendezvous needs to hand out TURN servers."""

    secret: str = field(repr=False)
    """The shared secret, the same as coturn's ``static-auth-secret``."""

    urls: list[str]
    """TURN URIs (RFC 7065) of one coturn deployment, e.g.
    ``"turn:198.51.100.1:3478?transport=udp"``, ``"turns:host:443?transport=tcp"``."""

    ttl: int = 600
    """Seconds a minted credential stays valid for new allocations. coturn 4.6.1
    keeps an allocation made in time refreshing past the expiry (tested), so this
    bounds how long a leaked credential is useful, not how long a call may last."""

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("TURN secret is empty")
        if not self.urls:
            raise ValueError("TURN config needs at least one URL")
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"not a TURN URI (RFC 7065): {url!r}")
        if self.ttl <= 0:
            raise ValueError(f"TURN credential ttl must be positive, not {self.ttl}")


def credential(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), what coturn's use-auth-secret expects."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(config: TurnConfig, tag: str, now: float) -> dict[str, Any]:
    """One RTCIceServer dict with a credential valid until ``now + config.ttl``.

    ``tag`` names what the credential is for (a device or session ID) and must
    match ``[A-Za-z0-9_-]{1,64}``; ``now`` is Unix time, passed in so tests
    control the clock.
    """
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"bad TURN credential tag {tag!r}: need [A-Za-z0-9_-]{{1,64}}")
    expiry = int(now) + config.ttl
    username = f"{expiry}:{tag}"
    logger.debug("minted TURN credential for %s", username)
    return {
        "urls": list(config.urls),
        "username": username,
        "credential": credential(config.secret, username),
    }


def load_secret(path: str | Path) -> str:
    """Read the shared secret from ``path``, which must be readable by its owner only.

    Whitespace around the secret (a trailing newline) is dropped. Raises
    ``BadSecret`` naming the path if the file cannot be read, is empty, or its
    mode gives group or others any access (whoever reads the secret can mint
    credentials for the relay; whoever writes it can lock everyone out).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BadSecret(
                f"TURN secret file {path} has mode {stat.S_IMODE(mode):04o}, open to "
                f"group or others: make it owner-only (chmod 600 {path})"
            )
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSecret(f"cannot read TURN secret file {path}: {exc}") from exc
    if not secret:
        raise BadSecret(f"TURN secret file {path} is empty")
    return secret
