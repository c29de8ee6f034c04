"""The web viewer's pure modules under Node, against vectors from the Python code.

The vectors are generated here, from the Python implementation, for every run:
if either side changes an encoding, this test fails until the other follows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services import signatures as sig
from tests.web.vectors import make_vectors

HERE = Path(__file__).parent
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="needs Node.js 20 (scripts/setup --test installs it)")
def test_web_modules_agree_with_python(tmp_path: Path) -> None:
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps(make_vectors()), encoding="utf-8")
    out = tmp_path / "from-node.json"
    files = sorted(str(p) for p in HERE.glob("*.test.mjs"))
    assert len(files) >= 3
    result = subprocess.run(
        [str(NODE), "--test", *files],
        env={**os.environ, "PEERCAM_VECTORS": str(vectors), "PEERCAM_WEB_OUT": str(out)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # node --test ends with a summary: every test ran, none failed or was skipped.
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$",
                              result.stdout, re.M))
    assert summary.get("tests") == summary.get("pass"), summary
    assert int(summary["pass"]) >= 17, summary
    # The other way: what the viewer signed, the camera's code accepts.
    signed = json.loads(out.read_text(encoding="utf-8"))
    message = sig.offer_statement(signed["device_id"], signed["session_id"],
                                  signed["timestamp"], signed["viewer_key"], signed["sdp"])
    assert sig.b64url(message) == signed["message"]
    assert sig.verify(signed["viewer_key"], message, signed["signature"])
    assert not sig.verify(signed["viewer_key"], message + b"x", signed["signature"])
