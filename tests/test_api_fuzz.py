"""Property-based fuzzing of the OpenAPI schema with schemathesis, against a running server:
no 5xx, no answer outside the documented status codes, content types and schemas. Bounded in
time (`--max-time`), so it fits the suite."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx

ST = Path(sys.executable).with_name("st")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)
MAX_SECONDS = 30
EXCLUDE: list[str] = []


async def test_fuzzing_the_openapi_schema_finds_no_5xx_and_no_schema_violations(
    api, api_key, tmp_path
):
    assert ST.exists(), "schemathesis is a dev dependency: pip install schemathesis"
    # Given the schema the server publishes
    async with httpx.AsyncClient(base_url=api.url) as c:
        assert (await c.get("/openapi.json")).status_code == 200

    # When schemathesis fuzzes every operation, with a valid key (and without, in its
    # negative cases), for a bounded time
    proc = await asyncio.create_subprocess_exec(
        str(ST),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(MAX_SECONDS),
        "--max-examples",
        "60",
        "--request-timeout",
        "5",
        "--workers",
        "2",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "-H",
        f"Authorization: Bearer {api_key}",
        *EXCLUDE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(tmp_path),
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), MAX_SECONDS + 30)

    # Then it finds nothing
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert api_key not in text.replace(f"Bearer {api_key}", "")
