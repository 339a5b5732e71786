"""`/docs` and `/redoc` work with no network: every script, style and icon they reference is
served by the API itself, and their Content-Security-Policy forbids anything else."""

from __future__ import annotations

import re

import httpx
import pytest

REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_pages_load_every_asset_from_the_api(api, page):
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        # Given the page
        resp = await c.get(page)
        assert resp.status_code == 200
        html = resp.text
        # Then it names no other host
        assert "http://" not in html
        assert "https://" not in html
        assert "//" not in re.sub(r"<!--.*?-->", "", html).replace("://", "")
        refs = [a or b for a, b in REFERENCE.findall(html)]
        assert "/openapi.json" in refs
        assert len(refs) >= 3 if page == "/docs" else len(refs) >= 2
        # And the API serves every asset it references
        for ref in refs:
            assert ref.startswith("/"), ref
            asset = await c.get(ref)
            assert asset.status_code == 200, ref
            assert asset.content, ref
        # And the browser is told to load nothing from elsewhere
        csp = resp.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self' 'unsafe-inline'" in csp


async def test_the_vendored_assets_carry_their_licences(api):
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        for path in ("/docs/static/swagger-ui/LICENSE", "/docs/static/redoc/LICENSE"):
            assert (await c.get(path)).status_code == 200
        js = await c.get("/docs/static/swagger-ui/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))


async def test_the_assets_take_get_alone(api):
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        resp = await c.post("/docs/static/redoc/LICENSE")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD, OPTIONS"
