"""What a relayed viewer costs: coturn against a direct path, in the same NAT-lab run.

Why the lab and not loopback with a relay-only viewer: the relayed path here is
the one ICE really picks when no direct path exists, through coturn running the
shipped policy on its own "host", and the direct path is real NAT traversal. On
loopback the viewer would have to be forced onto a relay pair (aiortc has no
relay-only policy), coturn's packets and the camera's would share one
interface, and the camera could not be made to relay through its own allocation.

Two setups, one lab each, because whose TURN allocation carries the video
decides what the camera pays:

* ``viewer-allocation``: camera behind a port-restricted NAT, direct viewers
  behind a second one (srflx to srflx), relayed viewers behind a symmetric NAT:
  the camera sends plain UDP to the viewer's relay address;
* ``camera-allocation``: camera behind a symmetric NAT, direct viewers behind a
  full-cone one (prflx), relayed viewers behind a port-restricted NAT: the
  camera sends through its own allocation (aioice's TURN client, in Python).

In each: one camera (``python -m bench _camera --any-address``);

* latency: one decoding CLI viewer per path reads the burnt-in capture time
  (camera/stamp.py) from every frame; added latency = relayed p50 - direct p50;
* CPU, packets and bytes: N viewers that receive but do not decode (they would
  starve the camera on a small machine), per path; camera and coturn process CPU
  (``/proc/PID/stat``) over a fixed window; the RTP packets the camera sent in it
  (its senders' own counter, read on SIGUSR1) and the H.264 bitrate each viewer
  received, printed with every result; bytes through coturn counted by
  nftables counters in the server's namespace on its wire interface (all of
  coturn's ports, in and out), extrapolated to a viewer-hour and set against
  the stream's nominal bitrate x 3600 s; the direct viewers' received bytes are
  counted the same way at their site.

Content: per-viewer cost is per packet, so the content must reach its bitrate:
the ``texture`` test pattern (``--pattern``), with ``--clip`` pre-encoded once and
played by the camera's ``file`` source (as on a board whose hardware encoder
does the work, and as ``bench.viewers`` and ``bench.janus`` do), so no encoder
competes with coturn and the viewers for the lab machine's CPU.

``python -m bench.relay latency|receive …`` is the viewer side, run inside a
lab namespace (JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, cpu_seconds, pyplot

NAME = "relay"
HELP = "TURN relay (coturn) cost against direct: CPU, added latency, bytes per viewer-hour"
SMOKE = ["--counts", "1", "--seconds", "2", "--latency-seconds", "2", "--width", "320",
         "--height", "240"]
NEEDS = ["root", "turnserver", "nft"]
# Brings up the NAT lab (one per machine): its smoke test runs with the lab tests.
USES_LAB = True

RELAY_PORTS = "49152-65535"  # systemd/coturn/turnserver.conf min-port / max-port
TURN_PORTS = "{ 3478, 443 }"  # tests/lab/matrix.py: UDP and TCP on 3478, TCP on 443
COUNTERS_TABLE = "relaybench"
FPS = 30  # the camera's default frame rate (bench/camera_proc.py)
H264_PACKET_PAYLOAD = 1300 - 2  # aiortc's PACKET_MAX less the FU-A header


SETUPS = {
    "viewer-allocation": ("port-restricted", "port-restricted-2", "symmetric"),
    "camera-allocation": ("symmetric", "full-cone", "port-restricted"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setups", default=",".join(SETUPS),
                   help="NAME=CAMERA:DIRECT:RELAYED lab sites, or a known name, comma-separated")
    p.add_argument("--counts", default="1,4", help="concurrent viewers per path")
    p.add_argument("--seconds", type=float, default=12.0, help="CPU/bytes window")
    p.add_argument("--latency-seconds", type=float, default=8.0,
                   help="decoding viewer's watch time per path")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--bitrate", type=int, default=2_000_000)
    p.add_argument("--videos", default="",
                   help="WIDTHxHEIGHT:BITRATE items, comma-separated (e.g. "
                        "1280x720:2000000,1920x1080:4000000): every setup at each, in one "
                        "run (default: --width, --height, --bitrate)")
    p.add_argument("--pattern", default="texture", choices=["bars", "texture"],
                   help="texture: libx264 reaches the bitrate; bars: the old, light content "
                        "(about 340 kbit/s whatever the bitrate)")
    p.add_argument("--clip", action="store_true",
                   help="the camera plays one pre-encoded clip of the pattern (its `file` "
                        "source, no encoder in the camera)")


# -- nftables byte counters in a lab namespace -----------------------------------


def counter_ruleset(rules: dict[str, tuple[str, str]]) -> str:
    """An ``inet`` table of named counters; ``rules``: name → (hook, match)."""
    lines = [f"table inet {COUNTERS_TABLE} {{"]
    lines += [f"  counter {name} {{ }}" for name in rules]
    for hook in ("input", "output"):
        lines += [f"  chain {hook} {{",
                  f"    type filter hook {hook} priority -5; policy accept;"]
        lines += [f"    {match} counter name {name}"
                  for name, (h, match) in rules.items() if h == hook]
        lines.append("  }")
    return "\n".join([*lines, "}"]) + "\n"


#: coturn's wire traffic on the server: media from the camera into relay ports,
#: media to the viewers out of the TURN ports (UDP 3478 or TCP 443).
SERVER_COUNTERS = {
    "relay_in": ("input", f'iifname "eth0" udp dport {RELAY_PORTS}'),
    "relay_out": ("output", f'oifname "eth0" udp sport {RELAY_PORTS}'),
    "turn_out": ("output", f'oifname "eth0" meta l4proto {{ udp, tcp }} th sport {TURN_PORTS}'),
    "turn_in": ("input", f'iifname "eth0" meta l4proto {{ udp, tcp }} th dport {TURN_PORTS}'),
}
#: What a viewer host receives over UDP (its media, direct or relayed).
VIEWER_COUNTERS = {"udp_in": ("input", 'iifname "eth0" meta l4proto udp')}


def install_counters(lab: Any, where: str, rules: dict[str, tuple[str, str]]) -> None:
    lab.run(where, ["nft", "-f", "-"], input=counter_ruleset(rules))


def read_counters(lab: Any, where: str) -> dict[str, dict[str, int]]:
    """name → {"packets", "bytes"} (IP bytes, as nftables counts them)."""
    done = lab.run(where, ["nft", "-j", "list", "counters", "table", "inet", COUNTERS_TABLE])
    out = {}
    for item in json.loads(done.stdout)["nftables"]:
        counter = item.get("counter")
        if counter:
            out[counter["name"]] = {"packets": counter["packets"], "bytes": counter["bytes"]}
    return out


def delta(after: dict[str, dict[str, int]],
          before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: {k: after[name][k] - before[name][k] for k in ("packets", "bytes")}
            for name in after}


# -- the benchmark ----------------------------------------------------------------


class Probe:
    """CPU seconds of the camera and of every coturn process, and the byte counters."""

    def __init__(self, lab: Any, camera: subprocess.Popen[str], coturn_pids: list[int],
                 viewer_sites: list[str]) -> None:
        self.lab, self.camera, self.coturn_pids = lab, camera, coturn_pids
        self.camera_pid = camera.pid
        self.viewer_sites = viewer_sites

    def sample(self) -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "camera_packets": camera_packets_sent(self.camera),
            "camera_cpu_s": cpu_seconds(self.camera_pid),
            "coturn_cpu_s": sum(cpu_seconds(pid) for pid in self.coturn_pids),
            "server": read_counters(self.lab, "server"),
            "viewers": {site: read_counters(self.lab, site) for site in self.viewer_sites},
        }

    @staticmethod
    def window(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        seconds = b["t"] - a["t"]
        return {
            "seconds": round(seconds, 2),
            "camera_cpu_core": round((b["camera_cpu_s"] - a["camera_cpu_s"]) / seconds, 4),
            "camera_packets_s": round((b["camera_packets"] - a["camera_packets"]) / seconds, 1),
            "coturn_cpu_core": round((b["coturn_cpu_s"] - a["coturn_cpu_s"]) / seconds, 4),
            "server_bytes": delta(b["server"], a["server"]),
            "viewer_bytes": {s: delta(b["viewers"][s], a["viewers"][s]) for s in b["viewers"]},
        }


def camera_packets_sent(camera: subprocess.Popen[str], timeout: float = 10.0) -> int:
    """RTP packets the lab camera's video senders sent so far: ``bench _camera`` prints
    ``SENT <n>`` on SIGUSR1 (its stdout carries nothing else once it has started)."""
    assert camera.stdout is not None
    camera.send_signal(signal.SIGUSR1)
    ready, _, _ = select.select([camera.stdout], [], [], timeout)
    line = camera.stdout.readline() if ready else ""
    if not line.startswith("SENT "):
        raise SystemExit(f"bench: the lab camera did not count its packets ({line!r})")
    return int(line.split()[1])


def content_args(args: argparse.Namespace) -> list[str]:
    """The camera's content flags: the pattern, and the clip folder with ``--clip``."""
    return ["--pattern", args.pattern,
            *(["--clip", str(Path(args.state) / "clips")] if args.clip else [])]


