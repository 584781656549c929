"""The documentation: its generated table is current, its commands and metrics exist, and its
receiver examples verify real signed deliveries.

The Node.js checks run the examples of docs/receivers.md with the express installed in
tests/node; they are skipped when ``node`` or that install is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.api.metrics import ApiMetrics
from bridge.cli import commands as cli
from bridge.config import settings_reference
from bridge.contract.events import build_event
from bridge.contract.payload import EncodedEvent, build_body
from bridge.contract.signing import sign
from bridge.delivery.job import Job, SourceRef
from bridge.http.base import build_headers
from bridge.metrics import Metrics
from bridge.subscriptions.webhook import Webhook
from bridge.worker.embedded import free_port
from tests.support.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NODE_DIR = ROOT / "tests" / "node"
SETTINGS_START = "<!-- settings:start -->"
SETTINGS_END = "<!-- settings:end -->"
REGENERATE = (
    "regenerate the table between the markers with: python -c "
    "\"from bridge.config import settings_reference; print(settings_reference(), end='')\""
)

# Non-ASCII on purpose: the documentation says the key is the secret's UTF-8 bytes.
SECRET = "whsec_dG9wLXNlY3JldA-ü"

# Data a naive encoder gets wrong for JavaScript: reordered keys, floats that print differently,
# escapes, non-ASCII, text that looks like a surrogate escape (a lone surrogate itself is refused).
TRICKY = {
    "id": "post_123",
    "title": 'Ünïcödé ✓ 日本語 🎉 "quoted" \\ \n\t\u2028 </script> \\ud800',
    "b": 1,
    "10": 2,
    "2": 3,
    "ratio": 1.0,
    "small": 1.5e-07,
    "neg": -0.0,
    "big": 1e21,
    "max_safe": 9007199254740991,
    "nested": [{"x": [None, True, False]}],
}


# ------------------------------------------------------------------------------ markdown


def doc_files() -> list[Path]:
    """README.md (when present) and every docs/*.md."""
    readme = ROOT / "README.md"
    return ([readme] if readme.exists() else []) + sorted(DOCS.glob("*.md"))


_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.M | re.S,
)
_INLINE_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return [(m["info"].strip(), m["body"]) for m in _FENCE.finditer(text)]


def code_snippets(text: str) -> Iterator[str]:
    """Every line of the fenced blocks (continuations joined) and every inline code span."""
    for _, body in fenced_blocks(text):
        yield from body.replace("\\\n", " ").splitlines()
    for match in _INLINE_CODE.finditer(_FENCE.sub("", text)):
        yield match[1].replace("\n", " ")


def only_block(path: Path, language: str, marker: str) -> str:
    """The single fenced block of ``language`` in ``path`` that contains ``marker``."""
    blocks = [
        body
        for info, body in fenced_blocks(path.read_text(encoding="utf-8"))
        if info == language and marker in body
    ]
    assert len(blocks) == 1, f"expected one {language} block with {marker!r} in {path.name}"
    return blocks[0]


# ----------------------------------------------------------------------- (a) settings table


def test_configuration_md_holds_exactly_the_settings_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert text.count(SETTINGS_START) == 1, SETTINGS_START
    assert text.count(SETTINGS_END) == 1, SETTINGS_END
    table = text.split(SETTINGS_START + "\n", 1)[1].split(SETTINGS_END, 1)[0]
    assert table == settings_reference(), REGENERATE


# ------------------------------------------------------------------------- (b) commands

# Shell separators after which a new command starts; a bare "|" or "/" is kept inside words so
# that "create|update" and "list/replay" read as alternatives.
_SEPARATORS = re.compile(r"&&|\|\||;|\s\|\s|\s--\s|\$\(")
_INVOCATION = re.compile(
    r"^(?:\$\s+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:\S*/)?webhook-bridge(?:\s+(?P<rest>.*))?$"
)
_WORD = re.compile(r"^[a-z][a-z0-9-]*(?:[|/][a-z][a-z0-9-]*)*$")


