"""Rendering the Helm chart with ``helm template`` and picking objects out of the result."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import REPO

__all__ = [
    "CHART_DIR",
    "CI_VALUES",
    "Chart",
    "DuplicateKeyError",
    "Rendered",
    "RenderError",
    "load_all_strict",
]

CHART_DIR = REPO / "helm" / "webhook-bridge"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "wb"
NAMESPACE = "bridge"


class RenderError(Exception):
    """``helm template`` failed; the message is helm's error output."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of the rendered YAML repeats a key."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key twice in one mapping: PyYAML keeps the last value
    silently, while the API server (strict decoding) refuses or one tool keeps the first."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise DuplicateKeyError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def load_all_strict(text: str) -> list[Any]:
    """The documents of a YAML stream, refusing duplicate keys (:class:`DuplicateKeyError`)."""
    return list(yaml.load_all(text, Loader=_StrictLoader))  # noqa: S506 - a SafeLoader


@dataclass(frozen=True)
class Rendered:
    """The objects of one rendering, in helm's order."""

    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.all(kind)
            if component is None
            or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


class Chart:
    """Runs helm on the chart; renderings are cached per arguments."""

    def __init__(self, helm: Path) -> None:
        self.helm = helm
        self._cache: dict[tuple[Any, ...], Rendered] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm), *args], capture_output=True, text=True, timeout=60, check=False
        )

    def lint(self, values_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--values", str(values_file)] if values_file else []
        return self.run("lint", "--strict", str(CHART_DIR), *extra)

    def render(
        self,
        values_files: Iterable[Path] = (),
        values: Mapping[str, Any] | None = None,
        *,
        show_only: str | None = None,
        namespace: str = NAMESPACE,
    ) -> Rendered:
        """``helm template`` with values files, then ``values`` (a nested dict) on top, for a
        release in ``namespace``."""
        files = tuple(str(f) for f in values_files)
        key = (files, json.dumps(values or {}, sort_keys=True), show_only, namespace)
        if key not in self._cache:
            self._cache[key] = self._render(files, values or {}, show_only, namespace)
        return self._cache[key]

    def _render(
        self,
        files: tuple[str, ...],
        values: Mapping[str, Any],
        show_only: str | None,
        namespace: str,
    ) -> Rendered:
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", namespace]
        for name in files:
            args += ["--values", name]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as extra:
            yaml.safe_dump(dict(values), extra)
        try:
            args += ["--values", extra.name]
            if show_only:
                args += ["--show-only", show_only]
            result = self.run(*args)
        finally:
            Path(extra.name).unlink()
        if result.returncode != 0:
            raise RenderError(result.stderr.strip())
        # Every rendering is read strictly: a key twice in a mapping is a template bug.
        objects = [o for o in load_all_strict(result.stdout) if o]
        return Rendered(objects)
