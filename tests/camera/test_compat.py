"""camera/compat: versions and private members checked before use, hooks installed once.

The refusals are simulated on throwaway modules and classes handed to the checks,
never by breaking the real aiortc or aioice; the installs run against the real
libraries and put the process back as they found it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest
from aioice.ice import Connection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from camera import compat
from camera.client import ice as viewer_ice
from camera.compat import (
    AIOICE,
    AIORTC,
    HooksConflict,
    IncompatibleLibrary,
    Settings,
    receiver,
    sender,
)
from camera.compat.guard import check_version
from camera.errors import PeercamError
from camera.ice import DirectFirst, Upgrade
from camera.webrtc import make_peer_connection


@pytest.fixture
def fresh() -> Iterator[None]:
    """Nothing installed at the start; whatever was installed is back at the end."""
    before, policy = compat.installed(), compat.ice.relay_policy()
    compat.uninstall()
    yield
    compat.uninstall()
    if before is not None:
        compat.install(before)
    compat.ice.set_relay_policy(policy)


def fake(version: str) -> Any:
    return types.SimpleNamespace(__version__=version)


# -- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.17.0", "1.15.2", "1.160.0", "2.0"])
def test_an_aiortc_outside_the_pinned_series_is_refused(version: str) -> None:
    with pytest.raises(IncompatibleLibrary) as caught:
        check_version(AIORTC, fake(version))
    assert caught.value.library == "aiortc" and caught.value.version == version
    assert f"found aiortc {version}" in str(caught.value) and "1.16" in str(caught.value)
    assert isinstance(caught.value, PeercamError) and isinstance(caught.value, RuntimeError)


def test_the_pinned_series_passes() -> None:
    check_version(AIORTC, fake("1.16.0"))
    check_version(AIORTC, fake("1.16.7"))
    check_version(AIOICE, fake("0.13.1"))


def test_check_libraries_names_the_wrong_library() -> None:
    with pytest.raises(IncompatibleLibrary, match=r"found aioice 0\.14\.0"):
        compat.check_libraries(aioice_module=fake("0.14.0"))
    with pytest.raises(IncompatibleLibrary, match=r"found aiortc 1\.17\.1"):
        compat.check_libraries(aiortc_module=fake("1.17.1"))
    compat.check_libraries()  # the installed ones pass


# -- private members ---------------------------------------------------------------------


class SenderWithoutRetransmit:
    def _send_keyframe(self) -> None: ...

    async def _handle_rtcp_packet(self, packet: Any) -> None: ...


class SenderWithSyncRetransmit(SenderWithoutRetransmit):
    def _retransmit(self, sequence_number: int) -> None: ...


class SenderWithRenamedParameter(SenderWithoutRetransmit):
    async def _retransmit(self, seq: int) -> None: ...


class DtlsWithoutSetRole:
    pass


def test_the_dtls_role_hook_checks_its_member() -> None:
    from camera.compat import dtls

    with pytest.raises(IncompatibleLibrary, match="DtlsWithoutSetRole._set_role is missing"):
        dtls.check_members(types.SimpleNamespace(__version__="1.16.0",
                                                 RTCDtlsTransport=DtlsWithoutSetRole))
    dtls.check_members()  # the real RTCDtlsTransport passes


def test_a_missing_sender_method_is_named_with_library_and_version() -> None:
    with pytest.raises(IncompatibleLibrary) as caught:
        sender.check_members(fake("1.16.0"), SenderWithoutRetransmit)
    message = str(caught.value)
    assert message.startswith("aiortc 1.16.0: ")
    assert "SenderWithoutRetransmit._retransmit is missing" in message


def test_a_sender_method_of_another_kind_or_signature_is_refused() -> None:
    with pytest.raises(IncompatibleLibrary, match="_retransmit is no longer a coroutine"):
        sender.check_members(fake("1.16.0"), SenderWithSyncRetransmit)
    with pytest.raises(IncompatibleLibrary, match=r"_retransmit takes \('self', 'seq'\)"):
        sender.check_members(fake("1.16.0"), SenderWithRenamedParameter)
    sender.check_members()  # the real RTCRtpSender passes


def test_a_connection_without_its_private_state_is_refused() -> None:
    class Moved(Connection):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            del self._nominating  # as if aioice renamed it

    with pytest.raises(IncompatibleLibrary, match=r"aioice .*Moved\._nominating is missing"):
        compat.ice.check_members(connection_class=Moved)

    class NotCallable(Connection):
        check_incoming = None  # type: ignore[assignment]

    with pytest.raises(IncompatibleLibrary, match="check_incoming is not callable"):
        compat.ice.check_members(connection_class=NotCallable)
    compat.ice.check_members()


def test_a_jitter_buffer_without_its_slots_is_refused() -> None:
    class Slotless(JitterBuffer):
        def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
            super().__init__(capacity, prefetch, is_video)
            del self._packets

    with pytest.raises(IncompatibleLibrary, match="Slotless._packets is missing"):
        receiver.check_members(jitter_class=Slotless)
    receiver.check_members()


def test_per_object_hooks_check_the_object() -> None:
    with pytest.raises(IncompatibleLibrary, match="_RTCRtpSender__rtp_history is missing"):
        compat.hook_sender(types.SimpleNamespace(), lambda reason: None)  # type: ignore[arg-type]
    with pytest.raises(IncompatibleLibrary, match="_data"):
        receiver.payload(RtpPacket())  # never through aiortc's depayloader
    with pytest.raises(IncompatibleLibrary, match="_connection is missing"):
        compat.nominated_pair(types.SimpleNamespace())  # type: ignore[arg-type]


# -- installed once ----------------------------------------------------------------------


def test_install_twice_is_safe_and_other_settings_are_refused(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patches: list[DirectFirst] = []
    real_patch = compat.ice.patch

    def counting(timing: DirectFirst, upgrade: Upgrade | None = None) -> None:
        patches.append(timing)
        real_patch(timing, upgrade)

    monkeypatch.setattr(compat.ice, "patch", counting)
    first = compat.install(Settings())
    assert compat.install(Settings()) == first
    assert compat.install() == first
    assert compat.ensure_installed() == first
    assert patches == [DirectFirst()]
    assert Connection.check_start is compat.ice.check_start  # type: ignore[comparison-overlap]

    other = Settings(direct_first=DirectFirst(grace=2.0))
    with pytest.raises(HooksConflict, match="grace=2.0"):
        compat.install(other)
    assert compat.installed() == first and compat.ice.timing().grace == 1.0
    assert compat.reconfigure(other) == other  # on purpose: allowed
    assert compat.ice.timing().grace == 2.0 and patches == [DirectFirst()]
    assert compat.reconfigure(Settings(upgrade=Upgrade(enabled=False))).upgrade.enabled is False
    assert compat.ice.upgrade() == Upgrade(enabled=False)
    assert Connection.connect is compat.ice._connect  # type: ignore[comparison-overlap]


def test_make_peer_connection_patches_once_and_keeps_the_settings(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_patch = compat.ice.patch

    def counting(timing: DirectFirst, upgrade: Upgrade | None = None) -> None:
        nonlocal calls
        calls += 1
        real_patch(timing, upgrade)

    monkeypatch.setattr(compat.ice, "patch", counting)
    for _ in range(5):
        make_peer_connection([])
    assert calls == 1
    assert Connection.check_start is compat.ice.check_start  # type: ignore[comparison-overlap]
    # Timers chosen on purpose survive later connections (they used to be reset).
    compat.reconfigure(Settings(direct_first=DirectFirst(grace=3.0)))
    for _ in range(3):
        make_peer_connection([])
    assert calls == 1 and compat.ice.timing().grace == 3.0


def test_the_viewer_rule_installs_once_and_refuses_a_second_policy(fresh: None) -> None:
    viewer_ice.install()
    viewer_ice.install()
    assert compat.ice.relay_policy() is viewer_ice.relay_deadline
    assert compat.installed() == Settings()

    def other(timing: DirectFirst, **kwargs: Any) -> float:
        return 0.0

    with pytest.raises(HooksConflict, match="relay nomination policy"):
        compat.ice.set_relay_policy(other)
    assert compat.ice.relay_policy() is viewer_ice.relay_deadline
