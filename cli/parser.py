"""The `longrun` command line: every command, every option with its help, and the exit codes
(`cli.exits.EXIT_CODES`) at the foot of every `--help`.

A usage error exits 5 (argparse's own 2 would read as "cannot reach a server").
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import NoReturn

from cli.exits import EXIT_CODES, Exit

CONFIG_NOTE = """\
configuration: the environment (REDIS_URL, DATABASE_URL, LONGRUN_URL, LONGRUN_API_KEY, LONGRUN_*),
completed while `longrun dev` runs by the settings it writes to .longrun/env (a variable set in
the environment wins)."""

EPILOG = f"{CONFIG_NOTE}\n\n{EXIT_CODES}"
SUB_HELP = "one of these (each takes --help)"


class Parser(argparse.ArgumentParser):
    """argparse with the exit-code table in every help and usage errors exiting 5."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("epilog", EXIT_CODES)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(Exit.USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    try:
        return metadata.version("longrun")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def _api_options() -> Parser:
    """--url/--key, shared by the commands that talk to the HTTP API."""
    p = Parser(add_help=False, epilog=None)
    p.add_argument("--url", help="API URL (default $LONGRUN_URL, else http://127.0.0.1:8000)")
    p.add_argument("--key", help="API key (default $LONGRUN_API_KEY)")
    return p


def _json_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def _dev_and_servers(sub: argparse._SubParsersAction[Parser]) -> None:
    dev = sub.add_parser(
        "dev",
        help="run everything on this machine",
        description="Redis and Postgres (yours, or embedded ones), migrations, the API and "
        "workers under supervisord, in the foreground until Ctrl-C. Writes the stack's "
        "settings to .longrun/env for the other commands and reuses its dev API key.",
    )
    dev.add_argument(
        "--embedded",
        action="store_true",
        help="start embedded Redis and Postgres even when REDIS_URL/DATABASE_URL answer",
    )
    dev.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    api = sub.add_parser("api", help="the HTTP API", description="Serve the HTTP API.")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")

    worker = sub.add_parser("worker", help="one worker process", description="Run one worker.")
    worker.add_argument(
        "--concurrency", type=int, help="runs in flight (default $LONGRUN_CONCURRENCY, 32)"
    )

    sub.add_parser(
        "migrate",
        help="apply database migrations",
        description="Apply the database migrations (idempotent, safe to run concurrently).",
    )


def _days(raw: str) -> int:
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if days < 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of days (0 or more)")
    return days


def _admin(sub: argparse._SubParsersAction[Parser]) -> None:
    keys = sub.add_parser("keys", help="API keys", description="Create, revoke and list API keys.")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND", help=SUB_HELP)
    kc = ksub.add_parser(
        "create", help="create a key", description="Create a key; it is the last line of stdout."
    )
    kc.add_argument("--user", required=True, help="the user the key acts for")
    kc.add_argument("--name", help="a label for the key (shown by `keys list`)")
    kc.add_argument(
        "--webhook",
        metavar="URL",
        help="the default webhook of the runs the key submits (each run may name its own)",
    )
    kc.add_argument(
        "--operator",
        action="store_true",
        help="an operator's key: sees the whole deployment (the console's Operations, /ops)",
    )
    kc.add_argument(
        "--retention-days",
        type=_days,
        metavar="N",
        help="delete the key's finished runs N days after they end, instead of after "
        "LONGRUN_RETENTION_DAYS (0: keep them forever)",
    )
    kc.add_argument(
        "--max-priority",
        choices=("high", "normal", "low"),
        default="normal",
        help="the highest priority the key's runs may ask for (default normal)",
    )
    kr = ksub.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key at once (exit 1 when no such active key).",
    )
    kr.add_argument("key_id", help="the key's id (from `keys create` or `keys list`)")
    kw = ksub.add_parser(
        "rotate-webhook-secret",
        help="a new webhook signing secret",
        description="Give a key a new webhook signing secret (shown once); its webhooks are "
        "signed with the previous one too for a day, so receivers can switch without a gap.",
    )
    kw.add_argument("key_id", help="the key's id (from `keys create` or `keys list`)")
    kl = ksub.add_parser("list", help="list keys", description="List keys, revoked ones too.")
    kl.add_argument("--user", help="only this user's keys")

    pause = sub.add_parser(
        "pause",
        help="refuse new runs (503 paused) until resume",
        description="The kill switch: every API process refuses submits with 503 `paused`; "
        "runs already accepted go on.",
    )
    pause.add_argument(
        "--reason", default="paused by an operator", help="told to clients in the 503"
    )
    sub.add_parser("resume", help="accept new runs again", description="Undo `longrun pause`.")

    status = sub.add_parser(
        "status",
        help="queue depth, workers, dead letters",
        description="The backlog, lag, pending, workers and dead letters; exit 1 when "
        "stalled, degraded or starved.",
    )
    _json_option(status, "the figures")
    status.add_argument(
        "--watch", action="store_true", help="redraw in place until Ctrl-C (then exit 0)"
    )
    status.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between redraws with --watch (default 2)",
    )

    dlq = sub.add_parser(
        "dlq", help="dead letters: list, retry, drop, ack", description="Dead letters."
    )
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND", help=SUB_HELP)
    _json_option(dsub.add_parser("list", help="list dead letters"), "the dead letters")
    dsub.add_parser("ack", help="mark the current dead letters as seen by an operator")
    verbs = {"retry": "re-queue the runs (failed -> queued)", "drop": "delete the dead letters"}
    for verb, does in verbs.items():
        dv = dsub.add_parser(verb, help=does, description=f"{does}; exit 1 when none matched.")
        dv.add_argument("ids", nargs="*", help="dead-letter entry ids or run ids")
        dv.add_argument("--all", action="store_true", help="every dead letter")