def parse_setups(text: str) -> dict[str, tuple[str, str, str]]:
    out = {}
    for item in text.split(","):
        name, _, sites = item.strip().partition("=")
        if not sites and name in SETUPS:
            out[name] = SETUPS[name]
            continue
        parts = tuple(sites.split(":"))
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"bench: --setups wants NAME=CAMERA:DIRECT:RELAYED, not {item!r}")
        out[name] = (parts[0], parts[1], parts[2])
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.labttff import expected_direct, need_lab

    need_lab(chromium=False)
    setups = parse_setups(args.setups)
    for name, (camera, direct, relayed) in setups.items():
        if expected_direct(camera, relayed):
            raise SystemExit(f"bench: {name}: {camera} and {relayed} have a direct path; "
                             "the relayed site must be one where coturn has to relay")
        if not expected_direct(camera, direct):
            raise SystemExit(f"bench: {name}: {camera} and {direct} have no direct path")
    videos = parse_videos(args.videos) if args.videos else [
        (args.width, args.height, args.bitrate)]
    if args.clip:
        from bench.camera_proc import ensure_clip
        from camera.sources.base import VideoSettings

        # Made once here (it takes a while at 1080p), not by the lab camera as it starts.
        for width, height, bitrate in videos:
            video = VideoSettings(width=width, height=height, fps=FPS, bitrate=bitrate)
            await asyncio.get_running_loop().run_in_executor(
                None, ensure_clip, Path(args.state) / "clips", video, args.pattern)
    out = []
    for width, height, bitrate in videos:
        at = argparse.Namespace(**{**vars(args), "width": width, "height": height,
                                   "bitrate": bitrate})
        label = f"{width}x{height}@30 {bitrate / 1e6:g} Mbit/s"
        results = []
        for name, sites in setups.items():
            result = await measure(at, name, *sites)
            print(json.dumps({"video": label, "setup": name, **result["figures"]}), flush=True)
            results.append(result)
        out.append({"video": label, "bitrate": bitrate, "setups": results})
    # The first video's figures at the top level too, as a one-video run stored them.
    result = {**out[0], "videos": out, "pattern": args.pattern, "clip": args.clip,
              "window_s": args.seconds, "coturn_max_bps": shipped_max_bps()}
    stored = Path(args.out) / f"{NAME}.json"
    if not args.smoke and stored.exists() and not measured_latency(result):
        result["earlier_latency"] = earlier_latency(json.loads(stored.read_text()))
    return result


