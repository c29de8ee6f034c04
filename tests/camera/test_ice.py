"""Direct paths first, and the relay grace ends once no direct pair can win.

The rules are camera/ice.py and camera/client/ice.py; the aioice patch that
applies them is camera/compat/ice.py.

The rule itself is a pure function (numbers in, a deadline out). The patched
checks run on real aioice agents over loopback; what they cannot have there,
a relay and a NAT, is faked one layer down: the controlling agent is told
that the controlled agent's host address is a "relay" candidate, and its
"srflx" candidate is a UDP gate that drops everything until it opens, the way
a NAT drops packets until the hole is punched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import Candidate, stun
from aioice.candidate import candidate_priority
from aioice.ice import CandidatePair, Connection, StunProtocol

from camera.client.ice import install as install_relay_rule
from camera.client.ice import relay_deadline
from camera.compat import Settings, ensure_installed, ice, reconfigure, set_direct_upgrade
from camera.config import load_camera_config
from camera.ice import DirectFirst, Upgrade, check_rank, packets_per_check, round_fits
from camera.punch import NatProfile, PunchConfig, PunchGovernor, PunchPlan, Send
from tests.conftest import scaled

LAB = DirectFirst()  # the shipped timers


# -- the rule ---------------------------------------------------------------------


def test_the_grace_lasts_while_a_direct_pair_has_not_been_sent() -> None:
    deadline = relay_deadline(LAB, first_check=10.0, relay_ok=10.09, relay_rtt=0.002,
                              pairs=6, direct_sent=[10.0, None])
    assert deadline == pytest.approx(10.09 + LAB.grace)


def test_the_grace_ends_when_the_peer_and_our_retransmits_have_had_their_chance() -> None:
    # A NAT-lab relayed cell: 6 pairs, direct checks out at 0 and 20 ms, relay ok at 90 ms.
    deadline = relay_deadline(LAB, first_check=0.0, relay_ok=0.09, relay_rtt=0.002,
                              pairs=6, direct_sent=[0.0, 0.02])
    # max(peer paced all 6 pairs: 0.12, our last direct + fast retransmit: 0.12)
    # + two round trips + margin
    assert deadline == pytest.approx(0.12 + 0.004 + LAB.margin)
    assert deadline < 0.09 + LAB.grace


def test_a_long_check_list_waits_for_the_peer_to_pace_through_it() -> None:
    deadline = relay_deadline(LAB, first_check=0.0, relay_ok=0.2, relay_rtt=0.01,
                              pairs=30, direct_sent=[0.0, 0.02, 0.04])
    assert deadline == pytest.approx(30 * LAB.pacing + 0.02 + LAB.margin)


def test_a_direct_check_started_late_moves_the_deadline() -> None:
    # A peer-reflexive pair appears when the peer's retransmission gets through.
    early = relay_deadline(LAB, first_check=0.0, relay_ok=0.1, relay_rtt=0.005, pairs=4,
                           direct_sent=[0.0])
    late = relay_deadline(LAB, first_check=0.0, relay_ok=0.1, relay_rtt=0.005, pairs=4,
                          direct_sent=[0.0, 0.45])
    assert late == pytest.approx(0.45 + LAB.retransmit + 0.01 + LAB.margin)
    assert late > early


def test_a_slow_relay_round_trip_is_capped_by_the_grace() -> None:
    deadline = relay_deadline(LAB, first_check=0.0, relay_ok=0.9, relay_rtt=1.0, pairs=6,
                              direct_sent=[0.0, 0.02])
    assert deadline == pytest.approx(0.9 + LAB.grace)


# -- the checks, with a fake protocol (the layer below) ------------------------------


class FakeProtocol:
    """Records what a check sends; its transactions never get an answer unless told."""

    def __init__(self, local: Candidate, answer: tuple[str, int] | None = None) -> None:
        self.local_candidate = local
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.requests: list[stun.Message] = []
        self.answer = answer

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        self.sent.append((bytes(message), addr))

    async def request(self, request: stun.Message, addr: tuple[str, int],
                      integrity_key: bytes | None = None,
                      retransmissions: int | None = None) -> tuple[stun.Message, tuple[str, int]]:
        self.requests.append(request)
        if self.answer is None:
            await asyncio.Event().wait()
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        assert self.answer is not None
        return response, self.answer


def candidate(kind: str, port: int, host: str = "192.0.2.1") -> Candidate:
    return Candidate(foundation=kind + str(port), component=1, transport="udp",
                     priority=1000, host=host, port=port, type=kind)


def agent(controlling: bool) -> Connection:
    connection = Connection(ice_controlling=controlling, components=1, use_ipv6=False)
    connection.remote_username = "peer"
    connection.remote_password = "p" * 22
    return connection


@pytest.fixture
def timing() -> Iterator[DirectFirst]:
    chosen = DirectFirst(retransmit=0.05, fast_for=1.0)
    install_relay_rule()
    reconfigure(Settings(direct_first=chosen))
    yield chosen
    reconfigure(Settings())


async def test_an_incoming_check_retransmits_our_check_of_that_pair_at_once(
    timing: DirectFirst
) -> None:
    connection = agent(controlling=False)
    protocol: Any = FakeProtocol(candidate("host", 1000))
    remote = candidate("srflx", 2000, "198.51.100.7")
    connection._remote_candidates.append(remote)
    pair = CandidatePair(protocol, remote)
    connection._check_list.append(pair)
    connection.check_start_task(pair)
    await asyncio.sleep(0)  # the check is in flight; its first transmission was lost
    assert pair.state == CandidatePair.State.IN_PROGRESS
    protocol.sent.clear()

    peer = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    peer.attributes["PRIORITY"] = 1000
    connection.check_incoming(peer, ("198.51.100.7", 2000), protocol)
    # RFC 5245 section 7.2.1.4: the in-progress check goes out again now, same transaction.
    assert [addr for _, addr in protocol.sent] == [("198.51.100.7", 2000)]
    assert protocol.sent[0][0] == bytes(protocol.requests[0])

    connection.check_incoming(peer, ("198.51.100.99", 2000), protocol)  # a new pair:
    assert len(protocol.sent) == 1  # aioice starts its triggered check, nothing more
    await connection.close()


async def test_young_direct_checks_are_retransmitted_fast_relay_checks_are_not(
    timing: DirectFirst
) -> None:
    connection = agent(controlling=False)
    direct: Any = FakeProtocol(candidate("host", 1000))
    relay: Any = FakeProtocol(candidate("relay", 1001))
    pairs = [CandidatePair(direct, candidate("srflx", 2000)),
             CandidatePair(relay, candidate("srflx", 2001))]
    connection._check_list.extend(pairs)
    for pair in pairs:
        connection.check_start_task(pair)
    await asyncio.sleep(timing.retransmit * 4.5)
    await connection.close()
    assert len(direct.sent) >= 2  # on top of aioice's own (first one at 500 ms)
    assert relay.sent == []
    sent = len(direct.sent)
    await asyncio.sleep(timing.retransmit * 2)
    assert len(direct.sent) == sent  # the extra retransmissions stop with the check


async def test_a_late_check_does_not_nominate_a_second_pair(timing: DirectFirst) -> None:
    connection = agent(controlling=True)
    first: Any = FakeProtocol(candidate("host", 1000))
    chosen = CandidatePair(first, candidate("host", 2000))
    chosen.nominated = True
    chosen.state = CandidatePair.State.SUCCEEDED
    connection._nominated[1] = chosen
    late_protocol: Any = FakeProtocol(candidate("relay", 1001), answer=("192.0.2.1", 2001))
    late = CandidatePair(late_protocol, candidate("host", 2001))
    connection._check_list.append(late)
    # Triggered by the peer's check arriving over its relay, after ICE completed.
    await connection.check_start(late)
    assert "USE-CANDIDATE" not in late_protocol.requests[0].attributes
    assert len(late_protocol.requests) == 1  # no regular nomination either
    assert not late.nominated
    assert connection._nominated[1] is chosen


async def test_the_best_waiting_relay_pair_is_the_one_nominated(timing: DirectFirst) -> None:
    connection = agent(controlling=True)
    answer = ("192.0.2.1", 2001)
    relayed = candidate("relay", 2001)
    relayed.priority = 16_777_215  # type preference 0 (RFC 8445 section 5.1.2.2)
    host = candidate("host", 1000)
    host.priority = 2_130_706_431
    own_relay = candidate("relay", 1001)
    own_relay.priority = 16_777_215
    twice: Any = FakeProtocol(own_relay, answer=answer)  # through the TURN server twice
    once: Any = FakeProtocol(host, answer=answer)
    never: Any = FakeProtocol(candidate("host", 1002))  # a direct pair that never answers
    pairs = [CandidatePair(never, candidate("srflx", 2002)), CandidatePair(twice, relayed),
             CandidatePair(once, relayed)]
    connection._check_list.extend(pairs)
    for pair in pairs:
        connection.check_start_task(pair)
    async with asyncio.timeout(scaled(5)):
        while 1 not in connection._nominated:
            await asyncio.sleep(0.01)
    assert connection._nominated[1] is pairs[2]
    await asyncio.sleep(timing.pacing * 3)
    assert not pairs[1].nominated
    assert ["USE-CANDIDATE" in r.attributes for r in twice.requests] == [False]
    await connection.close()


# -- two real agents on loopback ---------------------------------------------------


class Gate(asyncio.DatagramProtocol):
    """Relays UDP between an agent (front) and ``target`` (back); drops it all until opened."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open = False
        self.front: Any = None
        self.back: Any = None
        self.agent: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        gate = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if gate.open and gate.agent is not None:
                    gate.front.sendto(data, gate.agent)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self,
                                                            local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        address: tuple[str, int] = self.front.get_extra_info("sockname")[:2]
        return address

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.agent = addr
        if self.open:
            self.back.sendto(data, self.target)

    def close(self) -> None:
        self.front.close()
        self.back.close()


