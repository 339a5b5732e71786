"""A real browser renders `/docs` and `/redoc` with the network cut off: Chromium resolves no
host name (`--host-resolver-rules`) and the page is on 127.0.0.1, so only what the API serves
can load. Skipped where Chromium is not installed."""

from __future__ import annotations

import pytest

from tests.browser.test_eventsource import CHROMIUM, FLAGS, chromium
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.timeout(300),
]
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
# What each page shows once it has rendered the schema: the operations, by path.
RENDERED = {
    "/docs": "document.querySelectorAll('.opblock').length",
    "/redoc": "document.querySelectorAll('[data-section-id^=\"operation/\"]').length",
}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_documentation_renders_in_a_browser_with_no_network(
    api, page, tmp_path, monkeypatch
):
    monkeypatch.setattr("tests.browser.test_eventsource.FLAGS", [*FLAGS, OFFLINE])
    async with chromium(f"{api.url}{page}", tmp_path / "profile") as tab:

        async def rendered() -> int:
            return int(await tab.eval(RENDERED[page]) or 0)

        operations = await wait_for(rendered, timeout=60, interval=0.2)
        title = await tab.eval("document.body.innerText")
    assert operations >= 10
    assert "longrun" in title
