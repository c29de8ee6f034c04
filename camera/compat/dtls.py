"""The camera answers as the DTLS server (``a=setup:passive``).

aiortc answers an ``actpass`` offer with ``active`` (DTLS client) and starts its
handshake only when its ICE transport reports the connection, which aioice's
20 ms check pacing can report that long after the pair succeeded. As the
server, the viewer's ClientHello is sent the moment the viewer's own ICE
succeeds and waits in aioice's queue; aiortc answers it as soon as its transport
starts. RFC 8842 lets the answerer pick either role.

aiortc reads the answer's role from each DTLS transport's private ``_role``
("auto" until something decides it); :func:`check_members` checks it and
``_set_role`` are there before :func:`answer_as_dtls_server` sets it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import aiortc
from aiortc import RTCDtlsTransport, RTCPeerConnection

from camera.compat.guard import AIORTC, Member, instance_attribute, require

_DTLS_MEMBERS = (Member("_set_role", "method", ("self", "role")),)


def check_members(aiortc_module: ModuleType | Any = aiortc) -> None:
    for member in _DTLS_MEMBERS:
        require(AIORTC, aiortc_module, aiortc_module.RTCDtlsTransport, member)


def answer_as_dtls_server(pc: RTCPeerConnection) -> int:
    """Between ``setRemoteDescription(offer)`` and ``createAnswer``: every DTLS
    transport whose role the offer left open (``actpass``) becomes the server.
    Returns how many were set."""
    transports: list[RTCDtlsTransport] = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    changed = 0
    for transport in transports:
        if instance_attribute(AIORTC, aiortc, transport, "_role", str) == "auto":
            transport._set_role("server")
            changed += 1
    return changed
