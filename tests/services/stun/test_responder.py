"""The Binding server's sans-I/O core: bytes and a fake clock in, reply out."""

from __future__ import annotations

import struct

import pytest

from services.stun.message import ChangeRequest, Message, MessageClass, Method, parse
from services.stun.responder import BindingResponder, ResponderConfig, SocketIndex

ONE = {(0, 0): ("192.0.2.1", 3478)}
FOUR: dict[SocketIndex, tuple[str, int]] = {
    (0, 0): ("192.0.2.1", 3478),
    (0, 1): ("192.0.2.1", 3479),
    (1, 0): ("192.0.2.2", 3478),
    (1, 1): ("192.0.2.2", 3479),
}
CLIENT = ("198.51.100.7", 55432)


def binding(**attributes: object) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, attributes=dict(attributes))


def test_answers_binding_with_xor_mapped_address_and_fingerprint_only() -> None:
    responder = BindingResponder(ONE)
    request = binding()
    reply = responder.handle(request.encode(add_fingerprint=False), CLIENT, (0, 0), now=0.0)
    assert reply is not None and reply.via == (0, 0)
    response = parse(reply.data)  # parse() checks the FINGERPRINT
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.transaction_id == request.transaction_id
    assert list(response.attributes) == ["XOR-MAPPED-ADDRESS", "FINGERPRINT"]
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    # 20 header + 12 XOR-MAPPED-ADDRESS + 8 FINGERPRINT, whatever the request was.
    assert len(reply.data) == 40


def test_software_only_when_configured() -> None:
    responder = BindingResponder(ONE, ResponderConfig(software="peercam"))
    reply = responder.handle(binding().encode(), CLIENT, (0, 0), now=0.0)
    assert reply is not None and parse(reply.data).attributes["SOFTWARE"] == "peercam"


@pytest.mark.parametrize(
    ("change", "via"),
    [
        (ChangeRequest.NONE, (0, 0)),
        (ChangeRequest.CHANGE_PORT, (0, 1)),
        (ChangeRequest.CHANGE_IP, (1, 0)),
        (ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT, (1, 1)),
    ],
)
def test_rfc5780_change_request_picks_the_socket(change: ChangeRequest, via: SocketIndex) -> None:
    responder = BindingResponder(FOUR)
    reply = responder.handle(binding(**{"CHANGE-REQUEST": change}).encode(), CLIENT, (0, 0), 0.0)
    assert reply is not None and reply.via == via
    response = parse(reply.data)
    assert response.attributes["RESPONSE-ORIGIN"] == FOUR[via]
    # OTHER-ADDRESS differs in IP and port from where the request arrived.
    assert response.attributes["OTHER-ADDRESS"] == FOUR[(1, 1)]


def test_other_address_is_relative_to_the_receiving_socket() -> None:
    responder = BindingResponder(FOUR)
    reply = responder.handle(binding().encode(), CLIENT, (1, 0), 0.0)
    assert reply is not None and reply.via == (1, 0)
    assert parse(reply.data).attributes["OTHER-ADDRESS"] == FOUR[(0, 1)]


def test_change_request_without_alternate_address_is_420() -> None:
    # RFC 5780 section 6.1: no alternate address, CHANGE-REQUEST not understood.
    responder = BindingResponder(ONE)
    request = binding(**{"CHANGE-REQUEST": ChangeRequest.CHANGE_IP})
    reply = responder.handle(request.encode(), CLIENT, (0, 0), 0.0)
    assert reply is not None
    error = parse(reply.data)
    assert error.message_class == MessageClass.ERROR_RESPONSE
    assert error.attributes["ERROR-CODE"] == (420, "Unknown Attribute")
    assert error.attributes["UNKNOWN-ATTRIBUTES"] == (0x0003,)


def test_change_request_over_tcp_is_420() -> None:
    responder = BindingResponder(FOUR)
    request = binding(**{"CHANGE-REQUEST": ChangeRequest.CHANGE_PORT})
    reply = responder.handle(request.encode(), CLIENT, (0, 0), 0.0, transport="tcp")
    assert reply is not None and parse(reply.data).attributes["ERROR-CODE"][0] == 420


def test_empty_change_request_is_a_plain_binding() -> None:
    responder = BindingResponder(ONE)
    request = binding(**{"CHANGE-REQUEST": ChangeRequest.NONE})
    reply = responder.handle(request.encode(), CLIENT, (0, 0), 0.0)
    assert reply is not None
    assert parse(reply.data).message_class == MessageClass.SUCCESS_RESPONSE


