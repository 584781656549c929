"""The ``webhook-bridge`` command, a thin layer over :mod:`bridge.admin` and the worker."""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import gc
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from bridge import __version__
from bridge.config import (
    Section,
    Settings,
    add_section_flags,
    overrides_from_args,
    parse_bool,
    parse_list,
    parse_port,
)
from bridge.contract.events import Event, build_event
from bridge.contract.payload import delivery_id
from bridge.errors import BridgeError, ConfigError, InvalidRecord, TopicDrift
from bridge.paths import path_segment
from bridge.subscriptions.webhook import MIN_RATE_LIMIT
from bridge.terminal import escaped, json_line, shown
from bridge.worker.embedded import GROUP_TIMEOUTS, EmbeddedBroker, _port_open

if TYPE_CHECKING:
    from bridge.subscriptions.webhook import Webhook

__all__ = [
    "main",
    "MAX_DATA_BYTES",
    "COMMAND_SECTIONS",
    "SilentParser",
    "token_flags",
    "made_token",
    "WORKER_GC_THRESHOLDS",
    "tune_gc",
]

_T = TypeVar("_T")

_MANAGEMENT = (Section.KAFKA, Section.EMBEDDED)
_WEBHOOKS = (*_MANAGEMENT, Section.SUBSCRIPTIONS, Section.SECRETS)

#: The settings sections whose flags each command takes (``run``: every setting).
COMMAND_SECTIONS: dict[str, tuple[Section, ...]] = {
    "run": tuple(Section),
    "broker": (Section.EMBEDDED,),
    "topics apply": (
        *_MANAGEMENT,
        Section.EVENTS,
        Section.SUBSCRIPTIONS,
        Section.DEAD_LETTERS,
        Section.TOPICS,
    ),
    "webhooks create": _WEBHOOKS,
    "webhooks update": _WEBHOOKS,
    "webhooks rotate-secret": _WEBHOOKS,
    "webhooks test": (*_WEBHOOKS, Section.EVENTS),
    "webhooks delete": (*_MANAGEMENT, Section.SUBSCRIPTIONS),
    "webhooks list": _WEBHOOKS,
    "webhooks recover": (
        *_WEBHOOKS,
        Section.EVENTS,
        Section.TOPICS,
        Section.DEAD_LETTERS,
        Section.API_CLIENT,
    ),
    "webhooks recoveries": (*_MANAGEMENT, Section.ACTIVITY, Section.API_CLIENT),
    "webhooks attempts": (*_MANAGEMENT, Section.TOPICS, Section.ACTIVITY, Section.API_CLIENT),
    "webhooks stats": (*_MANAGEMENT, Section.TOPICS, Section.ACTIVITY, Section.API_CLIENT),
    "deliveries show": (*_MANAGEMENT, Section.TOPICS, Section.API_CLIENT),
    "deliveries redeliver": (
        *_WEBHOOKS,
        Section.EVENTS,
        Section.TOPICS,
        Section.DEAD_LETTERS,
        Section.ACTIVITY,
        Section.API_CLIENT,
    ),
    "publish": (*_MANAGEMENT, Section.EVENTS),
    "dlq list": (*_MANAGEMENT, Section.DEAD_LETTERS),
    "dlq replay": (*_WEBHOOKS, Section.DEAD_LETTERS),
    "tokens add": (),
    "receive": (),
}


def _settings_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Give ``parser`` the flags of ``command``'s sections, remembered for :func:`_settings`."""
    parser.set_defaults(settings=add_section_flags(parser, COMMAND_SECTIONS[command]))


class SilentParser(argparse.ArgumentParser):
    """An argument parser whose errors never repeat a value given on the command line: a
    mistyped ``--api-tokn wbt_...`` or a refused value of a secret's flag would print it."""

    #: The words this parser was given (a subcommand's parser: those after its name).
    _words: list[str] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A flag is given whole: until 2026-12-07 argparse took any unambiguous prefix
        # (``--delivery-log-max-a``), so a flag added later could break a command that worked,
        # and a worker-only flag given to ``serve`` was "ambiguous" rather than unrecognized.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's "invalid choice: 'VALUE'" quotes the word: a secret's flag given before
        # the command (``--api-token wbt_... webhooks list``) leaves its value where the
        # command goes, and until 2026-12-07 the error printed it.
        if action.choices is None or value in action.choices:
            return
        choices = ", ".join(map(repr, action.choices))
        flag = None if action.option_strings else self._flag_before(value)
        if flag is None:
            raise argparse.ArgumentError(
                action, f"invalid choice (not shown; choose from {choices})"
            )
        what = action.metavar or action.dest
        raise argparse.ArgumentError(
            action,
            f"invalid choice (not shown): {flag} takes a value and goes after the {what} "
            f"(choose from {choices})",
        )

    def _flag_before(self, value: object) -> str | None:
        """The flag right before ``value`` among this parser's words, when a command below
        this parser has it and it takes a value (which ``value`` then is)."""
        words = self._words or []
        if value not in words:
            return None
        at = words.index(value)
        flag = words[at - 1] if at > 0 else ""
        if not flag.startswith("-") or "=" in flag:
            return None
        return flag if _takes_a_value(self, flag) else None

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            words = message.removeprefix("unrecognized arguments: ").split()
            flags = [word.split("=", 1)[0] for word in words if word.startswith("-")]
            named = f": {' '.join(flags)}" if flags else ""
            message = f"unrecognized arguments{named} (values not shown)"
        elif message.startswith("ambiguous option: "):
            # "ambiguous option: --api-tok=VALUE could match ...": the flag as typed, without
            # its value (until 2026-12-05 the value was printed).
            typed, _, rest = message.removeprefix("ambiguous option: ").partition(" could match")
            message = f"ambiguous option: {typed.split('=', 1)[0]} could match{rest}"
        else:
            message = re.sub(
                r"invalid \S+ value: .*", "invalid value (not shown; see --help)", message
            )
            # (Raised by _check_value without the word: an argparse of another wording.)
            message = re.sub(
                r"invalid choice: .*\(choose from",
                "invalid choice (not shown; choose from",
                message,
                flags=re.DOTALL,
            )
        super().error(message)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # Python 3.11's argparse drops a "--" given as an option's value (``--since=--``) and
        # gives the option an empty list, whatever its type: until 2026-12-07 commands failed
        # on it with a traceback. Taken as the text "--", as later Pythons take it, and judged
        # by the option's type as any other value.
        if action.option_strings and action.nargs in (None, argparse.OPTIONAL):
            if arg_strings == ["--"]:
                value = self._get_value(action, "--")
                self._check_value(action, value)
                return value
        return super()._get_values(action, arg_strings)


