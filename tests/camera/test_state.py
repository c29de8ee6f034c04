"""The device state every display shares (LED, status, console): priorities."""

from __future__ import annotations

from dataclasses import replace

from camera.state import DeviceFacts, device_state
from hardware.led import LedState


def test_boot_to_streaming() -> None:
    facts = DeviceFacts()
    assert device_state(facts) is LedState.BOOTING
    facts = replace(facts, first_frame=True)
    assert device_state(facts) is LedState.REGISTERING
    assert device_state(replace(facts, network_down=True)) is LedState.NO_NETWORK
    facts = replace(facts, registered=True)
    assert device_state(facts) is LedState.IDLE
    assert device_state(replace(facts, viewers_relayed=[False, False])) is \
        LedState.STREAMING_DIRECT
    assert device_state(replace(facts, viewers_relayed=[False, True])) is \
        LedState.STREAMING_RELAYED


def test_viewers_show_even_without_the_rendezvous() -> None:
    facts = DeviceFacts(first_frame=True, network_down=True, viewers_relayed=[False])
    assert device_state(facts) is LedState.STREAMING_DIRECT


def test_priorities() -> None:
    everything = DeviceFacts(first_frame=True, registered=True, viewers_relayed=[True],
                             pairing=True, camera_fault=True, reset_armed=True, fatal=True)
    order = [("fatal", LedState.FATAL), ("reset_armed", LedState.RESET),
             ("camera_fault", LedState.CAMERA_FAULT), ("pairing", LedState.PAIRING)]
    facts = everything
    for field, state in order:
        assert device_state(facts) is state
        facts = replace(facts, **{field: False})
    assert device_state(facts) is LedState.STREAMING_RELAYED
