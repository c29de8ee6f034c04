"""peercam benchmarks: one entry point, one subcommand per benchmark.

    scripts/bench ttff       time to first frame, CLI viewer and Chromium, loopback
    scripts/bench latency    glass-to-glass latency from the burnt-in capture time
    scripts/bench viewers    camera CPU/memory per viewer: passthrough vs per-viewer encode
    scripts/bench janus      peercam side by side with the Janus gateway (C)
    scripts/bench scale      rendezvous: idle cameras held, signaling round trip under load
    scripts/bench cluster    rendezvous nodes on Redis behind HAProxy; a node killed
    scripts/bench storm      reconnect storm: a fleet of cameras back after a rendezvous restart
    scripts/bench relay      TURN relay (coturn) cost against direct
    scripts/bench labttff    first frame through the NAT lab: direct (srflx) and relayed
    scripts/bench recovery   faults in the NAT lab: how soon video is back
    scripts/bench badnet     loss, jitter, a capped viewer: latency, stalls, fps, layers
    scripts/bench snapshot   snapshots through the WHEP gateway: cold and cached, loopback
    scripts/bench all        every benchmark above, in that order
    scripts/bench report     rewrite docs/benchmarks.md from the stored results

Each benchmark prints its headline, writes its raw samples to ``<out>/<name>.json``
and its plots to ``<out>/*.png`` (``--out``, default docs/bench), then the report
page is rewritten from every stored result. ``--smoke`` runs tiny sizes (the
test suite does, to keep every benchmark runnable). A benchmark whose component
is missing exits non-zero and says what; it never reports a number it did not
measure. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType

from bench import camera_proc
from bench.common import ROOT, machine
from bench.report import write_report

ORDER = ["ttff", "latency", "viewers", "janus", "pibudget", "scale", "cluster", "storm", "relay",
         "labttff", "recovery", "badnet", "snapshot"]


def benchmarks() -> dict[str, ModuleType]:
    """Every benchmark module present, in report order."""
    found = {}
    for name in ORDER:
        try:
            found[name] = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
    return found


def build_parser(mods: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, mod in mods.items():
        p = sub.add_parser(name, help=mod.HELP)
        mod.add_arguments(p)
        _common(p)
    a = sub.add_parser("all", help="every benchmark, default sizes")
    _common(a)
    r = sub.add_parser("report", help="rewrite the report page from stored results")
    _common(r)
    camera_proc.add_arguments(sub.add_parser("_camera"))
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench",
                   help="where the JSON and PNG go (the page goes next to it)")
    p.add_argument("--state", default="/tmp/peercam-bench", help="scratch directory")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")


def run_one(mod: ModuleType, argv: list[str], common: argparse.Namespace) -> None:
    p = argparse.ArgumentParser(prog=mod.NAME)
    mod.add_arguments(p)
    _common(p)
    args = p.parse_args([*(mod.SMOKE if common.smoke else []), *argv,
                         "--out", str(common.out), "--state", common.state])
    args.smoke = common.smoke
    started = time.monotonic()
    result = asyncio.run(mod.run(args))
    result = {"machine": machine(), "seconds_taken": round(time.monotonic() - started, 1),
              "smoke": common.smoke, **result}
    common.out.mkdir(parents=True, exist_ok=True)
    (common.out / f"{mod.NAME}.json").write_text(json.dumps(result, indent=1))
    result["plots"] = mod.plot(result, common.out)
    (common.out / f"{mod.NAME}.json").write_text(json.dumps(result, indent=1))
    print(mod.headline(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mods = benchmarks()
    args, _rest = build_parser(mods).parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "_camera":
        asyncio.run(camera_proc.camera_main(build_parser(mods).parse_args(argv)))
        return 0
    build_parser(mods).parse_args(argv)  # reject unknown flags
    # The bench's CLI viewer key is its own, not the user's ~/.config/peercam one.
    os.environ["PEERCAM_VIEWER_DIR"] = str(Path(args.state) / "viewer")
    names = list(mods) if args.cmd == "all" else [] if args.cmd == "report" else [args.cmd]
    sub_argv = [] if args.cmd in ("all", "report") else argv[1:]
    sub_argv = _strip_common(sub_argv)
    for name in names:
        run_one(mods[name], sub_argv, args)
    page = write_report(args.out, mods)
    print(f"report: {page}", flush=True)
    return 0


def _strip_common(argv: list[str]) -> list[str]:
    """The benchmark's own flags (the common ones are passed separately)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--out", "--state"):
            skip = i + 1 < len(argv)
            continue
        if arg.startswith(("--out=", "--state=")) or arg == "--smoke":
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
