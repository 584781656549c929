"""The control-plane API in the chart (``api.enabled``): its Deployment, token Secret, Service,
Ingress, NetworkPolicy, PodDisruptionBudget and scraping, checked on ``helm template`` output.
With ``api.enabled`` false the chart renders exactly what it renders without the ``api`` block."""

from __future__ import annotations

import base64
import json
import re
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from bridge.api.auth import TokenSet, hash_token, new_token
from bridge.cli.commands import _check_web_port, _parser
from bridge.config import Settings, overrides_from_args
from bridge.worker.app import Bridge
from bridge.worker.embedded import free_port
from bridge.worker.web import WebServer
from tests.deploy.chart import CHART_DIR, CI_VALUES, NAMESPACE, RELEASE, Chart, RenderError
from tests.deploy.test_helm_objects import _egress_allows, container, env_of
from tests.deploy.test_helm_values import merge

pytestmark = pytest.mark.deploy

CI = CHART_DIR / "ci"
API_VALUES = CI / "api-values.yaml"
SCENARIO = yaml.safe_load(API_VALUES.read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
FULLNAME = f"{RELEASE}-webhook-bridge"
API_NAME = f"{FULLNAME}-api"
TOKEN_FIELDS = {"name", "sha256", "scopes", "site_id", "user_id"}
#: Every api key changed from its default, but not enabled: must change nothing.
API_OFF = {
    "api": {
        "enabled": False,
        "replicaCount": 3,
        "tokens": {
            "entries": [{"name": "x", "sha256": "a" * 64, "scopes": ["read"]}],
            "key": "t.json",
            "mountPath": "/etc/t",
        },
        "podIPv6": True,
        "dataSizeLimit": "4Gi",
        "resources": {"requests": {"cpu": "1"}},
        "podAnnotations": {"a": "b"},
        "service": {"port": 8080, "type": "NodePort"},
        "ingress": {"enabled": True, "host": "api.example.com", "tlsSecretName": "tls"},
        "networkPolicy": {"from": [{"podSelector": {}}]},
        "podDisruptionBudget": {"minAvailable": 1},
    }
}


def api_render(chart: Chart, values: dict[str, Any] | None = None) -> Any:
    return chart.render([API_VALUES], values)


def template_text(chart: Chart, *values: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """``helm template`` output as text (comments and order included)."""
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, *extra]
    files = []
    try:
        for value in values:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                yaml.safe_dump(value, f)
            files.append(f.name)
            args += ["--values", f.name]
        result = chart.run(*args)
    finally:
        for name in files:
            Path(name).unlink()
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return result.stdout


def _settings(c: dict[str, Any], pod_ip: str = "10.42.0.7") -> Settings:
    """The settings a container's bridge runs with: its env (``$(POD_IP)`` expanded), then its
    ``run`` flags."""
    env = {k: v for k, v in env_of(c).items() if isinstance(v, str)}
    env = {k: v.replace("$(POD_IP)", pod_ip) for k, v in env.items()}
    args = _parser().parse_args(c["args"])
    return Settings.load(env=env, overrides=overrides_from_args(args, args.settings))


def _token_file(secret: dict[str, Any], key: str = "tokens.json") -> Any:
    return json.loads(base64.b64decode(secret["data"][key]))


# -- off: nothing changes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "default"
)
def test_api_off_changes_nothing(chart: Chart, values_file: Path | None) -> None:
    base = yaml.safe_load(values_file.read_text()) if values_file else {}
    if base.get("api", {}).get("enabled"):
        pytest.skip("the scenario enables the API")
    assert template_text(chart, base, API_OFF) == template_text(chart, base)
    rendered = chart.render([values_file] if values_file else [])
    components = {
        o["metadata"]["labels"].get("app.kubernetes.io/component") for o in rendered.objects
    }
    assert "api" not in components
    assert container(rendered.one("Deployment", "worker"))["args"] == ["run"]


