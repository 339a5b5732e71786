"""`longrun`: the console script. Reads the environment once into Settings and dispatches."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from shared.config import Settings
from shared.errors import LongrunError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longrun", description="long-running agent runs")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything on this machine")
    dev.add_argument("--embedded", action="store_true", help="force embedded Redis/Postgres")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--workers", type=int, default=2)

    api = sub.add_parser("api", help="the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)

    worker = sub.add_parser("worker", help="one worker process")
    worker.add_argument("--concurrency", type=int)

    sub.add_parser("migrate", help="apply database migrations")

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("--user", required=True)
    kc.add_argument("--name")
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    kl = ksub.add_parser("list")
    kl.add_argument("--user")

    pause = sub.add_parser("pause", help="refuse new runs (503 paused) until resume")
    pause.add_argument("--reason", default="paused by an operator")
    sub.add_parser("resume", help="accept new runs again")

    status = sub.add_parser("status", help="queue depth, workers, dead letters")
    status.add_argument("--json", action="store_true")

    dlq = sub.add_parser("dlq", help="dead letters: list, retry, drop, ack")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    dsub.add_parser("list").add_argument("--json", action="store_true")
    dsub.add_parser("ack", help="mark the current dead letters as seen by an operator")
    for verb in ("retry", "drop"):
        dv = dsub.add_parser(verb)
        dv.add_argument("ids", nargs="*", help="dead-letter entry ids or run ids")
        dv.add_argument("--all", action="store_true")

    submit = sub.add_parser("submit", help="submit a run")
    submit.add_argument("text")
    submit.add_argument("--agent")
    submit.add_argument("--params", help="JSON object")
    submit.add_argument("--thread")
    submit.add_argument("--follow", action="store_true")
    submit.add_argument("--url", help="API URL (default $LONGRUN_URL or http://127.0.0.1:8000)")
    submit.add_argument("--key", help="API key (default $LONGRUN_API_KEY)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except LongrunError as exc:
        print(f"longrun: {exc.detail or exc.code}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: Any) -> int:
    cmd = args.command
    if cmd == "dev":
        from cli.dev import run as run_dev

        return run_dev(embedded=args.embedded, port=args.port, workers=args.workers)
    settings = Settings.from_env()
    if cmd == "api":
        return _api(settings, args.host, args.port)
    if cmd == "worker":
        return _worker(settings, args.concurrency)
    if cmd == "migrate":
        return asyncio.run(_migrate(settings))
    if cmd == "keys":
        return asyncio.run(_keys(settings, args))
    if cmd in ("pause", "resume"):
        from cli import admin

        return admin.pause(settings, args.reason) if cmd == "pause" else admin.resume(settings)
    if cmd == "status":
        from cli.status import run as run_status

        return run_status(settings, as_json=args.json)
    if cmd == "dlq":
        from cli.dlq import run as run_dlq

        return run_dlq(settings, args)
    if cmd == "submit":
        from cli.submit import run as run_submit

        return run_submit(args)
    raise AssertionError(cmd)


def _api(settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import server_options
    from api.shutdown import GracefulServer
    from shared import logs

    logs.configure(settings.log_json)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        loop="uvloop",
        **server_options(settings),  # httptools, with the request head bounded
    )
    # SIGTERM fails /ready and ends SSE streams with a reconnect hint at once (api/shutdown.py)
    server = GracefulServer(config, app)
    server.run()
    return 0 if server.started else 3


def _worker(settings: Settings, concurrency: int | None) -> int:
    from shared import logs
    from worker.main import run_worker

    if concurrency:
        settings = settings.with_(concurrency=concurrency)
    logs.configure(settings.log_json)
    try:
        import uvloop

        return uvloop.run(run_worker(settings))
    except ImportError:  # pragma: no cover
        return asyncio.run(run_worker(settings))


async def _migrate(settings: Settings) -> int:
    from shared.migrate import migrate
    from shared.store import connect

    conn = await connect(settings, "longrun-migrate")
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return 0


async def _keys(settings: Settings, args: Any) -> int:
    from shared.store import Store

    store = await Store.open(settings.with_(pg_pool_min=0, pg_pool_max=2), "longrun-cli")
    try:
        if args.keys_command == "create":
            key_id, key = await store.users.create_key(args.user, args.name)
            print(f"created key {key_id} for user {args.user} (shown once):")
            print(key)
            return 0
        if args.keys_command == "revoke":
            from cli.admin import revoke_key

            ok = await revoke_key(settings, args.key_id)  # and API caches drop it at once
            print("revoked" if ok else "no such active key")
            return 0 if ok else 1
        for k in await store.users.list_keys(args.user):
            state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
            print(f"{k.key_id}\t{k.user_id}\t{k.name or ''}\t{k.created_at.isoformat()}\t{state}")
        return 0
    finally:
        await store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
