"""docker-compose.yml: valid against the Compose Specification, every mounted or built file in the
repository, the services wired as documented, and the documented commands accepted by the CLI.

No Docker engine is needed: the file is checked, not run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.cli.commands import _parser
from bridge.config import Settings, parse_duration
from bridge.contract.events import build_event
from bridge.delivery.pipeline import drain_worst_case
from bridge.http.ssrf import check_url
from bridge.subscriptions.webhook import webhook_from_record
from tests.deploy import tools
from tests.deploy.tools import REPO

pytestmark = pytest.mark.deploy

COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CHART_FILES = REPO / "helm" / "webhook-bridge" / "files"


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(source in the repository, target) of the service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts.append(((REPO / source).resolve(), target))
    return mounts


def _mount_target(service: str, source: Path) -> str:
    targets = [t for s, t in _bind_mounts(SERVICES[service]) if s == source.resolve()]
    assert len(targets) == 1, f"{service} does not mount {source}"
    return targets[0]


def test_compose_file_matches_the_compose_specification() -> None:
    path = tools.compose_schema()
    if path is None:
        pytest.skip("compose-spec.json not found: pip install check-jsonschema (vendors it)")
    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(COMPOSE)
    ]
    assert not errors, "\n".join(errors)
    # The schema is not vacuous: a wrong depends_on condition is an error.
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["bridge"]["depends_on"]["topics"]["condition"] = "completed"
    assert list(validator.iter_errors(broken))


def test_every_mounted_and_built_file_exists() -> None:
    for name, service in SERVICES.items():
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            assert REPO in source.parents, f"{name} mounts {source} from outside the repository"
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else ("Dockerfile")
            )
            assert (context / dockerfile).is_file(), f"{name} builds from a missing Dockerfile"


def test_alerts_and_dashboard_are_the_chart_files() -> None:
    alerts_target = _mount_target("prometheus", CHART_FILES / "alerts.yml")
    dashboard_target = _mount_target("grafana", CHART_FILES / "grafana-dashboard.json")
    config_target = "/etc/prometheus/prometheus.yml"
    config_source = REPO / "deploy" / "compose" / "prometheus.yml"
    assert _mount_target("prometheus", config_source) == config_target
    prometheus = yaml.safe_load(config_source.read_text())
    assert prometheus["rule_files"] == [alerts_target]
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "webhook-bridge"
    web_port = Settings.specs()["web_port"]
    assert job["static_configs"][0]["targets"] == [
        f"bridge:{SERVICES['bridge']['environment'].get(web_port.env, 6066)}"
    ]
    # Grafana: the provider's folder is where the dashboard is mounted.
    provisioning = REPO / "deploy" / "compose" / "grafana" / "provisioning"
    assert _mount_target("grafana", provisioning) == "/etc/grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "webhook-bridge.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(Path(dashboard_target).parent)
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_services_are_wired_in_order() -> None:
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["healthcheck"]["test"]
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["topics"]["command"] == ["topics", "apply"]
    assert SERVICES["bridge"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully"
    )
    assert SERVICES["bridge"]["build"] == {"context": "."}
    # Containers reach Kafka by its service name, as the broker advertises itself.
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("topics", "bridge"):
        servers = SERVICES[name]["environment"]["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"]
        assert f"PLAINTEXT://{servers}" in advertised.split(",")


def test_bridge_settings_allow_the_demo_receiver_only_by_configuration() -> None:
    env = SERVICES["bridge"]["environment"]
    settings = Settings.load(env={k: str(v) for k, v in env.items()})
    assert settings.web_host == "0.0.0.0"
    assert settings.allow_http is True
    assert {str(n) for n in settings.allow_networks} == {
        "172.16.0.0/12",
        "192.168.0.0/16",
        "10.0.0.0/8",
    }
    assert "DEMO ONLY" in COMPOSE_FILE.read_text()
    # Docker's default SIGKILL after 10 s would cut the drain short; so would anything shorter
    # than the drain's worst case (in-flight deliveries, then the handed-over ones) plus the
    # time to commit and leave the group.
    grace = parse_duration(SERVICES["bridge"]["stop_grace_period"])
    assert grace >= drain_worst_case(settings.drain_timeout) + 10


def _documented_commands() -> list[list[str]]:
    """The `docker compose run --rm bridge ...` commands in the file's header comment."""
    header = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    joined = re.sub(r"\\\s*\n\s*", " ", "\n".join(header))
    return [
        shlex.split(line)[5:]
        for line in joined.splitlines()
        if line.startswith("docker compose run --rm bridge ")
    ]


def test_documented_commands_are_valid_cli_calls() -> None:
    commands = _documented_commands()
    assert [c[0] for c in commands[:2]] == ["webhooks", "publish"]
    parser = _parser()
    create = parser.parse_args(commands[0])
    assert create.url == "http://receiver:8080/"
    receiver = parser.parse_args(SERVICES["receiver"]["command"])
    assert receiver.secrets == [create.secret]
    assert receiver.host == "0.0.0.0"
    assert create.url.endswith(f":{receiver.port}/")
    # The webhook it creates is valid and its URL is allowed with the bridge's settings.
    webhook_from_record(
        {
            "id": "wh_demo",
            "name": create.url,
            "url": create.url,
            "secret": create.secret,
            "events": list(create.events),
            "site_id": create.site_id,
            "user_id": create.user_id or "",
            "active": True,
        }
    )
    env = {k: str(v) for k, v in SERVICES["bridge"]["environment"].items()}
    check_url(create.url, allow_http=bool(Settings.load(env=env).allow_http))
    publish = parser.parse_args(commands[1])
    assert publish.site_id == create.site_id
    # The documented event is valid (build_event raises on a schema violation).
    build_event(
        publish.event_type,
        json.loads(publish.data),
        site_id=publish.site_id,
        user_id=publish.user_id,
    )
    assert publish.event_type in create.events or "*" in create.events