@pytest.fixture
async def agents() -> AsyncIterator[tuple[Connection, Connection, Gate]]:
    viewer, camera = Connection(ice_controlling=True, use_ipv6=False), Connection(
        ice_controlling=False, use_ipv6=False)
    # UDP only: the gate models a NAT for UDP, and a TCP pair (camera.compat.icetcp,
    # tests/camera/test_icetcp.py) would reach the other agent around it.
    ensure_installed()
    ice.set_tcp(False)
    try:
        await viewer.gather_candidates()
        await camera.gather_candidates()
    finally:
        ice.set_tcp(True)
    viewer.remote_username, viewer.remote_password = camera.local_username, camera.local_password
    camera.remote_username, camera.remote_password = viewer.local_username, viewer.local_password
    host = camera.local_candidates[0]
    gate = Gate((host.host, host.port))
    front = await gate.start()
    # The viewer sees the camera behind a NAT (the gate) and through a "relay".
    await viewer.add_remote_candidate(Candidate("gate", 1, "udp", 2_000_000, *front, "srflx"))
    await viewer.add_remote_candidate(Candidate("relay", 1, "udp", 1_000, host.host, host.port,
                                                "relay"))
    await viewer.add_remote_candidate(None)
    for local in viewer.local_candidates:
        await camera.add_remote_candidate(local)
    await camera.add_remote_candidate(None)
    yield viewer, camera, gate
    await viewer.close()
    await camera.close()
    gate.close()