# -- the API Deployment -----------------------------------------------------------------------


def test_workers_deliver_and_the_api_deployment_serves(chart: Chart) -> None:
    rendered = api_render(chart)
    worker = container(rendered.one("Deployment", "worker"))
    assert worker["args"] == ["run", "--role", "deliver"]
    api = rendered.one("Deployment", "api")
    assert api["metadata"]["name"] == API_NAME
    assert api["spec"]["replicas"] == SCENARIO["api"]["replicaCount"]
    c = container(api)
    assert c["args"] == ["run", "--role", "api"]
    worker_settings, api_settings = _settings(worker), _settings(c)
    assert worker_settings.role == "deliver" and worker_settings.delivers
    assert not worker_settings.delivery_log and worker_settings.api_tokens is None
    assert api_settings.role == "api" and not api_settings.delivers
    assert api_settings.delivery_log is True
    assert api_settings.serves_api
    # Everything else is the workers' configuration.
    common = env_of(worker)
    assert {k: v for k, v in env_of(c).items() if k in common} == common


def test_api_env_tokens_file_and_advertised_url(chart: Chart) -> None:
    rendered = api_render(chart, {"config": {"webPort": 7070}, "service": {"port": 7070}})
    api = rendered.one("Deployment", "api")
    c = container(api)
    env = env_of(c)
    names = [e["name"] for e in c["env"]]
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("POD_IP") < names.index("BRIDGE_ADVERTISED_URL")
    assert env["BRIDGE_ADVERTISED_URL"] == "http://$(POD_IP):7070"
    assert _settings(c, "10.1.2.3").canonical_url == "http://10.1.2.3:7070"
    assert env["BRIDGE_DELIVERY_LOG"] == "true"
    tokens = VALUES["api"]["tokens"]
    assert env["BRIDGE_API_TOKENS"] == f"{tokens['mountPath']}/{tokens['key']}"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["api-tokens"] == {
        "name": "api-tokens",
        "mountPath": tokens["mountPath"],
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    secret = rendered.one("Secret", "api")
    assert volumes["api-tokens"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert tokens["key"] in secret["data"]


def test_a_delivery_log_on_disk_gets_the_api_data_volume_s_own_limit(chart: Chart) -> None:
    def data_volume(rendered: Any) -> dict[str, Any]:
        api = rendered.one("Deployment", "api")
        volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
        assert {"name": "data", "mountPath": "/data"} in container(api)["volumeMounts"]
        return dict(volumes["data"])

    default = VALUES["volumes"]["dataSizeLimit"]
    assert data_volume(api_render(chart)) == {"name": "data", "emptyDir": {"sizeLimit": default}}
    rendered = api_render(
        chart, {"config": {"deliveryLogStore": "rocksdb"}, "api": {"dataSizeLimit": "3Gi"}}
    )
    assert data_volume(rendered) == {"name": "data", "emptyDir": {"sizeLimit": "3Gi"}}
    settings = _settings(container(rendered.one("Deployment", "api")))
    assert settings.delivery_log_store == "rocksdb"
    assert str(settings.resolved_data_dir) == "/data"
    worker = rendered.one("Deployment", "worker")
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["emptyDir"]["sizeLimit"] == default


def test_advertised_url_brackets_an_ipv6_pod_ip(chart: Chart) -> None:
    c = container(api_render(chart, {"api": {"podIPv6": True}}).one("Deployment", "api"))
    assert env_of(c)["BRIDGE_ADVERTISED_URL"] == "http://[$(POD_IP)]:6066"
    url = urlsplit(_settings(c, "fd00::7").canonical_url)
    assert (url.hostname, url.port) == ("fd00::7", 6066)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _loopbacks_served(host: str) -> set[str]:
    """The loopback addresses a worker's web server bound to ``host`` answers /healthz on."""
    port = free_port()
    server = WebServer(host=host, port=port, registry=CollectorRegistry(), ready=lambda: (True, ""))
    await server.on_start()
    served = set()
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
            for address in ("127.0.0.1", "::1"):
                literal = f"[{address}]" if ":" in address else address
                try:
                    answer = await client.get(f"http://{literal}:{port}/healthz")
                except httpx.ConnectError:
                    continue
                if answer.status_code == 200:
                    served.add(address)
    finally:
        await server.on_stop()
    return served


IPV6_PODS = {
    "api": merge(yaml.safe_load(API_VALUES.read_text()), {"api": {"podIPv6": True}}),
    "workers route": {
        "config": {"deliveryLog": True, "apiTokens": "/etc/bridge/tokens.yaml"},
        "extraVolumes": [{"name": "tokens", "secret": {"secretName": "tokens"}}],
        "extraVolumeMounts": [{"name": "tokens", "mountPath": "/etc/bridge"}],
        "api": {"podIPv6": True},
    },
}


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize("scenario", sorted(IPV6_PODS))
async def test_ipv6_pods_listen_on_ipv6_and_ipv4(
    chart: Chart, scenario: str, tmp_path: Path
) -> None:
    """Until 2026-12-07 api.podIPv6 advertised http://[pod IP]:port while every pod, workers
    and API alike, bound 0.0.0.0: on an IPv6 cluster the probes, the scrapes and routed reads
    to the pod IP were refused, and no pod was ever ready. `::` alone would refuse 127.0.0.1
    in the pod (asyncio binds it IPv6-only); an unset webHost is every address."""
    rendered = chart.render(values=IPV6_PODS[scenario])
    deployments = rendered.all("Deployment")
    assert len(deployments) == (2 if scenario == "api" else 1)
    for deployment in deployments:
        c = container(deployment)
        settings = _settings(c, "fd00::7").replace(web_port=free_port(), data_dir=str(tmp_path))
        if "BRIDGE_ADVERTISED_URL" in env_of(c):
            assert urlsplit(settings.canonical_url).hostname == "fd00::7"
        # What `run` does before serving: check the port, build the worker's Faust app.
        _check_web_port(settings)
        Bridge(settings)
        assert await _loopbacks_served(settings.web_host) == {"127.0.0.1", "::1"}


@pytest.mark.parametrize("host", ["0.0.0.0", "10.42.0.7"])
def test_an_ipv4_web_host_on_ipv6_pods_fails(chart: Chart, host: str) -> None:
    with pytest.raises(RenderError, match=re.escape(f"config.webHost {host} is an IPv4 address")):
        chart.render(values=merge(IPV6_PODS["api"], {"config": {"webHost": host}}))
    assert chart.render(values={"config": {"webHost": host}, "api": {"podIPv6": True}})


@pytest.mark.parametrize("host", ["::", "fd00::7", ""])
def test_an_ipv6_or_every_address_web_host_on_ipv6_pods_renders(chart: Chart, host: str) -> None:
    rendered = chart.render(values=merge(IPV6_PODS["api"], {"config": {"webHost": host}}))
    for deployment in rendered.all("Deployment"):
        assert env_of(container(deployment))["BRIDGE_WEB_HOST"] == host


def test_api_pods_run_like_the_workers(chart: Chart) -> None:
    rendered = api_render(chart)
    worker = rendered.one("Deployment", "worker")["spec"]["template"]["spec"]
    api = rendered.one("Deployment", "api")["spec"]["template"]["spec"]
    for key in (
        "securityContext",
        "serviceAccountName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "terminationGracePeriodSeconds",
    ):
        assert api[key] == worker[key], key
    assert api["automountServiceAccountToken"] is False
    assert api["containers"][0]["securityContext"] == worker["containers"][0]["securityContext"]
    assert api["containers"][0]["image"] == worker["containers"][0]["image"]
    # Writable paths are emptyDirs, as for the workers.
    volumes = {v["name"]: v for v in api["volumes"]}
    assert "emptyDir" in volumes["data"] and "emptyDir" in volumes["tmp"]


def test_api_probes_and_ports_follow_the_web_port(chart: Chart) -> None:
    rendered = api_render(chart, {"config": {"webPort": 7070}})
    c = container(rendered.one("Deployment", "api"))
    assert c["ports"] == [{"name": "http", "containerPort": 7070, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = rendered.one("Service", "api")
    assert service["metadata"]["name"] == API_NAME
    [port] = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    ingress = rendered.one("Ingress", "api")
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/v1" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": API_NAME, "port": {"name": "http"}}


def test_selectors_keep_workers_and_api_apart(chart: Chart) -> None:
    rendered = api_render(chart)
    worker = rendered.one("Deployment", "worker")
    api = rendered.one("Deployment", "api")
    worker_pod = worker["spec"]["template"]["metadata"]["labels"]
    api_pod = api["spec"]["template"]["metadata"]["labels"]
    api_selector = api["spec"]["selector"]["matchLabels"]
    assert api_selector.items() <= api_pod.items()
    assert not api_selector.items() <= worker_pod.items()
    assert not worker["spec"]["selector"]["matchLabels"].items() <= api_pod.items()
    assert rendered.one("Service", "api")["spec"]["selector"] == api_selector
    assert (
        rendered.one("Service", "worker")["spec"]["selector"]
        == worker["spec"]["selector"]["matchLabels"]
    )
    assert rendered.one("PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"] == (
        api_selector
    )


def test_ingress_class_host_tls_and_annotations(chart: Chart) -> None:
    ingress = api_render(chart).one("Ingress", "api")
    settings = SCENARIO["api"]["ingress"]
    assert ingress["spec"]["ingressClassName"] == settings["className"]
    assert ingress["spec"]["rules"][0]["host"] == settings["host"]
    assert ingress["spec"]["tls"] == [
        {"secretName": settings["tlsSecretName"], "hosts": [settings["host"]]}
    ]
    assert ingress["metadata"]["annotations"] == settings["annotations"]
    plain = api_render(chart, {"api": {"ingress": {"enabled": False}}})
    assert not plain.all("Ingress")


def test_ingress_without_host_or_tls(chart: Chart) -> None:
    values = {"api": {"ingress": {"host": "", "tlsSecretName": "", "className": ""}}}
    ingress = api_render(chart, values).one("Ingress", "api")
    assert "tls" not in ingress["spec"] and "ingressClassName" not in ingress["spec"]
    assert "host" not in ingress["spec"]["rules"][0]


# -- tokens -----------------------------------------------------------------------------------


def test_token_secret_holds_only_sha256_entries(chart: Chart) -> None:
    token = new_token()
    entry = {"name": "ops", "sha256": hash_token(token), "scopes": ["read", "write"]}
    restricted = {**entry, "name": "site", "sha256": hash_token(new_token()), "site_id": "s1"}
    restricted["scopes"] = ["read"]
    rendered = api_render(chart, {"api": {"tokens": {"entries": [entry, restricted]}}})
    secret = rendered.one("Secret", "api")
    assert secret["metadata"]["name"] == f"{API_NAME}-tokens"
    assert list(secret["data"]) == ["tokens.json"]
    decoded = base64.b64decode(secret["data"]["tokens.json"]).decode()
    assert token not in decoded
    data = json.loads(decoded)
    assert data == {"tokens": [entry, restricted]}
    for item in data["tokens"]:
        assert set(item) <= TOKEN_FIELDS
        assert re.fullmatch(r"[0-9a-f]{64}", item["sha256"])
    # The bridge loads the file and knows the token by its hash.
    principal = TokenSet.from_mapping(data).authenticate(f"Bearer {token}")
    assert principal.name == "ops"
    # The pods restart when the token file changes.
    annotations = rendered.one("Deployment", "api")["spec"]["template"]["metadata"]["annotations"]
    other = api_render(chart, {"api": {"tokens": {"entries": [entry]}}}).one("Deployment", "api")
    assert (
        annotations["checksum/api-tokens"]
        != (other["spec"]["template"]["metadata"]["annotations"]["checksum/api-tokens"])
    )


def test_scenario_token_file_loads_in_the_bridge(chart: Chart) -> None:
    data = _token_file(api_render(chart).one("Secret", "api"))
    assert len(TokenSet.from_mapping(data)) == len(SCENARIO["api"]["tokens"]["entries"])


RAW = "wbt_" + "x" * 43


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "ops", "token": RAW, "scopes": ["read"]},
        {"name": "ops", "sha256": RAW, "scopes": ["read"]},
        {"name": RAW, "sha256": "b" * 64, "scopes": ["read"]},
        {"name": "ops", "sha256": "b" * 64, "token": RAW, "scopes": ["read"]},
        {"name": "ops", "sha256": "b" * 63, "scopes": ["read"]},
        {"name": "ops", "sha256": "b" * 64, "scopes": ["admin"]},
        {"name": "ops", "sha256": "b" * 64, "scopes": []},
        {"name": "ops", "sha256": "b" * 64, "scopes": ["read"], "site_id": None},
        {"name": "ops", "sha256": "b" * 64, "scopes": ["read"], "site_id": ""},
        {"name": "ops", "sha256": "b" * 64, "scopes": ["read"], "user_id": "  "},
    ],
    ids=[
        "token-key",
        "token-as-sha256",
        "token-as-name",
        "extra-token",
        "short",
        "scope",
        "none",
        # Until 2026-12-07 the template dropped an empty restriction: a token of every site.
        "null-site",
        "empty-site",
        "blank-user",
    ],
)
@pytest.mark.parametrize("schema", [True, False], ids=["schema", "template-fail"])
def test_raw_tokens_and_bad_entries_are_refused(
    chart: Chart, entry: dict[str, Any], schema: bool
) -> None:
    """By values.schema.json, and by the template when the schema is skipped."""
    extra = () if schema else ("--skip-schema-validation",)
    scenario = yaml.safe_load(API_VALUES.read_text())
    with pytest.raises(RenderError) as failure:
        template_text(chart, scenario, {"api": {"tokens": {"entries": [entry]}}}, extra=extra)
    if schema:
        assert "values don't meet the specifications of the schema" in str(failure.value)
    else:
        assert "api.tokens.entries[0]" in str(failure.value)
        assert RAW not in str(failure.value)


