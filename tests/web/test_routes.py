"""Every file of the web viewer is served, with the type browsers insist on.

A module the page imports but the rendezvous does not route is a blank page
(a module script that fails to load stops the whole graph); a service-worker
shell entry that is not served fails the worker's install.
"""

from __future__ import annotations

import re
from importlib import resources

from services.rendezvous import _STATIC

TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
    ".html": "text/html", ".png": "image/png", ".webmanifest": "application/manifest+json",
}


def _web_files() -> set[str]:
    web = resources.files("services").joinpath("web")
    return {entry.name for entry in web.iterdir() if entry.is_file()}


def test_every_file_is_routed_with_its_type() -> None:
    served = {name: content_type for name, content_type in _STATIC.values()}
    files = _web_files()
    assert files - set(served) == set(), "files not routed"
    assert set(served) - files == set(), "routes to missing files"
    for name, content_type in served.items():
        suffix = "." + name.rsplit(".", 1)[1]
        assert content_type == TYPES[suffix], name


def test_imports_and_the_shell_name_served_files() -> None:
    web = resources.files("services").joinpath("web")
    routed = {path.lstrip("/") for path in _STATIC}
    imported: set[str] = set()
    for name in _web_files():
        if name.endswith((".js", ".mjs")):
            text = web.joinpath(name).read_text(encoding="utf-8")
            imported |= set(re.findall(r'from "\./([^"]+)"', text))
    assert imported and imported <= routed, imported - routed
    shell_text = web.joinpath("sw.js").read_text(encoding="utf-8")
    shell_block = re.search(r"const SHELL = \[(.*?)\];", shell_text, re.S)
    assert shell_block is not None
    shell = set(re.findall(r'"([^"]+)"', shell_block.group(1)))
    # The shell is the page and everything it loads, the worker itself excepted.
    assert {"" if s == "./" else s for s in shell} == routed - {"sw.js"}
