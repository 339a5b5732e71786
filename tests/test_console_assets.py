"""The console is served from the package as it is: `/console` and its ES modules, among them
the JavaScript client's copy, which must equal `clients/js/longrun.js` byte for byte; a
Content-Security-Policy that keeps the page to its own origin; and no reference to any other
host (air-gapped deployments get the same page)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.procs import ROOT

PAGE_DIR = ROOT / "api" / "static" / "console"
CLIENT = ROOT / "clients" / "js" / "longrun.js"
IMPORT = re.compile(r"""^import\s[^;]*?from\s+"([^"]+)";""", re.M | re.S)
# The one absolute URL the page holds: the SVG namespace, a name, never fetched.
NAMES_ONLY = {"http://www.w3.org/2000/svg"}


def _assets() -> list[Path]:
    return sorted(p for p in PAGE_DIR.iterdir() if p.suffix in {".html", ".js", ".css"})


async def test_the_console_page_is_served_with_a_policy_that_keeps_it_to_its_origin(api):
    async with httpx.AsyncClient(base_url=api.url) as c:
        page = await c.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.text == (PAGE_DIR / "index.html").read_text()


async def test_every_module_the_page_imports_is_served_from_the_repository(api):
    async with httpx.AsyncClient(base_url=api.url) as c:
        for asset in _assets():
            served = await c.get(f"/console/assets/{asset.name}")
            assert served.status_code == 200, asset.name
            assert served.content == asset.read_bytes()
            if asset.suffix == ".js":
                assert served.headers["content-type"].startswith("text/javascript")
                for target in IMPORT.findall(asset.read_text()):
                    assert target.startswith("./"), target
                    assert (PAGE_DIR / target).is_file(), target


def test_the_consoles_copy_of_the_client_is_the_client():
    copy = PAGE_DIR / "longrun.js"
    assert copy.read_bytes() == CLIENT.read_bytes(), (
        "api/static/console/longrun.js differs from clients/js/longrun.js: "
        "cp clients/js/longrun.js api/static/console/longrun.js"
    )


def test_no_console_file_refers_to_another_host():
    for asset in _assets():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", asset.read_text())) - NAMES_ONLY
        assert urls == set(), (asset.name, urls)