def test_duplicate_token_hashes_are_refused(chart: Chart) -> None:
    entry = {"name": "a", "sha256": "c" * 64, "scopes": ["read"]}
    with pytest.raises(RenderError, match="same sha256"):
        api_render(chart, {"api": {"tokens": {"entries": [entry, {**entry, "name": "b"}]}}})


def test_existing_token_secret(chart: Chart) -> None:
    values = {"api": {"tokens": {"entries": [], "existingSecret": "api-tokens", "key": "t.yaml"}}}
    rendered = api_render(chart, values)
    assert not rendered.all("Secret")
    api = rendered.one("Deployment", "api")
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-tokens"]["secret"]["secretName"] == "api-tokens"
    assert env_of(container(api))["BRIDGE_API_TOKENS"] == "/etc/webhook-bridge/api/t.yaml"
    annotations = api["spec"]["template"]["metadata"].get("annotations", {})
    assert "checksum/api-tokens" not in annotations


def test_api_needs_tokens(chart: Chart) -> None:
    with pytest.raises(RenderError, match="api.tokens.entries"):
        chart.render(values={"api": {"enabled": True}})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("role", "all"),
        ("apiTokens", "/x"),
        ("advertisedUrl", "http://x:6066"),
        ("deliveryLog", True),
    ],
)
def test_settings_the_chart_sets_are_refused_in_config(
    chart: Chart, setting: str, value: Any
) -> None:
    with pytest.raises(RenderError, match=f"config.{setting} is set by the chart"):
        api_render(chart, {"config": {setting: value}})


