"""``python -m bridge.api``: make a token, or serve ``/v1`` over the topics.

A worker with the API role serves ``/v1`` over its delivery log (docs/api.md); ``serve`` runs it
as a process of its own over :class:`~bridge.api.store_repository.StoreRepository` and
:mod:`bridge.api.kafka_sources` (delivery log, stats, dead letters and recoveries read from and
written to the topics), with the settings of every other command (``BRIDGE_*``; the embedded
broker on its default port when none is configured), the worker's logs
(:func:`~bridge.worker.logs.logging_config`) and its limits on request lines.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging.config
import os
import sys
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import SCOPES, TokenSet
from bridge.api.control import ControlService
from bridge.api.kafka_sources import (
    KafkaActivitySource,
    KafkaDeadLetters,
    kafka_recovery_runner,
)
from bridge.api.metrics import ApiMetrics
from bridge.api.recoveries import Recoveries, per_owner
from bridge.api.service import WebhookService
from bridge.api.store_repository import StoreRepository
from bridge.config import (
    Section,
    Settings,
    add_section_flags,
    overrides_from_args,
    parse_port,
)
from bridge.errors import BridgeError, ConfigError

#: The settings sections whose flags ``serve`` takes: the broker, the topics it reads and
#: writes, and the API's own.
SERVE_SECTIONS = (
    Section.KAFKA,
    Section.EMBEDDED,
    Section.EVENTS,
    Section.SUBSCRIPTIONS,
    Section.SECRETS,
    Section.DEAD_LETTERS,
    Section.TOPICS,
    Section.ACTIVITY,
)

#: The settings of those sections that only a worker reads, whose flags ``serve`` does not
#: take (until 2026-12-07 it took them and ignored them): it keeps no delivery log of its own
#: and is routed to by no one, delivers nothing (its role is ``api``), tombstones no ended
#: recovery (their owners do) and creates no topic.
SERVE_IGNORES = (
    "delivery_log",
    "delivery_log_store",
    "advertised_url",
    "role",
    "recovery_retention",
    "topic_replication_factor",
)

#: What ``--help`` says (the module's docstring is for readers of the code).
HELP = (
    "Make a token for /v1 (token: prints its token-file entry; the token itself once), or "
    "serve /v1 as a process of its own over the topics (serve: the delivery log, stats, dead "
    "letters and recoveries read from and written to them), with the settings of every other "
    "command (BRIDGE_*; the embedded broker on its default port when none is configured). A "
    "worker with the API role serves /v1 over its own delivery log (docs/api.md)."
)


def _token(args: argparse.Namespace) -> int:
    from bridge.cli.commands import made_token

    scopes = [s for s in args.scopes.split(",") if s]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        print(f"--scopes: a comma-separated list of {', '.join(SCOPES)}", file=sys.stderr)
        return 2
    try:
        token, entry = made_token(args)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"token: {token}", file=sys.stderr)
    print("  (shown once; the token file keeps only its sha256)", file=sys.stderr)
    print(json.dumps(entry))
    return 0


def serve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """The settings ``serve`` runs with: its flags over ``env``, in the role ``api`` (its loop
    shares nothing with deliveries; ``BRIDGE_ROLE`` is a worker's), on the embedded broker when
    none is configured."""
    settings = Settings.load(env=env, overrides=overrides_from_args(args, args.settings))
    if settings.api_tokens is None:
        raise ConfigError("serve needs the token file: --tokens (or BRIDGE_API_TOKENS)")
    settings = settings.replace(role="api")
    if settings.embedded:
        # As `./dev run`'s worker does (until 2026-12-06 this refused the loopback endpoints
        # the worker delivers to).
        settings = settings.on_embedded_broker(f"127.0.0.1:{settings.embedded_port}")
    return settings


async def _serve(args: argparse.Namespace) -> None:
    from bridge.admin.publish import send_test_event
    from bridge.kafka.clients import endpoint_check, warn_if_unguarded
    from bridge.metrics import ConnectionMetrics
    from bridge.subscriptions.store import WebhookStore
    from bridge.worker.logs import logging_config
    from bridge.worker.web import app_runner

    settings = serve_settings(args, os.environ)
    assert settings.api_tokens is not None
    tokens = TokenSet.from_file(settings.api_tokens)
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    warn_if_unguarded(settings)
    async with WebhookStore(settings) as store:
        repository = StoreRepository(store)
        service = WebhookService(
            repository,
            publisher=functools.partial(send_test_event, settings),
            check_url=endpoint_check(settings),
            max_webhooks=settings.api_max_webhooks,
        )
        control = ControlService(
            repository,
            KafkaActivitySource(settings),
            Recoveries(
                kafka_recovery_runner(settings),
                max_running=settings.api_max_recoveries,
                max_per_owner=per_owner(settings.api_max_recoveries),
            ),
            KafkaDeadLetters(settings),
            redeliver_lookback=settings.delivery_log_max_age,
        )
        registry = CollectorRegistry()
        config = ApiConfig(rate_limit=settings.api_rate_limit)
        app = create_app(service, control, tokens, config=config, metrics=ApiMetrics(registry))

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), content_type="text/plain")

        async def healthz(request: web.Request) -> web.Response:
            # Liveness, as a worker's: the event loop answers (until 2026-12-07 a 404, so a
            # probe of it could only be a TCP check).
            return web.json_response({"status": "ok"})

        app.router.add_get("/metrics", metrics, allow_head=False)
        app.router.add_get("/healthz", healthz, allow_head=False)
        runner = app_runner(app, ConnectionMetrics(registry))
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"serving /v1 on http://{args.host}:{args.port} ({len(tokens)} tokens)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def parser() -> argparse.ArgumentParser:
    """``python -m bridge.api``'s flags."""
    from bridge.cli.commands import SilentParser, token_flags  # (errors name no flag's value)

    top = SilentParser(prog="python -m bridge.api", description=HELP)
    commands = top.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="a new token; prints its token-file entry")
    token_flags(token)
    serve = commands.add_parser("serve", help="serve /v1 over the subscriptions topic")
    # The settings' own flags (--bootstrap-servers, --api-tokens ...), read as every other
    # command reads them (until 2026-12-07 serve had flags of its own: its --bootstrap-servers
    # took user:password@, which the clients then printed, and BRIDGE_API_TOKENS was not read).
    names = add_section_flags(serve, SERVE_SECTIONS, without=SERVE_IGNORES)
    serve.add_argument(
        "--tokens", dest="api_tokens", help="the token file (YAML or JSON): --api-tokens"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address /v1 is served on")
    serve.add_argument("--port", type=parse_port, default=8081, help="the port /v1 is served on")
    serve.set_defaults(settings=names)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    try:
        asyncio.run(_serve(args))
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # its address: in use, or not the machine's (not a traceback)
        print(f"error: {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