def invocations(snippet: str) -> Iterator[list[str]]:
    """The argument lists of the ``webhook-bridge ...`` commands in one code snippet."""
    for part in _SEPARATORS.split(snippet):
        part = part.split(" #", 1)[0].strip().strip("'\"")
        match = _INVOCATION.match(part)
        if match is not None:
            yield (match["rest"] or "").split()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def problems(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in ``args`` the parser does not know: commands and actions, then flags."""
    out: list[str] = []
    path = "webhook-bridge"
    parsers = [parser]
    rest = list(args)
    while rest and (choices := subcommands(parsers[-1])) and _WORD.match(rest[0]):
        names = re.split(r"[|/]", rest.pop(0))
        unknown = [name for name in names if name not in choices]
        if unknown:
            out.append(f"{path} has no {'/'.join(unknown)} (it has {', '.join(choices)})")
            return out
        if len(names) > 1:  # alternatives: check each, without flags
            return out
        path += f" {names[0]}"
        parsers.append(choices[names[0]])
    flags = parsers[-1]._option_string_actions
    for token in rest:
        flag = token.strip("[]()\"'.,").split("=", 1)[0]
        if flag.startswith("--") and len(flag) > 2 and flag not in flags:
            out.append(f"{path} has no flag {flag}")
    return out


def test_every_documented_command_exists() -> None:
    parser = cli._parser()
    found: list[str] = []
    wrong: list[str] = []
    for path in doc_files():
        for snippet in code_snippets(path.read_text(encoding="utf-8")):
            for args in invocations(snippet):
                found.append(" ".join(args))
                wrong += [f"{path.name}: `{snippet.strip()}`: {p}" for p in problems(args, parser)]
    assert found, "no `webhook-bridge ...` command found in the documentation"
    assert not wrong, "\n".join(wrong)


def test_the_command_check_catches_mistakes() -> None:
    parser = cli._parser()
    assert problems(["webhooks", "create", "--url", "U", "--events", "*"], parser) == []
    assert problems(["webhooks", "create|update|rotate-secret|list"], parser) == []
    assert problems(["dlq", "list/replay", "[--webhook", "ID]"], parser) == []
    assert problems(["dlq", "list", "[--webhook", "ID]", "[--since", "T]"], parser) == []
    assert problems(["webhooks", "remove", "ID"], parser)
    assert problems(["webhooks", "create|remove"], parser)
    assert problems(["webhooks", "create/remove"], parser)
    assert problems(["replay"], parser)
    assert problems(["dlq", "list", "--webhook-id", "X"], parser)
    assert list(invocations("BRIDGE_X=1 webhook-bridge run --help && webhook-bridge dlq list")) == [
        ["run", "--help"],
        ["dlq", "list"],
    ]
    assert list(invocations("pip install 'webhook-bridge[embedded]'")) == []
    assert list(invocations("helm install webhook-bridge ./helm/webhook-bridge")) == []


# -------------------------------------------------------------------------- (c) metrics


def test_every_metric_is_in_metrics_md() -> None:
    path = DOCS / "metrics.md"
    if not path.exists():
        pytest.skip("docs/metrics.md is not written yet")
    text = path.read_text(encoding="utf-8")
    # A documented family such as `process_*` covers every metric of that prefix.
    families = tuple(m[1] + "_" for m in re.finditer(r"`([a-z][a-z0-9_]*)_\*`", text))
    registry = CollectorRegistry()
    Metrics(registry)
    ApiMetrics(registry)
    names = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
    assert names

    def documented(name: str) -> bool:
        return name.startswith(families) or re.search(rf"(?<!\w){name}(?!\w)", text) is not None

    missing = sorted(name for name in names if not documented(name))
    assert not missing, f"metrics not in docs/metrics.md: {missing}"


def _metric_row(text: str, name: str) -> str:
    """The row of docs/metrics.md's table that documents ``name``."""
    (row,) = [line for line in text.splitlines() if line.startswith(f"| `{name}` |")]
    return row


def test_metrics_md_says_records_read_again_are_counted_again() -> None:
    """Records are read at least once: one read again after a rebalance or restart counts as
    an event again, and is timed again (tests/unit/delivery/test_pipeline.py shows it). Until
    2026-12-07 the table said each valid event was observed once, and the events summed over
    workers (508 for 360 published) were taken for a fault; deliveries settled are the count to
    compare."""
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    events = _metric_row(text, "webhook_bridge_events_total")
    assert "read again after a rebalance or a restart" in events
    assert "counted again" in events
    assert "`webhook_bridge_deliveries_total`" in events
    stages = _metric_row(text, "webhook_bridge_event_stage_latency_seconds")
    assert "observed once per valid event (" not in stages
    assert "read again after a rebalance or a restart" in stages
    deliveries = _metric_row(text, "webhook_bridge_deliveries_total")
    assert "`webhook_bridge_jobs_joined_total`" in deliveries
    assert "counted again" in deliveries


# ------------------------------------------------------------- deliveries for the examples


def delivery(
    data: dict[str, Any] | None = None, secret: str = SECRET
) -> tuple[bytes, dict[str, str]]:
    """A real delivery body and its headers, as the bridge would send them."""
    event = build_event(
        "post.created",
        data if data is not None else TRICKY,
        site_id="site_789",
        user_id="user_456",
        timestamp=datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
    )
    webhook = Webhook(
        id="webhook_abc",
        name="My Webhook ✓",
        url="https://example.com/webhook",
        secret=secret,
        events=frozenset({"*"}),
        site_id="site_789",
        user_id="user_456",
    )
    body = build_body(EncodedEvent.of(event), webhook, max_bytes=1024 * 1024)
    job = Job(EncodedEvent.of(event), webhook, 1, SourceRef("events", 0, 0))
    return body, build_headers(job, body)


def tampered(signature: str) -> str:
    return ("0" if signature[0] != "0" else "1") + signature[1:]


# ------------------------------------------------------------------ (d) Python example


@pytest.fixture
def python_example(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The namespace of the docs' Python receiver block, run as a module (not as __main__)."""
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    source = only_block(DOCS / "receivers.md", "python", "ThreadingHTTPServer")
    namespace: dict[str, Any] = {"__name__": "receivers_example"}
    exec(compile(source, "docs/receivers.md", "exec"), namespace)
    return namespace


def test_python_example_verifies_what_the_bridge_signs(python_example: dict[str, Any]) -> None:
    verify_signature = python_example["verify_signature"]
    body, headers = delivery()
    signature = headers["X-Webhook-Signature"]
    assert signature == sign(SECRET, body)
    assert verify_signature(SECRET, body, signature) is True
    assert verify_signature(SECRET, body, signature.upper()) is True
    assert verify_signature(SECRET, body, tampered(signature)) is False
    assert verify_signature(SECRET, body.replace(b"post_123", b"post_124"), signature) is False
    assert verify_signature("another secret", body, signature) is False
    for bad in (None, "", signature[:-2], "é" * 64):
        assert verify_signature(SECRET, body, bad) is False


def test_python_example_server_reads_the_raw_body(python_example: dict[str, Any]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), python_example["WebhookHandler"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    body, headers = delivery()
    try:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            ok = client.post(url, content=body, headers=headers)
            assert (ok.status_code, ok.text) == (200, "OK")
            forged = {**headers, "X-Webhook-Signature": tampered(headers["X-Webhook-Signature"])}
            assert client.post(url, content=body, headers=forged).status_code == 401
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_the_aiohttp_example_runs_as_it_is_and_reads_the_raw_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole server, as the page shows it (until 2026-12-06 it needed the stdlib example's
    definitions to run)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PORT", "0")
    served: list[tuple[web.Application, int]] = []
    monkeypatch.setattr(web, "run_app", lambda app, port: served.append((app, port)))
    source = only_block(DOCS / "receivers.md", "python", "request.read()")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "docs/receivers.md", "exec"), namespace)
    [(app, port)] = served
    assert port == 0  # PORT is read
    body, headers = delivery()
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        ok = await client.post("/webhook", data=body, headers=headers)
        assert (ok.status, await ok.text()) == (200, "OK")
        forged = {**headers, "X-Webhook-Signature": tampered(headers["X-Webhook-Signature"])}
        assert (await client.post("/webhook", data=body, headers=forged)).status == 401


# ------------------------------------------------------------------- (e) Node.js examples

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None or not (NODE_DIR / "node_modules" / "express").exists(),
    reason="needs node and `npm ci` in tests/node (the test command does both)",
)


