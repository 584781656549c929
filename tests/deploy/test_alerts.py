"""The chart's alert rules (files/alerts.yml, the only copy) under promtool: ``check rules`` and
the rules' unit tests, deploy/prometheus/alerts_test.yml and tests/deploy/prometheus/down_test.yml
(WebhookBridgeDown when no target is left)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.chart import CHART_DIR
from tests.deploy.tools import REPO

pytestmark = pytest.mark.deploy

ALERTS = CHART_DIR / "files" / "alerts.yml"
DOWN_TEST = Path(__file__).resolve().parent / "prometheus" / "down_test.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"


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


def test_webhook_bridge_down_selects_the_job_the_chart_scrapes() -> None:
    """The alert names job="webhook-bridge": the ServiceMonitors' default relabelling."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    job = values["serviceMonitor"]["jobName"]
    rules = yaml.safe_load(ALERTS.read_text())
    [down] = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "WebhookBridgeDown"
    ]
    assert f'up{{job="{job}"}} == 0' in down["expr"]
    assert f'absent(up{{job="{job}"}})' in down["expr"]
