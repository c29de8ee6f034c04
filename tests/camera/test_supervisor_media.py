"""The supervisor's rule for viewers whose RTCP stops: all of them, renew the
rendezvous link; some of them, ping it (once per quiet spell each)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from camera.supervisor import MEDIA_QUIET, Supervisor


@dataclass
class FakeSession:
    """A connected video session as the rule reads it (the layer below: RTCP times)."""

    session_id: str
    last_rtcp: float
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed_with: str | None = None

    def __post_init__(self) -> None:
        self.connected.set()

    def quiet(self, now: float, after: float) -> bool:
        return now - self.last_rtcp > after

    def close(self, reason: str) -> None:
        self.closed_with = reason


class FakeLink:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def nudge(self) -> None:
        self.calls.append("nudge")

    async def restart(self) -> None:
        self.calls.append("restart")


def supervisor(sessions: list[FakeSession]) -> tuple[Supervisor, FakeLink]:
    link = FakeLink()
    agent: Any = SimpleNamespace(sessions={s.session_id: s for s in sessions}, link=link,
                                 config=SimpleNamespace(metrics_file=""))
    sup = Supervisor.__new__(Supervisor)  # only the media rule's state, no tick loop
    sup.agent = agent
    sup._renewed_at = float("-inf")
    sup._renewed_for = set()
    sup._nudged_for = set()
    return sup, link


async def test_one_quiet_viewer_pings_the_link_once_per_quiet_spell() -> None:
    a, b = FakeSession("a", last_rtcp=0.0), FakeSession("b", last_rtcp=0.0)
    sup, link = supervisor([a, b])
    await sup._watch_media(MEDIA_QUIET / 2)
    assert link.calls == []  # nobody quiet yet
    b.last_rtcp = 10.0  # b keeps reporting; a went quiet
    await sup._watch_media(10.0)
    assert link.calls == ["nudge"]
    await sup._watch_media(10.5)
    assert link.calls == ["nudge"]  # the same quiet spell: no second ping
    a.last_rtcp = 11.0  # a is back, then quiet again: a new spell
    b.last_rtcp = 11.0
    await sup._watch_media(11.2)
    b.last_rtcp = 20.0
    await sup._watch_media(20.0)
    assert link.calls == ["nudge", "nudge"]


async def test_every_viewer_quiet_renews_the_link_instead() -> None:
    a, b = FakeSession("a", last_rtcp=0.0), FakeSession("b", last_rtcp=0.0)
    sup, link = supervisor([a, b])
    await sup._watch_media(MEDIA_QUIET + 1)
    assert link.calls == ["restart"]
    await sup._watch_media(MEDIA_QUIET + 1.5)
    assert link.calls == ["restart"]  # neither a ping nor a second renewal for them
