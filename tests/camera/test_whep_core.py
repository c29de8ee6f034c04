"""The WHEP gateway's sans-I/O rules: offers, fragments, trickle numbering, the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camera.client.whep_core import (
    END_OF_CANDIDATES_SEQ,
    Fragment,
    Session,
    Sessions,
    WhepError,
    bearer_token,
    check_offer,
    parse_fragment,
    route,
    token_index,
)

OFFER = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
         "a=ice-ufrag:abcd\r\n"
         "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\na=setup:actpass\r\n"
         "a=rtpmap:96 H264/90000\r\n"
         "a=candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host\r\n"
         "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\na=setup:actpass\r\n"
         "a=rtpmap:111 opus/48000/2\r\n")


def candidate(n: int, transport: str = "udp") -> str:
    return f"candidate:{n} 1 {transport} 2122260223 192.0.2.{n % 250 + 2} {40000 + n} typ host"


def session(offer: str = OFFER) -> Session:
    return Session("R" * 32, "S" * 24, "front", "DEV", 0, check_offer(offer.encode(), 32768),
                   0.0)


def test_an_offer_keeps_its_bytes_and_what_trickle_needs() -> None:
    offer = check_offer(OFFER.encode(), 32768)
    assert offer.sdp == OFFER
    assert offer.mids == ("0", "1") and offer.bundle == ("0", "1") and offer.ufrag == "abcd"
    assert offer.candidates == {"candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"}


@pytest.mark.parametrize(("change", "words"), [
    (("a=recvonly\r\na=setup", "a=sendonly\r\na=setup"), "no H.264 video"),
    (("m=video 9", "m=video 0"), "no H.264 video"),
    (("H264/90000", "VP8/90000"), "no H.264 video"),
    (("a=setup:actpass\r\na=rtpmap:96", "a=setup:passive\r\na=rtpmap:96"), "not an offer"),
    (("v=0", "v=1"), "v=0"),
    (("s=-", "s=\x01"), "control characters"),
])
def test_what_is_not_a_usable_offer(change: tuple[str, str], words: str) -> None:
    with pytest.raises(WhepError) as refused:
        check_offer(OFFER.replace(*change, 1).encode(), 32768)
    assert refused.value.status == 400 and words in refused.value.reason


def test_trickle_numbering_filtering_and_end() -> None:
    s = session()
    fragment = Fragment("abcd", (("0", candidate(1, "tcp")), ("1", candidate(2)),
                                 ("0", "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host"),
                                 ("0", candidate(3)), (None, candidate(4))), False)
    plan = s.plan(fragment)
    # TCP, the other m-section and the offered candidate are not sent.
    assert [(t.seq, t.sdp_mid, t.sdp_mline_index) for t in plan] == [(0, "0", 0), (1, "0", 0)]
    assert s.plan(fragment) == []  # each candidate once
    many = Fragment(None, tuple(("0", candidate(n)) for n in range(10, 60)), True)
    plan = s.plan(many)
    seqs = [t.seq for t in plan]
    assert seqs[:-1] == list(range(2, END_OF_CANDIDATES_SEQ)) and seqs[-1] == 31
    assert plan[-1].candidate == "" and plan[-1].sdp_mid is None
    assert s.plan(Fragment(None, (("0", candidate(99)),), True)) == []


def test_another_ufrag_is_an_ice_restart() -> None:
    with pytest.raises(WhepError) as refused:
        session().plan(Fragment("other", (), False))
    assert refused.value.status == 422


def test_the_table_counts_places_and_keeps_tombstones_a_minute() -> None:
    table = Sessions(limit=2, max_age=100.0)
    table.reserve()
    table.reserve()
    with pytest.raises(WhepError) as busy:
        table.reserve()
    assert busy.value.status == 503
    s = session()
    table.add(s)  # one reservation becomes the session
    assert table.live() == 2
    table.release()  # the other offer failed
    assert table.live() == 1
    assert table.find(s.resource, 0, "front") is s
    with pytest.raises(WhepError):
        table.find(s.resource, 1, "front")  # another token: as if it did not exist
    assert table.end(s, "deleted", 10.0) and not table.end(s, "again", 11.0)
    assert table.live() == 0
    assert table.sweep(60.0) == [] and table.find(s.resource, 0, "front") is s
    table.sweep(70.5)
    with pytest.raises(WhepError):
        table.find(s.resource, 0, "front")
    old = session()
    old.resource = "O" * 32
    table.reserve()
    table.add(old)
    assert table.sweep(101.0) == [old] and old.ended is not None


def test_tokens_and_routes() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc", "q") is None and bearer_token(None, "q") == "q"
    assert token_index("b" * 20, ["a" * 20, "b" * 20]) == 1
    with pytest.raises(WhepError):
        token_index("\udcff\ud800", ["a" * 20])
    assert route("/front/whep") is not None and route("/front/whep/" + "A" * 32) is not None
    assert route("/front/snapshot.jpg") is not None
    for bad in ("/", "//whep", "/front", "/front/whep/short", "/a/b/c/d", "/\ud800/whep",
                "/front/whep/" + "A" * 32 + "/x"):
        assert route(bad) is None


@given(st.binary(max_size=2000))
def test_any_bytes_are_an_offer_or_a_clear_refusal(data: bytes) -> None:
    try:
        check_offer(data, 1000)
    except WhepError as exc:
        assert exc.status in (400, 413)


@given(st.binary(max_size=2000))
def test_any_bytes_are_a_fragment_or_a_clear_refusal(data: bytes) -> None:
    try:
        fragment = parse_fragment(data, 1000)
    except WhepError as exc:
        assert exc.status in (400, 413)
        return
    try:
        session().plan(fragment)
    except WhepError as exc:
        assert exc.status == 422
