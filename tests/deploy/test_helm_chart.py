"""The Helm chart lints, renders for every scenario, and renders objects that Kubernetes accepts.

Built-in kinds are validated offline and strictly (unknown fields are errors) against the
Kubernetes JSON schemas shipped by the PyPI package kubernetes-validate, for the oldest Kubernetes
the chart supports and the newest the package knows. Custom resources (ServiceMonitor,
PrometheusRule, ScaledObject, TriggerAuthentication) have no schema there; they are validated
against the operators' models from npm (tests/deploy/node), not strictly: unknown fields pass.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.chart import CHART_DIR, CI_VALUES, Chart

pytestmark = pytest.mark.deploy

#: API groups of custom resources, validated by tests/deploy/node instead.
CUSTOM_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
SCENARIOS = [None, *CI_VALUES]
SCENARIO_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed: pip install it"
    )


def _kubernetes_versions(kv: Any) -> list[str]:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    oldest = chart["kubeVersion"].removeprefix(">=").split("-")[0].rsplit(".", 1)[0]
    return [oldest, kv.latest_version()]


def test_required_ci_scenarios_exist() -> None:
    names = {p.name for p in CI_VALUES}
    for required in (
        "minimal",
        "sasl-tls",
        "autoscaling-hpa",
        "keda",
        "monitoring",
        "networkpolicy",
        "api",
    ):
        assert f"{required}-values.yaml" in names


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_lint_strict(chart: Chart, values_file: Path | None) -> None:
    result = chart.lint(values_file)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_rendered_objects_validate_against_kubernetes_schemas(
    chart: Chart, kubernetes_validate: Any, values_file: Path | None
) -> None:
    rendered = chart.render([values_file] if values_file else [])
    assert rendered.objects
    errors = []
    for version in _kubernetes_versions(kubernetes_validate):
        for obj in rendered.objects:
            if obj["apiVersion"].startswith(CUSTOM_GROUPS):
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']} {path}: {exc}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{version}: no schema: {exc.message}")
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_errors(chart: Chart, kubernetes_validate: Any) -> None:
    deployment = chart.render().one("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(deployment, version, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def _validate_custom(objects: list[dict[str, Any]]) -> list[dict[str, str]]:
    found = tools.node_validator()
    if found is None:
        pytest.skip(
            "custom-resource validators not installed: npm ci --prefix tests/deploy/node "
            "(needs node)"
        )
    node, script = found
    result = subprocess.run(
        [str(node), str(script)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stderr
    results: list[dict[str, str]] = json.loads(result.stdout)
    return results


def test_custom_resources_validate_against_operator_models(chart: Chart) -> None:
    custom = [
        obj
        for values_file in SCENARIOS
        for obj in chart.render([values_file] if values_file else []).objects
        if obj["apiVersion"].startswith(CUSTOM_GROUPS)
    ]
    kinds = {obj["kind"] for obj in custom}
    assert kinds == {"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"}
    results = _validate_custom(custom)
    problems = [r for r in results if r["status"] != "valid"]
    assert not problems, problems


def test_custom_resource_validation_catches_errors(chart: Chart) -> None:
    scaled = chart.render([CHART_DIR / "ci" / "keda-values.yaml"]).one("ScaledObject")
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    monitor = chart.render([CHART_DIR / "ci" / "monitoring-values.yaml"]).one("ServiceMonitor")
    bad_monitor = json.loads(json.dumps(monitor))
    bad_monitor["spec"]["endpoints"][0]["relabelings"][0]["action"] = "rename"
    results = _validate_custom([broken, bad_monitor])
    assert [r["status"] for r in results] == ["invalid", "invalid"], results


def test_values_schema_rejects_unknown_settings(chart: Chart) -> None:
    result = chart.run("template", "wb", str(CHART_DIR), "--set", "config.retryShedule=5s")
    assert result.returncode != 0
    assert "retryShedule" in result.stderr


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_notes_render_with_valid_commands(chart: Chart, values_file: Path | None) -> None:
    from bridge.cli.commands import _parser

    extra = ["--values", str(values_file)] if values_file else []
    result = chart.run(
        "install", "wb", str(CHART_DIR), "--dry-run=client", "--namespace", "bridge", *extra
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    joined = re.sub(r"\\\s*\n\s*", " ", notes)
    commands = [
        shlex.split(re.split(r"\s--\s+", line, maxsplit=1)[1])
        for line in joined.splitlines()
        if re.search(r"\s--\s+webhook-bridge ", line)
    ]
    assert len(commands) == 2
    parser = _parser()
    for command in commands:
        assert command[0] == "webhook-bridge"
        parser.parse_args(command[1:])


def _notes(chart: Chart, *sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    result = chart.run("install", "wb", str(CHART_DIR), "--dry-run=client", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize(
    ("sets", "warned"),
    [
        ((), False),
        (("podAntiAffinity=hard",), True),
        (("podAntiAffinity=hard", "updateStrategy.rollingUpdate.maxUnavailable=1"), False),
        (("podAntiAffinity=hard", "updateStrategy.type=Recreate"), False),
    ],
)
def test_notes_warn_of_a_rollout_that_hard_anti_affinity_can_stall(
    chart: Chart, sets: tuple[str, ...], warned: bool
) -> None:
    """One worker a node and a new worker before an old one goes: with as many nodes as
    workers, the new pod is never scheduled and the rollout waits for ever."""
    assert ("waits for ever" in _notes(chart, *sets)) is warned
