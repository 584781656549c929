"""The chart's alert rules (files/alerts.yml, the only copy) under promtool: ``check rules`` and
the rules' unit tests, deploy/prometheus/alerts_test.yml and tests/deploy/prometheus/down_test.yml
(WebhookBridgeDown when no target is left), and the rules as the chart's PrometheusRule renders
them (tests/deploy/prometheus/renamed_job_test.yml, two_releases_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.chart import CHART_DIR, Chart
from tests.deploy.tools import REPO

pytestmark = pytest.mark.deploy

ALERTS = CHART_DIR / "files" / "alerts.yml"
PROMETHEUS_TESTS = Path(__file__).resolve().parent / "prometheus"
DOWN_TEST = PROMETHEUS_TESTS / "down_test.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
COMPOSE_PROMETHEUS = REPO / "deploy" / "compose" / "prometheus.yml"


@pytest.fixture(scope="module")
def promtool() -> Path:
    path = tools.promtool()
    if path is None:
        pytest.skip("promtool not on PATH (Debian package 'prometheus')")
    return path


def run(promtool: Path, *args: str, cwd: Path) -> None:
    done = subprocess.run(
        [str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_alert_rules_pass_promtool_check(promtool: Path) -> None:
    run(promtool, "check", "rules", str(ALERTS), cwd=REPO)


def test_webhook_bridge_down_fires_when_no_target_is_left(promtool: Path) -> None:
    """Until 2026-12-06 WebhookBridgeDown was `up{job="webhook-bridge"} == 0` alone: when every
    target disappeared (the Deployment scaled to 0, a ServiceMonitor that no longer matched)
    there was no `up` series left to be 0, and every alert of the bridge went silent at once."""
    run(promtool, "test", "rules", DOWN_TEST.name, cwd=DOWN_TEST.parent)


def test_alert_unit_tests_still_pass(promtool: Path) -> None:
    run(promtool, "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)


def test_webhook_bridge_down_selects_the_job_compose_scrapes() -> None:
    """files/alerts.yml, as docker-compose's Prometheus loads it, names compose's job (also the
    chart's default serviceMonitor.jobName; the chart substitutes the release's own)."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    job = values["serviceMonitor"]["jobName"]
    compose = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    assert [c["job_name"] for c in compose["scrape_configs"]] == [job]
    rules = yaml.safe_load(ALERTS.read_text())
    [down] = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "WebhookBridgeDown"
    ]
    assert f'up{{job="{job}"}} == 0' in down["expr"]
    assert f'absent(up{{job="{job}"}})' in down["expr"]


def write_release_rules(
    chart: Chart, path: Path, namespace: str, values: dict[str, Any] | None = None
) -> None:
    """The groups of the PrometheusRule of a release in ``namespace``, as a rule file."""
    rendered = chart.render(
        values={"prometheusRule": {"enabled": True}, **(values or {})},
        show_only="templates/prometheusrule.yaml",
        namespace=namespace,
    )
    path.write_text(yaml.safe_dump({"groups": rendered.one("PrometheusRule")["spec"]["groups"]}))


def test_a_renamed_job_does_not_fire_webhook_bridge_down(
    promtool: Path, chart: Chart, tmp_path: Path
) -> None:
    """Until 2026-12-07 the PrometheusRule kept files/alerts.yml's `up{job="webhook-bridge"}`
    whatever serviceMonitor.jobName said: with the job renamed, absent() held while every worker
    was scraped, and WebhookBridgeDown (critical) fired for ever."""
    write_release_rules(
        chart, tmp_path / "rendered-rules.yml", "prod", {"serviceMonitor": {"jobName": "wb-prod"}}
    )
    run(promtool, "check", "rules", "rendered-rules.yml", cwd=tmp_path)
    shutil.copy(PROMETHEUS_TESTS / "renamed_job_test.yml", tmp_path)
    run(promtool, "test", "rules", "renamed_job_test.yml", cwd=tmp_path)


def test_two_releases_on_one_prometheus_alert_apart(
    promtool: Path, chart: Chart, tmp_path: Path
) -> None:
    """Until 2026-12-07 two releases under the default job (staging and prod in two namespaces)
    had the same WebhookBridgeDown: every prod worker gone, staging's `up` kept absent() false
    and nothing fired; a staging worker down fired twice, once per rule, neither saying where."""
    for namespace in ("staging", "prod"):
        write_release_rules(chart, tmp_path / f"{namespace}-rules.yml", namespace)
    shutil.copy(PROMETHEUS_TESTS / "two_releases_test.yml", tmp_path)
    run(promtool, "test", "rules", "two_releases_test.yml", cwd=tmp_path)