def test_unknown_comprehension_required_attribute_is_420_no_larger_than_request() -> None:
    # RFC 8489 section 6.3.1; and comprehension-optional ones are ignored.
    request = binding().encode(add_fingerprint=False)
    extra = struct.pack("!HH", 0x7FF0, 0) + struct.pack("!HH", 0xC001, 0)
    data = request[:2] + struct.pack("!H", len(extra)) + request[4:] + extra
    reply = BindingResponder(ONE).handle(data, CLIENT, (0, 0), 0.0)
    assert reply is not None
    error = parse(reply.data)
    assert error.attributes["UNKNOWN-ATTRIBUTES"] == (0x7FF0,)
    assert len(reply.data) <= len(data) + 44


@pytest.mark.parametrize(
    "message",
    [
        Message(Method.BINDING, MessageClass.INDICATION),
        Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE),
        Message(Method.BINDING, MessageClass.ERROR_RESPONSE),
        Message(0x003, MessageClass.REQUEST),  # TURN Allocate: not ours
    ],
    ids=["indication", "response", "error", "allocate"],
)
def test_non_binding_requests_are_not_answered(message: Message) -> None:
    responder = BindingResponder(ONE)
    assert responder.handle(message.encode(), CLIENT, (0, 0), 0.0) is None
    assert responder.stats.ignored == 1


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n\r\n", bytes(19), bytes(64)])
def test_malformed_packets_are_dropped_and_counted(data: bytes) -> None:
    responder = BindingResponder(ONE)
    assert responder.handle(data, CLIENT, (0, 0), 0.0) is None
    assert responder.stats.malformed == 1


def test_rate_limit_per_source_ip_with_refill() -> None:
    responder = BindingResponder(ONE, ResponderConfig(rate=2.0, burst=3.0))
    request = binding().encode()
    answers = [responder.handle(request, CLIENT, (0, 0), now=0.0) for _ in range(10)]
    assert sum(a is not None for a in answers) == 3
    assert responder.stats.rate_limited == 7
    # Another source IP has its own bucket; the same IP on another port does not.
    assert responder.handle(request, ("198.51.100.8", 1), (0, 0), now=0.0) is not None
    assert responder.handle(request, (CLIENT[0], 1), (0, 0), now=0.0) is None
    # Half a second at 2/s gives one token back.
    assert responder.handle(request, CLIENT, (0, 0), now=0.5) is not None
    assert responder.handle(request, CLIENT, (0, 0), now=0.5) is None


def test_global_rate_caps_many_sources() -> None:
    responder = BindingResponder(ONE, ResponderConfig(global_rate=5.0))
    request = binding().encode()
    answered = sum(
        responder.handle(request, (f"198.51.100.{i}", 9), (0, 0), 0.0) is not None
        for i in range(20)
    )
    assert answered == 5


def test_rate_limit_table_is_bounded() -> None:
    responder = BindingResponder(ONE, ResponderConfig(max_sources=4))
    for i in range(10):
        responder.handle(b"x", (f"198.51.100.{i}", 9), (0, 0), 0.0)
    assert len(responder._buckets) == 4


@pytest.mark.parametrize(
    ("addresses", "client", "bound"),
    [
        (ONE, CLIENT, 20),
        (FOUR, CLIENT, 44),
        (ONE, ("2001:db8::7", 9), 32),
        (
            {k: (f"2001:db8::{k[0] + 1}", v[1]) for k, v in FOUR.items()},
            ("2001:db8::7", 9),
            80,
        ),
    ],
    ids=["ipv4", "ipv4-rfc5780", "ipv6", "ipv6-rfc5780"],
)
def test_no_amplification_bound(
    addresses: dict[SocketIndex, tuple[str, int]], client: tuple[str, int], bound: int
) -> None:
    """The smallest valid request is 20 bytes; the answer is a fixed set of attributes.

    Response = header 20 + XOR-MAPPED-ADDRESS (12 v4 / 24 v6) + FINGERPRINT 8,
    plus OTHER-ADDRESS and RESPONSE-ORIGIN (12 / 24 each) with RFC 5780. So the
    answer exceeds the request by at most 20 / 44 (IPv4) or 32 / 80 (IPv6) bytes,
    a factor of at most 2x / 3.2x (IPv4) or 2.6x / 5x (IPv6) for the most abusive
    request, far
    below what reflection attacks look for (DNS: ~50x), and the rate limit
    caps the total.
    """
    request = binding().encode(add_fingerprint=False)
    reply = BindingResponder(addresses).handle(request, client, (0, 0), 0.0)
    assert reply is not None
    assert len(reply.data) - len(request) == bound
