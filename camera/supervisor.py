"""The camera's supervisor: the health tick that keeps a wall-mounted camera working.

A few times a second, on the event loop, it runs the sans-I/O decisions of
``camera.health`` and carries them out:

- systemd: ``READY=1`` once, ``WATCHDOG=1`` while the loop ticks and frames
  flow, ``STATUS=`` lines for each recovery step;
- the source's recovery ladder (restart the source, then exit 75);
- the rendezvous link's ladder (reconnect, rebuild the agent's signaling, stop
  the watchdog pings so systemd restarts the unit);
- the status LED (one state for the LED, ``peercam status`` and the console);
- each viewer's sender stats (bitrate, round-trip time) for ``peercam status``.
- the Prometheus textfile for node_exporter (``camera.metrics``), every few seconds.

The tick itself never stops: an error in one tick is logged and the next goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from camera.core import printable
from camera.health import EXIT_STUCK, HealthMonitor, LinkAction, LinkLadder
from camera.health import Action as HealthAction
from camera.metrics import MetricsFile
from camera.sdnotify import Notifier
from camera.stallwatch import StallWatch
from camera.state import DeviceFacts, device_state

if TYPE_CHECKING:
    from camera.agent import CameraAgent
    from hardware.led import LedState, StatusLed

logger = logging.getLogger(__name__)

TICK = 0.25
"""Seconds between health/LED ticks on the event loop."""
STALL = TICK + 1.0
"""A tick this late is logged as a blocked loop, with where the loop was (a thread
samples its stack while the stall lasts: ``camera.stallwatch``)."""
MEDIA_QUIET = 2.0
"""Seconds without RTCP from every connected viewer before the rendezvous link is renewed."""
RENEW_SPACING = 2.0
"""Shortest time between two renewals of the link for quiet media."""
MEDIA_DEAD = 30.0
"""Seconds without RTCP after which a connected video session is closed: its viewer is
gone (ICE consent, RFC 7675, takes as long, but aioice's check can die with the
network it was using)."""
STATS_EVERY = 2.0
"""Seconds between samples of each viewer's sender stats (bitrate, RTT)."""
EXIT_LINK = 75
"""Exit status when the rendezvous link cannot recover and no watchdog will restart us."""