SHIPPED_COTURN = ROOT / "systemd" / "coturn" / "turnserver.conf"


def shipped_max_bps() -> int | None:
    """The shipped coturn policy's ``max-bps`` (bytes/s per allocation), which the lab's
    coturn runs with; None if it sets none."""
    for line in SHIPPED_COTURN.read_text().splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "max-bps":
            return int(value)
    return None


def starved(v: dict[str, Any], s: dict[str, Any]) -> dict[str, float] | None:
    """A setup whose relayed viewers got under 90% of what direct ones did: what they
    got, the direct figure, their lowest fps and coturn's egress per viewer (MB/s)."""
    f = s["figures"]
    relayed, direct = f.get("relayed_payload_kbit_s"), f.get("direct_payload_kbit_s")
    if relayed is None or direct is None or relayed >= 0.9 * direct:
        return None
    rows = [r for r in s["rows"] if r["path"] == "relayed"]
    return {"relayed": relayed, "direct": direct,
            "fps_min": min(r["fps_min"] for r in rows),
            "out_mb_s": round(statistics.median(
                wire(r, "out")["bytes"] / r["seconds"] / r["viewers"] for r in rows) / 1e6, 3),
            "in_pps": round(statistics.median(
                wire(r, "in")["packets"] / r["seconds"] / r["viewers"] for r in rows)),
            "out_pps": round(statistics.median(
                wire(r, "out")["packets"] / r["seconds"] / r["viewers"] for r in rows))}


LATENCY = ("latency_p50_direct_ms", "latency_p95_direct_ms", "latency_p50_relayed_ms",
           "latency_p95_relayed_ms", "added_latency_p50_ms")


def measured_latency(result: dict[str, Any]) -> bool:
    """Whether a run read latencies: a clip has no capture time burnt in at play time."""
    return any(s["figures"].get("latency_p50_direct_ms") is not None
               for v in videos_of(result) for s in v["setups"])


def earlier_latency(stored: dict[str, Any]) -> list[dict[str, Any]]:
    """The latency figures of a stored run (with what it played and when), for a run
    that could not read them; those it carried itself if it read none either."""
    if not measured_latency(stored):
        earlier: list[dict[str, Any]] = stored.get("earlier_latency", [])
        return earlier
    return [{"video": v["video"], "setup": s["name"], "pattern": stored.get("pattern", "bars"),
             "clip": bool(stored.get("clip")), "date": stored.get("machine", {}).get("date"),
             **{k: s["figures"].get(k) for k in LATENCY}}
            for v in videos_of(stored) for s in v["setups"]]


def parse_videos(text: str) -> list[tuple[int, int, int]]:
    """``1280x720:2000000,1920x1080:4000000`` → [(1280, 720, 2000000), ...]."""
    out = []
    for item in text.split(","):
        size, _, rate = item.strip().partition(":")
        width, _, height = size.partition("x")
        try:
            out.append((int(width), int(height), int(rate)))
        except ValueError:
            raise SystemExit(f"bench: --videos wants WIDTHxHEIGHT:BITRATE items, "
                             f"not {item!r}") from None
    return out


def videos_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each video's part of a result (one, for a run stored before ``--videos``)."""
    videos: list[dict[str, Any]] = result.get("videos") or [
        {"video": result["video"], "bitrate": result["bitrate"], "setups": result["setups"]}]
    return videos


def lab_run(camera: str, sites: list[str], state: Path, args: argparse.Namespace) -> Any:
    """bench.labttff's LabRun, its camera started with this run's content flags."""
    from bench.labttff import LabRun

    class ContentLabRun(LabRun):
        async def _start_camera(self) -> None:
            # LabRun builds the camera's command line itself: add the content flags to
            # the one process it starts, then give the lab its own popen back.
            popen = self.lab.popen

            def with_content(where: str, argv: list[str], **kwargs: Any) -> Any:
                return popen(where, [*argv, *content_args(args)], **kwargs)

            self.lab.popen = with_content
            try:
                await super()._start_camera()
            finally:
                del self.lab.popen

    return ContentLabRun(camera, sites, state, width=args.width, height=args.height,
                         bitrate=args.bitrate)


