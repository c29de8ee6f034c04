"""The camera's Prometheus metrics, as a node_exporter textfile.

The camera has no HTTP listener by design (nothing on it to attack from the
network), so it does not serve ``/metrics``: every few seconds the supervisor
writes ``metrics.prom`` for node_exporter's textfile collector
(``--collector.textfile.directory``). :func:`render` is pure (a status record
and counters in, exposition text out); :class:`MetricsFile` does the writing,
atomically (a temporary file in the same directory, then a rename) so that
node_exporter never reads half a file.

Per-viewer series carry the session's first 8 characters as a label; at most
:data:`MAX_VIEWER_SERIES` viewers are listed, so the number of series stays
bounded (the per-phase and per-path totals count every viewer).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from camera.errors import BadConfig
from camera.status import DeviceStatus
from services.metrics import Families
from services.metrics import counter as _counter
from services.metrics import gauge as _gauge

if TYPE_CHECKING:
    from camera.agent import CameraAgent
    from camera.config import CameraConfig

logger = logging.getLogger(__name__)

METRICS_EVERY = 5.0
"""Seconds between writes of the textfile."""
MAX_VIEWER_SERIES = 32
"""Viewers listed one by one (session label); the rest count only in the totals."""
FILE_NAME = "metrics.prom"
PHASES = ("waiting", "answering", "live", "closing")
LINK_STATES = ("registered", "connecting", "no-network", "fault")
RECOVERY_ACTIONS = ("source_restart", "link_reconnect", "link_rebuild", "watchdog_stop")


@dataclass(frozen=True, slots=True)
class CameraCounters:
    """Totals since the agent started that :class:`DeviceStatus` does not carry."""

    keyframes_published: int = 0
    """Keyframes (IDR pictures) the source delivered."""
    keyframe_requests: int = 0
    """Keyframes asked for (a viewer joined, a PLI/FIR, a slow viewer resynced)."""
    keyframe_requests_sent: int = 0
    """Requests passed on to the encoder (the rest were merged by its rate limit)."""
    source_restarts: int = 0
    """Source restarts the supervisor tried (stuck camera)."""
    link_reconnects: int = 0
    """Reconnects the supervisor made for a link fault (not ordinary retries)."""
    link_rebuilds: int = 0
    """Rebuilds of the agent's signaling (a reconnect did not cure the fault)."""
    watchdog_stopped: bool = False
    """The link could not recover: watchdog pings stopped for a restart."""
    replaced: int = 0
    """Times another connection registered this device ID and this one was closed."""


def counters_of(agent: CameraAgent) -> CameraCounters:
    """Read the counters from a running agent."""
    broadcaster, ladder = agent.broadcaster, agent.link_ladder
    stopped = ladder.gave_up
    return CameraCounters(
        keyframes_published=broadcaster.keyframes_published,
        keyframe_requests=broadcaster.keyframe_requests,
        keyframe_requests_sent=broadcaster.keyframe_requests_sent,
        source_restarts=agent.supervisor.health.total_restarts,
        link_reconnects=max(0, ladder.recoveries - agent.rebuilds - int(stopped)),
        link_rebuilds=agent.rebuilds,
        watchdog_stopped=stopped,
        replaced=agent.replaced,
    )


