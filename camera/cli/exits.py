"""``peercam``'s exit statuses, in one place (the README's command table lists them)."""

from __future__ import annotations

import sys

OK = 0
"""Completed: the command did what it was asked (a viewing ended by --seconds or Ctrl-C)."""
FAILED = 1
"""Failed: no video, refused by the camera, unreachable, nothing matched."""
USAGE = 2
"""Usage or configuration error: a bad flag, setting or argument (argparse uses 2 too)."""
ENDED_BY_CAMERA = 3
"""A playing session was ended from the camera's side: revoked, bye, camera went offline."""
NO_CAMERA = 4
"""No camera here: no agent running for status, no device key in the state directory."""
INTERRUPTED = 130
"""Interrupted (Ctrl-C) before the command could finish."""

TABLE = [
    (OK, "completed"),
    (FAILED, "failed: no video, refused, unreachable, nothing matched"),
    (USAGE, "usage or configuration error"),
    (ENDED_BY_CAMERA, "the camera ended the session (revoked, bye, went offline)"),
    (NO_CAMERA, "no camera here (no agent running, no device key)"),
    (INTERRUPTED, "interrupted"),
]


def epilog() -> str:
    return "exit status: " + "; ".join(f"{code} {text}" for code, text in TABLE)


def _is(exc: BaseException, module: str, name: str) -> bool:
    """isinstance without importing ``module`` (not loaded: exc cannot be one of its)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def exit_code_for(exc: BaseException) -> int:
    """The status for a deliberate error (PeercamError, ServiceError, HardwareError)."""
    from camera.errors import BadConfig, NoCamera

    if _is(exc, "camera.client.viewer", "SessionEnded"):
        return ENDED_BY_CAMERA
    if isinstance(exc, NoCamera) or _is(exc, "camera.control", "AgentNotRunning"):
        return NO_CAMERA
    if isinstance(exc, BadConfig) or _is(exc, "camera.acl", "AmbiguousHandle"):
        return USAGE
    return FAILED