async def connect(viewer: Connection, camera: Connection) -> float:
    started = time.monotonic()
    async with asyncio.timeout(scaled(10)):
        await asyncio.gather(viewer.connect(), camera.connect())
    return time.monotonic() - started


async def test_connect_returns_when_the_check_list_completes_not_at_the_next_tick(
    agents: tuple[Connection, Connection, Gate]
) -> None:
    """aioice's connect() wakes every 20 ms to pace its checks and only then sees the
    list completed; ours returns on the completion itself (aioice's own connect then
    ends in the background: it cancels the checks left and starts consent)."""
    viewer, camera, gate = agents
    ensure_installed()
    gate.open = True
    early: list[Connection] = []

    async def connecting(connection: Connection) -> None:
        await connection.connect()
        assert connection._check_list_done and 1 in connection._nominated
        if connection in ice._finishing and not ice._finishing[connection].done():
            early.append(connection)

    async with asyncio.timeout(scaled(10)):
        await asyncio.gather(connecting(viewer), connecting(camera))
    # Nominations land between the 20 ms ticks, so at least one side returned before
    # its pacing loop woke up again.
    assert early, "both sides waited for aioice's next tick"
    # What aioice's connect does after the list completes still happens, soon.
    async with asyncio.timeout(scaled(5)):
        while not all(c._query_consent_task is not None for c in (viewer, camera)):
            await asyncio.sleep(0.005)
    assert all(ice._finishing[c].done() for c in early)


