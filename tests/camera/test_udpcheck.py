"""The viewer's UDP-blocked test: the rule, and the adapter against real STUN servers.

A STUN server of ours on loopback stands in for the TURN server's TCP port (it
answers Binding over TCP as coturn does); "blocked UDP" is a UDP socket that
reads and never answers. The NAT lab's UDP-blocked site runs it against coturn.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from camera.client.udpcheck import ProbeTiming, TcpTurn, decide, tcp_turn_server, udp_blocked
from services.stun.server import StunServer, run_stun_server
from tests.conftest import scaled

RULE = ProbeTiming()


def test_a_udp_answer_means_udp_gets_out_whatever_tcp_said() -> None:
    for tcp in (False, True):
        assert decide(RULE, now=0.01, udp_answered=True, tcp_answered=tcp) is False
        assert decide(RULE, now=5.0, udp_answered=True, tcp_answered=tcp) is False


def test_tcp_answering_while_both_udp_requests_went_unanswered_means_blocked() -> None:
    assert decide(RULE, now=RULE.tcp_after + 0.004, udp_answered=False,
                  tcp_answered=True) is True
    # Before the second UDP request is out, one lost request must not decide it.
    assert decide(RULE, now=RULE.tcp_after / 2, udp_answered=False, tcp_answered=True) is None


def test_silence_everywhere_waits_until_give_up_as_the_old_test_did() -> None:
    assert decide(RULE, now=RULE.give_up - 0.01, udp_answered=False, tcp_answered=False) is None
    assert decide(RULE, now=RULE.give_up, udp_answered=False, tcp_answered=False) is True


@pytest.mark.parametrize("bad", [
    {"sends": (0.1, 0.2)},                      # does not start at once
    {"sends": (0.0,)},                          # no second request
    {"sends": (0.0, 0.2), "tcp_after": 0.1},    # TCP before the second request
    {"sends": (0.0, 0.1, 0.8), "give_up": 0.75},
])
def test_timings_that_break_the_rule_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="sends|tcp_after|give_up"):
        ProbeTiming(**bad)  # type: ignore[arg-type]


def test_the_tcp_turn_server_is_the_first_over_tcp_or_tls() -> None:
    servers = [{"urls": ["stun:192.0.2.1:3478"]},
               {"urls": ["turn:192.0.2.1:3478?transport=udp", "turns:turn.example:443",
                         "turn:192.0.2.1:443?transport=tcp"]}]
    assert tcp_turn_server(servers) == TcpTurn("turn.example", 443, tls=True)
    assert tcp_turn_server([servers[1] | {"urls": servers[1]["urls"][2:]}]) == \
        TcpTurn("192.0.2.1", 443, tls=False)
    assert tcp_turn_server([{"urls": ["turns:turn.example"]}]) == \
        TcpTurn("turn.example", 5349, tls=True)
    assert tcp_turn_server(servers[:1]) is None


# -- the adapter, on loopback -----------------------------------------------------------

TIMING = ProbeTiming(sends=(0.0, scaled(0.2)), tcp_after=scaled(0.2), give_up=scaled(0.8))


@pytest.fixture
async def stun_udp() -> AsyncIterator[StunServer]:
    server = await run_stun_server("127.0.0.1", None, 0, 0, tcp=False)
    yield server
    await server.close()


@pytest.fixture
async def stun_tcp() -> AsyncIterator[StunServer]:
    server = await run_stun_server("127.0.0.1", None, 0, 0)
    yield server
    await server.close()


@pytest.fixture
def silent_udp() -> Iterator[tuple[str, int]]:
    """Where UDP goes and nothing comes back (a network that drops it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()


def servers(stun: tuple[str, int], turn_tcp: tuple[str, int] | None) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = [{"urls": [f"stun:{stun[0]}:{stun[1]}"]}]
    if turn_tcp is not None:
        entries.append({"urls": [f"turn:{turn_tcp[0]}:{turn_tcp[1]}?transport=tcp"],
                        "username": "u", "credential": "c"})
    return entries


async def test_udp_answering_decides_at_once_and_tcp_is_never_asked(
        stun_udp: StunServer, stun_tcp: StunServer) -> None:
    udp, tcp = stun_udp.addresses[(0, 0)], stun_tcp.addresses[(0, 0)]
    assert await udp_blocked(servers(udp, tcp), TIMING) is False
    assert stun_udp.responder.stats.answered == 1
    assert stun_tcp.responder.stats.answered == 0


async def test_tcp_answering_while_udp_is_dropped_says_blocked_before_giving_up(
        silent_udp: tuple[str, int], stun_tcp: StunServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="camera.client.udpcheck")
    assert await udp_blocked(servers(silent_udp, stun_tcp.addresses[(0, 0)]), TIMING) is True
    assert stun_tcp.responder.stats.answered == 1
    assert any("TURN over TCP answered" in r.getMessage() for r in caplog.records)


async def test_with_nothing_answering_the_verdict_is_blocked_at_give_up(
        silent_udp: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="camera.client.udpcheck")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: TCP is refused
        refused = closed.getsockname()
        assert await udp_blocked(servers(silent_udp, refused), TIMING) is True
    assert not any("TURN over TCP answered" in r.getMessage() for r in caplog.records)


async def test_no_stun_server_means_nothing_to_learn() -> None:
    assert await asyncio.wait_for(udp_blocked([{"urls": ["turn:127.0.0.1:9?transport=tcp"]}],
                                              TIMING), scaled(1.0)) is False
