"""Property-based fuzzing of the OpenAPI schema with schemathesis, every check on, against a real
`longrun api` process: no 5xx, no answer outside the documented status codes, content types and
schemas, every schema-valid request accepted and every schema-violating one refused, `Allow`
exact. Bounded in examples and time, so it fits the suite.

Two refusals are allowed beyond schemathesis's defaults, each a rule a schema cannot state: a
schema-valid submit (`POST /runs`, `POST /runs/wait`) may get 422 when its Idempotency-Key was
used with another body (or its params do not suit its agent), and a schema-violating request may
be refused by the connection layer (413, 431) before any parameter is read. Waits are held at
most a second (`LONGRUN_MAX_WAIT_SECONDS`), well within the request timeout."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx

from tests.procs import start_worker, stop_all
from tests.test_http_edge import BUSY_USER

ST = Path(sys.executable).with_name("st")
MAX_SECONDS = 35
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
                     "429", "431", "5xx"]

[[operations]]
include-path = "/runs"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "422", "429", "5xx"]

[[operations]]
include-path = "/runs/stream"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "422", "429", "5xx"]

[[operations]]
include-path = "/runs/wait"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409",
                                                     "422", "429", "5xx"]
"""
# `POST /runs/stream` answers with the run's whole stream: a worker ends every run within a
# second (its time limit), so each answer ends well within the request timeout.
QUICK_RUNS = {
    "LONGRUN_RUN_TIMEOUT_SECONDS": "1",
    "LONGRUN_MAX_RUN_TIMEOUT_SECONDS": "1",
    "LONGRUN_CONCURRENCY": "256",
}


async def test_fuzzing_the_openapi_schema_finds_no_mismatch(api_proc, api_key, settings, tmp_path):
    assert ST.exists(), "schemathesis is a dev dependency: pip install schemathesis"
    api = await api_proc(**BUSY_USER, LONGRUN_MAX_WAIT_SECONDS="1")
    worker = await start_worker(settings, "fuzz-worker", tmp_path, **QUICK_RUNS)
    try:
        await _fuzz(api.url, api_key, tmp_path)
    finally:
        await stop_all([worker])


async def _fuzz(url: str, api_key: str, tmp_path: Path) -> None:
    # Given the schema the server publishes
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/openapi.json")).status_code == 200
    (tmp_path / "schemathesis.toml").write_text(CONFIG)

    # When schemathesis fuzzes every operation with every check, with a valid key (and
    # without, in its negative cases), for a bounded number of examples
    proc = await asyncio.create_subprocess_exec(
        str(ST),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(MAX_SECONDS),
        "--max-examples",
        "15",
        "--request-timeout",
        "5",
        "--workers",
        "1",  # hypothesis's source inspection is not thread-safe on 3.11
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        "-H",
        f"Authorization: Bearer {api_key}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=str(tmp_path),
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), MAX_SECONDS + 30)

    # Then it finds nothing
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "Runtime Error" not in text, text[-6000:]
    assert api_key not in text.replace(f"Bearer {api_key}", "")