async def measure(args: argparse.Namespace, name: str, camera: str, direct: str,
                  relayed: str) -> dict[str, Any]:
    """One setup in its own lab: latency per path, then CPU and bytes per viewer count."""
    counts = [int(c) for c in args.counts.split(",")]
    paths = {"direct": direct, "relayed": relayed}
    loop = asyncio.get_running_loop()
    async with lab_run(camera, list(paths.values()), Path(args.state) / NAME / name,
                       args) as lab:
        install_counters(lab.lab, "server", SERVER_COUNTERS)
        for site in paths.values():
            install_counters(lab.lab, site, VIEWER_COUNTERS)
        coturn = [p.pid for p in lab.matrix.procs[:2]]  # the matrix starts coturn first
        probe = Probe(lab.lab, lab.camera, coturn, list(paths.values()))

        latency: dict[str, Any] = {}
        for path, site in paths.items():
            rows = await lab.json_lines(
                site, [sys.executable, "-m", "bench.relay", "latency", lab.link(pair=True),
                       str(args.latency_seconds)],
                args.latency_seconds + 90, f"latency-{site}.log")
            if not rows or not rows[-1].get("frames"):
                raise SystemExit(f"bench: the decoding viewer behind {site} got no video: "
                                 f"{lab.log(f'latency-{site}.log')}")
            latency[path] = rows[-1]
            print(json.dumps({"setup": name, "latency": path, **{
                k: v for k, v in rows[-1].items() if k != "latencies_ms"}}), flush=True)

        settle = 1.0 if args.smoke else 3.0
        await asyncio.sleep(settle)
        a = await loop.run_in_executor(None, probe.sample)
        await asyncio.sleep(settle if args.smoke else args.seconds / 2)
        idle = Probe.window(a, await loop.run_in_executor(None, probe.sample))

        rows = []
        for count in counts:
            for path, site in paths.items():
                row = await receive_window(lab, probe, site, count, args, settle)
                row.update(path=path, site=site, viewers=count)
                print(json.dumps({"setup": name, **{k: v for k, v in row.items()
                                                    if k != "sessions"}}), flush=True)
                rows.append(row)
    return {"name": name, "camera_site": camera, "paths": paths, "idle": idle, "rows": rows,
            "latency": latency, "figures": figures(rows, idle, latency, args.bitrate)}


