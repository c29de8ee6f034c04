"""Why a viewer could not watch: the viewer side's deliberate errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from camera.errors import PeercamError

if TYPE_CHECKING:
    from camera.client.viewer import ViewStats


class ViewError(PeercamError):
    """The viewer could not get video (camera offline, refused, no frames).

    ``stats`` is what was measured before it went wrong, when video had started.
    """

    def __init__(self, message: str, stats: ViewStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats


class Refused(ViewError):
    """The camera (or the rendezvous for it) said no to a request: ``reason`` says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ForgedAnswer(ViewError):
    """The answer or pairing reply was not signed by the camera we asked for."""


class SessionEnded(ViewError):
    """The camera ended a run that was playing (revoked: no new session is allowed)."""


class RecordingFailed(ViewError):
    """``--record``: the file cannot be written (checked before connecting, and per frame)."""
