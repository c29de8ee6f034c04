"""The camera agent: the adapter that runs the protocol core against real sockets.

Three parts, each with one job:

- :class:`camera.core.AgentCore` decides (sans I/O): which offers to serve,
  which candidates to hand over, what to sign, when to say bye.
- :class:`camera.link.RendezvousLink` connects, registers, receives and sends,
  and comes back with jittered backoff.
- :class:`camera.supervisor.Supervisor` runs the health tick: the systemd
  watchdog, the source's recovery ladder and the link's (reconnect → rebuild →
  stop the watchdog pings so systemd restarts the unit), the LED, viewer stats.

This module owns the source, the broadcaster and one :class:`ViewerSession`
per viewer, and performs the core's actions. Media is peer-to-peer: when the
rendezvous link drops, live sessions go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from camera import compat
from camera.acl import PairingWindows, ViewerACL
from camera.broadcaster import Broadcaster
from camera.config import CameraConfig, page_url
from camera.core import (
    Action,
    AddCandidate,
    AgentCore,
    CloseSession,
    PairingUsed,
    Phase,
    Replaced,
    Send,
    StartSession,
    printable,
)
from camera.errors import BadConfig
from camera.gatekeeper import Gatekeeper
from camera.health import HealthMonitor, LinkLadder
from camera.identity import DeviceIdentity
from camera.link import RendezvousLink
from camera.netwatch import NetworkView, NetworkWatcher
from camera.ptz import PtzControl
from camera.punch import (
    NatProfile,
    PunchConfig,
    nat_attribute,
    profile_from_report,
    with_nat_attribute,
    with_predicted_candidates,
)
from camera.sdnotify import Notifier
from camera.session import BadCandidate, SessionFailed, ViewerSession
from camera.sources.base import Source
from camera.status import DeviceStatus, LinkStatus, NatStatus, SourceStatus, ViewerStatus
from camera.supervisor import Supervisor
from camera.webrtc import (
    arm_punch,
    order_turn,
    search_direct_again,
    stun_server_of,
    udp_blocked,
)
from services.stun.discovery import NatReport
from services.stun.natcheck import natcheck

if TYPE_CHECKING:
    from hardware.led import LedState, StatusLed
    from hardware.pelco_d import PelcoD

logger = logging.getLogger(__name__)

class CameraAgent:
    """Serves from :meth:`start` until :meth:`close`."""

    def __init__(
        self,
        config: CameraConfig,
        source: Source,
        identity: DeviceIdentity,
        *,
        source_factory: Callable[[], Source] | None = None,
        led: StatusLed | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
        head: PelcoD | None = None,
        link_ladder: LinkLadder | None = None,
        watch_network: bool = True,
    ) -> None:
        """``source_factory`` makes a fresh source for the recovery ladder (None: no
        in-process restart, a stuck source makes the agent exit). ``led`` shows
        :attr:`state`; ``notifier`` gets READY/WATCHDOG/STOPPING every
        ``watchdog_interval`` seconds (None: no watchdog pings); ``head`` is the
        pan/tilt head the device opened (None: no pan/tilt); ``link_ladder`` sets
        the link's recovery timing; ``watch_network`` follows link, address and
        route changes (netlink) to reconnect at once.
        """
        compat.ensure_installed()
        self.config = config
        self.source = source
        self.identity = identity
        self._source_factory = source_factory
        self.notifier = notifier or Notifier(None)
        self.supervisor = Supervisor(
            self,
            HealthMonitor(
                started_at=0.0,
                frame_stall=config.frame_stall,
                max_restarts=config.source_restarts if source_factory is not None else 0,
            ),
            link_ladder or LinkLadder(),
            notifier=self.notifier,
            watchdog_interval=watchdog_interval,
            led=led,
        )
        self.failed = self.supervisor.failed
        """Set when the agent gives up (stuck source or link); :attr:`exit_code` says how."""
        self.reset_armed = False
        self.source_restarts = 0
        self.rebuilds = 0
        self.started_at = time.time()
        self.acl = ViewerACL(config.state_dir)
        self.pairing = PairingWindows(config.state_dir)
        self.gatekeeper = Gatekeeper(identity, self.acl, self.pairing)
        # Keyframe requests go to whichever source is current (the recovery ladder
        # replaces it), on the layer the viewer is on.
        self.broadcaster = Broadcaster(lambda layer: self.source.request_keyframe(layer),
                                       layers=source.layers)
        # Pan/tilt over each viewer's "ptz" data channel; every message re-checks the ACL.
        self.ptz = PtzControl(
            head,
            rate=config.hardware.ptz_rate,
            authorized=lambda key: key is not None and key in self.acl,
        )
        self.sessions: dict[str, ViewerSession] = {}
        """The peer connections the core's sessions run on, by session ID."""
        self.registered = asyncio.Event()
        self.core = self._make_core()
        self.link = self._make_link()
        self._retired_counts = {"reconnects": 0, "refusals": 0, "errors": 0}
        """Counters of cores and links replaced by a rebuild."""
        self.replaced = 0
        """Times another connection registered our ID (a cloned key) and we were closed."""
        self.nat_report: NatReport | None = None
        """RFC 5780 NAT behaviour found at start (against the rendezvous' STUN server)."""
        self._natcheck: asyncio.Task[Any] | None = None
        self._natcheck_servers: list[dict[str, Any]] = []
        self.netwatch = NetworkWatcher(self._network_changed) if watch_network else None
        self.pairing_open = False
        """A single-use pairing window is open (re-read each second, not per LED tick)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def _make_core(self) -> AgentCore:
        return AgentCore(self.gatekeeper, max_viewers=self.config.max_viewers,
                         ice_servers=self.config.ice_servers)

    def _make_link(self) -> RendezvousLink:
        return RendezvousLink(self.config, self.gatekeeper, self._registered, self._frame,
                              on_change=self._show_state, registered=self.registered)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def refusals(self) -> int:
        return self._retired_counts["refusals"] + self.core.refusals

    @property
    def errors(self) -> int:
        return self._retired_counts["errors"] + self.core.errors

    @property
    def reconnects(self) -> int:
        return self._retired_counts["reconnects"] + self.link.reconnects

    @property
    def network_down(self) -> bool:
        return self.link.network_down

    @property
    def exit_code(self) -> int:
        return self.supervisor.exit_code

    async def start(self) -> None:
        """Start the source, then stay registered (the link's task) until :meth:`close`."""
        self.supervisor.health.started_at = asyncio.get_running_loop().time()
        self._show_state()
        await self.source.start(self.broadcaster.publish)
        if self.netwatch is not None:
            await self.netwatch.start()
        self.link.start()
        self._spawn(self._watch_acl())
        self._spawn(self.supervisor.run())

    def tick(self, now: float) -> None:
        """The supervisor's tick: offers whose wait for the NAT check is over go on."""
        self._perform(self.core.tick(now))

    # -- what the link reports ---------------------------------------------------------

    def _registered(self, ice_servers: list[dict[str, Any]]) -> None:
        if self._natcheck is None:
            self._natcheck_servers = (self.config.ice_servers if self.config.ice_servers
                                      is not None else ice_servers)
            self._natcheck = self._spawn(self._check_nat(self._natcheck_servers))

    def _network_changed(self, reason: str, old: NetworkView, new: NetworkView) -> None:
        """Reconnect now (not when the backoff says), learn the new NAT, and let the
        relayed sessions look for a direct path again (the new network may allow one)."""
        self.link.network_changed(new.online, old.addresses, new.addresses)
        if new.online and self._natcheck is not None and self._natcheck.done():
            self._natcheck = self._spawn(self._check_nat(self._natcheck_servers))
        if new.online:
            again = sum(search_direct_again(s.pc) for s in list(self.sessions.values()))
            if again:
                logger.info("network changed (%s): %d relayed session(s) look for a direct "
                            "path again", reason, again)

    def _frame(self, data: str | bytes) -> None:
        self._perform(self.core.received(data, asyncio.get_running_loop().time()))

    async def _check_nat(self, ice_servers: list[dict[str, Any]]) -> None:
        """Learn this network's NAT type once (logged, shown by status); let the
        offers that waited go on as soon as one STUN answer shows UDP gets out (the
        whole RFC 5780 run waits out the probes a filtering NAT drops: seconds)."""
        blocked = False
        try:
            server = stun_server_of(ice_servers)
            if server is None:
                logger.info("no STUN server configured: NAT type unknown")
            else:
                if not await udp_blocked(ice_servers) and not self._closed:
                    self._perform(self.core.nat_checked(False,
                                                        asyncio.get_running_loop().time()))
                self.nat_report = await natcheck(server)
                blocked = self.nat_report.nat_type == "udp-blocked"
                logger.info("NAT check against %s:%d: %s", *server, self.nat_report.summary())
        except Exception as exc:
            logger.warning("NAT check failed: %s: %s", type(exc).__name__, printable(exc))
        finally:
            if not self._closed:
                self._perform(self.core.nat_checked(blocked, asyncio.get_running_loop().time()))

    # -- performing the core's actions ---------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._spawn(self.link.send(action.text))
            elif isinstance(action, StartSession):
                self._start_session(action)
            elif isinstance(action, AddCandidate):
                session = self.sessions.get(action.session_id)
                if session is not None:
                    self._spawn(self._add_candidate(session, action))
            elif isinstance(action, CloseSession):
                # Forgotten at once (status, capacity); the core hears when it is closed.
                session = self.sessions.pop(action.session_id, None)
                if session is not None:
                    session.close(action.reason)
                else:
                    self.core.session_ended(action.session_id, action.reason)
            elif isinstance(action, Replaced):
                self.replaced += 1
                self.link.replaced()
            elif isinstance(action, PairingUsed):
                self._refresh_pairing()

    def _start_session(self, start: StartSession) -> None:
        try:
            session = ViewerSession(
                start.session_id,
                self.broadcaster,
                order_turn(start.ice_servers, udp_blocked=start.udp_blocked),
                self._session_closed,
                ice_timeout=self.config.ice_timeout,
                viewer_key=start.viewer_key,
                ptz=self.ptz,
                authorized=lambda key: key is not None and key in self.acl,
                layer_bitrates={layer: self.config.video.for_layer(layer).bitrate
                                for layer in self.config.video.layers},
                probe_revert=self.config.probe_revert,
                probe_padding=self.config.probe_padding,
                playout_delay=self.config.playout_delay_limits,
                on_connected=lambda s: self.core.media_up(s.session_id),
            )
        except Exception as exc:
            logger.error("session %s: cannot make a peer connection: %s: %s",
                         start.session_id, type(exc).__name__, printable(exc))
            self._perform(self.core.session_ended(start.session_id,
                                                  "the camera could not start a session"))
            return
        self.sessions[start.session_id] = session
        self._spawn(self._answer(session, start.offer_sdp))

    async def _answer(self, session: ViewerSession, offer_sdp: str) -> None:
        try:
            answer = await session.answer(offer_sdp)
        except SessionFailed as exc:
            logger.info("session %s refused: %s", session.session_id, exc)
            await session.close(str(exc))
            return
        except Exception as exc:
            logger.error("session %s: answering failed: %s: %s", session.session_id,
                         type(exc).__name__, printable(exc))
            await session.close("the camera could not answer")
            return
        answer = self._with_punching(session, offer_sdp, self._with_predictions(answer))
        self._perform(self.core.answered(session.session_id, answer,
                                         asyncio.get_running_loop().time()))

    def _with_predictions(self, sdp: str) -> str:
        """Behind a NAT that allocates ports sequentially, the answer also offers the
        ports it will likely map next (camera/punch.py): a viewer behind a NAT that
        filters on the remote port checks them, which opens its filter for the port
        our own check to it leaves from. Plain ICE cannot connect those two NATs."""
        nat = self.nat_report
        if (not self.config.port_prediction or nat is None or nat.allocation != "sequential"
                or not nat.allocation_step):
            return sdp
        return with_predicted_candidates(sdp, nat.allocation_step,
                                         PunchConfig().predicted_ports)

    def _with_punching(self, session: ViewerSession, offer_sdp: str, sdp: str) -> str:
        """Say our NAT in the answer (signed, like all of it) and let the session punch
        if it completes on a relay: behind a NAT that picks ports at random we open
        many mappings towards the viewer while it probes random ports of ours (the
        birthday technique, camera/punch.py); in front of a viewer whose offer says
        its NAT does that, we probe. Where neither applies the plan is empty."""
        nat = self.nat_report
        if not self.config.port_prediction or nat is None or nat.nat_type == "udp-blocked":
            return sdp
        local = profile_from_report(nat)
        remote = nat_attribute(offer_sdp) or NatProfile(symmetric=False)
        arm_punch(session.pc, local, remote, PunchConfig())
        return with_nat_attribute(sdp, local, PunchConfig().sweep_ports)

    async def _add_candidate(self, session: ViewerSession, add: AddCandidate) -> None:
        """A viewer's trickled candidate, its signature already checked by the core."""
        c = add.candidate
        try:
            await session.add_candidate(c.seq, c.line, c.sdp_mid, c.sdp_mline_index)
        except BadCandidate as exc:
            logger.warning("candidate for session %s dropped: %s", session.session_id,
                           printable(exc))

    def _session_closed(self, session: ViewerSession, reason: str) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        if not self._closed:
            self._perform(self.core.session_ended(session.session_id, reason))

    # -- trust ---------------------------------------------------------------------------

    async def _watch_acl(self) -> None:
        """End the live sessions of viewers revoked (over SSH) since we last looked,
        and notice pairing windows opened, used or expired by ``peercam pair``."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self._refresh_pairing()
            except OSError as exc:  # a failing card: revocations must still be seen
                logger.error("cannot read the pairing windows: %s", exc)
            try:
                self.acl.reload()
            except BadConfig as exc:
                logger.error("%s", exc)
                continue
            self.end_revoked_sessions()

    def end_revoked_sessions(self) -> int:
        """Close every session whose viewer key is no longer in the ACL; how many."""
        actions = self.core.end_revoked()
        self._perform(actions)
        return sum(isinstance(a, CloseSession) for a in actions)

    def open_pairing(self, ttl: float = 600.0, *, reusable: bool = False) -> str:
        """Open a pairing window in this process; returns the secret for the link."""
        secret = self.pairing.open(ttl, reusable=reusable, persist=False).secret
        self._refresh_pairing()
        self._show_state()
        return secret

    def _refresh_pairing(self) -> None:
        self.pairing_open = self.pairing.is_open(include_reusable=False)

    def pairing_link(self, secret: str) -> str:
        """The viewer link that pairs with ``secret`` (the web page of our rendezvous)."""
        return f"{page_url(self.config.rendezvous)}/#device={self.device_id}&pair={secret}"

    def open_pairing_link(self, ttl: float | None = None) -> tuple[str, float]:
        """Open a single-use window (button, console, ``peercam pair``): (link, ttl)."""
        ttl = self.config.hardware.pairing_ttl if ttl is None else ttl
        link = self.pairing_link(self.open_pairing(ttl))
        logger.info("pairing window open for %.0f s", ttl)
        return link, ttl

    def forget_viewers(self) -> int:
        """Clear the ACL and end every session (factory reset of trust); how many."""
        count = self.acl.clear()
        self.pairing.close_all()
        self._refresh_pairing()
        self.end_revoked_sessions()
        logger.warning("viewer list cleared: %d viewer(s) forgotten", count)
        return count

    # The pairing button (hardware/button.py calls these on the event loop).

    def button_short(self) -> None:
        self.open_pairing_link()

    def button_armed(self) -> None:
        self.reset_armed = True
        self._show_state()

    def button_long(self) -> None:
        self.reset_armed = False
        self.forget_viewers()
        self._show_state()

    def button_cancel(self) -> None:
        self.reset_armed = False
        self._show_state()

    # -- health, state, status -------------------------------------------------------------

    @property
    def state(self) -> LedState:
        """What the LED shows (see camera/state.py for the priorities)."""
        return self.supervisor.state

    def _show_state(self) -> None:
        self.supervisor.show_state()

    @property
    def health(self) -> HealthMonitor:
        return self.supervisor.health

    @property
    def link_ladder(self) -> LinkLadder:
        return self.supervisor.link_ladder

    async def rebuild(self) -> None:
        """A fresh protocol core and rendezvous link; live sessions carry over."""
        old_core, old_link = self.core, self.link
        await old_link.close()
        for key in ("reconnects", "refusals", "errors"):
            self._retired_counts[key] += getattr(
                old_link if key == "reconnects" else old_core, key)
        core = self._make_core()
        core.nat_settled, core.udp_blocked = old_core.nat_settled, old_core.udp_blocked
        for session_id, record in old_core.sessions.items():
            if record.phase in (Phase.ANSWERING, Phase.LIVE) and session_id in self.sessions:
                core.sessions[session_id] = record
        self.core = core
        # Sessions the old core was still deciding on are ended (the viewer retries).
        for session_id, session in list(self.sessions.items()):
            if session_id not in core.sessions:
                session.close("the camera restarted its signaling")
        self.rebuilds += 1
        self.link = self._make_link()
        if not self._closed:
            self.link.start()

    async def restart_source(self) -> None:
        """Close the source and start a fresh one from the factory (recovery ladder)."""
        if self._source_factory is None:
            return
        old = self.source
        try:
            async with asyncio.timeout(10):
                await old.close()
        except Exception:
            logger.exception("closing the stuck source failed (carrying on)")
        try:
            self.source = self._source_factory()
            await self.source.start(self.broadcaster.publish)
            self.source_restarts += 1
        except Exception as exc:
            logger.error("restarting the source failed: %s", exc)

    def _link_state(self) -> str:
        if self.registered.is_set():
            return "registered"
        if self.link_ladder.fault is not None:
            return "fault"
        return "no-network" if self.link.network_down else "connecting"

    def status(self) -> DeviceStatus:
        """Everything ``peercam status`` and the serial console show."""
        now = asyncio.get_running_loop().time()
        last = self.broadcaster.last_frame_time
        viewers = []
        for session in list(self.sessions.values()):
            local, remote = session.pair_types
            viewer = self.acl.get(session.viewer_key) if session.viewer_key else None
            stats = self.supervisor.viewer_stats.get(session.session_id, {})
            record = self.core.sessions.get(session.session_id)
            viewers.append(ViewerStatus(
                session=session.session_id[:8],
                name=viewer.name if viewer else None,
                fingerprint=viewer.fingerprint if viewer else None,
                connected=session.connected.is_set(),
                pair=f"{local or '?'}->{remote or '?'}",
                relayed="relay" in (local, remote),
                bitrate=None if stats.get("bitrate") is None else round(stats["bitrate"]),
                rtt_ms=None if stats.get("rtt") is None else round(1000 * stats["rtt"], 1),
                phase=record.phase.value if record is not None else Phase.CLOSING.value,
                layer=session.layer,
                quality=session.quality.mode if session.quality is not None else None,
            ))
        nat = self.nat_report
        return DeviceStatus(
            state=self.state.value,
            device_id=self.device_id,
            uptime=round(time.time() - self.started_at, 1),
            rendezvous=LinkStatus(
                url=self.config.rendezvous,
                state=self._link_state(),
                connected=self.registered.is_set(),
                reconnects=self.reconnects,
                network_down=self.link.network_down,
                last_error=self.link.last_error,
                recoveries=self.link_ladder.recoveries,
            ),
            nat=NatStatus(nat.nat_type if nat is not None else None,
                          nat.summary() if nat is not None else None),
            source=SourceStatus(
                kind=self.config.source,
                fps=round(self.broadcaster.recent_fps(now), 1),
                frames=self.broadcaster.frames_published,
                last_frame_age=None if last is None else round(now - last, 2),
                restarts=self.source_restarts,
                size=f"{self.config.video.width}x{self.config.video.height}",
            ),
            viewers=tuple(viewers),
            pairing_open=self.pairing.is_open(include_reusable=True),
            viewers_paired=len(self.acl.viewers()),
            refusals=self.refusals,
            errors=self.errors,
            tasks=len(asyncio.all_tasks()),
        )

    # -- tasks and shutdown ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("agent task failed: %s: %s", type(exc).__name__, printable(exc))

    async def close(self) -> None:
        """Stop serving: sessions (a bye each), tasks, rendezvous link, source. Safe twice."""
        if self._closed:
            return
        self.notifier.stopping()
        for action in self.core.close_all("camera shutting down"):
            if isinstance(action, Send):
                await self.link.send(action.text)
        self._closed = True
        await asyncio.gather(
            *(s.close("camera shutting down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        await self.ptz.close()  # after the sessions: their stops go out first
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.link.close()
        if self.netwatch is not None:
            await self.netwatch.close()
        self.broadcaster.close()
        await self.source.close()