def _runs(sub: argparse._SubParsersAction[Parser], api_opts: Parser) -> None:
    submit = sub.add_parser(
        "submit",
        parents=[api_opts],
        help="submit a run",
        description="Submit a run and print its id (stdout; `run ... queued` on stderr). "
        "With --follow, stream its text and tool calls to stdout, reconnecting on drops, "
        "and end with its status on stderr; exit 0 when it succeeded, 1 when it did not.",
    )
    submit.add_argument("text", help="the run's input")
    submit.add_argument("--agent", help="agent name (default chat; ticker counts)")
    submit.add_argument(
        "--params", help="agent params as a JSON object, e.g. '{\"count\": 5}' for ticker"
    )
    submit.add_argument("--thread", help="thread id: the run sees the thread's conversation")
    later = submit.add_mutually_exclusive_group()
    later.add_argument(
        "--start-after",
        metavar="DURATION",
        help="start the run this long from now: 30s, 5m, 2h, 1d (queued until then)",
    )
    later.add_argument(
        "--start-at",
        metavar="TIME",
        help="start the run at this RFC 3339 time, e.g. 2030-01-02T03:04:05Z",
    )
    submit.add_argument(
        "--priority", choices=("high", "normal", "low"), help="the run's priority in the queue"
    )
    submit.add_argument("--follow", action="store_true", help="stream the run until it ends")
    _json_option(submit, "the accepted run (with --follow: one event per line)")

    runs = sub.add_parser("runs", help="one run, or your runs", description="Runs via the API.")
    rsub = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND", help=SUB_HELP)
    get = rsub.add_parser(
        "get", parents=[api_opts], help="a run's status and output", description="Show a run."
    )
    get.add_argument("run_id", help="the run's id")
    _json_option(get, "the run")
    lst = rsub.add_parser(
        "list", parents=[api_opts], help="your runs, newest first", description="List runs."
    )
    lst.add_argument(
        "--status",
        choices=("queued", "running", "waiting", "succeeded", "failed", "cancelled"),
        help="only runs in this status",
    )
    lst.add_argument("--thread", help="only runs of this thread")
    lst.add_argument("--limit", type=int, default=20, help="how many (1-200, default 20)")
    lst.add_argument("--cursor", help="the next page, as printed after a full page")
    _json_option(lst, "the page")
    can = rsub.add_parser(
        "cancel", parents=[api_opts], help="cancel a run", description="Cancel a run."
    )
    can.add_argument("run_id", help="the run's id")
    _json_option(can, "the API's answer")
    ev = rsub.add_parser(
        "events",
        parents=[api_opts],
        help="stream a run's events until it ends",
        description="Stream a run's events (from the start, or after --after) until it ends; "
        "exit 0 when it succeeded, 1 when it did not.",
    )
    ev.add_argument("run_id", help="the run's id")
    ev.add_argument("--after", type=int, help="resume after this event id (seq)")
    _json_option(ev, "one event per line")
    wt = rsub.add_parser(
        "wait",
        parents=[api_opts],
        help="wait until a run ends",
        description="Wait until a run ends; exit 0 when it succeeded, 1 when it did not, "
        "6 on --timeout.",
    )
    wt.add_argument("run_id", help="the run's id")
    wt.add_argument("--timeout", type=float, help="give up after this many seconds (exit 6)")
    _json_option(wt, "the finished run")
    wa = rsub.add_parser(
        "waiting",
        parents=[api_opts],
        help="your runs waiting for a person, and what they ask",
        description="Your runs waiting for a person (an agent's interrupt), newest first, "
        "with what each asks.",
    )
    wa.add_argument("--limit", type=int, default=50, help="how many (1-200, default 50)")
    _json_option(wa, "the runs")
    rs = rsub.add_parser(
        "resume",
        parents=[api_opts],
        help="answer a waiting run: it goes on with the value",
        description="Answer a waiting run's interrupt; the run is queued again and its agent "
        "gets the value. (`longrun resume`, without `runs`, is the kill switch's undo.)",
    )
    rs.add_argument("run_id", help="the run's id")
    rs.add_argument("--value", required=True, help="the answer, as JSON: true, '\"yes\"', {...}")
    rs.add_argument("--interrupt", help="the interrupt_id (default: the run's pending one)")
    _json_option(rs, "the API's answer")