async def receive_window(lab: Any, probe: Probe, site: str, count: int,
                         args: argparse.Namespace, settle: float) -> dict[str, Any]:
    """``count`` non-decoding viewers behind ``site``; one measured window while all stream."""
    loop = asyncio.get_running_loop()
    log = (lab.state / f"receive-{site}-{count}.log").open("w")
    proc = lab.lab.popen(
        site, [sys.executable, "-m", "bench.relay", "receive", lab.link(pair=True), str(count),
               str(settle), str(args.seconds + 1.0)],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
        env=lab.env)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline),
                                      60 + 5 * count)
        ready = json.loads(line) if line.strip().startswith("{") else {}
        if not ready.get("ready"):
            raise SystemExit(f"bench: {count} viewer(s) behind {site} did not start: "
                             f"{line!r} {lab.log(f'receive-{site}-{count}.log')}")
        a = await loop.run_in_executor(None, probe.sample)
        await asyncio.sleep(args.seconds)
        window = Probe.window(a, await loop.run_in_executor(None, probe.sample))
        out, _ = await asyncio.wait_for(loop.run_in_executor(None, proc.communicate), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    final = json.loads(out.strip().splitlines()[-1])
    sessions = final["sessions"]
    return {**window, "sessions": sessions,
            "fps_min": min(s["fps"] for s in sessions),
            # The H.264 each viewer received (median) and what the camera sent per viewer.
            "kbit_s": round(statistics.median(
                8 * s["payload_bytes_per_s"] / 1000 for s in sessions), 1),
            "packets_s_per_viewer": round(window["camera_packets_s"] / count, 1),
            "paths": sorted({s["path"] for s in sessions})}


def figures(rows: list[dict[str, Any]], idle: dict[str, Any], latency: dict[str, Any],
            bitrate: int) -> dict[str, Any]:
    """The headline numbers: per-viewer CPU, added latency, bytes per viewer-hour."""
    out: dict[str, Any] = {}
    for path in ("direct", "relayed"):
        mine = [r for r in rows if r["path"] == path]
        for who in ("camera", "coturn"):
            points = [(0, idle[f"{who}_cpu_core"])] + [
                (r["viewers"], r[f"{who}_cpu_core"]) for r in mine]
            out[f"{who}_cpu_per_viewer_{path}"] = round(slope(points), 4)
    relayed = [r for r in rows if r["path"] == "relayed"]
    direct = [r for r in rows if r["path"] == "direct"]
    hour = 3600.0

    def per_viewer_hour(r: dict[str, Any], bytes_: int) -> float:
        return bytes_ / r["seconds"] / r["viewers"] * hour

    out["relay_egress_gb_per_viewer_hour"] = round(statistics.mean(
        per_viewer_hour(r, wire(r, "out")["bytes"]) for r in relayed) / 1e9, 3)
    out["relay_ingress_gb_per_viewer_hour"] = round(statistics.mean(
        per_viewer_hour(r, wire(r, "in")["bytes"]) for r in relayed) / 1e9, 3)
    out["direct_viewer_gb_per_hour"] = round(statistics.mean(
        per_viewer_hour(r, r["viewer_bytes"][r["site"]]["udp_in"]["bytes"])
        for r in direct) / 1e9, 3)
    out["nominal_gb_per_viewer_hour"] = round(bitrate / 8 * hour / 1e9, 3)
    # What the test pattern really sends, and what each packet adds on top of it
    # (RTP, SRTP, TURN ChannelData, UDP, IP), as coturn sends it to the viewers.
    payload = statistics.mean(
        sum(x["payload_bytes_per_s"] for x in r["sessions"]) / r["viewers"] for r in relayed)
    out["stream_payload_kbit_s"] = round(payload * 8 / 1000, 1)
    packets = sum(wire(r, "out")["packets"] for r in relayed)
    sent = sum(wire(r, "out")["bytes"] for r in relayed)
    payload_total = sum(sum(x["payload_bytes_per_s"] for x in r["sessions"]) * r["seconds"]
                        for r in relayed)
    overhead = (sent - payload_total) / packets if packets else 0.0
    out["overhead_bytes_per_packet"] = round(overhead, 1)
    out["relay_egress_gb_per_viewer_hour_at_nominal"] = round(
        at_nominal(bitrate, FPS, overhead) * hour / 1e9, 3)
    # Per packet: CPU above idle over the packets the camera sent (coturn: relayed out).
    for path in ("direct", "relayed"):
        mine = [r for r in rows if r["path"] == path]
        counted = [r for r in mine if counted_packets(r)]
        out[f"{path}_payload_kbit_s"] = round(statistics.median(r["kbit_s"] for r in mine), 1)
        out[f"packets_s_per_viewer_{path}"] = round(statistics.median(
            r["packets_s_per_viewer"] for r in counted), 1) if counted else None
        per = [1e6 * (r["camera_cpu_core"] - idle["camera_cpu_core"]) / r["camera_packets_s"]
               for r in counted]
        out[f"camera_us_per_packet_{path}"] = round(statistics.median(per), 1) if per else None
    per = [1e6 * (r["coturn_cpu_core"] - idle["coturn_cpu_core"]) / (p / r["seconds"])
           for r in relayed if (p := wire(r, "out")["packets"]) > 0]
    out["coturn_us_per_packet"] = round(statistics.median(per), 1) if per else None
    d, r = latency["direct"].get("latency_ms_p50"), latency["relayed"].get("latency_ms_p50")
    out["latency_p50_direct_ms"], out["latency_p50_relayed_ms"] = d, r
    out["latency_p95_direct_ms"] = latency["direct"].get("latency_ms_p95")
    out["latency_p95_relayed_ms"] = latency["relayed"].get("latency_ms_p95")
    out["added_latency_p50_ms"] = None if d is None or r is None else round(r - d, 1)
    return out


def counted_packets(row: dict[str, Any]) -> bool:
    """Whether the camera's packet count over a window is usable: its counter sums the
    live senders', so a sender of an ended session collected in the window takes its
    packets off and the difference can go negative."""
    return bool(row.get("camera_packets_s") is not None and row["camera_packets_s"] > 0)


def wire(row: dict[str, Any], direction: str) -> dict[str, int]:
    """Everything coturn sent ("out") or received ("in") on the wire in a window."""
    names = ("turn_out", "relay_out") if direction == "out" else ("turn_in", "relay_in")
    return {k: sum(row["server_bytes"][n][k] for n in names) for k in ("packets", "bytes")}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of CPU over viewer count (cores per viewer)."""
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def at_nominal(bitrate: int, fps: int, overhead_per_packet: float) -> float:
    """Bytes/s a viewer's stream takes on the wire at the nominal bitrate: each frame's
    share of the payload, cut into aiortc's RTP packets, plus the measured overhead of
    each packet. An estimate: key frames are bigger and fill their packets better."""
    frame = bitrate / 8 / fps
    packets_per_frame = math.ceil(frame / H264_PACKET_PAYLOAD)
    return bitrate / 8 + fps * packets_per_frame * overhead_per_packet


def _who(setup: dict[str, Any]) -> str:
    return {"viewer-allocation": "the viewer's allocation",
            "camera-allocation": "the camera's own allocation"}.get(setup["name"], setup["name"])


def _content(result: dict[str, Any]) -> str:
    pattern = result.get("pattern", "bars")
    return f"the `{pattern}` test pattern" + (
        ", pre-encoded, played by the camera's `file` source" if result.get("clip") else
        ", encoded live by the camera")


def _pct(cores: float | None) -> str:
    return "–" if cores is None else f"{100 * cores:.2f}"


def headline(result: dict[str, Any]) -> str:
    parts = []
    for v in videos_of(result):
        for setup in v["setups"]:
            f = setup["figures"]
            parts.append(
                f"{v['video']} {setup['name']}: {f['relay_egress_gb_per_viewer_hour']} GB out "
                f"of coturn per relayed viewer-hour at the measured "
                f"{f['stream_payload_kbit_s']} kbit/s, "
                f"{f.get('packets_s_per_viewer_relayed', '?')} packets/s per viewer; camera "
                f"{_pct(f['camera_cpu_per_viewer_relayed'])}% of a core per relayed viewer vs "
                f"{_pct(f['camera_cpu_per_viewer_direct'])}% direct, coturn "
                f"{_pct(f['coturn_cpu_per_viewer_relayed'])}%, added latency p50 "
                f"{f['added_latency_p50_ms']} ms")
    return "relay: " + "; ".join(parts)


def plot(result: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    videos = videos_of(result)
    panels = len(videos) + (1 if measured_latency(result) else 0)  # a clip reads none
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    axes = list(axes[0])
    data, labels = [], []
    for cpu, v in zip(axes, videos, strict=False):
        for setup, marker in zip(v["setups"], "os^v", strict=False):
            for path, line in (("direct", ":"), ("relayed", "-")):
                rows = [r for r in setup["rows"] if r["path"] == path]
                xs = [0] + [r["viewers"] for r in rows]
                cpu.plot(xs, [100 * setup["idle"]["camera_cpu_core"]]
                         + [100 * r["camera_cpu_core"] for r in rows], marker + line,
                         label=f"camera, {path} ({setup['name']})")
                if path == "relayed":
                    cpu.plot(xs, [100 * setup["idle"]["coturn_cpu_core"]]
                             + [100 * r["coturn_cpu_core"] for r in rows], marker + "--",
                             label=f"coturn ({setup['name']})")
                data.append(setup["latency"][path].get("latencies_ms") or [0.0])
                labels.append(f"{path} {setup['name']}\n{v['video'].split('@')[0]}")
        cpu.set_title(v["video"], fontsize=9)
        cpu.set_xlabel("viewers")
        cpu.set_ylabel("CPU (% of one core)")
        cpu.grid(alpha=0.3)
        cpu.legend(fontsize=6)
    if panels > len(videos):
        lat = axes[-1]
        lat.boxplot(data, tick_labels=labels, orientation="horizontal")
        lat.tick_params(axis="y", labelsize=6)
        lat.set_xlabel("glass-to-glass latency (ms), decoding CLI viewer")
        lat.grid(alpha=0.3)
    fig.suptitle(f"Relay cost, NAT lab, {result.get('pattern', 'bars')}"
                 f"{' clip' if result.get('clip') else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "relay.png", dpi=100)
    plt.close(fig)
    return ["relay.png"]


def markdown(result: dict[str, Any]) -> list[str]:
    videos = videos_of(result)
    cols = [(v, s) for v in videos for s in v["setups"]]
    real = result.get("pattern", "bars") != "bars"
    lines = [
        "## Relay cost",
        "",
        f"A camera ({', '.join(v['video'] for v in videos)}; content: {_content(result)})",
        "behind one NAT-lab site, direct viewers behind a site with a direct path to it,",
        "relayed viewers behind one without (coturn relays, shipped policy), in the same",
        "run. Two setups, because whose TURN allocation carries the video decides what the",
        "camera pays. CPU per viewer is the least-squares slope of process CPU against the",
        f"viewer count (idle counting as zero viewers, {result['window_s']} s windows);",
        "*packets/s* are the RTP packets the camera sent (its senders' own counter), per",
        "viewer; *kbit/s* is the H.264 a viewer received (median); bytes are nftables",
        "counters (IP bytes) on coturn's wire interface, in and out, extrapolated to an hour.",
        "The machine was shared with other engineers' work while this ran.",
        "",
        "| | " + " | ".join(f"{v['video']}, {s['name']}: {s['camera_site']} camera, relayed "
                          f"viewer behind {s['paths']['relayed']}" for v, s in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(str(cell(v, s)) for v, s in cols) + " |")

    def fig(s: dict[str, Any], key: str) -> Any:
        value = s["figures"].get(key)
        return "–" if value is None else value

    row("video relayed through", lambda v, s: _who(s))
    row("measured kbit/s a viewer received, relayed / direct",
        lambda v, s: f"{fig(s, 'stream_payload_kbit_s')} / {fig(s, 'direct_payload_kbit_s')}")
    row("packets/s per viewer (camera sent), relayed / direct",
        lambda v, s: f"{fig(s, 'packets_s_per_viewer_relayed')} / "
                     f"{fig(s, 'packets_s_per_viewer_direct')}")
    row("**camera CPU per viewer, relayed / direct (% of a core)**",
        lambda v, s: f"**{_pct(s['figures']['camera_cpu_per_viewer_relayed'])} / "
                     f"{_pct(s['figures']['camera_cpu_per_viewer_direct'])}**")
    row("camera µs per packet above idle, relayed / direct",
        lambda v, s: f"{fig(s, 'camera_us_per_packet_relayed')} / "
                     f"{fig(s, 'camera_us_per_packet_direct')}")
    row("**coturn CPU per relayed viewer (% of a core)**",
        lambda v, s: f"**{_pct(s['figures']['coturn_cpu_per_viewer_relayed'])}**")
    row("coturn µs per relayed packet above idle", lambda v, s: fig(s, "coturn_us_per_packet"))
    if measured_latency(result):
        row("latency p50 / p95, relayed (ms)",
            lambda v, s: f"{fig(s, 'latency_p50_relayed_ms')} / "
                         f"{fig(s, 'latency_p95_relayed_ms')}")
        row("latency p50 / p95, direct (ms)",
            lambda v, s: f"{fig(s, 'latency_p50_direct_ms')} / "
                         f"{fig(s, 'latency_p95_direct_ms')}")
        row("added latency p50 (ms)", lambda v, s: fig(s, "added_latency_p50_ms"))
    row("**GB per relayed viewer-hour out of coturn, measured** / in",
        lambda v, s: f"**{fig(s, 'relay_egress_gb_per_viewer_hour')}** / "
                     f"{fig(s, 'relay_ingress_gb_per_viewer_hour')}")
    row("GB per viewer-hour out of coturn, estimated at the nominal bitrate",
        lambda v, s: fig(s, "relay_egress_gb_per_viewer_hour_at_nominal"))
    row("GB per viewer-hour measured, into a direct viewer",
        lambda v, s: fig(s, "direct_viewer_gb_per_hour"))
    row("overhead per packet, coturn out (bytes: RTP, SRTP, ChannelData, UDP, IP)",
        lambda v, s: fig(s, "overhead_bytes_per_packet"))
    nominal = ", ".join(f"{v['bitrate'] / 1e6:g} Mbit/s × 3600 s = "
                        f"{v['setups'][0]['figures']['nominal_gb_per_viewer_hour']} GB"
                        for v in videos)
    lines += [
        "",
        f"Nominal payload per viewer-hour each way: {nominal}."
        + (" The content reaches its bitrate, so the measured egress is the figure to"
           " budget with; the estimate at the nominal bitrate (the nominal payload cut into"
           " aiortc's 1300-byte RTP packets, plus the measured overhead per packet) is"
           " there as a cross-check." if real else
           " This light content sends far less than its target, so the row at the nominal"
           " bitrate (the nominal payload cut into aiortc's 1300-byte RTP packets, plus the"
           " measured overhead per packet) is the one to budget with."),
        "A relayed viewer costs the operator that much egress *and* about as much",
        "ingress; a direct viewer costs it nothing.",
        "",
    ]
    short = [(v, s, x) for v, s in cols if (x := starved(v, s))]
    if short:
        cap = result.get("coturn_max_bps")
        lines += [
            "**Relayed viewers starved**: " + "; ".join(
                f"{v['video']} {s['name']}: {x['relayed']} kbit/s against {x['direct']} "
                f"direct, fps down to {x['fps_min']}; coturn took in {x['in_pps']} and sent "
                f"{x['out_pps']} packets/s per viewer, {x['out_mb_s']} MB/s"
                for v, s, x in short) + "."
            + (f" That egress is the shipped policy's `max-bps={cap}` (bytes/s per "
               f"allocation, {8 * cap / 1e6:g} Mbit/s on the wire): a stream at that "
               "bitrate has no room left for its packets' overhead, the retransmissions "
               "and the keyframes the losses bring, so coturn drops the rest and the "
               "camera resends (more packets in than out). The measured egress, overhead "
               "and CPU per packet of those columns are the cap's, not the stream's (the "
               "estimate at the nominal bitrate too, built on that overhead); what the "
               "stream takes is what a direct viewer received (the row *into a direct viewer*)."
               if cap else ""),
            "",
        ]
    if not short and result.get("coturn_max_bps"):
        cap = result["coturn_max_bps"]
        lines += [f"coturn ran the shipped policy: `max-bps={cap}` per allocation "
                  f"({8 * cap / 1e6:g} Mbit/s each way); no relayed viewer got less than "
                  "the direct ones.", ""]
    earlier = result.get("earlier_latency", [])
    if not measured_latency(result):
        lines += [
            "Latency: a pre-encoded clip carries no capture time of its own (the burnt-in",
            "stamp is the time the live pattern was drawn), so this run read none"
            + ("; the last run that did:" if earlier else "."),
            "",
        ]
    if earlier and not measured_latency(result):
        lines += ["| measured | video, content | setup | latency p50 / p95 relayed (ms) | "
                  "direct (ms) | added p50 (ms) |", "|---|---|---|---|---|---|"]
        for e in earlier:
            lines.append(
                f"| {e['date']} | {e['video']}, `{e['pattern']}`"
                f"{' clip' if e['clip'] else ', encoded live'} | {e['setup']} | "
                f"{e['latency_p50_relayed_ms']} / {e['latency_p95_relayed_ms']} | "
                f"{e['latency_p50_direct_ms']} / {e['latency_p95_direct_ms']} | "
                f"{e['added_latency_p50_ms']} |")
        lines.append("")
    lines += [
        "| video | setup | path | viewers | camera CPU | coturn CPU | packets/s (camera) "
        "| coturn in / out packets/s | kbit/s per viewer | coturn out MB/s | viewer fps min "
        "| pairs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, s in cols:
        for r in s["rows"]:
            mbs = wire(r, "out")["bytes"] / r["seconds"] / 1e6
            pairs = ", ".join(sorted({f"{x['local']}→{x['remote']}" for x in r["sessions"]}))
            turn = (f"{wire(r, 'in')['packets'] / r['seconds']:.0f} / "
                    f"{wire(r, 'out')['packets'] / r['seconds']:.0f}")
            lines.append(f"| {v['video']} | {s['name']} | {r['path']} | {r['viewers']} | "
                         f"{r['camera_cpu_core']} | {r['coturn_cpu_core']} | "
                         f"{r['camera_packets_s'] if counted_packets(r) else '–'} | {turn} | "
                         f"{r.get('kbit_s', '–')} | {mbs:.3f} | {r['fps_min']} | {pairs} |")
    lines += [
        "",
        "Caveats: the lab's links have no propagation delay, so the added latency is",
        "coturn's processing and one more hop, not the detour a real TURN server adds",
        "(geography: camera → TURN → viewer against camera → viewer). CPU goes per packet",
        "more than per byte: compare setups and videos by the packets/s row. Viewers in the",
        "CPU rows do not decode; the latency viewer does. The camera, coturn, the viewers",
        "(Python) and the lab share the machine's two cores. One run on a shared machine:",
        "CPU differences under about one percent of a core are noise.",
        "",
        "![relay cost](bench/relay.png)",
        "",
    ]
    return lines


# -- the viewer side, inside a lab namespace ------------------------------------------


async def latency_main(link: str, seconds: float) -> dict[str, Any]:
    from bench.labttff import strip_pair
    from camera.client.viewer import view

    await view(link, seconds=0.2)  # pair, untimed
    stats = await view(strip_pair(link), seconds=seconds)
    return {**stats.as_dict(), "latencies_ms": [round(x, 1) for x in stats.latencies_ms]}


async def receive_main(link: str, count: int, warmup: float, hold: float) -> dict[str, Any]:
    """``count`` sessions that receive and depayload without decoding.

    Prints ``{"ready": true}`` once every session has had video for ``warmup``
    seconds, then counts frames for ``hold`` seconds; the last line is the result.
    """
    from bench.common import _CountingQueue
    from bench.labttff import path_of, strip_pair
    from camera.client.viewer import Connection, connect, view
    from camera.compat.receiver import set_decoder_queue
    from camera.webrtc import prefer_h264, selected_pair_types

    class PayloadCounter(_CountingQueue):
        """Also counts the access units' bytes: the stream's payload, without overhead."""

        bytes = 0

        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is not None:
                self.bytes += len(item[1].data)
            super().put(item, block, timeout)

    await view(link, seconds=0.1)  # pair, untimed
    go = asyncio.Event()
    streaming: list[asyncio.Future[None]] = []
    results: list[dict[str, Any]] = []

    async def session(started: asyncio.Future[None]) -> None:
        counter = PayloadCounter()

        def setup(connection: Connection) -> None:
            transceiver = connection.pc.addTransceiver("video", direction="recvonly")
            prefer_h264(transceiver)
            set_decoder_queue(transceiver.receiver, counter)

        async with connect(strip_pair(link), setup) as connection:
            async with asyncio.timeout(30):
                while counter.frames == 0:
                    await asyncio.sleep(0.05)
            started.set_result(None)
            await go.wait()
            start, start_bytes, t0 = counter.frames, counter.bytes, time.monotonic()
            await asyncio.sleep(hold)
            took = time.monotonic() - t0
            local, remote = selected_pair_types(connection.pc)
            results.append({"fps": round((counter.frames - start) / took, 1),
                            "payload_bytes_per_s": round((counter.bytes - start_bytes) / took),
                            "local": local, "remote": remote, "path": path_of(local, remote)})

    loop = asyncio.get_running_loop()
    tasks = []
    for _ in range(count):
        started: asyncio.Future[None] = loop.create_future()
        streaming.append(started)
        tasks.append(asyncio.ensure_future(session(started)))
    try:
        # A session that fails before it streams fails the whole run, loudly.
        waiting = asyncio.ensure_future(asyncio.gather(*streaming))
        done, _ = await asyncio.wait([waiting, *tasks], timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            failed = [t.exception() for t in tasks if t.done() and t.exception()]
            raise SystemExit(f"viewers did not all stream: {failed or 'timeout'}")
        await asyncio.sleep(warmup)
        print(json.dumps({"ready": True}), flush=True)
        go.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"sessions": results}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with contextlib.suppress(KeyboardInterrupt):
        if len(sys.argv) == 4 and sys.argv[1] == "latency":
            print(json.dumps(asyncio.run(latency_main(sys.argv[2], float(sys.argv[3])))),
                  flush=True)
        elif len(sys.argv) == 6 and sys.argv[1] == "receive":
            print(json.dumps(asyncio.run(receive_main(
                sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))),
                flush=True)
        else:
            sys.exit("usage: python -m bench.relay latency LINK SECONDS | "
                     "receive LINK COUNT WARMUP HOLD")