async def test_the_relay_is_nominated_once_no_direct_pair_can_win(
    agents: tuple[Connection, Connection, Gate]
) -> None:
    viewer, camera, _gate = agents  # the gate never opens: no direct path
    install_relay_rule()
    reconfigure(Settings(direct_first=DirectFirst(grace=scaled(5.0))))
    try:
        took = await connect(viewer, camera)
    finally:
        reconfigure(Settings())
    assert viewer._nominated[1].remote_candidate.type == "relay"
    assert camera._nominated[1].remote_candidate.host == viewer.local_candidates[0].host
    # The old rule waited the whole grace; this one ends ~0.2 s after the first check.
    assert took < scaled(5.0) / 2


async def test_a_direct_pair_whose_hole_opens_after_the_relay_answered_still_wins(
    agents: tuple[Connection, Connection, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, camera, gate = agents
    timing = DirectFirst(grace=scaled(5.0), retransmit=0.1, margin=scaled(0.3))
    install_relay_rule()
    reconfigure(Settings(direct_first=timing))
    waited: list[CandidatePair] = []
    original = ice._another_pair_won

    async def spy(connection: Connection, pair: CandidatePair, ok: float, rtt: float) -> bool:
        waited.append(pair)  # the relay pair answered and is waiting
        return await original(connection, pair, ok, rtt)

    monkeypatch.setattr(ice, "_another_pair_won", spy)

    async def open_later() -> None:
        await asyncio.sleep(0.04)  # after the first transmission, before a retransmission
        gate.open = True

    opener = asyncio.ensure_future(open_later())
    try:
        await connect(viewer, camera)
    finally:
        reconfigure(Settings())
        await opener
    assert viewer._nominated[1].remote_candidate.type == "srflx"
    assert [p.remote_candidate.type for p in waited] == ["relay"]
    assert not waited[0].nominated


# -- relayed now, direct later -------------------------------------------------------


def test_a_round_fits_only_within_the_packet_budget() -> None:
    upgrade = Upgrade(retransmissions=2, max_packets=100)
    per_check = packets_per_check(upgrade, LAB)
    assert per_check == 1 + 2 + 9  # first send, two RFC retransmits, nine fast ones
    assert round_fits(upgrade, LAB, sent=0, pairs=8)
    assert not round_fits(upgrade, LAB, sent=0, pairs=9)
    assert not round_fits(upgrade, LAB, sent=100 - per_check + 1, pairs=1)
    assert round_fits(upgrade, LAB, sent=100, pairs=0)  # a round with nothing to check


def quick(upgrade: Upgrade) -> Settings:
    return Settings(direct_first=DirectFirst(grace=scaled(1.0)), upgrade=upgrade)


async def test_a_relayed_session_moves_to_a_direct_path_that_opens_later(
    agents: tuple[Connection, Connection, Gate]
) -> None:
    viewer, camera, gate = agents
    install_relay_rule()
    reconfigure(quick(Upgrade(rounds=(0.3, 0.6, 1.0, 2.0))))
    try:
        await connect(viewer, camera)
        relay = viewer._nominated[1]
        assert relay.remote_candidate.type == "relay"  # the gate was shut: no direct path
        gate.open = True  # the path comes up after ICE gave up on it
        async with asyncio.timeout(scaled(5)):
            while viewer._nominated[1].remote_candidate.type == "relay":
                await asyncio.sleep(0.02)
            # The camera follows the viewer's nomination onto the path through the gate.
            while camera._nominated[1].remote_addr != gate.back.get_extra_info("sockname")[:2]:
                await asyncio.sleep(0.02)
    finally:
        reconfigure(Settings())
    assert viewer._nominated[1].remote_candidate.type == "srflx"
    assert viewer._nominated[1].nominated
    # The media goes the new way, in both directions, on the same connection.
    await viewer.sendto(b"over the direct path", 1)
    async with asyncio.timeout(scaled(2)):
        assert await camera.recv() == b"over the direct path"
    await camera.sendto(b"and back", 1)
    async with asyncio.timeout(scaled(2)):
        assert await viewer.recv() == b"and back"


async def test_the_search_stays_in_its_budget_and_on_offered_candidates(
    agents: tuple[Connection, Connection, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer, camera, gate = agents  # the gate never opens
    offered = {(c.host, c.port) for c in viewer._remote_candidates}
    install_relay_rule()
    upgrade = Upgrade(rounds=(0.1, 0.2, 0.3, 0.4, 0.5), retransmissions=0, max_packets=30)
    reconfigure(quick(upgrade))
    try:
        await connect(viewer, camera)
        assert viewer._nominated[1].remote_candidate.type == "relay"
        sent: list[tuple[str, int]] = []
        for protocol in viewer._protocols:
            original = protocol.send_stun

            def spy(message: stun.Message, addr: tuple[str, int], original: Any = original
                    ) -> None:
                if message.message_class == stun.Class.REQUEST:
                    sent.append(addr)
                original(message, addr)

            monkeypatch.setattr(protocol, "send_stun", spy)
        task = ice._upgraders[viewer]
        async with asyncio.timeout(scaled(10)):
            await task
    finally:
        reconfigure(Settings())
    direct = [a for a in sent if a != (viewer._nominated[1].remote_addr)]
    assert direct, "no background check was sent"
    assert set(direct) <= offered  # only what the peer offered in this session
    per_round = packets_per_check(upgrade, DirectFirst())
    assert len(direct) <= upgrade.max_packets
    assert len(direct) <= 2 * per_round  # a third round would not have fitted
    assert viewer._nominated[1].remote_candidate.type == "relay"


async def test_no_search_when_it_is_switched_off(
    agents: tuple[Connection, Connection, Gate]
) -> None:
    viewer, camera, _gate = agents
    install_relay_rule()
    reconfigure(quick(Upgrade(enabled=False)))
    try:
        await connect(viewer, camera)
    finally:
        reconfigure(Settings())
    assert viewer._nominated[1].remote_candidate.type == "relay"
    assert viewer not in ice._upgraders


async def _ended(connection: Connection) -> asyncio.Task[None]:
    """The connection's background search, once it ended."""
    task = ice._upgraders[connection]
    async with asyncio.timeout(scaled(5)):
        await task
    return task


async def test_a_network_change_starts_an_ended_search_again(
    agents: tuple[Connection, Connection, Gate]
) -> None:
    viewer, camera, gate = agents
    install_relay_rule()
    reconfigure(quick(Upgrade(rounds=(0.1, 0.2), retransmissions=0)))
    try:
        await connect(viewer, camera)
        await _ended(viewer)  # the gate was shut: the search gave up, within its bounds
        gate.open = True
        await asyncio.sleep(0.5)
        assert viewer._nominated[1].remote_candidate.type == "relay"  # nobody looks now
        assert not ice.rearm(camera)  # its own pair is not a relay pair here: nothing to do
        assert ice.rearm(viewer)  # what the agent does when its network changes
        async with asyncio.timeout(scaled(5)):
            while viewer._nominated[1].remote_candidate.type == "relay":
                await asyncio.sleep(0.02)
    finally:
        reconfigure(Settings())
    assert viewer._nominated[1].remote_candidate.type == "srflx"
    assert not ice.rearm(viewer)  # on a direct path: no search


async def test_a_check_from_a_searching_peer_starts_our_search_again(
    agents: tuple[Connection, Connection, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's network changed and it searches again; our search had ended. Its
    check through the (now open) gate makes us search too, so the path it found
    gets nominated (we are the controlling agent). Not right after our own search
    ended, though: two searches ending about together must not restart each other."""
    viewer, camera, gate = agents
    install_relay_rule()
    reconfigure(quick(Upgrade(rounds=(0.1,), retransmissions=0)))
    back = gate.back.get_extra_info("sockname")[:2]

    async def peer_checks() -> None:
        # The camera checks towards the viewer through the gate (its new path).
        protocol = camera._protocols[0]
        pair = CandidatePair(protocol, Candidate("gate", 1, "udp", 1, *back, "prflx"))
        request = camera.build_request(pair, nominate=False)
        assert camera.remote_password is not None
        try:
            await protocol.request(request, back, integrity_key=camera.remote_password.encode(),
                                   retransmissions=0)
        except stun.TransactionError:
            pass

    try:
        await connect(viewer, camera)
        first = await _ended(viewer)
        gate.open = True
        await peer_checks()
        assert ice._upgraders[viewer] is first  # our search only just ended: no restart
        assert viewer._nominated[1].remote_candidate.type == "relay"
        monkeypatch.setattr(ice, "PEER_QUIET_AFTER", 0.0)
        await peer_checks()
        assert ice._upgraders[viewer] is not first
        async with asyncio.timeout(scaled(5)):
            while viewer._nominated[1].remote_candidate.type == "relay":
                await asyncio.sleep(0.02)
    finally:
        reconfigure(Settings())


async def birthday_search(viewer: Connection) -> set[Any]:
    """Arm a birthday attempt (the viewer behind a random-allocating NAT) and run one
    background search to its end: the punching sockets it opened along the way."""
    ice.arm_punch(viewer, NatProfile(True, "random"), NatProfile(False),
                  PunchConfig(birthday_sockets=6, birthday_probes=10))
    assert ice.rearm(viewer)  # a search that punches with its first round
    opened: set[Any] = set()
    async with asyncio.timeout(scaled(10)):
        while not ice._upgraders[viewer].done():
            opened |= {p for p in viewer._protocols if ice._is_punch_socket(p)}
            await asyncio.sleep(0.02)
    return opened


async def test_a_birthday_attempt_stays_in_its_plan_and_closes_its_sockets(
    agents: tuple[Connection, Connection, Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The side behind a random-allocating NAT opens its extra sockets, sends one check
    from each to the peer's offered public address only, and closes them all when
    the search ends without a path (the gate never opens)."""
    viewer, camera, gate = agents
    front = gate.front.get_extra_info("sockname")[:2]
    install_relay_rule()
    reconfigure(quick(Upgrade(rounds=(0.1, 0.2), retransmissions=0)))
    sent: list[tuple[Any, tuple[str, int]]] = []
    original = StunProtocol.send_stun

    def spy(self: StunProtocol, message: stun.Message, addr: tuple[str, int]) -> None:
        if message.message_class == stun.Class.REQUEST:
            sent.append((self, addr))
        original(self, message, addr)

    monkeypatch.setattr(StunProtocol, "send_stun", spy)
    try:
        await connect(viewer, camera)
        before = list(viewer._protocols)
        opened = await birthday_search(viewer)
    finally:
        reconfigure(Settings())
    assert len(opened) == 6
    from_new = [(p, addr) for p, addr in sent if p in opened]
    assert len(from_new) == 6 and {addr for _p, addr in from_new} == {front}
    assert viewer._protocols == before  # all closed again: none carries the media
    assert all(p.transport.is_closing() for p in opened)
    assert viewer._nominated[1].remote_candidate.type == "relay"


async def test_a_spent_punching_budget_defers_the_attempt_and_then_skips_it(
    agents: tuple[Connection, Connection, Gate], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the process's punching budget spent (other sessions used it), a search
    opens no sockets and sends no probes: it asks again at each round and, still
    spent at the last one, says so and stays on the relay."""
    viewer, camera, _gate = agents
    governor = PunchGovernor(capacity=2048, refill_per_second=1e-6)
    spent = PunchPlan("birthday-probe", 1,
                      tuple(Send(0.0, 0, ("192.0.2.1", port)) for port in range(1, 2049)), 1.0)
    assert governor.admit(spent, 0.0)
    monkeypatch.setattr(ice, "_governor", governor)
    install_relay_rule()
    reconfigure(quick(Upgrade(rounds=(0.1, 0.2, 0.3), retransmissions=0)))
    try:
        await connect(viewer, camera)
        with caplog.at_level("INFO", logger=ice.logger.name):
            opened = await birthday_search(viewer)
    finally:
        reconfigure(Settings())
    assert not opened
    assert "punching budget stayed spent" in caplog.text
    assert viewer._nominated[1].remote_candidate.type == "relay"


# -- check order: the controlled agent (the camera) checks the viewer's srflx first ----


def test_only_a_controlled_host_to_srflx_pair_is_ranked_first() -> None:
    assert check_rank(False, "host", "srflx") == 0
    assert check_rank(False, "host", "host") == 1
    assert check_rank(False, "relay", "srflx") == 1
    assert check_rank(True, "host", "srflx") == 1  # the controlling one nominates by priority


@pytest.mark.parametrize("controlling", [False, True])
async def test_the_controlled_agent_checks_the_peers_srflx_before_its_host(
    controlling: bool
) -> None:
    ensure_installed()
    connection = agent(controlling=controlling)
    host: Any = FakeProtocol(Candidate(
        foundation="h", component=1, transport="udp", priority=candidate_priority(1, "host"),
        host="192.0.2.1", port=1000, type="host"))
    peer_host = Candidate(foundation="ph", component=1, transport="udp",
                          priority=candidate_priority(1, "host"), host="10.9.0.2", port=3000,
                          type="host")
    peer_srflx = Candidate(foundation="ps", component=1, transport="udp",
                           priority=candidate_priority(1, "srflx"), host="198.51.100.7",
                           port=2000, type="srflx")
    connection._check_list.extend([CandidatePair(host, peer_host),
                                   CandidatePair(host, peer_srflx)])
    connection.sort_check_list()  # aioice calls it whenever pairs are formed
    first = connection._check_list[0].remote_candidate
    # By priority the host pair goes first; the camera (controlled) opens its NAT first.
    assert first is (peer_host if controlling else peer_srflx)
    await connection.close()


# -- a trickled candidate is checked as it arrives (rule 5) ---------------------------


@pytest.mark.parametrize("at_once", [True, False])
async def test_a_trickled_candidate_is_checked_as_it_arrives(at_once: bool) -> None:
    """While the camera connects, the viewer's trickled srflx candidate gets its check
    as it is added, ahead of the pairs still waiting; aioice alone (``at_once`` off)
    leaves it frozen for a later tick of its pacing loop."""
    reconfigure(Settings(direct_first=DirectFirst(trickled_at_once=at_once)))
    connection = agent(controlling=False)
    protocol: Any = FakeProtocol(candidate("host", 1000))  # its checks are never answered
    connection._protocols.append(protocol)
    connection._local_candidates.append(protocol.local_candidate)
    connection._local_candidates_end = True
    for port in (3001, 3002, 3003):  # the viewer's host candidates, unreachable
        await connection.add_remote_candidate(candidate("host", port, "10.9.0.2"))
    connecting = asyncio.create_task(connection.connect())
    try:
        async with asyncio.timeout(scaled(5)):
            while not connection._early_checks_done:
                await asyncio.sleep(0)
        # Adding it does not yield to the loop: no pacing tick can come in between.
        await connection.add_remote_candidate(candidate("srflx", 2000, "198.51.100.7"))
        pair = next(p for p in connection._check_list if p.remote_candidate.port == 2000)
        assert (pair.task is not None) is at_once
        if at_once:
            await asyncio.sleep(0)  # the check's task runs up to its transaction
            assert pair.state == CandidatePair.State.IN_PROGRESS
    finally:
        connecting.cancel()
        connection._protocols.clear()
        await connection.close()
        reconfigure(Settings())


def test_the_operator_switch_turns_only_the_search_off(tmp_path: Path) -> None:
    # `direct_upgrade = false` in [camera] (peercam view --no-direct-upgrade): what
    # the CLI hands to set_direct_upgrade; the other hook settings stay as installed.
    path = tmp_path / "camera.toml"
    path.write_text("[camera]\ndirect_upgrade = false\n")
    assert load_camera_config(path).direct_upgrade is False
    assert load_camera_config().direct_upgrade is True
    timing = DirectFirst(grace=0.25)
    reconfigure(Settings(direct_first=timing, upgrade=Upgrade(rounds=(0.5,))))
    try:
        settings = set_direct_upgrade(False)
        assert not ice.upgrade().enabled and not settings.upgrade.enabled
        assert settings.direct_first == timing and settings.upgrade.rounds == (0.5,)
        assert set_direct_upgrade(True).upgrade == Upgrade(rounds=(0.5,))
        assert ice.upgrade().enabled
    finally:
        reconfigure(Settings())
