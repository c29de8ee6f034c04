"""Which state the device is in, from what the agent knows: one pure function.

The status LED, ``peercam status`` and the serial console all show this one
state, so what the owner sees on the LED is what SSH says. Priority, highest
first (a state hides the ones below it):

1. fatal: the source stayed stuck through its restarts; the process is exiting.
2. reset: the button has been held long enough; releasing it forgets every viewer.
3. camera fault: no frame for ``frame_stall`` seconds (a restart may be under way).
4. pairing: a single-use pairing window is open (button, console, ``peercam pair``).
5. streaming relayed: at least one viewer is connected through TURN (it costs relay
   bandwidth, so it shows even when other viewers are direct).
6. streaming direct: viewers are connected, all peer-to-peer.
7. idle: registered with the rendezvous, nobody watching.
8. no network: the last rendezvous attempt failed for lack of a route or a name.
9. registering: connecting (or retrying) to the rendezvous.
10. booting: the source has not delivered its first frame yet.

Connected viewers show as streaming even while the rendezvous is unreachable:
media is peer-to-peer and does not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hardware.led import LedState


@dataclass(frozen=True)
class DeviceFacts:
    first_frame: bool = False
    registered: bool = False
    network_down: bool = False
    viewers_relayed: Sequence[bool] = ()
    """One entry per connected viewer: True when its selected pair is relayed."""
    pairing: bool = False
    camera_fault: bool = False
    reset_armed: bool = False
    fatal: bool = False


def device_state(facts: DeviceFacts) -> LedState:
    if facts.fatal:
        return LedState.FATAL
    if facts.reset_armed:
        return LedState.RESET
    if facts.camera_fault:
        return LedState.CAMERA_FAULT
    if facts.pairing:
        return LedState.PAIRING
    if facts.viewers_relayed:
        if any(facts.viewers_relayed):
            return LedState.STREAMING_RELAYED
        return LedState.STREAMING_DIRECT
    if facts.registered:
        return LedState.IDLE
    if not facts.first_frame:
        return LedState.BOOTING
    if facts.network_down:
        return LedState.NO_NETWORK
    return LedState.REGISTERING