def _takes_a_value(parser: argparse.ArgumentParser, flag: str) -> bool:
    """Whether ``flag`` (or a flag it abbreviates) takes a value in a command below
    ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for option, taken in sub._option_string_actions.items():
                    named = option == flag or (sub.allow_abbrev and option.startswith(flag))
                    if named and taken.nargs != 0:
                        return True
                if _takes_a_value(sub, flag):
                    return True
    return False


def _recovery_rate(text: str) -> float:
    """``--rate`` of ``webhooks recover``: a finite number of deliveries per second within the
    API's bounds, with or without the API (until 2026-12-06 ``inf`` was taken: no pacing, and
    ``Infinity`` in the JSON printed; ``0`` and ``nan`` failed later)."""
    from bridge.api.openapi import MAX_RECOVERY_RATE, MIN_RECOVERY_RATE

    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not MIN_RECOVERY_RATE <= rate <= MAX_RECOVERY_RATE:  # (never for nan)
        raise argparse.ArgumentTypeError(
            f"must be a number from {MIN_RECOVERY_RATE} to {MAX_RECOVERY_RATE} "
            "(deliveries per second)"
        )
    return rate


def _rate_limit(text: str, *, none: bool = False) -> float:
    """``--rate-limit`` of ``webhooks create`` (``update`` with ``none``: 0 removes it): a
    number of deliveries per second from the lowest a webhook may have (until 2026-12-07 any
    positive one was written, and the webhook's deliveries after its first dead-lettered)."""
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if none and rate == 0:
        return rate
    if not MIN_RATE_LIMIT <= rate < math.inf:  # (never for nan)
        raise argparse.ArgumentTypeError(
            f"must be a number of deliveries per second, at least {MIN_RATE_LIMIT}"
            + (" (0: no limit)" if none else "")
        )
    return rate


def _given_id(text: str) -> str:
    """``--id`` of ``webhooks create`` and ``publish``: refused empty (until 2026-12-07 an
    unset ``$ID`` made a new webhook, or a new event, each time, with ids of its own: a
    create run twice made two webhooks, and one event reached an endpoint under two delivery
    ids no receiver could take for one)."""
    if not text:
        raise argparse.ArgumentTypeError("an id is not empty (leave --id out for a new one)")
    return text


def _test_message(text: str) -> str:
    """``webhooks test --message``: at most the API's :data:`MAX_TEST_MESSAGE` characters
    (until 2026-12-07 any length was published, and one over the worker's body limit was
    dead-lettered ``payload_too_large``)."""
    from bridge.admin.publish import MAX_TEST_MESSAGE

    if len(text) > MAX_TEST_MESSAGE:
        raise argparse.ArgumentTypeError(f"at most {MAX_TEST_MESSAGE} characters")
    return text


def _secret(text: str) -> str:
    """``--secret`` of ``receive``, ``webhooks create``, ``update`` and ``rotate-secret``:
    refused empty (until 2026-12-07 ``create`` and ``rotate-secret`` given ``--secret ""``, an
    unset ``$VAR``, stored a random secret they never printed: a rotation so locked every
    receiver out)."""
    if not text:
        raise argparse.ArgumentTypeError("a secret is not empty")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = SilentParser(
        prog="webhook-bridge",
        description="Delivers platform events from Kafka as signed webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"webhook-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a worker (starts the embedded broker when none is configured)"
    )
    _settings_flags(run, "run")
    run.set_defaults(handler=_run)

    broker = commands.add_parser("broker", help="run only the embedded broker, in the foreground")
    broker.add_argument(
        "--port", type=parse_port, default=None, help="port (default: --embedded-port)"
    )
    _settings_flags(broker, "broker")
    broker.set_defaults(handler=_broker)

    topics = commands.add_parser("topics", help="topic management")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    apply = topic_commands.add_parser(
        "apply", help="create missing topics; exit 1 when existing ones drifted"
    )
    _settings_flags(apply, "topics apply")
    apply.set_defaults(handler=_topics_apply)

    webhooks = commands.add_parser("webhooks", help="manage webhook subscriptions")
    hook_commands = webhooks.add_subparsers(
        dest="webhooks_command", required=True, metavar="ACTION"
    )
    create = hook_commands.add_parser("create", help="create a webhook; prints its id and secret")
    create.add_argument("--url", required=True)
    create.add_argument("--events", required=True, type=parse_list, help="a,b,... or *")
    create.add_argument("--site-id", help="site scope; omit for an account-scoped webhook")
    create.add_argument("--user-id", help="owner account (required for account scope)")
    create.add_argument("--name")
    create.add_argument("--secret", type=_secret, help="signing secret (default: 32 random bytes)")
    create.add_argument(
        "--id", dest="webhook_id", type=_given_id, help="webhook id (default: generated)"
    )
    create.add_argument("--inactive", action="store_true", help="create it inactive")
    create.add_argument(
        "--rate-limit",
        type=_rate_limit,
        help=f"at most this many deliveries per second (at least {MIN_RATE_LIMIT})",
    )
    create.add_argument(
        "--standard-webhooks",
        nargs="?",
        const=True,
        default=False,
        type=parse_bool,
        metavar="BOOL",
        help="also sign with Standard Webhooks headers (timestamped, replay-resistant); "
        "alone: true",
    )
    _settings_flags(create, "webhooks create")
    create.set_defaults(handler=_webhooks_create)

    update = hook_commands.add_parser("update", help="change fields of a webhook")
    update.add_argument("webhook_id", metavar="ID")
    update.add_argument("--url")
    update.add_argument("--events", type=parse_list)
    update.add_argument("--site-id")
    update.add_argument("--name")
    update.add_argument("--secret", type=_secret)
    update.add_argument("--active", type=parse_bool, help="true or false")
    update.add_argument(
        "--rate-limit",
        type=functools.partial(_rate_limit, none=True),
        help=f"deliveries per second, at least {MIN_RATE_LIMIT} (0: no limit)",
    )
    update.add_argument(
        "--standard-webhooks",
        nargs="?",
        const=True,
        type=parse_bool,
        metavar="BOOL",
        help="true or false (alone: true), as on create",
    )
    _settings_flags(update, "webhooks update")
    update.set_defaults(handler=_webhooks_update)

    rotate = hook_commands.add_parser(
        "rotate-secret", help="give a webhook a new secret; prints it"
    )
    rotate.add_argument("webhook_id", metavar="ID")
    rotate.add_argument("--secret", type=_secret, help="the new secret (default: 32 random bytes)")
    rotate.add_argument(
        "--overlap",
        default="0s",
        help="how long the previous secret stays valid too, e.g. 24h: Standard Webhooks "
        "signatures carry both meanwhile (refused for a webhook without Standard Webhooks "
        "headers, whose X-Webhook-Signature carries the new secret alone)",
    )
    _settings_flags(rotate, "webhooks rotate-secret")
    rotate.set_defaults(handler=_webhooks_rotate)

    test = hook_commands.add_parser("test", help="send a test.event to one webhook")
    test.add_argument("webhook_id", metavar="ID")
    test.add_argument(
        "--message", default="", type=_test_message, help="text for data.message (1,000 at most)"
    )
    test.add_argument("--site-id", help="site of the event (needed for account-scoped webhooks)")
    test.add_argument("--user-id", help="account of the event (default: the webhook's)")
    _settings_flags(test, "webhooks test")
    test.set_defaults(handler=_webhooks_test)

    delete = hook_commands.add_parser("delete", help="delete a webhook (writes a tombstone)")
    delete.add_argument("webhook_id", metavar="ID")
    _settings_flags(delete, "webhooks delete")
    delete.set_defaults(handler=_webhooks_delete)

    listing = hook_commands.add_parser("list", help="list webhooks (secrets hidden)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _settings_flags(listing, "webhooks list")
    listing.set_defaults(handler=_webhooks_list)

    recover = hook_commands.add_parser(
        "recover",
        help="send a webhook again the events published between two times (same delivery ids)",
    )
    recover.add_argument("webhook_id", metavar="ID")
    recover.add_argument(
        "--since", required=True, help="ISO-8601 time, or a duration ago (30m, 2h, 1d)"
    )
    recover.add_argument("--until", help="ISO-8601 time, or a duration ago (default: now)")
    recover.add_argument(
        "--delivery",
        dest="delivery_id",
        help="only this delivery id, of ID; through the API (--api-url) it is redelivered as "
        "`deliveries redeliver --webhook ID` does: its event is found by the delivery's "
        "attempts, and --since, --until and --rate are not used",
    )
    recover.add_argument(
        "--rate",
        type=_recovery_rate,
        default=None,
        help="deliveries enqueued per second, from 0.01 to 1000 (default 10, never above the "
        "webhook's rate_limit)",
    )
    _settings_flags(recover, "webhooks recover")
    recover.set_defaults(handler=_webhooks_recover)

    recoveries = hook_commands.add_parser(
        "recoveries",
        help="a webhook's recoveries and redeliveries, newest first (running, and ended within "
        "recovery_retention)",
    )
    recoveries.add_argument("webhook_id", metavar="ID")
    recoveries.add_argument("--state", choices=("running", "done", "cancelled", "failed"))
    recoveries.add_argument("--json", action="store_true", help="one JSON object per line")
    _settings_flags(recoveries, "webhooks recoveries")
    recoveries.set_defaults(handler=_webhooks_recoveries)

    attempts = hook_commands.add_parser(
        "attempts", help="a webhook's delivery log, newest first (from the attempts topic)"
    )
    attempts.add_argument("webhook_id", metavar="ID")
    attempts.add_argument("--event-type", help="only this event type")
    attempts.add_argument("--outcome", choices=("success", "failure", "skipped"))
    attempts.add_argument("--status-class", help="2xx ... 5xx, or none (no response)")
    attempts.add_argument(
        "--trigger",
        choices=("scheduled", "manual"),
        help="the event's own attempts, or an operator's (redelivery, recovery, dlq replay)",
    )
    attempts.add_argument(
        "--recovery-id", help="only the attempts of this recovery or redelivery", metavar="ID"
    )
    attempts.add_argument("--since", help="ISO-8601 time, or a duration ago (30m, 2h, 1d)")
    attempts.add_argument("--until", help="ISO-8601 time, or a duration ago")
    attempts.add_argument("--limit", type=int, default=50, help="at most this many (1-1000)")
    attempts.add_argument("--json", action="store_true", help="one JSON object per line")
    _settings_flags(attempts, "webhooks attempts")
    attempts.set_defaults(handler=_webhooks_attempts)

    stats = hook_commands.add_parser(
        "stats", help="a webhook's attempts, failures and latency over 1h, 24h and 7d"
    )
    stats.add_argument("webhook_id", metavar="ID")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    _settings_flags(stats, "webhooks stats")
    stats.set_defaults(handler=_webhooks_stats)

    deliveries = commands.add_parser(
        "deliveries", help="one delivery: its attempts, sending it again"
    )
    delivery_commands = deliveries.add_subparsers(dest="deliveries_command", required=True)
    show = delivery_commands.add_parser("show", help="every attempt of one delivery, in order")
    show.add_argument("delivery_id", metavar="DELIVERY_ID")
    show.add_argument(
        "--webhook",
        dest="webhook_id",
        help="its webhook (reads one partition; through the API, one log)",
    )
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    _settings_flags(show, "deliveries show")
    show.set_defaults(handler=_deliveries_show)
    redeliver = delivery_commands.add_parser(
        "redeliver", help="send one delivery again now, with the same delivery id"
    )
    redeliver.add_argument("delivery_id", metavar="DELIVERY_ID")
    redeliver.add_argument(
        "--webhook",
        dest="webhook_id",
        help="its webhook (reads one partition; through the API, one log)",
    )
    _settings_flags(redeliver, "deliveries redeliver")
    redeliver.set_defaults(handler=_deliveries_redeliver)

    publish = commands.add_parser("publish", help="publish a valid platform event")
    publish.add_argument("event_type", metavar="TYPE")
    publish.add_argument("--site-id", required=True)
    publish.add_argument("--user-id", required=True)
    publish.add_argument(
        "--data",
        default="{}",
        metavar="JSON|@FILE|-",
        help="the event's data as a JSON object: inline, read from FILE (@FILE) or from stdin "
        "(- or @-)",
    )
    publish.add_argument(
        "--id", dest="event_id", type=_given_id, help="event id (default: a random UUID)"
    )
    _settings_flags(publish, "publish")
    publish.set_defaults(handler=_publish)

    dlq = commands.add_parser("dlq", help="dead letters: list and replay")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for action, helptext in (
        ("list", "list dead letters (one JSON object per line)"),
        ("replay", "re-enqueue dead letters with their delivery ids"),
    ):
        sub = dlq_commands.add_parser(action, help=helptext)
        sub.add_argument("--webhook", dest="webhook_id", help="only this webhook")
        sub.add_argument("--delivery", dest="delivery_id", help="only this delivery id")
        sub.add_argument("--since", help="ISO-8601 time or a duration ago (2h, 1d)")
        sub.add_argument("--until", help="ISO-8601 time or a duration ago")
        _settings_flags(sub, f"dlq {action}")
        sub.set_defaults(handler=_dlq_list if action == "list" else _dlq_replay)

    tokens = commands.add_parser("tokens", help="API tokens: add one to a token file")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    add = token_commands.add_parser(
        "add", help="make a token and add its hash to a JSON token file; prints the token once"
    )
    add.add_argument("--file", required=True, help="the token file (made when missing)")
    token_flags(add)
    _settings_flags(add, "tokens add")
    add.set_defaults(handler=_tokens_add)

    receive = commands.add_parser("receive", help="a receiver that verifies and prints deliveries")
    receive.add_argument("--port", type=parse_port, required=True)
    receive.add_argument(
        "--secret",
        dest="secrets",
        metavar="SECRET",
        action="append",
        type=_secret,
        required=True,
        help="a signing secret; again for another (a rotation's old and new)",
    )
    receive.add_argument("--host", default="127.0.0.1")
    receive.add_argument("--status", type=int, default=200, help="status for valid deliveries")
    _settings_flags(receive, "receive")
    receive.set_defaults(handler=_receive)
    return parser


def _settings(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> Settings:
    return Settings.load(overrides=overrides_from_args(args, args.settings), defaults=defaults)


def _managed(settings: Settings) -> Settings:
    """Settings for a management command: with no broker configured, use a running embedded one."""
    if not settings.embedded:
        return settings
    address = f"127.0.0.1:{settings.embedded_port}"
    if not _port_open("127.0.0.1", settings.embedded_port):
        raise ConfigError(
            "no Kafka broker configured: pass --bootstrap-servers HOST:PORT or set "
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS (`webhook-bridge run` prints the embedded broker's "
            f"address; none is listening on {address}: an embedded broker started with "
            "--embedded-port is found with the same --embedded-port or BRIDGE_EMBEDDED_PORT)"
        )
    print(f"using the embedded broker at {address}", file=sys.stderr)
    # As `run` on it judges endpoints: plain http and this machine's addresses allowed.
    return settings.on_embedded_broker(address)


def _run_managed(
    args: argparse.Namespace, coro_factory: Callable[[Settings], Coroutine[Any, Any, _T]]
) -> _T:
    """Run a management command's coroutine on the settings of ``args``: with no broker
    configured, on the running embedded broker (see :func:`_managed`). A Kafka client's error
    ends the command as a :class:`ConfigError` naming the brokers and the error's class (until
    2026-12-06 an unreachable broker was a traceback); never a credential (the SASL settings
    are not named, and bootstrap servers carry none)."""
    from aiokafka.errors import KafkaError

    settings = _managed(_settings(args))
    # The clients' log lines, unconfigured, went to stderr as well (Python's last resort):
    # the command's own line says what failed.
    clients = logging.getLogger("aiokafka")
    if not any(isinstance(handler, logging.NullHandler) for handler in clients.handlers):
        clients.addHandler(logging.NullHandler())
    try:
        return asyncio.run(coro_factory(settings))
    except KafkaError as exc:
        raise _kafka_failure(settings, exc) from None


def _kafka_failure(settings: Settings, exc: Exception) -> ConfigError:
    """One line for a Kafka client's error: the brokers and the error's class, never a
    credential."""
    what = "cannot reach Kafka" if isinstance(exc, _unreachable()) else "Kafka error"
    return ConfigError(f"{what} at {settings.kafka_bootstrap_servers}: {type(exc).__name__}")


_Handler = Callable[[argparse.Namespace], int]


def _reads_api(handler: _Handler) -> _Handler:
    """A command that reads the API's answers with ``--api-url``: an answer of another shape
    than the API's (a field missing, of another type) ends it with one line, not a traceback
    (until 2026-12-07 a server answering ``{}`` or ``[]`` was one)."""

    @functools.wraps(handler)
    def reading(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            if _settings(args).api_url is None:
                raise
            raise ConfigError(
                f"the API's answer is not what this command reads ({type(exc).__name__})"
            ) from None

    return reading


def _unreachable() -> tuple[type[Exception], ...]:
    """aiokafka's errors of a broker not reached (not connected, or not answering in time)."""
    from aiokafka import errors

    return (
        errors.KafkaConnectionError,
        errors.NoBrokersAvailable,
        errors.NodeNotReadyError,
        errors.KafkaTimeoutError,
        errors.RequestTimedOutError,
    )


#: Apache Kafka's default ``group.min.session.timeout.ms``, in seconds: a broker of its
#: defaults refuses a consumer's join with a shorter session (INVALID_SESSION_TIMEOUT).
_KAFKA_LOWEST_SESSION_TIMEOUT = 6.0


# -- commands ---------------------------------------------------------------------------------


def _check_web_port(settings: Settings) -> None:
    """:class:`ConfigError` when the worker's web port is taken (a second worker on a machine
    without its own ``--web-port``): until 2026-12-07 its web server's start failed with an
    ``OSError`` traceback, after the worker had joined its group."""
    import socket

    from bridge.worker.embedded import port_in_use_message

    if settings.web_port == 0:
        return
    try:
        # An empty host is every address, IPv4 and IPv6, to asyncio's server: getaddrinfo
        # says so of None, and refuses "".
        addresses = socket.getaddrinfo(
            settings.web_host or None,
            settings.web_port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise ConfigError(f"web host {settings.web_host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's server binds each address: reusing it, IPv6 alone on an IPv6 one.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError(f"web port {settings.web_port}: {exc.strerror}") from None
                raise ConfigError(
                    port_in_use_message(settings.web_port, flag="--web-port")
                ) from None


def _run(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from bridge.admin.topics import apply_topics
    from bridge.worker.app import Bridge
    from bridge.worker.faust_patches import install as install_faust_patches

    # Before anything starts (an embedded broker, the topics): a Faust the patches were not
    # written against is one line (PatchMismatch), with or without a broker to reach.
    install_faust_patches()
    settings = _settings(args)
    broker: EmbeddedBroker | None = None
    if settings.embedded:
        settings = _settings(args, defaults=GROUP_TIMEOUTS)
        broker = EmbeddedBroker(settings.embedded_port)
        broker.start()
        settings = settings.on_embedded_broker(broker.bootstrap_servers)
        print(f"embedded broker (in memory) at {broker.bootstrap_servers}", flush=True)
        print(
            "development mode: plain http and loopback endpoints are allowed "
            f"(networks allowed: {', '.join(settings.allow_networks)})",
            flush=True,
        )
    elif settings.kafka_session_timeout < _KAFKA_LOWEST_SESSION_TIMEOUT:
        logging.getLogger(__name__).warning(
            "kafka_session_timeout %gs is below %gs, the lowest Apache Kafka accepts unless its "
            "group.min.session.timeout.ms is lowered: such a broker refuses the worker's join",
            settings.kafka_session_timeout,
            _KAFKA_LOWEST_SESSION_TIMEOUT,
        )
    tune_gc()
    loop = _new_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    try:
        _check_web_port(settings)
        try:
            report = loop.run_until_complete(apply_topics(settings))
        except KafkaError as exc:
            # One line, as the management commands' (until 2026-12-07 a traceback).
            raise _kafka_failure(settings, exc) from None
        if report.created:
            print(f"created topics: {', '.join(report.created)}", flush=True)
        bridge = Bridge(settings)
        print(
            f"worker {settings.group_id}: kafka {settings.kafka_bootstrap_servers}, "
            f"{settings.web_url}/healthz, /readyz, /metrics"
            + (f", /v1 (role {settings.role})" if settings.serves_api else ""),
            flush=True,
        )
        worker = bridge.worker(loop)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0
    finally:
        if broker is not None:
            broker.stop()


#: The cyclic garbage collector's thresholds in a worker (Python's defaults: 700, 10, 10).
WORKER_GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Collect cyclic garbage less often than Python's defaults.

    A worker allocates a few hundred objects per event and keeps its tables for good; with the
    defaults, collections of the older generations showed as latency steps at half load (see
    BENCHMARKS.md, *Cyclic GC thresholds*).
    """
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The worker's event loop: uvloop unless asked for the standard library's.

    uvloop becomes the process's event loop policy, so that the loops Faust starts in its own
    threads (the consumer's) are uvloop too.
    """
    policy: asyncio.AbstractEventLoopPolicy | None = None
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # not built for this platform
            print("uvloop is not installed; using the asyncio event loop", file=sys.stderr)
        else:
            policy = uvloop.EventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    return asyncio.new_event_loop()


def _broker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    port = args.port if args.port is not None else settings.embedded_port
    broker = EmbeddedBroker(port)
    broker.start()
    print(f"embedded broker (in memory) at {broker.bootstrap_servers}; Ctrl-C stops it", flush=True)
    stopped = False

    def stop(*_: Any) -> None:
        nonlocal stopped
        stopped = True

    # SIGINT too, whatever it was on entry: a process started in the background of a script
    # inherits SIGINT ignored, and until 2026-12-07 such a broker went on after Ctrl-C's signal.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopped:
            signal.pause()
    finally:
        broker.stop()
    return 0


def _topics_apply(args: argparse.Namespace) -> int:
    from bridge.admin.topics import apply_topics

    report = _run_managed(args, lambda settings: apply_topics(settings, fail_on_drift=False))
    for name in report.created:
        print(f"created  {name}")
    for name in report.existing:
        print(f"exists   {name}")
    for drift in report.drift:
        print(f"DRIFT    {drift}", file=sys.stderr)
    if report.drift:
        raise TopicDrift(f"{len(report.drift)} topic setting(s) differ from topics/topics.json")
    return 0


def _webhooks_create(args: argparse.Namespace) -> int:
    from bridge.subscriptions.store import WebhookStore

    async def create(settings: Settings) -> Webhook:
        if args.site_id is None and args.user_id is None:
            raise ConfigError("an account-scoped webhook (no --site-id) needs --user-id")
        _check_endpoint(args.url, settings)
        async with WebhookStore(settings) as store:
            return await store.create(
                url=args.url,
                events=args.events,
                site_id=args.site_id,
                user_id=args.user_id,
                name=args.name,
                secret=args.secret,
                webhook_id=args.webhook_id,
                active=not args.inactive,
                rate_limit=args.rate_limit,
                standard=args.standard_webhooks,
            )

    webhook = _run_managed(args, create)
    print(shown(f"id      {webhook.id}"))
    if args.secret is None:
        print(f"secret  {webhook.secret}")
    return 0


def _webhooks_update(args: argparse.Namespace) -> int:
    from bridge.subscriptions.store import WebhookStore

    async def update(settings: Settings) -> Webhook:
        changes = {
            k: getattr(args, k)
            for k in ("url", "events", "site_id", "name", "secret", "active", "rate_limit")
            if getattr(args, k) is not None
        }
        if args.standard_webhooks is not None:
            changes["standard_webhooks"] = args.standard_webhooks
        if args.url is not None:
            _check_endpoint(args.url, settings)
        if changes.get("rate_limit") == 0:
            changes["rate_limit"] = None
        if not changes:
            raise ConfigError("nothing to change: give at least one of --url, --events, ...")
        async with WebhookStore(settings) as store:
            return await store.update(args.webhook_id, **changes)

    webhook = _run_managed(args, update)
    print(shown(f"updated {webhook.id}"))
    return 0


def _check_endpoint(url: str, settings: Settings) -> None:
    """Refuse a URL no deployment could call; warn of one that workers of these settings
    refuse (plain http, an address their SSRF guard forbids): this command may run with other
    settings than the workers', so it writes the webhook, whose deliveries such workers
    dead-letter (``destination_forbidden``)."""
    from bridge.http.ssrf import DestinationForbidden
    from bridge.kafka.clients import endpoint_check
    from bridge.subscriptions.urls import InvalidUrl

    try:
        endpoint_check(settings)(url)
    except InvalidUrl as exc:  # judged first, whatever the policy
        raise ConfigError(f"--url refused ({exc.reason}): {exc.detail}") from None
    except DestinationForbidden as exc:
        print(
            f"warning: workers with these settings refuse this endpoint ({exc.reason}: "
            f"{exc.detail}) and dead-letter its deliveries (BRIDGE_ALLOW_HTTP, "
            "BRIDGE_ALLOW_NETWORKS)",
            file=sys.stderr,
        )


def _webhooks_rotate(args: argparse.Namespace) -> int:
    from bridge.config import parse_duration
    from bridge.subscriptions.store import WebhookStore

    async def rotate(settings: Settings) -> Webhook:
        try:
            overlap = parse_duration(args.overlap)
        except ValueError as exc:
            raise ConfigError(f"--overlap: {exc}") from None
        async with WebhookStore(settings) as store:
            return await store.rotate_secret(args.webhook_id, secret=args.secret, overlap=overlap)

    webhook = _run_managed(args, rotate)
    print(shown(f"id      {webhook.id}"))
    if args.secret is None:
        print(f"secret  {webhook.secret}")
    if webhook.previous_secret_expires_at:
        # X-Webhook-Signature carries one signature: the new secret's, from now on. An overlap
        # is taken of a Standard Webhooks webhook only (overlap_needs_standard_webhooks
        # otherwise, as the API answers: until 2026-12-07 a webhook without those headers
        # took one, which no delivery carried).
        print("X-Webhook-Signature is signed with the new secret from the next delivery on")
        print(
            "previous secret also signs the Standard Webhooks header (webhook-signature) "
            f"until {webhook.previous_secret_expires_at}"
        )
    return 0


def _webhooks_test(args: argparse.Namespace) -> int:
    from bridge.admin.publish import send_test_event
    from bridge.subscriptions.store import WebhookStore

    async def test(settings: Settings) -> Event:
        async with WebhookStore(settings) as store:
            webhook = (await store.load(reveal=False)).get(args.webhook_id)
        if webhook is None:
            raise ConfigError(f"no webhook {args.webhook_id!r}")
        return await send_test_event(
            settings, webhook, args.message, site_id=args.site_id, user_id=args.user_id
        )

    event = _run_managed(args, test)
    print(shown(f"published test.event {event.id}"))
    # What `deliveries show` takes, once the delivery is attempted.
    print(f"delivery {delivery_id(event.id, args.webhook_id)}")
    return 0


@_reads_api
def _webhooks_recover(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bridge.admin.recovery import DEFAULT_RATE, Operation, RecoveryRequest, recover
    from bridge.config import parse_time
    from bridge.subscriptions.store import WebhookStore

    try:
        since = parse_time(args.since)
        # Past now is now, as the API has it: a recovery reads what the topic holds when it
        # starts (until 2026-12-06 a later until was reported that it never read to).
        now = datetime.now(UTC)
        until = min(parse_time(args.until), now) if args.until is not None else now
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    async def run(settings: Settings) -> Operation:
        async with WebhookStore(settings) as store:
            webhook = (await store.load(reveal=False)).get(args.webhook_id)
        if webhook is None:
            raise ConfigError(f"no webhook {args.webhook_id!r}")
        if not webhook.active:
            raise ConfigError(f"webhook {args.webhook_id!r} is inactive: nothing would be sent")
        try:
            request = RecoveryRequest(
                webhook,
                since,
                until,
                delivery_id=args.delivery_id,
                rate=DEFAULT_RATE if args.rate is None else args.rate,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return await recover(settings, Operation(request))

    api = _api(args)
    if api is None:
        operation = _run_managed(args, run)
        print(json.dumps(operation.as_dict()))
        if args.delivery_id is not None and operation.enqueued == 0:
            # As the API answers 404 (until 2026-12-07 this ended 0, nothing sent).
            # The delivery ids of another webhook's deliveries are never this webhook's: say
            # which webhook was read (until 2026-12-07 a delivery of another webhook was only
            # "not between --since and --until").
            raise _not_redelivered(
                args.delivery_id,
                operation.error,
                gone=f"to webhook {args.webhook_id!r} between --since and --until",
            )
        _require_done(operation.as_dict())
        return 0
    with api:
        if args.delivery_id is not None:
            # The API redelivers one delivery as `deliveries redeliver` does: the delivery of
            # this webhook (until 2026-12-06 ID was not sent: a delivery of any webhook was
            # redelivered), its event found by its attempts, so no window or rate applies.
            print(
                "through the API, --delivery finds its event by the delivery's attempts: "
                "--since, --until and --rate are not used",
                file=sys.stderr,
            )
            path = f"/v1/deliveries/{path_segment(args.delivery_id)}/redeliver"
            started = api.post(path, params={"webhook_id": args.webhook_id})
        else:
            body: dict[str, Any] = {"since": _rfc3339(since.timestamp())}
            body["until"] = _rfc3339(until.timestamp())
            if args.rate is not None:
                body["rate"] = args.rate
            started = api.post(f"/v1/webhooks/{path_segment(args.webhook_id)}/recoveries", body)
        ended = api.finished(started)
        print(json.dumps(ended))
    if args.delivery_id is not None and ended.get("enqueued") == 0:
        # As without the API (until 2026-12-07 a redelivery that sent nothing ended 0 here).
        raise _not_redelivered(args.delivery_id, ended.get("error"))
    _require_done(ended)
    return 0


def _require_done(view: Mapping[str, Any]) -> None:
    """A recovery that ended other than ``done`` (cancelled, or failed: its webhook turned
    off, say) ends the command 1, naming how and what it had sent: until 2026-12-07 it ended
    0, its view on stdout the only word of it."""
    state = view.get("state")
    if state != "done":
        error = view.get("error")
        raise ConfigError(
            f"recovery {view.get('id')} ended {state}"
            + (f" ({error})" if error else "")
            + f" after {view.get('enqueued', 0)} of its events were sent again"
        )


@_reads_api
def _webhooks_recoveries(args: argparse.Namespace) -> int:
    from bridge.admin.recovery import recorded_recoveries
    from bridge.subscriptions.store import WebhookStore

    api = _api(args)
    if api is not None:
        path = f"/v1/webhooks/{path_segment(args.webhook_id)}/recoveries"
        params = {"limit": "100", **({"state": args.state} if args.state else {})}
        with api:
            records = api.pages(path, params)
    else:

        async def read(settings: Settings) -> list[dict[str, Any]]:
            records = await recorded_recoveries(settings, args.webhook_id)
            if not records:  # as /v1 answers 404 (until 2026-12-07 this printed nothing)
                async with WebhookStore(settings) as store:
                    if args.webhook_id not in await store.load(reveal=False):
                        raise ConfigError(f"no webhook {args.webhook_id!r}")
            return records

        records = _run_managed(args, read)
        if args.state is not None:
            records = [r for r in records if r.get("state") == args.state]
    fields = (
        "id", "kind", "webhook_id", "since", "until", "delivery_id", "rate", "state", "scanned",
        "enqueued", "invalid", "progress", "error", "resumed", "started_at", "finished_at",
    )  # fmt: skip
    for record in records:
        view = {name: record.get(name) for name in fields}  # (no positions or runner)
        print(json.dumps(view) if args.json else shown(_recovery_line(view)))
    return 0


def _recovery_line(record: dict[str, Any]) -> str:
    what = f"delivery {record['delivery_id']}" if record["delivery_id"] else "events"
    line = (
        f"{record['id']}  {record['state']:<9}  started {record['started_at']}  {what} "
        f"{record['since']} .. {record['until']}  enqueued {record['enqueued']} of "
        f"{record['scanned']} read"
    )
    return line + (f"  error {record['error']}" if record["error"] else "")


def _api(args: argparse.Namespace) -> Any:
    """The ``/v1`` client when ``--api-url`` (``BRIDGE_API_URL``) is set, else ``None``."""
    from bridge.cli.api_client import ApiClient

    settings = _settings(args)
    if settings.api_url is None:
        return None
    return ApiClient(settings.api_url, settings.api_token)


def _attempt_line(attempt: Any) -> str:
    answer = "-" if attempt.status is None else str(attempt.status)
    size = "-" if attempt.response_bytes is None else f"{attempt.response_bytes}B"
    if attempt.response_truncated:
        size += "+"  # the cap ended the body: at least this much
    # An operator's sending again counts its attempts from 1 again: told apart from the event's.
    number = f"attempt {attempt.attempt}"
    if attempt.trigger == "manual":
        number = f"manual attempt {attempt.attempt}"
        if attempt.recovery_id is not None:
            number = f"{number} ({escaped(attempt.recovery_id)})"
    line = (
        f"{attempt.at}  {attempt.delivery_id}  {attempt.event_type}  {number}  "
        f"{attempt.outcome}  {answer}  {attempt.error or '-'}  {attempt.duration_seconds:.3f}s  "
        f"{size}"
    )
    if attempt.next_at:
        line = f"{line}  -> {attempt.next} at {attempt.next_at}"
    elif attempt.next:
        line = f"{line}  -> {attempt.next}"
    if attempt.response_prefix is not None:
        line = f'{line}  body "{escaped(attempt.response_prefix)}"'
    return line


@_reads_api
def _webhooks_attempts(args: argparse.Namespace) -> int:
    from bridge.attempts.log import LogQuery
    from bridge.config import parse_time

    try:
        query = LogQuery(
            event_type=args.event_type,
            outcome=args.outcome,
            status_class=args.status_class,
            since=parse_time(args.since).timestamp() if args.since is not None else None,
            until=parse_time(args.until).timestamp() if args.until is not None else None,
            trigger=args.trigger,
            recovery_id=args.recovery_id,
        )
        if not 1 <= args.limit <= 1000:
            raise ValueError("--limit must be between 1 and 1000")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    api = _api(args)
    if api is not None:
        from bridge.attempts.record import Attempt

        params = {
            k: v
            for k, v in {
                "event_type": args.event_type,
                "outcome": args.outcome,
                "status_class": args.status_class,
                "trigger": args.trigger,
                "recovery_id": args.recovery_id,
                "since": _rfc3339(query.since),
                "until": _rfc3339(query.until),
                "limit": str(args.limit),
            }.items()
            if v is not None
        }
        with api:
            answer = api.get(f"/v1/webhooks/{path_segment(args.webhook_id)}/attempts", params)
        items = [Attempt.of(item) for item in answer["items"]]
    else:
        now = time.time()
        reading = _run_managed(
            args, lambda settings: _read_activity(settings, args.webhook_id, now)
        )
        items = reading.activity.log.page(query, now=now, limit=args.limit).items
    for attempt in items:
        print(json.dumps(attempt.as_dict()) if args.json else shown(_attempt_line(attempt)))
    return 0


async def _read_activity(settings: Settings, webhook_id: str, now: float) -> Any:
    """A webhook's log and stats read from the attempts topic; an id with no attempt kept and
    no webhook fails, as ``/v1`` answers it ``404`` (until 2026-12-06 this printed nothing, as
    for a webhook yet to be called). A deleted webhook's log is still read here."""
    from bridge.admin.activity import read_activity
    from bridge.subscriptions.store import WebhookStore

    reading = await read_activity(settings, webhook_id, now=now)
    if not len(reading.activity.log):
        async with WebhookStore(settings) as store:
            if webhook_id not in await store.load(reveal=False):  # (its secret not needed)
                raise ConfigError(f"no webhook {webhook_id!r}, and no attempt of it is kept")
    return reading


def _rfc3339(seconds: float | None) -> str | None:
    from datetime import UTC, datetime

    from bridge.contract.events import format_timestamp

    return None if seconds is None else format_timestamp(datetime.fromtimestamp(seconds, UTC))


@_reads_api
def _webhooks_stats(args: argparse.Namespace) -> int:
    from bridge.attempts.stats import WINDOWS, WindowStats

    api = _api(args)
    if api is not None:
        with api:
            answer = api.get(f"/v1/webhooks/{path_segment(args.webhook_id)}/stats")
        windows = [WindowStats.of(name, shown) for name, shown in answer["windows"].items()]
        last_success, last_failure = answer["last_success_at"], answer["last_failure_at"]
        as_json = answer  # with the webhook's state, which only the API tells
    else:
        now = time.time()
        reading = _run_managed(
            args, lambda settings: _read_activity(settings, args.webhook_id, now)
        )
        stats = reading.activity.stats
        windows = [stats.window(name, now) for name in WINDOWS]
        last_success = stats.last_success.at if stats.last_success else None
        last_failure = stats.last_failure.at if stats.last_failure else None
        as_json = {
            "webhook_id": args.webhook_id,
            "windows": {w.window: w.as_dict() for w in windows},
            "last_success_at": last_success,
            "last_failure_at": last_failure,
        }
    if args.json:
        print(json.dumps(as_json))
        return 0

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}s"

    print("window  attempts  successes  failures  failure_ratio  p50      p99      skipped")
    for w in windows:
        ratio = "-" if w.failure_ratio is None else f"{w.failure_ratio:.3f}"
        print(
            shown(
                f"{w.window:<6}  {w.attempts:>8}  {w.successes:>9}  {w.failures:>8}  {ratio:>13}  "
                f"{seconds(w.latency_p50):<7}  {seconds(w.latency_p99):<7}  {w.skipped:>7}"
            )
        )
    print(shown(f"last success: {last_success or '-'}  last failure: {last_failure or '-'}"))
    return 0


@_reads_api
def _deliveries_show(args: argparse.Namespace) -> int:
    from bridge.admin.activity import find_delivery
    from bridge.api.control import delivery_state
    from bridge.attempts.record import Attempt

    api = _api(args)
    if api is not None:
        with api:
            answer = api.get(
                f"/v1/deliveries/{path_segment(args.delivery_id)}", params=_of_webhook(args)
            )
        attempts = [Attempt.of(item) for item in answer["attempts"]]
    else:
        attempts = _run_managed(
            args,
            lambda settings: find_delivery(settings, args.delivery_id, webhook_id=args.webhook_id),
        )
    if not attempts:
        raise ConfigError(f"no attempt of delivery {args.delivery_id!r} in the attempts topic")
    for attempt in attempts:
        print(json.dumps(attempt.as_dict()) if args.json else shown(_attempt_line(attempt)))
    if not args.json:  # as /v1/deliveries/{id} says it, from its last attempt
        print(f"state {delivery_state(attempts)}")
    return 0


def _of_webhook(args: argparse.Namespace) -> dict[str, str]:
    """The query naming a delivery's webhook (``--webhook``): one log asked, not every one."""
    return {} if args.webhook_id is None else {"webhook_id": args.webhook_id}


@_reads_api
def _deliveries_redeliver(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bridge.admin.activity import find_delivery
    from bridge.admin.recovery import Operation, RecoveryRequest, recover
    from bridge.subscriptions.store import WebhookStore

    async def run(settings: Settings) -> Operation | None:
        attempts = await find_delivery(settings, args.delivery_id, webhook_id=args.webhook_id)
        if not attempts:
            raise ConfigError(f"no attempt of delivery {args.delivery_id!r} in the attempts topic")
        first = attempts[0]
        async with WebhookStore(settings) as store:
            webhook = (await store.load(reveal=False)).get(first.webhook_id)
        if webhook is None or not webhook.active:
            raise ConfigError(f"webhook {first.webhook_id!r} is gone or inactive")
        # The event was published before its first attempt, at most the events' retention
        # earlier, and not before the epoch (no record is stamped earlier: until 2026-12-06
        # an attempt recorded in year 1 made this a traceback); the reading stops at the
        # delivery.
        since = max(0.0, first.at_seconds - settings.delivery_log_max_age)
        until = first.at_seconds + 1
        if until <= since:
            return None
        request = RecoveryRequest(
            webhook,
            datetime.fromtimestamp(since, UTC),
            datetime.fromtimestamp(until, UTC),
            delivery_id=args.delivery_id,
        )
        return await recover(settings, Operation(request))

    api = _api(args)
    if api is not None:
        with api:
            started = api.post(
                f"/v1/deliveries/{path_segment(args.delivery_id)}/redeliver",
                params=_of_webhook(args),
            )
            ended = api.finished(started)
            enqueued, error = int(ended["enqueued"]), ended.get("error")
    else:
        operation = _run_managed(args, run)
        enqueued = 0 if operation is None else operation.enqueued
        error = None if operation is None else operation.error
    if enqueued == 0:
        raise _not_redelivered(args.delivery_id, error)
    print(shown(f"redelivering {args.delivery_id}"))
    return 0


def _not_redelivered(delivery_id: str, error: object, *, gone: str | None = None) -> ConfigError:
    """Why a redelivery that sent nothing did not: its webhook no longer gets the event (until
    2026-12-07 every such redelivery said the event had left the source topics), else its event
    is gone (from the source topics, or ``gone``: from the window a recovery read)."""
    from bridge.admin.recovery import NOT_RECEIVING

    if error == NOT_RECEIVING:
        return ConfigError(
            f"the webhook of delivery {delivery_id!r} no longer gets its event (its events, "
            "site or account changed, or it is off): nothing sent"
        )
    if gone is not None:
        return ConfigError(f"no event of delivery {delivery_id!r} {gone}")
    return ConfigError(f"the event of delivery {delivery_id!r} is no longer in the source topics")


def _webhooks_delete(args: argparse.Namespace) -> int:
    from bridge.subscriptions.store import WebhookStore

    async def delete(settings: Settings) -> None:
        async with WebhookStore(settings) as store:
            # As /v1 answers 404 (until 2026-12-06 this printed "deleted" for any id). Its
            # secret is not needed (not decrypted): until 2026-12-07 a webhook whose secret
            # these settings' secret_keys could not decrypt was "no webhook" here.
            if args.webhook_id not in await store.load(reveal=False):
                raise ConfigError(f"no webhook {args.webhook_id!r}")
            await store.delete(args.webhook_id)

    _run_managed(args, delete)
    print(shown(f"deleted {args.webhook_id}"))
    return 0


def _webhooks_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bridge.redaction import url_without_userinfo
    from bridge.subscriptions.store import WebhookStore

    async def load(settings: Settings) -> dict[str, Webhook]:
        # Secrets are never listed, so not decrypted: until 2026-12-07 a webhook whose secret
        # these settings' secret_keys (none, or a wrong key) could not decrypt was left out.
        async with WebhookStore(settings) as store:
            return await store.load(reveal=False)

    webhooks = _run_managed(args, load)
    now = datetime.now(UTC)
    for webhook in sorted(webhooks.values(), key=lambda w: w.id):
        record = webhook.to_record()
        if webhook.overlap_end(now) is None:
            # An overlap that has ended, or that no header carries, is not shown (the next
            # change drops it from the record), as the API shows none.
            record.pop("previous_secret", None)
            record.pop("previous_secret_expires_at", None)
        for field in ("secret", "previous_secret"):
            if record.get(field) is not None:
                record[field] = "***"
        record["url"] = url_without_userinfo(webhook.url)
        record["name"] = webhook.shown_name()
        if args.json:
            print(json_line(record))
        else:
            scope = f"site {webhook.site_id}" if webhook.site_id else f"account {webhook.user_id}"
            state = webhook.state
            if state == "disabled":  # by the bridge: why (a record's text, escaped)
                reason = webhook.extra.get("disabled_reason")
                why = reason if reason in ("gone", "failing") else json.dumps(str(reason))
                state = f"disabled ({why})"
            events = ",".join(sorted(webhook.events))
            print(shown(f"{webhook.id}  {state:8}  {scope}  {events}  {record['url']}"))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from bridge.admin.publish import publish_events

    async def publish(settings: Settings) -> Event:
        event = build_event(
            args.event_type,
            _event_data(args.data),
            site_id=args.site_id,
            user_id=args.user_id,
            event_id=args.event_id,
        )
        await publish_events(settings, [event])
        return event

    event = _run_managed(args, publish)
    print(shown(f"published {event.type} {event.id}"))
    return 0


#: The largest ``--data`` read (bytes): a Kafka broker takes a record of 1 MiB by default, and
#: the worker delivers an event's body of at most ``max_body_bytes`` (100 KiB by default).
MAX_DATA_BYTES = 1024 * 1024


def _event_data(argument: str) -> dict[str, Any]:
    """``--data``: a JSON object given inline, read from a file (``@FILE``) or from stdin
    (``-`` or ``@-``), as curl reads its ``--data``."""
    from bridge.contract import jsoncanon

    if argument in ("-", "@-"):
        text: bytes | str = sys.stdin.buffer.read(MAX_DATA_BYTES + 1)
        source = "--data from stdin"
    elif argument.startswith("@"):
        path = argument[1:]
        try:
            with open(path, "rb") as file:
                text = file.read(MAX_DATA_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"--data @{path}: {exc.strerror or exc}") from None
        source = f"--data @{path}"
    else:
        text, source = argument, ""
    if len(text) > MAX_DATA_BYTES:
        # Read up to the bound, not whole (until 2026-12-07 `--data @/dev/zero` grew the
        # command by 200-300 MB a second until killed).
        raise ConfigError(f"{source or '--data'} is larger than {MAX_DATA_BYTES:,} bytes")
    try:
        data = jsoncanon.loads(text)
    except InvalidRecord as exc:
        if exc.reason != "malformed_json" or not source:
            raise
        raise InvalidRecord(exc.reason, f"{source} is not JSON: {exc.detail}") from None
    if not isinstance(data, dict):
        raise InvalidRecord("schema_invalid", "--data must be a JSON object")
    return data


def _dead_letter_filter(args: argparse.Namespace) -> Any:
    from bridge.admin.dead_letters import DeadLetterFilter
    from bridge.config import parse_time

    try:
        since = parse_time(args.since) if args.since is not None else None
        until = parse_time(args.until) if args.until is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if since is not None and until is not None and until <= since:
        # As /v1/dead-letters refuses it (until 2026-12-07 taken, and nothing matched).
        raise ConfigError("--until must be after --since")
    return DeadLetterFilter(args.webhook_id, args.delivery_id, since, until)


def _dlq_list(args: argparse.Namespace) -> int:
    from contextlib import aclosing

    from bridge.admin.dead_letters import stream_dead_letters

    async def listing(settings: Settings) -> None:
        # Printed as read: the topic is never held in memory.
        letters = stream_dead_letters(settings, _dead_letter_filter(args))
        async with aclosing(letters) as records:
            async for record in records:
                print(json_line(record))

    _run_managed(args, listing)
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from bridge.admin.dead_letters import ReplayReport, replay_dead_letters
    from bridge.subscriptions.store import WebhookStore

    where = _dead_letter_filter(args)

    async def replay(settings: Settings) -> ReplayReport:
        current: dict[str, Webhook] | None = None

        async def webhook(webhook_id: str) -> Webhook | None:
            # Read once, at the first letter; its secrets are not needed (not decrypted): a
            # shell without the workers' secret_keys judges the webhooks as they do (until
            # 2026-12-06 their webhooks seemed gone, and their letters were skipped).
            nonlocal current
            if current is None:
                async with WebhookStore(settings) as store:
                    current = await store.load(reveal=False)
            return current.get(webhook_id)

        return await replay_dead_letters(settings, where, webhooks=webhook)

    report = _run_managed(args, replay)
    for delivery in report.replayed:
        print(shown(f"replayed {delivery}"))
    print(f"{len(report.replayed)} replayed, {report.skipped} skipped{_skips(report)}")
    # Exit 1 when nothing was sent, as `deliveries redeliver` (until 2026-12-07 this ended 0):
    # every letter matched was skipped, or the delivery named has no letter.
    if report.skipped and not report.replayed:
        raise ConfigError("nothing replayed: every matching dead letter was skipped")
    if args.delivery_id is not None and not report.replayed:
        raise ConfigError(f"no dead letter of delivery {args.delivery_id!r} to replay")
    return 0


#: How ``dlq replay`` names each reason a letter was not replayed.
_SKIP_WORDS = {
    "unreadable": "unreadable (an invalid event, no webhook or delivery id)",
    "webhook_gone": "webhook gone or replaced",
    "webhook_off": "webhook turned off (turn it on, then replay)",
    "not_receiving": "webhook no longer gets the event",
    "already_replayed": "a delivery's further letter",
    "wrong_delivery_id": "a delivery id its event and webhook do not make",
}


def _skips(report: Any) -> str:
    counted = [f"{n} {_SKIP_WORDS[r]}" for r, n in report.skipped_by_reason.items() if n]
    return f": {'; '.join(counted)}" if counted else ""


def token_flags(parser: argparse.ArgumentParser) -> None:
    """The flags describing a new API token (``tokens add``, ``python -m bridge.api token``)."""
    parser.add_argument("--name", required=True, help="shown in logs and errors, never the token")
    parser.add_argument("--scopes", default="read,write", help="read, write or read,write")
    parser.add_argument("--site-id", help="restrict the token to this site's webhooks")
    parser.add_argument("--user-id", help="restrict the token to this account's webhooks")


def made_token(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """A new token and its token-file entry, as :func:`token_flags` described it;
    ``ConfigError`` for an entry a token file would refuse."""
    from bridge.api.auth import new_token, token_entry

    token = new_token()
    scopes = [s for s in args.scopes.split(",") if s]
    entry = token_entry(
        token, name=args.name, scopes=scopes, site_id=args.site_id, user_id=args.user_id
    )
    return token, entry


def _tokens_add(args: argparse.Namespace) -> int:
    """The token alone on stdout (``TOKEN=$(webhook-bridge tokens add ...)``), once: the file
    keeps its SHA-256 only."""
    from bridge.api.auth import add_token

    token, entry = made_token(args)
    add_token(args.file, entry)
    # The path as given, escaped: it is the caller's, but a terminal acts on what it holds
    # (until 2026-12-07 printed raw, escape sequences and all).
    print(
        shown(
            f"added token {args.name!r} to {args.file} (shown once; workers read the file at start)"
        ),
        file=sys.stderr,
    )
    print(token)
    return 0


def _receive(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bridge.cli.receiver import make_receiver_app

    print(f"receiving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    try:
        web.run_app(
            make_receiver_app(args.secrets, status=args.status),
            host=args.host,
            port=args.port,
            print=None,
            access_log=None,
        )
    except OSError as exc:  # a port in use, a host not of this machine (was a traceback)
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or type(exc).__name__}"
        ) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``webhook-bridge`` console script."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    for n, argument in enumerate(arguments, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            # Bytes that are not UTF-8 (Python holds them as lone surrogates): refused here,
            # not shown (the argument may be a secret). Until 2026-12-07 they reached the
            # commands: a traceback writing them to Kafka or a URL, or a token file's name the
            # API could never use.
            after = f" (after {arguments[n - 2]})" if n > 1 and arguments[n - 2][:2] == "--" else ""
            print(f"webhook-bridge: argument {n}{shown(after)} is not valid UTF-8", file=sys.stderr)
            return 2
    args = _parser().parse_args(arguments)
    try:
        return int(args.handler(args))
    except BridgeError as exc:
        print(f"webhook-bridge: {shown(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
