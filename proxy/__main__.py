"""`woozlit-proxy` (or `python -m proxy`): serve, check a config, administer accounts.

This module only parses arguments, reads the environment and config, and runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

from proxy.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from proxy.logs import setup_logging
from proxy.workers import WORKER_ENV, supervise

log = logging.getLogger("proxy")


CONFIG_HELP = (
    f"config file (default: $WOOZLIT_CONFIG, else the table shipped in the package, "
    f"{DEFAULT_CONFIG_PATH})"
)


def _config_path(given: str | None) -> str:
    return given or os.environ.get("WOOZLIT_CONFIG") or DEFAULT_CONFIG_PATH


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(1) from None


# -- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    setup_logging(os.environ.get("WOOZLIT_LOG_LEVEL", config.log_level).upper())
    port = config.server.port if args.port is None else args.port
    shared_store = bool(os.environ.get("WOOZLIT_REDIS_URL"))
    # --host, else server.host, else by the store: the embedded one prints a key to an
    # unlimited account and keeps nothing, so only this machine may connect to it.
    host = args.host or config.server.host or ("0.0.0.0" if shared_store else "127.0.0.1")
    # One worker per core by default; the embedded store lives in one process, so one there.
    workers = args.workers or ((os.cpu_count() or 1) if shared_store else 1)
    if workers > 1 and WORKER_ENV not in os.environ:
        if not shared_store:
            print("woozlit-proxy: --workers above 1 needs WOOZLIT_REDIS_URL: the embedded "
                  "store lives in one process", file=sys.stderr)  # fmt: skip
            return 2
        if port == 0:
            print("woozlit-proxy: --workers above 1 needs a fixed --port", file=sys.stderr)
            return 2
        worker_args = ["--config", _config_path(args.config), "--host", host, "--port", str(port)]
        return supervise(worker_args, workers, host, port)
    from proxy.server import CannotListen, serve

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on other platforms
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(config, host, port))
    except CannotListen as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.config or args.path)
    config = _load(path)
    print(f"{path}: ok ({len(config.providers)} providers, {len(config.models)} models)")
    return 0


def cmd_check_models(args: argparse.Namespace) -> int:
    from proxy.model_check import check_models, report

    lines, status = report(asyncio.run(check_models(_load(_config_path(args.config)))))
    print("\n".join(lines))
    return status


# -- admin commands ----------------------------------------------------------------------


async def _admin(args: argparse.Namespace) -> Any:
    from redis.exceptions import RedisClusterException

    from proxy.admin.accounts import Accounts
    from proxy.metrics import Metrics
    from proxy.store import open_store

    url = os.environ.get("WOOZLIT_REDIS_URL")
    if not url:
        raise SystemExit(
            "woozlit-proxy: set WOOZLIT_REDIS_URL: admin commands work on a shared store"
        )
    config = _load(_config_path(args.config))
    try:
        store = open_store(url, 5.0, Metrics())
    except (ValueError, RedisClusterException) as exc:  # a bad scheme, port, host or option
        raise SystemExit(f"woozlit-proxy: WOOZLIT_REDIS_URL is not a Redis URL: {exc}") from None
    accounts = Accounts(store, config)
    try:
        if args.command == "account":
            fields = {
                k: v
                for k, v in (
                    ("email", args.email),
                    ("tier", args.tier),
                    ("developer", args.developer),
                    ("disabled", getattr(args, "disabled", None)),
                    ("monthly_token_limit", args.monthly_token_limit),
                    ("requests_per_minute", args.requests_per_minute),
                )
                if v is not None
            }
            for name in ("monthly_token_limit", "requests_per_minute"):
                if fields.get(name) == -1:
                    fields[name] = None  # -1 on the command line: back to the tier's value
            if args.action == "create":
                return await accounts.create_account(fields)
            if args.action == "show":
                return await accounts.get_account(args.id)
            return await accounts.update_account(args.id, fields)
        if args.command == "key":
            if args.action == "create":
                return await accounts.create_key(args.account, args.name)
            if args.action == "list":
                return {"data": await accounts.list_keys(args.account)}
            await accounts.revoke_key(args.key_id)
            return {"revoked": args.key_id}
        return await accounts.usage(args.account, args.month)
    finally:
        await store.close()


def cmd_admin(args: argparse.Namespace) -> int:
    from proxy.errors import GatewayError

    try:
        result = asyncio.run(_admin(args))
    except GatewayError as exc:
        print(orjson.dumps({"error": exc.message}).decode(), file=sys.stderr)
        return 1
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


def _bool(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError("expected true or false")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, else a usage error that says so."""
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value!r}")
        return number

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="woozlit-proxy", description="The Woozlit API gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument(
        "--host",
        help="address to listen on (default: the config's server.host, else 0.0.0.0 with "
        "WOOZLIT_REDIS_URL and 127.0.0.1 with the embedded store)",
    )
    # Bounded here: uvloop binds a port past 65535 modulo 65536, and a negative port or
    # number of workers would end in a traceback or be ignored.
    s.add_argument("--port", type=_integer(0, 65535))
    s.add_argument(
        "--workers",
        type=_integer(1),
        help="processes on the port (default: one per core with WOOZLIT_REDIS_URL, else 1)",
    )
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("--config", help=CONFIG_HELP)
    c.add_argument("path", nargs="?", help="the same as --config (the older form)")
    c.set_defaults(func=cmd_check_config)

    m = sub.add_parser(
        "check-models",
        help="ask each provider's model list for the models the config routes to; "
        "exit 1 when one is missing or a provider could not be asked",
    )
    m.add_argument("--config", help=CONFIG_HELP)
    m.set_defaults(func=cmd_check_models)

    a = sub.add_parser("account", help="create, show or update an account")
    a.add_argument("action", choices=("create", "show", "update"))
    a.add_argument("id", nargs="?", help="account id (show, update)")
    a.add_argument("--email")
    a.add_argument("--tier")
    a.add_argument(
        "--developer",
        type=_bool,
        metavar="true|false",
        help="may use the API (a new account may not until this is true)",
    )
    a.add_argument("--disabled", type=_bool, metavar="true|false")
    a.add_argument("--monthly-token-limit", type=int, help="-1: back to the tier's value")
    a.add_argument("--requests-per-minute", type=int, help="-1: back to the tier's value")
    a.set_defaults(func=cmd_admin)

    k = sub.add_parser("key", help="create, list or revoke API keys")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("account")
    kc.add_argument("--name", required=True)
    kl = ksub.add_parser("list")
    kl.add_argument("account")
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    k.set_defaults(func=cmd_admin)

    u = sub.add_parser("usage", help="an account's usage for a month")
    u.add_argument("account")
    u.add_argument("--month", help="YYYY-MM (default: this month)")
    u.set_defaults(func=cmd_admin)

    for admin_parser in (a, kc, kl, kr, u):
        admin_parser.add_argument("--config", help=CONFIG_HELP + "; for the tiers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check-config" and args.config and args.path:
        parser().error("check-config takes the file once: --config FILE or FILE")
    if args.command == "account" and args.action in ("show", "update") and not args.id:
        parser().error(f"account {args.action} needs an account id")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
