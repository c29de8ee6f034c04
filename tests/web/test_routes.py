"""Every file of the web viewer is served, with the type browsers insist on,
and with the headers that keep a hostile server's neighbours, links or names
from running script in it (docs/security.md, "The web viewer").

A module the page imports but the rendezvous does not route is a blank page
(a module script that fails to load stops the whole graph); a service-worker
shell entry that is not served fails the worker's install.
"""

from __future__ import annotations

import re
from importlib import resources

import aiohttp

from services.rendezvous import _STATIC, RendezvousConfig, start_rendezvous

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


CSP_NEEDS = (
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data:",
    "media-src 'self' blob:", "worker-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
    "object-src 'none'", "require-trusted-types-for 'script'", "trusted-types peercam",
)


async def test_every_viewer_file_carries_the_policy_and_the_rest_does_not_need_it() -> None:
    server, runner, port = await start_rendezvous("127.0.0.1", 0, RendezvousConfig())
    try:
        async with aiohttp.ClientSession() as http:
            for path in _STATIC:
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200, path
                    headers = response.headers
                    policy = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
                    for directive in CSP_NEEDS:
                        assert directive in policy, (path, directive)
                    # Signaling on this origin only, named for WebKit (no ws: in 'self').
                    assert (f"connect-src 'self' ws://127.0.0.1:{port} wss://127.0.0.1:{port}"
                            in policy), policy
                    assert not [d for d in policy if "unsafe" in d], policy
                    assert headers["X-Content-Type-Options"] == "nosniff"
                    assert headers["Referrer-Policy"] == "no-referrer"
                    assert headers["X-Frame-Options"] == "DENY"
            # A Host header that is not a host cannot write into the policy.
            async with http.get(f"http://127.0.0.1:{port}/",
                                headers={"Host": "x; script-src *"}) as response:
                policy = response.headers["Content-Security-Policy"]
                assert "connect-src 'self';" in policy and "*" not in policy, policy
    finally:
        await runner.cleanup()


def test_the_page_has_no_inline_script_style_or_handlers() -> None:
    # script-src 'self' and style-src 'self' refuse them: they would be dead.
    page = resources.files("services").joinpath("web", "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="viewer.js">']
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", page, re.I)


def test_the_worker_caches_the_shell_only() -> None:
    worker = resources.files("services").joinpath("web", "sw.js").read_text(encoding="utf-8")
    # A versioned cache; activation deletes only this app's older ones.
    assert re.search(r'const CACHE = PREFIX \+ "v\d+";', worker)
    assert "n.startsWith(PREFIX) && n !== CACHE" in worker
    # Anything not on the shell list is left to the browser (never cached).
    assert "if (!SHELL_URLS.has(url.href)) return;" in worker
    shell = re.search(r"const SHELL = \[(.*?)\];", worker, re.S)
    assert shell is not None
    assert not re.search(r"ws/|healthz|metrics|pair|device", shell.group(1))