# -- network policy ---------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_api_network_policy(chart: Chart) -> None:
    rendered = api_render(chart)
    policies = {
        p["metadata"]["labels"].get("app.kubernetes.io/component"): p
        for p in rendered.all("NetworkPolicy")
    }
    policy = rendered.one("NetworkPolicy", "api")
    api_pod = rendered.one("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    worker_pod = rendered.one("Deployment", "worker")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"], api_pod)
    assert not _selects(policy["spec"]["podSelector"], worker_pod)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress = policy["spec"]["ingress"]
    for rule in ingress:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # The API's clients, the API pods (routing), the scrapers: nothing else.
    assert ingress[0]["from"] == SCENARIO["api"]["networkPolicy"]["from"]
    [routing] = ingress[1]["from"]
    assert _selects(routing["podSelector"], api_pod) and "namespaceSelector" not in routing
    assert not _selects(routing["podSelector"], worker_pod)
    assert ingress[2]["from"] == SCENARIO["networkPolicy"]["ingress"]["from"]
    assert len(ingress) == 3
    # Egress: DNS, Kafka, the other API pods on the web port; no internet.
    egress = policy["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in egress[0]["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert egress[1]["to"] == SCENARIO["networkPolicy"]["kafka"]["peers"]
    assert egress[2]["ports"] == [{"port": 6066, "protocol": "TCP"}]
    assert _selects(egress[2]["to"][0]["podSelector"], api_pod)
    assert len(egress) == 3
    assert not any("ipBlock" in peer for rule in egress for peer in rule.get("to", []))
    assert set(policies) == {None, "api"}


def test_workers_network_policy_is_unchanged(chart: Chart) -> None:
    scenario = yaml.safe_load(API_VALUES.read_text())
    without = json.loads(json.dumps(scenario))
    without["api"]["enabled"] = False
    on = [
        p
        for p in chart.render([API_VALUES]).all("NetworkPolicy")
        if p["metadata"]["name"] == FULLNAME
    ]
    off = chart.render(values=without).all("NetworkPolicy")
    assert on == off and len(off) == 1
    selected = off[0]["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert "api" not in selected


def test_api_port_is_open_to_any_client_by_default(chart: Chart) -> None:
    values = {"api": {"networkPolicy": {"from": []}}, "networkPolicy": {"ingress": {"from": []}}}
    policy = api_render(chart, values).one("NetworkPolicy", "api")
    assert "from" not in policy["spec"]["ingress"][0]
    assert len(policy["spec"]["ingress"]) == 2


def _ingress_allows(
    policy: dict[str, Any], namespace: dict[str, str], pod: dict[str, str], port: str
) -> bool:
    """Whether a pod (its labels and its namespace's) may reach ``port`` of the policy's pods;
    a peer with a podSelector only means the policy's own namespace."""
    own_namespace = {"kubernetes.io/metadata.name": NAMESPACE}
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            namespaces = peer.get("namespaceSelector")
            if namespaces is None:
                in_namespace = namespace == own_namespace
            else:
                in_namespace = _selects(namespaces, namespace)
            if in_namespace and _selects(peer.get("podSelector", {}), pod):
                return True
    return False


PROMETHEUS = ({"kubernetes.io/metadata.name": "monitoring"}, {"app": "prometheus"})
STRANGER = ({"kubernetes.io/metadata.name": "elsewhere"}, {"app": "curious"})


def test_api_pods_stay_scrapable_behind_their_network_policy(chart: Chart) -> None:
    """Until 2026-12-06 networkPolicy.ingress.from [] (any source, for the workers' metrics)
    with api.networkPolicy.from set (the ingress controller) rendered an API ServiceMonitor
    whose scrapes the API NetworkPolicy blocked: the API pods' port serves /v1 and /metrics,
    and only the listed clients were let in. Opening the port to any source would also open
    /v1, so the chart refuses the combination and asks for the scrapers."""
    assert SCENARIO["api"]["networkPolicy"]["from"] and SCENARIO["serviceMonitor"]["enabled"]
    open_scrape: dict[str, Any] = {"networkPolicy": {"ingress": {"from": []}}}
    with pytest.raises(RenderError, match=r"networkPolicy\.ingress\.from"):
        api_render(chart, open_scrape)
    # Scrapers listed: Prometheus reaches the API pods' port, a stranger does not.
    policy = api_render(chart).one("NetworkPolicy", "api")
    assert _ingress_allows(policy, *PROMETHEUS, port="http")
    assert not _ingress_allows(policy, *STRANGER, port="http")
    # Nothing scrapes them, or /v1 is open to any source anyway: nothing to refuse.
    api_render(chart, {**open_scrape, "serviceMonitor": {"enabled": False}})
    either = api_render(chart, {**open_scrape, "api": {"networkPolicy": {"from": []}}})
    assert _ingress_allows(either.one("NetworkPolicy", "api"), *STRANGER, port="http")


def test_no_api_network_policy_without_network_policies(chart: Chart) -> None:
    rendered = api_render(chart, {"networkPolicy": {"enabled": False}})
    assert not rendered.all("NetworkPolicy")


def test_api_egress_does_not_reach_the_internet(chart: Chart) -> None:
    policy = api_render(chart).one("NetworkPolicy", "api")
    for address in ("93.184.216.34", "2606:2800:220:1::1", "10.1.2.3", "169.254.169.254"):
        assert not _egress_allows(policy, address, 443), address


# -- disruption budget and monitoring ---------------------------------------------------------


def test_api_disruption_budget_follows_the_workers(chart: Chart) -> None:
    pdb = api_render(chart).one("PodDisruptionBudget", "api")
    assert pdb["spec"]["maxUnavailable"] == VALUES["api"]["podDisruptionBudget"]["maxUnavailable"]
    off = api_render(chart, {"podDisruptionBudget": {"enabled": False}})
    assert not off.all("PodDisruptionBudget")
    minimum = api_render(chart, {"api": {"podDisruptionBudget": {"minAvailable": 1}}})
    assert minimum.one("PodDisruptionBudget", "api")["spec"] == {
        "minAvailable": 1,
        "selector": pdb["spec"]["selector"],
    }


def test_api_pods_are_scraped_as_the_same_job(chart: Chart) -> None:
    rendered = api_render(chart)
    monitors = {m["metadata"]["name"]: m for m in rendered.all("ServiceMonitor")}
    assert set(monitors) == {FULLNAME, API_NAME}
    worker_monitor, api_monitor = monitors[FULLNAME], monitors[API_NAME]
    api_service = rendered.one("Service", "api")
    worker_service = rendered.one("Service", "worker")
    [endpoint] = api_monitor["spec"]["endpoints"]
    assert endpoint["port"] == api_service["spec"]["ports"][0]["name"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == worker_monitor["spec"]["endpoints"][0]["relabelings"]
    assert endpoint["relabelings"][0]["replacement"] == "webhook-bridge"
    assert _selects(api_monitor["spec"]["selector"], api_service["metadata"]["labels"])
    assert not _selects(api_monitor["spec"]["selector"], worker_service["metadata"]["labels"])
    assert not _selects(worker_monitor["spec"]["selector"], api_service["metadata"]["labels"])
    assert api_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert api_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The dashboard's API row and the 5xx alert select that job.
    alerts = (CHART_DIR / "files" / "alerts.yml").read_text()
    assert "WebhookBridgeApiErrors" in alerts and "webhook_bridge_api_requests_total" in alerts
    dashboard = (CHART_DIR / "files" / "grafana-dashboard.json").read_text()
    assert 'webhook_bridge_api_requests_total{job=~\\"$job\\"' in dashboard
    assert not api_render(chart, {"serviceMonitor": {"enabled": False}}).all("ServiceMonitor")