class Supervisor:
    """Runs from :meth:`run` (a task the agent owns) until the agent closes."""

    def __init__(
        self,
        agent: CameraAgent,
        health: HealthMonitor,
        link_ladder: LinkLadder,
        *,
        notifier: Notifier,
        watchdog_interval: float | None,
        led: StatusLed | None,
    ) -> None:
        self.agent = agent
        self.health = health
        self.link_ladder = link_ladder
        self.notifier = notifier
        self.watchdog_interval = watchdog_interval
        self.led = led
        self.failed = asyncio.Event()
        """Set when the camera gives up (stuck source or link); :attr:`exit_code` says how."""
        self.exit_code = 0
        self.viewer_stats: dict[str, dict[str, Any]] = {}
        """session ID -> {at, bytes, rtt, bitrate}: the last sample of its sender stats."""
        self._last_watchdog: float | None = None
        self._watchdog_stopped = False
        self._stats_at = 0.0
        self._renewed_at = float("-inf")
        self._renewed_for: set[str] = set()
        """Sessions whose quiet already led to a renewal (one renewal per quiet spell)."""
        self._nudged_for: set[str] = set()
        """Sessions whose quiet already led to a ping or a renewal of the link."""
        self.metrics = MetricsFile.for_config(agent.config)
        """The Prometheus textfile, rewritten from the tick every few seconds."""

    # -- the LED --------------------------------------------------------------------------

    @property
    def facts(self) -> DeviceFacts:
        agent = self.agent
        now = asyncio.get_running_loop().time()
        last = agent.broadcaster.last_frame_time
        # Watching: connected with video (a control-only session is not "streaming").
        connected = [s for s in agent.sessions.values()
                     if s.connected.is_set() and s.track is not None]
        return DeviceFacts(
            first_frame=agent.broadcaster.frames_published > 0,
            registered=agent.registered.is_set(),
            network_down=agent.link.network_down,
            viewers_relayed=[s.pair_types[0] == "relay" or s.pair_types[1] == "relay"
                             for s in connected],
            pairing=agent.pairing_open,
            camera_fault=self.health.faulty(now, last) and not self.health.gave_up,
            reset_armed=agent.reset_armed,
            fatal=self.health.gave_up or self.link_ladder.gave_up,
        )

    @property
    def state(self) -> LedState:
        """What the LED shows (see camera/state.py for the priorities)."""
        return device_state(self.facts)

    def show_state(self) -> None:
        if self.led is None or self.led.closed:
            return
        try:
            self.led.set(self.state)
        except Exception:  # a broken LED must never stop the camera
            logger.exception("status LED failed")

    # -- the tick ----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.health.started_at = loop.time()
        expected = loop.time()
        watch = StallWatch(STALL)
        watch.start()
        try:
            while True:
                await asyncio.sleep(TICK)
                now = loop.time()
                where = watch.beat()
                if now - expected > STALL:
                    logger.warning("event loop was blocked for %.1f s%s", now - expected - TICK,
                                   f" (at {where})" if where else "")
                expected = now + TICK
                try:
                    await self.tick(now)
                except Exception as exc:  # the supervisor itself must never stop
                    logger.error("health tick failed: %s: %s", type(exc).__name__,
                                 printable(exc))
        finally:
            watch.stop()

    async def tick(self, now: float) -> None:
        agent = self.agent
        agent.tick(now)
        for action in self.health.tick(now, agent.broadcaster.last_frame_time,
                                       agent.registered.is_set()):
            await self._act(action, now)
        link = agent.link.facts()
        for link_action in self.link_ladder.tick(now, link.running, link.registered,
                                                 link.internal_failures, link.last_activity):
            await self._act_link(link_action)
        self.show_state()
        await self._watch_media(now)
        if now - self._stats_at >= STATS_EVERY:
            self._stats_at = now
            await self._sample_viewer_stats(now)
        self.metrics.tick(now, agent)

    async def _watch_media(self, now: float) -> None:
        agent = self.agent
        watching = [s for s in agent.sessions.values()
                    if s.connected.is_set() and s.last_rtcp is not None]
        for session in watching:
            if session.quiet(now, MEDIA_DEAD):
                session.close(f"no RTCP from the viewer for {MEDIA_DEAD:.0f} s")
        quiet = {s.session_id for s in watching if s.quiet(now, MEDIA_QUIET)}
        self._renewed_for &= quiet
        self._nudged_for &= quiet
        if (watching and now - self._renewed_at >= RENEW_SPACING
                and all(s.quiet(now, MEDIA_QUIET) for s in watching)
                and any(s.session_id not in self._renewed_for for s in watching)):
            # Every viewer's RTCP stopped at once: our side of the path broke (our NAT
            # forgot its mappings, our uplink changed). The rendezvous link's TCP
            # connection is then as dead as the media, and the viewers' new offers
            # would wait behind it until the next heartbeat. A fresh link now lets
            # them through in seconds (the live sessions are not touched).
            self._renewed_at = now
            self._renewed_for |= {s.session_id for s in watching}
            logger.warning("no RTCP from any viewer for %.0f s: renewing the rendezvous link",
                           MEDIA_QUIET)
            self._nudged_for |= quiet
            await agent.link.restart()
        elif quiet - self._nudged_for:
            # Some viewers' RTCP stopped, not all: our NAT may have forgotten its
            # mappings while another viewer's path found the new one at once (ICE
            # learns a peer-reflexive address). The quiet viewer heals with a new
            # offer, which the link must be able to receive: a ping now re-opens it.
            logger.info("no RTCP from %d of %d viewers for %.0f s: pinging the rendezvous link",
                        len(quiet - self._nudged_for), len(watching), MEDIA_QUIET)
            self._nudged_for |= quiet
            await agent.link.nudge()

    async def _act(self, action: HealthAction, now: float) -> None:
        if action is HealthAction.READY:
            self.notifier.ready(f"streaming as {self.agent.device_id}")
            logger.info("ready: frames flowing and registered")
        elif action is HealthAction.WATCHDOG:
            interval = self.watchdog_interval
            if interval is not None and not self._watchdog_stopped and (
                self._last_watchdog is None or now - self._last_watchdog >= interval
            ):
                self._last_watchdog = now
                self.notifier.watchdog()
        elif action is HealthAction.RESTART_SOURCE:
            logger.error("no frame for %.1f s: restarting the source (%d of %d)",
                         self.health.frame_stall, self.health.restarts, self.health.max_restarts)
            self.notifier.status(f"camera stuck: restarting the source ({self.health.restarts})")
            self.show_state()
            await self.agent.restart_source()
        elif action is HealthAction.GIVE_UP:
            logger.critical("the source is still stuck after %d restart(s): exiting so the "
                            "service manager restarts the camera", self.health.total_restarts)
            self.notifier.status("camera stuck: exiting for a restart")
            self.exit_code = EXIT_STUCK
            self.show_state()
            self.failed.set()

    async def _act_link(self, action: LinkAction) -> None:
        fault = self.link_ladder.fault.value if self.link_ladder.fault else "link fault"
        if action is LinkAction.RECONNECT:
            logger.error("rendezvous link: %s; reconnecting", fault)
            self.notifier.status(f"rendezvous link: {fault}; reconnecting")
            await self.agent.link.restart()
        elif action is LinkAction.REBUILD:
            logger.error("rendezvous link: %s after a reconnect; rebuilding the agent", fault)
            self.notifier.status(f"rendezvous link: {fault}; rebuilding")
            await self.agent.rebuild()
        elif action is LinkAction.STOP_WATCHDOG:
            logger.critical("rendezvous link: %s after a rebuild; stopping the watchdog so "
                            "the service manager restarts the camera", fault)
            self.notifier.status("rendezvous link cannot recover: waiting for a restart")
            self._watchdog_stopped = True
            self.show_state()
            if self.watchdog_interval is None:
                # No watchdog will notice: exit, and let the service manager (if any) act.
                self.exit_code = EXIT_LINK
                self.failed.set()

    async def _sample_viewer_stats(self, now: float) -> None:
        sessions = self.agent.sessions
        for session_id, session in list(sessions.items()):
            if not session.connected.is_set():
                continue
            sent, rtt = 0, None
            try:
                for transceiver in session.pc.getTransceivers():
                    for stat in (await transceiver.sender.getStats()).values():
                        if stat.type == "outbound-rtp":
                            sent += stat.bytesSent
                        elif stat.type == "remote-inbound-rtp":
                            rtt = stat.roundTripTime
            except Exception:
                continue  # closing under us
            previous = self.viewer_stats.get(session_id)
            bitrate = None
            if previous is not None and now > previous["at"]:
                bitrate = 8 * (sent - previous["bytes"]) / (now - previous["at"])
            self.viewer_stats[session_id] = {"at": now, "bytes": sent, "rtt": rtt,
                                             "bitrate": bitrate}
        for gone in set(self.viewer_stats) - set(sessions):
            del self.viewer_stats[gone]
