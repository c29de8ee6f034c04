"""The exception root of the STUN package; each also inherits the matching builtin."""

from services.errors import ServiceError


class StunError(ServiceError):
    """Root of every error the STUN package raises on purpose."""


class MalformedMessage(StunError, ValueError):
    """The peer misbehaved: bytes that are not a well-formed STUN message."""


class InvalidMessage(StunError, ValueError):
    """We misbehaved: a message or value that cannot be encoded."""


class BadServerConfig(StunError, ValueError):
    """Addresses or ports a STUN server cannot be started with."""