@contextmanager
def node_receiver(source: str, directory: Path) -> Iterator[str]:
    """Run a receiver example on a free port; yields its /webhook URL once it accepts."""
    assert NODE is not None
    script = directory / "receiver.js"
    script.write_text(source, encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "WEBHOOK_SECRET": SECRET,
        "NODE_PATH": str(NODE_DIR / "node_modules"),
    }
    log = directory / "node.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [NODE, str(script)], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}/webhook"

        def listening() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                httpx.get(url, timeout=1.0, trust_env=False)
            except httpx.TransportError:
                return False
            return True

        eventually_sync(listening, timeout=20.0, interval=0.05, message="receiver not listening")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@needs_node
@pytest.mark.parametrize(
    "marker",
    ["express.raw(", "express.json("],
    ids=["raw-body-variant", "documented-example"],
)
def test_node_example_verifies_real_deliveries(marker: str, tmp_path: Path) -> None:
    source = only_block(DOCS / "receivers.md", "js", marker)
    body, headers = delivery()
    # Over express.json()'s 100 kB default and under the bridge's 1 MiB max_body_bytes.
    big_body, big_headers = delivery({"id": "post_big", "title": "ü" * 200_000})
    assert 100 * 1024 < len(big_body) < 1024 * 1024
    forged = {**headers, "X-Webhook-Signature": tampered(headers["X-Webhook-Signature"])}
    with node_receiver(source, tmp_path) as url, httpx.Client(timeout=10, trust_env=False) as c:
        ok = c.post(url, content=body, headers=headers)
        assert (ok.status_code, ok.text) == (200, "OK")
        assert c.post(url, content=big_body, headers=big_headers).status_code == 200
        assert c.post(url, content=body, headers=forged).status_code == 401
        altered = body.replace(b"post_123", b"post_124")
        assert c.post(url, content=altered, headers=headers).status_code == 401
        if marker == "express.raw(":  # the documented example answers these with a 500
            unsigned = {k: v for k, v in headers.items() if k != "X-Webhook-Signature"}
            assert c.post(url, content=body, headers=unsigned).status_code == 401
            short = {**headers, "X-Webhook-Signature": "abc"}
            assert c.post(url, content=body, headers=short).status_code == 401


def test_receivers_md_states_the_clients_limits() -> None:
    """What a receiver is told of how its answer is read is what the client does."""
    from bridge.http.http1 import MAX_READS, MAX_RESPONSE, MAX_TLS_RECORDS

    text = " ".join((DOCS / "receivers.md").read_text().split())
    assert (
        f"At most {MAX_RESPONSE // 1024} KiB of your answer is read, in at most {MAX_READS} reads"
        in text
    )
    assert f"at most {MAX_TLS_RECORDS} TLS records are read" in text


def test_producers_md_names_the_logger_load_warns_on() -> None:
    """Until 2026-12-07 it named ``bridge.management``, a logger nothing logs on."""
    from bridge.subscriptions import store

    text = (DOCS / "producers.md").read_text(encoding="utf-8")
    (row,) = [line for line in text.splitlines() if line.startswith("| `load()` |")]
    assert f"on the `{store.log.name}` logger" in row