def _schedules(sub: argparse._SubParsersAction[Parser], api_opts: Parser) -> None:
    sched = sub.add_parser(
        "schedules",
        help="cron schedules: a run at each tick",
        description="Your cron schedules via the API: each tick makes one run.",
    )
    ssub = sched.add_subparsers(
        dest="schedules_command", required=True, metavar="COMMAND", help=SUB_HELP
    )
    cr = ssub.add_parser(
        "create",
        parents=[api_opts],
        help="make a schedule",
        description="Make a schedule and print its id (stdout; its next run on stderr). "
        "CRON: 5 fields (minute hour day month weekday), 6 with seconds first, or "
        "@hourly/@daily/@weekly/@monthly/@yearly. A missed tick (no worker up) runs once, "
        "late, then the cadence resumes.",
    )
    cr.add_argument("cron", help="the cron expression, e.g. '0 9 * * 1-5' (quote it)")
    cr.add_argument("text", help="the input of each run")
    cr.add_argument("--timezone", default="UTC", help="IANA time zone of CRON (default UTC)")
    cr.add_argument("--agent", help="agent name (default chat; ticker counts)")
    cr.add_argument("--params", help="agent params as a JSON object")
    cr.add_argument("--thread", help="thread id: each run joins the thread's conversation")
    _json_option(cr, "the schedule")
    ls = ssub.add_parser(
        "list", parents=[api_opts], help="your schedules", description="List schedules."
    )
    ls.add_argument("--limit", type=int, default=20, help="how many (1-200, default 20)")
    ls.add_argument("--cursor", help="the next page, as printed after a full page")
    _json_option(ls, "the page")
    for verb, does in (("get", "show a schedule"), ("delete", "delete a schedule")):
        v = ssub.add_parser(verb, parents=[api_opts], help=does, description=does.capitalize())
        v.add_argument("schedule_id", help="the schedule's id")
        _json_option(v, "the answer")
    rn = ssub.add_parser(
        "runs",
        parents=[api_opts],
        help="the runs a schedule made",
        description="The runs a schedule made, newest tick first.",
    )
    rn.add_argument("schedule_id", help="the schedule's id")
    rn.add_argument("--limit", type=int, default=20, help="how many (1-200, default 20)")
    _json_option(rn, "the page")


def build() -> Parser:
    p = Parser(
        prog="longrun",
        description="longrun: queue-backed long-running agent runs.",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version=f"longrun {_version()}")
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="`longrun COMMAND --help` for more"
    )
    _dev_and_servers(sub)
    _admin(sub)
    _runs(sub, _api_options())
    _schedules(sub, _api_options())
    return p
