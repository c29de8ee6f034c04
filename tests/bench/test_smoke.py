"""Every benchmark still runs: tiny sizes, a scratch output directory, real components.

No timing is asserted (the machine is shared); what is checked is that each
benchmark measured something, stored it as JSON with its plots, and that the
report page was written from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import benchmarks

ROOT = Path(__file__).resolve().parents[2]


def missing(needs: list[str]) -> str | None:
    """Why this machine cannot run a benchmark, or None."""
    for need in needs:
        if need == "root" and os.geteuid() != 0:
            return "needs root (network namespaces); CI runs as root"
        if need == "chromium" and not os.path.exists("/usr/bin/chromium"):
            return "needs Chromium (/usr/bin/chromium, scripts/setup --test installs it)"
        if need not in ("root", "chromium") and shutil.which(need) is None:
            return f"needs {need} (scripts/setup --test installs it)"
    return None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.lab] if getattr(mod, "USES_LAB", False) else [])
    for name, mod in benchmarks().items()])
def test_benchmark_runs_at_smoke_size(name: str, tmp_path: Path) -> None:
    mod = benchmarks()[name]
    why = missing(getattr(mod, "NEEDS", []))
    if why:
        pytest.skip(why)
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench", name, "--smoke", "--out", str(out),
         "--state", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=540, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / f"{name}.json").read_text())
    assert result["smoke"] is True and result["machine"]["cores"] >= 1
    for png in result["plots"]:
        assert (out / png).stat().st_size > 1000
    page = (tmp_path / "benchmarks.md").read_text()
    assert mod.markdown(result)[0] in page
    assert done.stdout.strip(), "no headline printed"
