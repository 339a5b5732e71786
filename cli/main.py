"""`longrun`: the console script. Reads the configuration once (`cli.config.environment`: the
environment, completed by a running `longrun dev`'s `.longrun/env`), parses the command line
(`cli.parser`) and dispatches. Every failure ends here as one line on stderr and an exit code
from the table in `cli.exits`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cli import config
from cli.exits import Exit, Failure, postgres_failure, servers
from cli.parser import build as _parser
from shared.config import Settings
from shared.errors import BadRequest, ConfigError, InvalidWebhook, LongrunError
from shared.webhooks import targets
from shared.webhooks.signing import new_secret

if TYPE_CHECKING:
    from shared.store import Store


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args, os.environ)
    except Failure as failure:
        _fail(failure.message)
        return failure.code
    except ConfigError as exc:
        _fail(exc.detail or exc.code)
        return Exit.USAGE
    except LongrunError as exc:
        _fail(exc.detail or exc.code)
        return Exit.NOT_SUCCEEDED
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `longrun runs list | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _fail(message: str) -> None:
    sys.stdout.flush()
    print(f"longrun: {message}", file=sys.stderr)


def _dispatch(args: argparse.Namespace, process_env: Mapping[str, str]) -> int:
    cmd = args.command
    if cmd == "dev":
        from cli.dev import run as run_dev

        # `longrun dev` writes .longrun/env; it reads only what the user set.
        return run_dev(process_env, embedded=args.embedded, port=args.port, workers=args.workers)
    env = config.environment(process_env)
    if cmd in ("submit", "runs"):
        return _api_client(args, env)
    if cmd == "schedules":
        return _schedules(args, env)
    settings = Settings.from_env(env)
    if cmd == "api":
        return _api(settings, args.host, args.port)
    with servers(settings):
        if cmd == "worker":
            return _worker(settings, args.concurrency)
        return _admin(args, settings)


def _admin(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    if cmd == "migrate":
        return asyncio.run(_migrate(settings))
    if cmd == "keys":
        return asyncio.run(_keys(settings, args))
    if cmd in ("pause", "resume"):
        from cli import admin

        return admin.pause(settings, args.reason) if cmd == "pause" else admin.resume(settings)
    if cmd == "status":
        from cli import status

        if args.watch:
            return status.watch(settings, interval=args.interval, as_json=args.json)
        return status.run(settings, as_json=args.json)
    if cmd == "dlq":
        from cli.dlq import run as run_dlq

        return run_dlq(settings, args)
    raise AssertionError(cmd)


def _schedules(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from cli import schedules

    target = config.api_target(env, args.url, args.key)
    sub = args.schedules_command
    if sub == "create":
        new = schedules.NewSchedule(
            args.cron, args.text, args.timezone, args.agent, args.params, args.thread
        )
        return schedules.create(target, new, as_json=args.json)
    if sub == "list":
        return schedules.list_schedules(
            target, limit=args.limit, cursor=args.cursor, as_json=args.json
        )
    if sub == "get":
        return schedules.get(target, args.schedule_id, as_json=args.json)
    if sub == "delete":
        return schedules.delete(target, args.schedule_id, as_json=args.json)
    return schedules.runs(target, args.schedule_id, limit=args.limit, as_json=args.json)


def _api_client(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    target = config.api_target(env, args.url, args.key)
    if args.command == "submit":
        from cli.submit import SubmitRequest
        from cli.submit import run as run_submit

        req = SubmitRequest(
            args.text,
            args.agent,
            args.params,
            args.thread,
            args.follow,
            args.json,
            prompt=sys.stdin.isatty(),
            start_after=args.start_after,
            start_at=args.start_at,
            priority=args.priority,
        )
        return run_submit(target, req)
    from cli import interrupts, runs

    sub = args.runs_command
    if sub == "waiting":
        return interrupts.waiting(target, limit=args.limit, as_json=args.json)
    if sub == "resume":
        return interrupts.resume(
            target, args.run_id, args.value, interrupt_id=args.interrupt, as_json=args.json
        )
    if sub == "get":
        return runs.get(target, args.run_id, as_json=args.json)
    if sub == "list":
        query = runs.ListQuery(args.status, args.thread, args.limit, args.cursor)
        return runs.list_runs(target, query, as_json=args.json)
    if sub == "cancel":
        return runs.cancel(target, args.run_id, as_json=args.json)
    if sub == "events":
        return runs.events(target, args.run_id, after=args.after, as_json=args.json)
    return runs.wait(target, args.run_id, timeout=args.timeout, as_json=args.json)


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
    from shared.store import PG_DOWN, connect

    try:
        conn = await connect(settings, "longrun-migrate")
    except PG_DOWN as exc:
        raise postgres_failure(settings, exc) from exc
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
            return await _create_key(settings, store, args)
        if args.keys_command == "rotate-webhook-secret":
            secret = new_secret()
            if not await store.webhooks.rotate_secret(args.key_id, secret):
                print("no such active key")
                return Exit.NOT_SUCCEEDED
            print("new webhook secret (shown once; the previous one also signs for a day):")
            print(secret)
            return 0
        if args.keys_command == "revoke":
            from cli.admin import revoke_key

            ok = await revoke_key(settings, args.key_id)  # and API caches drop it at once
            print("revoked" if ok else "no such active key")
            return Exit.OK if ok else Exit.NOT_SUCCEEDED
        for k in await store.users.list_keys(args.user):
            state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
            print(f"{k.key_id}\t{k.user_id}\t{k.name or ''}\t{k.created_at.isoformat()}\t{state}")
        return 0
    finally:
        await store.close()


async def _create_key(settings: Settings, store: Store, args: Any) -> int:
    """A key, with its webhook signing secret (both shown once: the key on the last line)."""
    if args.webhook is not None:
        try:
            await targets.checked(args.webhook, settings.webhook_allow_hosts)
        except InvalidWebhook as exc:
            raise Failure(Exit.USAGE, exc.detail) from exc
    secret = new_secret()
    try:
        key_id, key = await store.users.create_key(
            args.user,
            args.name,
            webhook_url=args.webhook,
            webhook_secret=secret,
            operator=args.operator,
            retention_days=args.retention_days,
            max_priority=args.max_priority,
        )
    except BadRequest as exc:  # a user id reserved for JWT callers
        raise Failure(Exit.USAGE, exc.detail) from exc
    role = "operator key" if args.operator else "key"
    print(f"webhook secret (shown once; verifies the webhooks of this key's runs): {secret}")
    print(f"created {role} {key_id} for user {args.user} (shown once):")
    print(key)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