def families(status: DeviceStatus, counters: CameraCounters, now: float) -> Iterator[Metric]:
    """Every metric family for one status record; ``now`` is Unix time."""
    rdv, src = status.rendezvous, status.source
    yield _gauge("peercam_camera_info", "Always 1: this camera's device ID, source and size",
                 labels=["device_id", "source", "size"],
                 values={(status.device_id, src.kind, src.size): 1})
    yield _gauge("peercam_camera_state_info",
                 "Always 1: what the status LED shows now, as the state label",
                 labels=["state"], values={(status.state,): 1})
    yield _gauge("peercam_camera_last_update_timestamp_seconds",
                 "Unix time this file was written (a stale value: the agent stopped or hangs)",
                 now)
    yield _gauge("peercam_camera_uptime_seconds", "Seconds since the agent started",
                 status.uptime)
    # -- the source
    yield _counter("peercam_camera_frames_published",
                   "Encoded frames the source delivered to the broadcaster", src.frames)
    yield _counter("peercam_camera_keyframes_published",
                   "Keyframes (IDR pictures) the source delivered",
                   counters.keyframes_published)
    yield _counter("peercam_camera_keyframe_requests",
                   "Keyframes asked for (viewer joined, PLI/FIR, slow viewer resynced)",
                   counters.keyframe_requests)
    yield _counter("peercam_camera_keyframe_requests_sent",
                   "Keyframe requests passed on to the encoder after its rate limit",
                   counters.keyframe_requests_sent)
    yield _gauge("peercam_camera_source_frames_per_second",
                 "Frames per second the source delivered over the last seconds", src.fps)
    yield _gauge("peercam_camera_last_frame_age_seconds",
                 "Seconds since the last frame (no sample before the first frame)",
                 src.last_frame_age)
    # -- viewers
    phases = {phase: 0 for phase in PHASES}
    paths = {"direct": 0, "relayed": 0}
    for viewer in status.viewers:
        phases[viewer.phase if viewer.phase in phases else "closing"] += 1
        if viewer.connected:
            paths["relayed" if viewer.relayed else "direct"] += 1
    yield _gauge("peercam_camera_viewers", "Viewer sessions on the camera, by phase",
                 labels=["phase"], values={(p,): n for p, n in phases.items()})
    yield _gauge("peercam_camera_viewers_connected",
                 "Viewers with a connected media path, by path (relayed: through TURN)",
                 labels=["path"], values={(p,): n for p, n in paths.items()})
    listed = [v for v in status.viewers if v.connected][:MAX_VIEWER_SERIES]
    yield _gauge("peercam_camera_viewer_path_info",
                 "Always 1 per connected viewer (session: first 8 characters of its ID): "
                 "path direct or relayed, pair the local->remote ICE candidate types",
                 labels=["session", "path", "pair"],
                 values={(v.session, "relayed" if v.relayed else "direct", v.pair): 1
                         for v in listed})
    yield _gauge("peercam_camera_viewer_rtt_seconds",
                 "Round-trip time to each connected viewer (RTCP receiver reports)",
                 labels=["session"],
                 values={(v.session,): v.rtt_ms / 1000 for v in listed if v.rtt_ms is not None})
    yield _gauge("peercam_camera_viewer_sent_bytes_per_second",
                 "Media rate sent to each connected viewer (bitrate / 8)",
                 labels=["session"],
                 values={(v.session,): v.bitrate / 8 for v in listed if v.bitrate is not None})
    yield _gauge("peercam_camera_viewers_paired", "Viewer keys in the camera's ACL",
                 status.viewers_paired)
    yield _gauge("peercam_camera_pairing_open", "1 while a pairing window is open",
                 int(status.pairing_open))
    # -- network and rendezvous link
    yield _gauge("peercam_camera_nat_type_info",
                 "Always 1: the NAT type found at start (unknown: not checked yet)",
                 labels=["type"], values={(status.nat.type or "unknown",): 1})
    yield _gauge("peercam_camera_rendezvous_registered",
                 "1 while registered with the rendezvous (reachable by viewers)",
                 int(rdv.connected))
    yield _gauge("peercam_camera_rendezvous_state",
                 "1 for the rendezvous link's current state, 0 for the others",
                 labels=["state"],
                 values={(s,): int(rdv.state == s) for s in LINK_STATES})
    yield _counter("peercam_camera_rendezvous_reconnects",
                   "Rendezvous connection attempts after the first (retries with backoff)",
                   rdv.reconnects)
    yield _gauge("peercam_camera_network_down",
                 "1 while the last rendezvous attempt failed for lack of a network",
                 int(rdv.network_down))
    yield _counter("peercam_camera_rendezvous_recoveries",
                   "Recovery actions the supervisor took on the rendezvous link",
                   rdv.recoveries)
    yield _counter("peercam_camera_registrations_replaced",
                   "Times another connection registered this device ID (a cloned key?)",
                   counters.replaced)
    # -- errors and recovery
    yield _counter("peercam_camera_refusals", "Offers and pairings the camera refused",
                   status.refusals)
    yield _counter("peercam_camera_errors",
                   "Messages whose handling failed unexpectedly (logged; the camera went on)",
                   status.errors)
    actions = {"source_restart": counters.source_restarts,
               "link_reconnect": counters.link_reconnects,
               "link_rebuild": counters.link_rebuilds,
               "watchdog_stop": int(counters.watchdog_stopped)}
    yield _counter("peercam_camera_recovery_actions",
                   "Recovery actions taken by the supervisor, by action",
                   labels=["action"], values={(a,): actions[a] for a in RECOVERY_ACTIONS})


def render(status: DeviceStatus, counters: CameraCounters, now: float) -> str:
    """The textfile for one status record, in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(lambda: families(status, counters, now)))
    return generate_latest(registry).decode()


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0644; its directory must exist.

    The temporary file's name does not end in ``.prom``: node_exporter reads
    only ``*.prom``, so it never sees a half-written file.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # a umask (UMask=0077 in the unit) does not apply
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_metrics_path(path: Path) -> None:
    """A configured textfile path that cannot work fails at start, naming it."""
    if path.name.endswith(".tmp") or not path.name.endswith(".prom"):
        raise BadConfig(f"metrics_file {str(path)!r}: node_exporter's textfile collector "
                        "reads only files named *.prom")
    if not path.parent.is_dir():
        raise BadConfig(f"metrics_file {str(path)!r}: directory {str(path.parent)!r} "
                        "does not exist")


class MetricsFile:
    """Writes the textfile from the supervisor's tick, at most every ``every`` seconds.

    ``path`` None: disabled. A write that fails is logged once (and again when
    it works again); the camera goes on either way.
    """

    def __init__(self, path: Path | None, every: float = METRICS_EVERY) -> None:
        self.path = path
        self.every = every
        self.writes = 0
        self._at = float("-inf")
        self._failing: str | None = None

    @classmethod
    def for_config(cls, config: CameraConfig) -> MetricsFile:
        """The file ``[camera] metrics_file`` names; a path set explicitly is checked."""
        path = config.metrics_path
        if path is not None and isinstance(config.metrics_file, str):
            check_metrics_path(path)
        return cls(path)

    def tick(self, now: float, agent: CameraAgent) -> None:
        if self.path is None or now - self._at < self.every:
            return
        self._at = now
        try:
            write_textfile(self.path, render(agent.status(), counters_of(agent), time.time()))
        except Exception as exc:  # metrics must never stop the supervisor's tick
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self._failing:
                logger.warning("cannot write the metrics file %s: %s", self.path, problem)
            self._failing = problem
            return
        self.writes += 1
        if self._failing is not None:
            logger.info("metrics file %s written again", self.path)
            self._failing = None
