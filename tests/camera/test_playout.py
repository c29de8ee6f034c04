"""The CLI viewer's playout, sans-I/O: release, NACK schedule, deadlines, skipping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera.client.playout import (
    BadReceiveSettings,
    Frame,
    Packet,
    Playout,
    ReceiveSettings,
)
from camera.client.receiver import h264_keyframe_start


def frame_packets(first_seq: int, timestamp: int, count: int,
                  keyframe: bool = False) -> list[Packet]:
    return [Packet(seq=(first_seq + k) % 65536, timestamp=timestamp, marker=k == count - 1,
                   keyframe_start=keyframe and k == 0, payload=bytes([k]))
            for k in range(count)]


def drain(playout: Playout) -> list[Frame]:
    out = []
    while (frame := playout.take()) is not None:
        out.append(frame)
    return out


def test_a_complete_frame_goes_at_its_marker() -> None:
    playout = Playout()
    packets = frame_packets(10, 3000, 3, keyframe=True)
    for p in packets[:2]:
        playout.add(p, 0.0)
        assert playout.take() is None
    playout.add(packets[2], 0.0)
    frame = playout.take()
    assert frame is not None and frame.data == b"\x00\x01\x02" and frame.keyframe
    assert playout.counters.frames == 1


def test_a_gap_is_nacked_at_once_then_again_at_rtt_intervals() -> None:
    settings = ReceiveSettings(initial_rtt=0.05, renack_min=0.01)
    playout = Playout(settings)
    packets = frame_packets(100, 0, 4, keyframe=True)
    playout.add(packets[0], 0.0)
    assert playout.due_nacks(0.0) == []
    playout.observe(packets[2].seq, 0.001)  # 101 is missing
    assert playout.due_nacks(0.001) == [101]
    assert playout.due_nacks(0.03) == []  # not again before an RTT
    assert playout.due_nacks(0.052) == [101]
    # It comes back (sent twice: not timed, Karn's rule).
    playout.add(packets[1], 0.06)
    assert playout.rtt is None and playout.counters.recovered == 1
    assert playout.due_nacks(0.2) == []


def test_the_round_trip_is_learnt_from_a_packet_nacked_once() -> None:
    playout = Playout(ReceiveSettings(initial_rtt=0.2))
    packets = frame_packets(0, 0, 3, keyframe=True)
    playout.add(packets[0], 0.0)
    playout.add(packets[2], 0.0)
    assert playout.due_nacks(0.0) == [1]
    playout.add(packets[1], 0.004)
    assert playout.rtt == pytest.approx(0.004)
    assert playout.wait == pytest.approx(max(0.04, 0.004 * 1.5 + 0.03))
    assert [f.data for f in drain(playout)] == [b"\x00\x01\x02"]


def test_a_frame_waits_at_most_its_deadline_then_the_stream_waits_for_an_idr() -> None:
    asked: list[float] = []
    now = [0.0]
    settings = ReceiveSettings(initial_rtt=0.02, margin=0.03, min_wait=0.04)
    playout = Playout(settings, on_keyframe_request=lambda: asked.append(now[0]))
    wait = playout.wait  # 0.06
    seq = 0
    for p in frame_packets(seq, 0, 2, keyframe=True):
        playout.add(p, 0.0)
    assert len(drain(playout)) == 1
    # Frame 2 loses its first packet for good; frames 3 and 4 arrive whole.
    lost = frame_packets(2, 3000, 2)
    playout.add(lost[1], 0.033)
    for p in frame_packets(4, 6000, 2) + frame_packets(6, 9000, 2):
        playout.add(p, 0.05)
    assert drain(playout) == []  # held behind the gap
    now[0] = 0.033 + wait + 0.001
    playout.poll(now[0])
    # Given up: frames 3 and 4 reference it, so they are dropped too, and an IDR asked for.
    assert drain(playout) == []
    assert playout.counters.skipped == 1 and playout.counters.dropped_for_keyframe == 2
    assert asked == [now[0]] and playout.awaiting_keyframe
    # The lost packet turns up late: too late, not used.
    playout.add(lost[0], now[0] + 0.01)
    assert playout.counters.late == 1 and drain(playout) == []
    # No IDR yet: asked again only after keyframe_retry.
    playout.add(frame_packets(8, 12000, 1)[0], now[0] + 0.1)
    assert len(asked) == 1
    later = now[0] + settings.keyframe_retry + 0.01
    now[0] = later
    playout.add(frame_packets(9, 15000, 1)[0], later)
    assert len(asked) == 2
    # The IDR plays, and what follows it.
    for p in frame_packets(10, 18000, 3, keyframe=True) + frame_packets(13, 21000, 1):
        playout.add(p, later + 0.01)
    frames = drain(playout)
    assert [f.timestamp for f in frames] == [18000, 21000] and frames[0].keyframe
    assert not playout.awaiting_keyframe


def test_without_playout_a_gap_holds_everything_as_before() -> None:
    playout = Playout(ReceiveSettings(playout=False))
    for p in frame_packets(0, 0, 1, keyframe=True):
        playout.add(p, 0.0)
    drain(playout)
    playout.add(frame_packets(2, 6000, 1)[0], 0.01)  # seq 1 lost
    playout.poll(10.0)
    assert drain(playout) == [] and playout.counters.skipped == 0


def test_packets_beyond_the_senders_history_are_not_nacked() -> None:
    playout = Playout(ReceiveSettings(history=16, playout=False))
    playout.add(frame_packets(0, 0, 1, keyframe=True)[0], 0.0)
    playout.observe(5, 0.0)
    assert playout.due_nacks(0.0) == [1, 2, 3, 4]
    playout.observe(30, 0.5)
    due = playout.due_nacks(0.5)
    assert min(due) >= 30 - 16 + 1 and 1 not in due


def test_sequence_numbers_wrap() -> None:
    playout = Playout()
    for p in frame_packets(65534, 0, 4, keyframe=True):
        playout.add(p, 0.0)
    frames = drain(playout)
    assert len(frames) == 1 and frames[0].data == bytes([0, 1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=30, max_size=120), st.integers(0, 65535))
def test_frames_come_out_in_order_whole_and_never_twice(lost: list[bool], start: int) -> None:
    """Whatever is lost, every frame released is one whole frame, in timestamp order."""
    playout = Playout(ReceiveSettings(initial_rtt=0.01))
    sizes = [1 + (k * 7) % 4 for k in range(len(lost))]
    seq, now, released = start, 0.0, []
    sent: dict[int, bytes] = {}
    for k, gone in enumerate(lost):
        packets = frame_packets(seq, 3000 * k, sizes[k], keyframe=k % 10 == 0)
        sent[3000 * k] = b"".join(p.payload for p in packets)
        seq += sizes[k]
        for n, p in enumerate(packets):
            if not (gone and n == 0):
                playout.add(p, now)
            released += drain(playout)
        now += 0.033
    playout.poll(now + 1.0)
    released += drain(playout)
    stamps = [f.timestamp for f in released]
    assert stamps == sorted(set(stamps))
    assert all(f.data == sent[f.timestamp] for f in released)


def test_settings_are_checked() -> None:
    with pytest.raises(BadReceiveSettings, match="min_wait"):
        ReceiveSettings(min_wait=0.5, max_wait=0.1)
    with pytest.raises(BadReceiveSettings, match="history"):
        ReceiveSettings(history=0)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x65, 0x88]), True),  # IDR slice
        (bytes([0x41, 0x9A]), False),  # P slice
        (bytes([0x78, 0x00, 0x05, 0x67, 0x42]), True),  # STAP-A starting with an SPS
        (bytes([0x7C, 0x85, 0x00]), True),  # FU-A start of an IDR
        (bytes([0x7C, 0x05, 0x00]), False),  # FU-A continuation
        (bytes([0x7C, 0x81, 0x00]), False),  # FU-A start of a P slice
    ],
)
def test_keyframe_start_of_an_rtp_payload(payload: bytes, expected: bool) -> None:
    assert h264_keyframe_start(payload) is expected


def test_an_idr_awaited_waits_longer_unless_a_newer_one_starts() -> None:
    settings = ReceiveSettings(initial_rtt=0.01, keyframe_wait=1.0)
    playout = Playout(settings)
    for p in frame_packets(0, 0, 1, keyframe=True):
        playout.add(p, 0.0)
    drain(playout)
    playout.add(frame_packets(2, 3000, 1)[0], 0.0)  # seq 1 lost: a frame given up
    playout.poll(0.2)
    assert playout.awaiting_keyframe
    # An IDR whose middle packet is lost: held past the usual wait ...
    idr = frame_packets(3, 6000, 3, keyframe=True)
    playout.add(idr[0], 0.3)
    playout.add(idr[2], 0.3)
    playout.poll(0.3 + playout.wait + 0.1)
    assert drain(playout) == [] and playout.counters.skipped == 1
    # ... and still completes when its packet comes back.
    playout.add(idr[1], 0.6)
    assert [f.timestamp for f in drain(playout)] == [6000]
    # Another IDR loses a packet, then a newer IDR starts: the older one goes at its
    # usual deadline, and the newer one plays.
    playout.add(frame_packets(7, 9000, 1)[0], 0.7)  # seq 6 lost
    playout.poll(1.0)
    old = frame_packets(8, 12000, 3, keyframe=True)
    playout.add(old[0], 1.0)
    playout.add(old[2], 1.0)
    new = frame_packets(11, 15000, 2, keyframe=True)
    for p in new:
        playout.add(p, 1.01)
    playout.poll(1.0 + playout.wait + 0.01)
    assert [f.timestamp for f in drain(playout)] == [15000]


def test_no_second_keyframe_request_while_the_first_answer_is_repaired() -> None:
    """Under a thin link the IDR asked for loses packets too: asking for another every
    keyframe_retry would put burst on burst. While the IDR that began arriving after
    the request is being repaired (up to keyframe_wait) nothing more is asked."""
    asked: list[float] = []
    settings = ReceiveSettings(initial_rtt=0.01, keyframe_retry=0.5, keyframe_wait=2.0)
    playout = Playout(settings, on_keyframe_request=lambda: asked.append(0.0))
    for p in frame_packets(0, 0, 1, keyframe=True):
        playout.add(p, 0.0)
    drain(playout)
    playout.add(frame_packets(2, 3000, 1)[0], 0.0)  # seq 1 lost: a frame given up
    playout.poll(0.2)
    assert playout.awaiting_keyframe and len(asked) == 1
    idr = frame_packets(3, 6000, 4, keyframe=True)  # its packets 4 and 5 lost for now
    playout.add(idr[0], 0.3)
    playout.add(idr[3], 0.3)
    for t in (0.8, 1.3, 1.8, 2.2):
        playout.poll(t)
    assert len(asked) == 1  # still being repaired: no burst on top of it
    playout.poll(2.31 + settings.keyframe_retry)  # past keyframe_wait: ask again
    assert len(asked) == 2
