"""The RFC 5780 test plan against simulated NATs (no sockets).

``FakeNat`` implements the mapping and filtering behaviours of RFC 4787
section 4 the way the RFC 5780 tests observe them; the real-kernel version of
these checks is the NAT lab (services/natlab/).
"""

from __future__ import annotations

import pytest

from services.stun.discovery import Behaviour, BehaviourDiscovery, NatType, classify
from services.stun.message import Address, Message, MessageClass, Method

SERVER = ("192.0.2.1", 3478)
OTHER = ("192.0.2.2", 3479)
LOCAL = ("10.0.0.2", 5000)
EIM: Behaviour = "endpoint-independent"
ADM: Behaviour = "address-dependent"
APDM: Behaviour = "address-and-port-dependent"


class FakeNat:
    def __init__(self, mapping: Behaviour, filtering: Behaviour, *, drop_all: bool = False) -> None:
        self.mapping = mapping
        self.filtering = filtering
        self.drop_all = drop_all
        self.ports: dict[tuple[object, ...], int] = {}
        self.contacted: dict[str, set[Address]] = {"mapping": set(), "filtering": set()}

    def external(self, socket: str, destination: Address) -> Address:
        key: tuple[object, ...] = {
            EIM: (socket,),
            ADM: (socket, destination[0]),
            APDM: (socket, destination),
        }[self.mapping]
        port = self.ports.setdefault(key, 40000 + len(self.ports))
        return ("203.0.113.9", port)

    def lets_in(self, socket: str, source: Address) -> bool:
        contacted = self.contacted[socket]
        if self.filtering == EIM:
            return True
        if self.filtering == ADM:
            return source[0] in {c[0] for c in contacted}
        return source in contacted


def run(
    nat: FakeNat, *, rfc5780: bool = True, local: Address = LOCAL
) -> tuple[BehaviourDiscovery, list[str]]:
    """Drive the plan through ``nat``; the plan and the tests it sent, in order."""
    plan = BehaviourDiscovery(SERVER, local)
    sent: list[str] = []
    while (probe := plan.next_probe()) is not None:
        sent.append(probe.test)
        nat.contacted[probe.socket].add(probe.destination)
        # The server answers from where CHANGE-REQUEST says (RFC 5780 section 6.1).
        source = probe.expected_source
        if nat.drop_all or not nat.lets_in(probe.socket, source):
            plan.record(probe, None, None)
            continue
        mapped = local if local != LOCAL else nat.external(probe.socket, probe.destination)
        attributes: dict[str, object] = {"XOR-MAPPED-ADDRESS": mapped}
        if rfc5780:
            attributes["OTHER-ADDRESS"] = OTHER
        response = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, attributes=attributes)
        plan.record(probe, response, source)
    return plan, sent


@pytest.mark.parametrize(
    ("mapping", "filtering", "nat_type"),
    [
        (EIM, EIM, "full-cone"),
        (EIM, ADM, "restricted-cone"),
        (EIM, APDM, "port-restricted-cone"),
        (ADM, EIM, "symmetric"),
        (ADM, APDM, "symmetric"),
        (APDM, ADM, "symmetric"),
        (APDM, APDM, "symmetric"),
    ],
)
def test_plan_classifies_simulated_nats(
    mapping: Behaviour, filtering: Behaviour, nat_type: NatType
) -> None:
    report = run(FakeNat(mapping, filtering))[0].report()
    assert (report.mapping, report.filtering, report.nat_type) == (mapping, filtering, nat_type)
    expected = "relay likely" if nat_type == "symmetric" else "direct viewing likely"
    assert report.verdict == expected
    assert report.as_dict()["nat_type"] == nat_type


def test_mapping_test_iii_only_when_ii_differs() -> None:
    assert "mapping-III" not in run(FakeNat(EIM, EIM))[1]
    assert "mapping-III" in run(FakeNat(APDM, EIM))[1]


def test_filtering_test_iii_only_when_ii_fails() -> None:
    assert run(FakeNat(EIM, EIM))[1][-1] == "filtering-II"
    assert run(FakeNat(EIM, ADM))[1][-1] == "filtering-III"


def test_filtering_uses_a_socket_that_never_talked_to_the_alternate() -> None:
    # Otherwise mapping tests II/III would open an address-dependent filter
    # for the alternate address, and it would pass as endpoint-independent.
    nat = FakeNat(EIM, ADM)
    plan, _ = run(nat)
    assert plan.report().filtering == ADM
    assert nat.contacted["filtering"] == {SERVER}
    assert (OTHER[0], SERVER[1]) in nat.contacted["mapping"]


def test_no_response_is_udp_blocked() -> None:
    report = run(FakeNat(EIM, EIM, drop_all=True))[0].report()
    assert report.nat_type == "udp-blocked"
    assert report.verdict == "relay likely"
    assert report.mapping is None and report.filtering is None


def test_server_without_rfc5780_gives_mapped_address_only() -> None:
    plan, sent = run(FakeNat(EIM, EIM), rfc5780=False)
    report = plan.report()
    assert sent == ["mapping-I"]
    assert report.mapped_address is not None
    assert (report.mapping, report.filtering, report.nat_type) == (None, None, None)
    assert report.verdict == "unknown"


def test_no_nat_is_open() -> None:
    report = run(FakeNat(EIM, EIM), local=("192.0.2.50", 5000))[0].report()
    assert report.nat_type == "open"
    assert report.mapping == EIM
    assert report.hairpinning is None


def test_answer_from_the_wrong_address_does_not_count() -> None:
    # A server that ignores CHANGE-REQUEST answers from the primary address:
    # taking that answer would report endpoint-independent filtering.
    plan = BehaviourDiscovery(SERVER, LOCAL)
    mapped = ("203.0.113.9", 40000)
    ok = Message(
        Method.BINDING,
        MessageClass.SUCCESS_RESPONSE,
        attributes={"XOR-MAPPED-ADDRESS": mapped, "OTHER-ADDRESS": OTHER},
    )
    while (probe := plan.next_probe()) is not None:
        plan.record(probe, ok, SERVER)  # always from the primary
    report = plan.report()
    assert report.filtering == APDM
    assert report.mapping is None  # mapping-II answered from the wrong place


def test_hairpin_target_only_behind_nat() -> None:
    plan, _ = run(FakeNat(EIM, EIM))
    assert plan.hairpin_target == ("203.0.113.9", 40000)
    plan.record_hairpin(True)
    assert plan.report().hairpinning is True
    assert run(FakeNat(EIM, EIM), local=("192.0.2.50", 5000))[0].hairpin_target is None


def test_classify_edge_cases() -> None:
    assert classify(LOCAL, None, None, None) == "udp-blocked"
    assert classify(LOCAL, LOCAL, None, None) == "open"
    assert classify(LOCAL, ("203.0.113.9", 1), EIM, None) is None
    assert classify(LOCAL, ("203.0.113.9", 1), APDM, None) == "symmetric"
