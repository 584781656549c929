"""The package's layout: which subsystem may import which, and what each module exports."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import bridge

PACKAGE = Path(bridge.__file__).parent
MODULES = sorted(
    ".".join(("bridge", *path.relative_to(PACKAGE).with_suffix("").parts))
    for path in PACKAGE.rglob("*.py")
    if path.name not in ("__init__.py", "__main__.py")
)


def test_the_worker_never_loads_the_admin_tools_or_the_cli() -> None:
    code = (
        "import sys, bridge.worker.app, bridge.delivery.pipeline, bridge.kafka.outputs\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('bridge.admin', 'bridge.cli'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []


@pytest.mark.parametrize("tokens", [False, True])
def test_only_a_worker_serving_the_api_loads_it(tmp_path: Path, tokens: bool) -> None:
    """``Bridge.worker`` imports bridge.api (and through it the admin tools) only for a role
    with the API and a token file."""
    token_file = tmp_path / "tokens.json"
    token_file.write_text('{"tokens": []}')
    overrides = {
        "kafka_bootstrap_servers": "127.0.0.1:1",
        "data_dir": str(tmp_path / "data"),
        "api_tokens": str(token_file) if tokens else None,
    }
    code = (
        "import asyncio, sys\n"
        "from bridge.config import Settings\n"
        "from bridge.worker.app import Bridge\n"
        f"settings = Settings.load(env={{}}, overrides={overrides!r})\n"
        "Bridge(settings).worker(asyncio.new_event_loop())\n"
        "print(' '.join(m for m in sys.modules if m.startswith(\n"
        "    ('bridge.admin', 'bridge.cli', 'bridge.api', 'bridge.worker.api'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert ("bridge.worker.api" in found) == tokens
    if not tokens:
        assert found == []


def test_every_package_is_built_into_the_wheel() -> None:
    """setuptools builds the packages pyproject lists: one left out would be missing from the
    wheel, and from the image, though every test run from the repository passes."""
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("bridge", *path.parent.relative_to(PACKAGE).parts))
        for path in PACKAGE.rglob("__init__.py")
    }
    assert {"bridge", "bridge.worker"} <= found
    assert sorted(found - listed) == []


def _defined_public_names(path: Path) -> set[str]:
    """Public classes, functions and constants a module defines itself (not imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") and n != "log"}


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_what_the_module_defines_for_others(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"
    path = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
    unlisted = sorted(_defined_public_names(path) - set(exported))
    assert not unlisted, f"{name} defines public names missing from __all__: {unlisted}"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_opens_with_a_one_line_statement_of_its_job(name: str) -> None:
    doc = importlib.import_module(name).__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    assert len(doc.strip().splitlines()[0]) <= 100
