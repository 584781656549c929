"""What the chart renders: security, probes, settings, the topics hook, scaling, network policy
and monitoring, checked on the parsed objects of ``helm template``."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import Settings, parse_duration
from bridge.delivery.pipeline import drain_worst_case
from bridge.http import ssrf
from bridge.worker.app import Bridge
from bridge.worker.retry_intake import HIGH_BYTES
from tests.deploy.chart import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    Chart,
    DuplicateKeyError,
    RenderError,
    load_all_strict,
)
from tests.deploy.tools import REPO

pytestmark = pytest.mark.deploy

CI = CHART_DIR / "ci"
FAILING = Path(__file__).resolve().parent / "values"
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
FULLNAME = f"{RELEASE}-webhook-bridge"
#: Ranges the NetworkPolicy must never let the workers reach (besides explicit Kafka rules).
FORBIDDEN_V4 = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
]


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def container(obj: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][index]  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """Environment by name: the value, or the valueFrom mapping."""
    out: dict[str, Any] = {}
    for entry in c.get("env", []):
        assert entry["name"] not in out, f"duplicate env {entry['name']}"
        out[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return out


def secret_settings() -> dict[str, Any]:
    return {n: s for n, s in Settings.specs().items() if s.secret}


# -- settings ---------------------------------------------------------------------------------


def test_config_block_has_one_key_per_setting() -> None:
    specs = Settings.specs()
    expected = {camel(n) for n, s in specs.items() if not s.secret}
    assert set(VALUES["config"]) == expected, (
        f"missing in values.yaml config: {sorted(expected - set(VALUES['config']))}; "
        f"not settings: {sorted(set(VALUES['config']) - expected)}"
    )
    assert set(VALUES["secret"]["keys"]) == {camel(n) for n in secret_settings()}
    assert set(VALUES["secret"]["values"]) == {camel(n) for n in secret_settings()}
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == expected
    assert set(schema["properties"]) - {"global"} == set(VALUES)


def test_config_comments_name_each_environment_variable() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    block = text.split("\nconfig:\n", 1)[1].split("\n\n", 1)[0]
    for name, spec in Settings.specs().items():
        if not spec.secret:
            key_line = re.search(rf"^  {camel(name)}:", block, re.M)
            assert key_line, name
            comment = block[: key_line.start()].rsplit("\n  #", 8)
            assert spec.env in "".join(comment[-8:]), f"{camel(name)}: comment lacks {spec.env}"


def _sample(name: str, default: Any, spec: Any) -> Any:
    """A valid value for the setting that differs from its default where possible."""
    samples: dict[str, Any] = {
        "kafka_bootstrap_servers": "broker-1:9092,broker-2:9092",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": "bridge-user",
        "kafka_ssl_cafile": "/etc/tls/ca.crt",
        "kafka_ssl_certfile": "/etc/tls/tls.crt",
        "kafka_ssl_keyfile": "/etc/tls/tls.key",
        "extra_source_topics": ["more.events", "other.events"],
        "allow_networks": ["10.20.0.0/16", "fd00:1::/64"],
        "allow_http": True,
        "ca_bundle": "/etc/ssl/certs",
        "data_dir": "/var/lib/bridge",
        "retry_schedule": ["5s", "1m", "1.5h"],
        "api_tokens": "/etc/bridge/tokens.yaml",
        "advertised_url": "http://bridge-0.bridge:6066",
        "api_url": "http://webhook-bridge-api:6066",
        "role": "api",
    }
    if name in samples:
        return samples[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2
    if isinstance(default, str):
        try:
            spec.parse(default + "-x")
        except ValueError:
            return default
        return default + "-x"
    raise AssertionError(f"no sample for {name} (default {default!r}): add one")


def _as_env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def test_every_setting_reaches_the_bridge_through_its_environment_variable(chart: Chart) -> None:
    specs = Settings.specs()
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
    config = {camel(n): _sample(n, defaults[n], s) for n, s in specs.items() if not s.secret}
    secrets = {camel(n): f"secret-{n}" for n in secret_settings()}
    if "secretKeys" in secrets:
        secrets["secretKeys"] = "k1:" + "A" * 43 + "="
    # A key the chart leaves empty by default (a setting the workers do not need) is named.
    keys = {k: v or f"key-{k}" for k, v in VALUES["secret"]["keys"].items()}
    # The workers read the token file (role api): the chart wants it mounted.
    tokens = {
        "extraVolumes": [{"name": "tokens", "secret": {"secretName": "tokens"}}],
        "extraVolumeMounts": [{"name": "tokens", "mountPath": "/etc/bridge"}],
    }
    rendered = chart.render(
        values={"config": config, "secret": {"values": secrets, "keys": keys}, **tokens}
    )
    for kind, component in (("Deployment", "worker"), ("Job", "topics")):
        env = env_of(container(rendered.one(kind, component)))
        plain = {k: v for k, v in env.items() if isinstance(v, str)}
        for name, spec in specs.items():
            if spec.secret:
                ref = env[spec.env]["secretKeyRef"]
                assert ref["key"] == keys[camel(name)]
                plain[spec.env] = secrets[camel(name)]
            else:
                assert spec.env in plain, f"{camel(name)} did not become {spec.env}"
                expected = spec.parse(_as_env_text(config[camel(name)]))
                assert spec.parse(plain[spec.env]) == expected, (spec.env, plain[spec.env])
        settings = Settings.load(env=plain)
        assert settings.max_body_bytes == defaults["max_body_bytes"] + 1


def test_defaults_give_valid_settings(chart: Chart) -> None:
    env = env_of(container(chart.render().one("Deployment")))
    settings = Settings.load(env={k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.web_host == "0.0.0.0"
    assert settings.kafka_bootstrap_servers
    assert str(settings.resolved_data_dir) == VALUES["config"]["dataDir"]


def test_secret_settings_are_refused_in_config(chart: Chart) -> None:
    for name in secret_settings():
        with pytest.raises(RenderError, match=camel(name)):
            chart.render(values={"config": {camel(name): "plain-text"}})


def test_existing_secret_provides_credentials(chart: Chart) -> None:
    rendered = chart.render([CI / "sasl-tls-values.yaml"])
    assert not rendered.all("Secret"), "no Secret when existingSecret is set"
    scenario = yaml.safe_load((CI / "sasl-tls-values.yaml").read_text())
    for kind, component in (("Deployment", "worker"), ("Job", "topics")):
        env = env_of(container(rendered.one(kind, component)))
        assert env["BRIDGE_KAFKA_SASL_PASSWORD"] == {
            "secretKeyRef": {"name": "webhook-bridge-credentials", "key": "sasl-password"}
        }
        assert env["BRIDGE_SECRET_KEYS"] == {
            "secretKeyRef": {"name": "webhook-bridge-credentials", "key": "secret-keys"}
        }
        assert env["BRIDGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["BRIDGE_KAFKA_SASL_USERNAME"] == scenario["config"]["kafkaSaslUsername"]
        assert env["BRIDGE_KAFKA_SSL_CAFILE"] == "/etc/webhook-bridge/kafka-tls/ca.crt"
        assert env["BRIDGE_RETRY_SCHEDULE"] == "5s,5m,30m,2h,5h,10h,10h"
        pod = rendered.one(kind, component)["spec"]["template"]["spec"]
        tls = [v for v in pod["volumes"] if v["name"] == "kafka-tls"]
        assert tls == [
            {"name": "kafka-tls", "secret": {"secretName": "kafka-ca", "defaultMode": 288}}
        ]


def test_chart_secret_and_its_hook_copy(chart: Chart) -> None:
    rendered = chart.render([CI / "keda-values.yaml"])
    secrets = {s["metadata"]["name"]: s for s in rendered.all("Secret")}
    main, hook = secrets[FULLNAME], secrets[f"{FULLNAME}-topics"]
    assert main["data"] == hook["data"]
    assert set(main["data"]) == {"kafka-sasl-password", "secret-keys"}
    assert "helm.sh/hook" not in main["metadata"].get("annotations", {})
    job = rendered.one("Job", "topics")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    worker_env = env_of(container(rendered.one("Deployment")))
    job_env = env_of(container(job))
    assert worker_env["BRIDGE_KAFKA_SASL_PASSWORD"]["secretKeyRef"]["name"] == FULLNAME
    assert job_env["BRIDGE_KAFKA_SASL_PASSWORD"]["secretKeyRef"]["name"] == f"{FULLNAME}-topics"
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_no_secret_and_no_secret_env_by_default(chart: Chart) -> None:
    rendered = chart.render()
    assert not rendered.all("Secret")
    env = env_of(container(rendered.one("Deployment")))
    assert not any(isinstance(v, dict) for v in env.values())


def _by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects}


def test_secret_values_api_token_reaches_the_pods_under_a_default_key(chart: Chart) -> None:
    """Until 2026-12-06 secret.values.apiToken was dropped while secret.keys.apiToken was ""
    (the default): the chart's Secret held `data: {}` and no pod got BRIDGE_API_TOKEN, although
    docs/operations-helm.md says both Deployments receive it."""
    token = "wbt_" + "t" * 43
    values = {"secret": {"values": {"apiToken": token}}}
    assert VALUES["secret"]["keys"]["apiToken"] == ""
    for rendered in (
        chart.render(values=values),
        chart.render([CI / "api-values.yaml"], values),
    ):
        secrets = _by_name(rendered.all("Secret"))
        for name in (FULLNAME, f"{FULLNAME}-topics"):
            assert secrets[name]["data"] == {"api-token": base64.b64encode(token.encode()).decode()}
        for pod in [*rendered.all("Deployment"), rendered.one("Job", "topics")]:
            ref = env_of(container(pod))["BRIDGE_API_TOKEN"]["secretKeyRef"]
            assert ref["key"] == "api-token"
            assert ref["name"] in secrets
    # A key named in secret.keys still wins; with existingSecret "" still leaves it out.
    named = chart.render(values={"secret": {**values["secret"], "keys": {"apiToken": "t"}}})
    assert {name: set(s["data"]) for name, s in _by_name(named.all("Secret")).items()} == {
        FULLNAME: {"t"},
        f"{FULLNAME}-topics": {"t"},
    }
    existing = chart.render(values={"secret": {"existingSecret": "creds"}})
    assert "BRIDGE_API_TOKEN" not in env_of(container(existing.one("Deployment")))


# -- pod security, probes, volumes ------------------------------------------------------------


def _pods(rendered: Any) -> list[tuple[str, dict[str, Any]]]:
    pods = [("Deployment", rendered.one("Deployment")["spec"]["template"]["spec"])]
    pods.append(("Job", rendered.one("Job", "topics")["spec"]["template"]["spec"]))
    pods.append(("test Pod", rendered.one("Pod", "test")["spec"]))
    return pods


def test_every_pod_runs_non_root_with_a_read_only_root_and_no_capabilities(chart: Chart) -> None:
    for what, pod in _pods(chart.render()):
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["securityContext"]["runAsUser"] == 10001, what
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert pod["automountServiceAccountToken"] is False, what
        assert pod["enableServiceLinks"] is False, what
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["capabilities"] == {"drop": ["ALL"]}, what
            assert sc["runAsNonRoot"] is True, what
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, what
    deployment = chart.render().one("Deployment")["spec"]["template"]["spec"]
    assert deployment["securityContext"]["fsGroup"] == 10001


def test_writable_paths_are_empty_dirs(chart: Chart) -> None:
    pod = chart.render().one("Deployment")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (env["BRIDGE_DATA_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path


def test_probes_use_healthz_and_readyz_on_the_web_port(chart: Chart) -> None:
    rendered = chart.render(values={"config": {"webPort": 7070}})
    c = container(rendered.one("Deployment"))
    env = env_of(c)
    assert env["BRIDGE_WEB_PORT"] == "7070"
    assert env["BRIDGE_WEB_HOST"] == "0.0.0.0"
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 7070, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["args"] == ["run"]
    service = rendered.one("Service")
    assert service["spec"]["ports"][0]["name"] == "http-metrics"
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"


def test_selectors_pick_the_workers_only(chart: Chart) -> None:
    rendered = chart.render([CI / "monitoring-values.yaml"])
    deployment = rendered.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    worker_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= worker_labels.items()
    for other in (rendered.one("Job", "topics")["spec"]["template"], rendered.one("Pod", "test")):
        assert not selector.items() <= other["metadata"]["labels"].items()
    assert rendered.one("Service")["spec"]["selector"] == selector
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert rendered.one("ServiceMonitor")["spec"]["selector"]["matchLabels"].items() <= (
        rendered.one("Service")["metadata"]["labels"].items()
    )


def test_service_account_mounts_no_token(chart: Chart) -> None:
    account = chart.render().one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = chart.render().one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


@pytest.mark.parametrize(
    ("mode", "key"),
    [
        ("soft", "preferredDuringSchedulingIgnoredDuringExecution"),
        ("hard", "requiredDuringSchedulingIgnoredDuringExecution"),
        ("", None),
    ],
)
def test_pod_anti_affinity(chart: Chart, mode: str, key: str | None) -> None:
    pod = chart.render(values={"podAntiAffinity": mode}).one("Deployment")["spec"]["template"]
    affinity = pod["spec"].get("affinity")
    if key is None:
        assert affinity is None
    else:
        assert list(affinity["podAntiAffinity"]) == [key]


ZONE_SPREAD = {
    "requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"a": "b"}}}
    ]
}
ON_LINUX = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                ]
            }
        ]
    }
}


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_own_pod_anti_affinity_replaces_the_preset(chart: Chart, mode: str) -> None:
    """Until 2026-12-06 an affinity.podAntiAffinity of the user's beside the preset
    (podAntiAffinity soft, the default, or hard) rendered the key podAntiAffinity twice in one
    mapping, in the workers' and the API's pods: which one a tool kept was up to the tool.
    (Every rendering is now read refusing duplicate keys: tests/deploy/chart.py.)"""
    own = {"podAntiAffinity": ZONE_SPREAD, "nodeAffinity": ON_LINUX}
    values = {"podAntiAffinity": mode, "affinity": own, "api": {"affinity": own}}
    rendered = chart.render([CI / "api-values.yaml"], values)
    for component in ("worker", "api"):
        pod = rendered.one("Deployment", component)["spec"]["template"]["spec"]
        assert pod["affinity"] == own, component
    # Other affinities of the user's keep the preset beside them.
    values = {"podAntiAffinity": mode, "affinity": {"nodeAffinity": ON_LINUX}}
    pod = chart.render(values=values).one("Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"]["nodeAffinity"] == ON_LINUX
    assert len(pod["affinity"]["podAntiAffinity"]) == 1


def test_rendered_yaml_is_read_refusing_duplicate_keys() -> None:
    with pytest.raises(DuplicateKeyError, match="podAntiAffinity"):
        load_all_strict("affinity:\n  podAntiAffinity: {}\n  podAntiAffinity: {}\n")
    assert load_all_strict("a: {b: 1}\n---\nb: {b: 2}\n") == [{"a": {"b": 1}}, {"b": {"b": 2}}]


def test_recreate_strategy_has_no_rolling_update(chart: Chart) -> None:
    """Until 2026-12-06 updateStrategy.type Recreate rendered beside values.yaml's rollingUpdate
    block, which the API server refuses (spec.strategy.rollingUpdate: Forbidden)."""
    values = {"updateStrategy": {"type": "Recreate"}}
    rendered = chart.render([CI / "api-values.yaml"], values)
    for component in ("worker", "api"):
        assert rendered.one("Deployment", component)["spec"]["strategy"] == {"type": "Recreate"}
    rolling = chart.render().one("Deployment")["spec"]["strategy"]
    assert rolling == VALUES["updateStrategy"]
    with pytest.raises(RenderError, match="updateStrategy"):
        chart.render(values={"updateStrategy": {"type": "Rolling"}})


# -- shutdown ---------------------------------------------------------------------------------


@pytest.mark.parametrize("drain", ["20s", "2m", "1.5m", 45, "500ms"])
def test_termination_grace_period_covers_the_drain(chart: Chart, drain: Any) -> None:
    deployment = chart.render(values={"config": {"drainTimeout": drain}}).one("Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain_seconds = parse_duration(str(drain))
    margin = VALUES["terminationGraceMarginSeconds"]
    whole = math.ceil(drain_seconds)
    assert grace == whole + max(5, whole) + margin
    # The drain waits for in-flight deliveries, then for those it handed to the retry path.
    assert grace >= drain_worst_case(drain_seconds) + margin
    env = env_of(container(deployment))
    assert parse_duration(env["BRIDGE_DRAIN_TIMEOUT"]) == drain_seconds


def test_explicit_termination_grace_period_wins(chart: Chart) -> None:
    deployment = chart.render(values={"terminationGracePeriodSeconds": 99}).one("Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 99


def test_chart_defaults_match_the_bridge_defaults() -> None:
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
    # The chart falls back to these when config leaves them unset (grace period, KEDA trigger).
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    scaled = (CHART_DIR / "templates" / "scaledobject.yaml").read_text()
    assert f'drainTimeout | default "{int(defaults["drain_timeout"])}s"' in helpers
    assert f"webPort | default {defaults['web_port']}" in helpers
    assert f'groupId | default "{defaults["group_id"]}"' in scaled
    assert f'eventsTopic | default "{defaults["events_topic"]}"' in scaled
    assert VALUES["service"]["port"] == VALUES["config"]["webPort"] == defaults["web_port"]


# -- topics hook ------------------------------------------------------------------------------


def test_topics_hook_job(chart: Chart) -> None:
    rendered = chart.render([CI / "sasl-tls-values.yaml"])
    job = rendered.one("Job", "topics")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert "helm.sh/hook-weight" in annotations
    assert container(job)["args"] == ["topics", "apply"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert env_of(container(job)) == env_of(container(rendered.one("Deployment")))


def test_topics_hook_can_be_disabled(chart: Chart) -> None:
    assert not chart.render(values={"topicsJob": {"enabled": False}}).all("Job")


# -- scaling ----------------------------------------------------------------------------------


def test_partitions_match_the_events_topic() -> None:
    topics = json.loads((REPO / "topics" / "topics.json").read_text())
    assert VALUES["partitions"] == topics["topics"]["events"]["partitions"]


def test_hpa_is_capped_at_partitions(chart: Chart) -> None:
    rendered = chart.render([CI / "autoscaling-hpa-values.yaml"])
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] <= VALUES["partitions"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == rendered.one("Deployment")["metadata"]["name"]
    assert "replicas" not in rendered.one("Deployment")["spec"]


def test_keda_scales_on_the_lag_of_the_events_topic(chart: Chart) -> None:
    rendered = chart.render([CI / "keda-values.yaml"])
    scaled = rendered.one("ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] <= VALUES["partitions"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == "kafka.kafka.svc:9093"
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert meta["consumerGroup"] == defaults["group_id"]
    assert meta["topic"] == defaults["events_topic"]
    assert meta["lagThreshold"] == "500"
    assert meta["sasl"] == "scram_sha256" and meta["tls"] == "enable"
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"] == {
        "parameter": "password",
        "name": FULLNAME,
        "key": "kafka-sasl-password",
    }
    assert refs["ca"]["name"] == "kafka-ca"
    assert "replicas" not in rendered.one("Deployment")["spec"]


@pytest.mark.parametrize(
    ("values_file", "message"),
    [
        ("replicas-over-partitions.yaml", "replicaCount (7) exceeds partitions (6)"),
        ("hpa-over-partitions.yaml", "autoscaling.maxReplicas (12) exceeds partitions (6)"),
        ("keda-over-partitions.yaml", "keda.maxReplicaCount (8) exceeds partitions (6)"),
        ("hpa-and-keda.yaml", "exclusive"),
    ],
)
def test_more_workers_than_partitions_fails(chart: Chart, values_file: str, message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        chart.render([FAILING / values_file])


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "localhost", "LocalHost", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_a_loopback_web_host_fails(chart: Chart, host: str) -> None:
    """The probes reach the pod on its IP: bound to loopback, no worker would ever be ready
    (the bridge itself takes the value, for a local run)."""
    with pytest.raises(RenderError, match=re.escape(f"config.webHost {host} is a loopback")):
        chart.render(values={"config": {"webHost": host}}, show_only="templates/deployment.yaml")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7"])
def test_a_web_host_reachable_on_the_pod_ip_renders(chart: Chart, host: str) -> None:
    env = chart.render(values={"config": {"webHost": host}}).one("Deployment")["spec"]["template"]
    [container] = env["spec"]["containers"]
    assert {"name": "BRIDGE_WEB_HOST", "value": host} in container["env"]


# -- memory -----------------------------------------------------------------------------------

#: The sizing of docs/operations-helm.md (Memory): the process, and each 100k subscriptions.
PROCESS_MIB, PER_100K_SUBSCRIPTIONS_MIB = 150, 160
MIB = 1024 * 1024


def _mib(quantity: str) -> float:
    for unit, scale in (("Gi", 1024), ("Mi", 1)):
        if quantity.endswith(unit):
            return float(quantity.removesuffix(unit)) * scale
    raise ValueError(f"not a quantity in Mi or Gi: {quantity!r}")


def test_memory_sizing_counts_the_retry_buffers(tmp_path: Path) -> None:
    """A worker holding every retry partition (two workers and a node lost, KEDA at one) may
    buffer tiers x partitions x (HIGH_BYTES + one fetch) of retry records: until 2026-12-07 the
    sizing left that out, and the default limit (512Mi) was below 100k subscriptions' 310 MiB
    plus those 210 MiB."""
    settings = Settings.load(
        env={"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k:9092", "BRIDGE_DATA_DIR": str(tmp_path)}
    )
    topics = json.loads((REPO / "topics" / "topics.json").read_text())
    partitions = topics["topics"]["retries"]["partitions"]
    fetch = Bridge(settings).app.conf.consumer_max_fetch_size
    buffers = len(settings.retry_schedule) * partitions * (HIGH_BYTES + fetch) / MIB
    assert buffers == 210
    docs = (REPO / "docs" / "operations-helm.md").read_text()
    values = (CHART_DIR / "values.yaml").read_text()
    assert f"up to {buffers:.0f} MiB" in docs
    assert f"{len(settings.retry_schedule)} x {partitions} x 5 = {buffers:.0f} MiB" in values
    rows = re.findall(r"^\| (?:up to )?(\d+)(k|M)\b[^|]*\|(.*)\|\s*$", docs, re.MULTILINE)
    assert len(rows) == 4, rows
    for count, unit, cells in rows:
        steady, full, request, limit = (c.strip() for c in cells.split("|"))
        subscriptions = int(count) * {"k": 1_000, "M": 1_000_000}[unit]
        expected = PROCESS_MIB + PER_100K_SUBSCRIPTIONS_MIB * subscriptions / 100_000
        assert float(steady) == expected and float(full) == expected + buffers
        assert _mib(request) >= expected and _mib(limit) >= expected + buffers, (count, unit)
    default = rows[0]
    resources = VALUES["resources"]
    assert [c.strip() for c in default[2].split("|")][2:] == [
        resources["requests"]["memory"],
        resources["limits"]["memory"],
    ]


# -- network policy ---------------------------------------------------------------------------


def _egress_allows(policy: dict[str, Any], address: str, port: int) -> bool:
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        peers = rule.get("to")
        if peers is None:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if ip.version == net.version and ip in net:
                excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
                if not any(ip.version == e.version and ip in e for e in excepted):
                    return True
    return False


def test_network_policy_egress_excludes_private_ranges(chart: Chart) -> None:
    policy = chart.render([CI / "networkpolicy-values.yaml"]).one("NetworkPolicy")
    internet = [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert len(internet) == 1
    for cidr in [*FORBIDDEN_V4, "34.118.224.0/20"]:
        assert cidr in internet[0]["except"]
    for block in (
        p["ipBlock"] for r in policy["spec"]["egress"] for p in r.get("to", []) if "ipBlock" in p
    ):
        net = ipaddress.ip_network(block["cidr"])
        for excepted in block.get("except", []):
            assert ipaddress.ip_network(excepted).subnet_of(net)  # type: ignore[arg-type]
    # Webhook ports: public yes; private, metadata, loopback and the cluster's CIDRs no.
    assert _egress_allows(policy, "93.184.216.34", 443)
    assert _egress_allows(policy, "2606:2800:220:1::1", 443)
    for address in (
        "10.1.2.3",
        "172.20.0.5",
        "192.168.1.1",
        "169.254.169.254",
        "127.0.0.1",
        "100.64.0.1",
        "34.118.230.1",
        "fd00::1",
        "fe80::1",
        "::1",
        "::ffff:10.0.0.1",
    ):
        assert not _egress_allows(policy, address, 443), address
    # Kafka: its network on its port only.
    assert _egress_allows(policy, "10.20.3.4", 9092)
    assert not _egress_allows(policy, "10.20.3.4", 443)
    assert not _egress_allows(policy, "10.30.3.4", 9092)


def _ipv6_images(network: ipaddress.IPv4Network) -> list[ipaddress.IPv6Network]:
    """A range's NAT64 (64:ff9b::/96, RFC 6052) and 6to4 (2002::/16, RFC 3056) images."""
    v4 = int(network.network_address)
    nat64 = int(ipaddress.IPv6Address("64:ff9b::")) | v4
    six_to_four = int(ipaddress.IPv6Address("2002::")) | v4 << 80
    return [
        ipaddress.IPv6Network((nat64, 96 + network.prefixlen)),
        ipaddress.IPv6Network((six_to_four, 16 + network.prefixlen)),
    ]


@pytest.mark.parametrize(
    "values_file", [None, CI / "networkpolicy-values.yaml"], ids=["default", "ci"]
)
def test_network_policy_excepts_the_ipv6_images_of_every_ipv4_range(
    chart: Chart, values_file: Path | None
) -> None:
    """Until 2026-12-07 ::/0 let through 64:ff9b::a9fe:a9fe (the metadata service through a
    NAT64 gateway), 64:ff9b::a00:5, 2002:a00:5::1, 0.0.0.0/8 and fec0::/10, which the bridge's
    guard refuses (nat64_link_local, nat64_private, 6to4_private, this_network, site_local)."""
    values = {"networkPolicy": {"enabled": True}}
    policy = chart.render([values_file] if values_file else [], values).one("NetworkPolicy")
    blocks = {
        b["cidr"]: b
        for r in policy["spec"]["egress"]
        for p in r.get("to", [])
        if (b := p.get("ipBlock")) and b["cidr"] in ("0.0.0.0/0", "::/0")
    }
    v4 = [ipaddress.IPv4Network(e) for e in blocks["0.0.0.0/0"]["except"]]
    v6_text = blocks["::/0"]["except"]
    v6 = [ipaddress.IPv6Network(e) for e in v6_text]
    assert v6_text == [str(e) for e in v6], "not in canonical form"
    assert len(v6) == len(set(v6))
    for network in v4:
        for image in _ipv6_images(network):
            assert image in v6, f"{network}: {image} is not excepted"
    assert {"0.0.0.0/8", *FORBIDDEN_V4} <= {str(n) for n in v4}
    assert {"fec0::/10", "64:ff9b:1::/48"} <= {str(n) for n in v6}
    # Never all of NAT64's prefix: an IPv6-only cluster's IPv4 receivers are reached through it.
    assert ipaddress.IPv6Network("64:ff9b::/96") not in v6
    for address in (
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::a00:5",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a00:5",
        "2002:a00:5::1",
        "2002:a9fe:a9fe::1",
        "0.1.2.3",
        "fec0::1",
        # Until 2026-12-07 let through too: multicast, reserved, broadcast, IETF protocol
        # assignments, Teredo, benchmarking, documentation, discard-only.
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.9",
        "198.18.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "ff02::1",
        "ff0e::1",
        "2001::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:db8::1",
        "100::1",
        "64:ff9b::e000:1",
    ):
        assert ssrf.classify(ipaddress.ip_address(address)) is not None, address
        assert not _egress_allows(policy, address, 443), address
    for address in ("64:ff9b::5db8:d822", "2002:5db8:d822::1", "2001:4860:4860::8888"):
        assert ssrf.classify(ipaddress.ip_address(address)) is None, address
        assert _egress_allows(policy, address, 443), address


@pytest.mark.parametrize("entry", ["10.0.0.1", "fd00::/8", "10.0.0/8"])
def test_network_policy_refuses_an_ipv4_except_that_is_not_an_ipv4_cidr(
    chart: Chart, entry: str
) -> None:
    """Its IPv6 images could not be written: refused rather than left out."""
    values = {"networkPolicy": {"enabled": True, "internet": {"ipv4Except": [entry]}}}
    with pytest.raises(RenderError, match=re.escape(f"{entry} is not an IPv4 CIDR")):
        chart.render(values=values, show_only="templates/networkpolicy.yaml")


def test_network_policy_ingress_and_dns(chart: Chart) -> None:
    policy = chart.render([CI / "networkpolicy-values.yaml"]).one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress = policy["spec"]["ingress"][0]
    assert ingress["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    test_pod = chart.render([CI / "networkpolicy-values.yaml"]).one("Pod", "test")
    test_peer = ingress["from"][-1]["podSelector"]["matchLabels"]
    assert test_peer.items() <= test_pod["metadata"]["labels"].items()
    dns = policy["spec"]["egress"][0]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(selected) == ["topics", "worker"]


def test_default_network_policy_keeps_internet_rule_private_free(chart: Chart) -> None:
    policy = chart.render(values={"networkPolicy": {"enabled": True}}).one("NetworkPolicy")
    for address in ("10.1.2.3", "169.254.169.254", "192.168.0.10"):
        assert not _egress_allows(policy, address, 443), address
    assert _egress_allows(policy, "1.1.1.1", 8443)


# -- monitoring -------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_port_as_job_webhook_bridge(chart: Chart) -> None:
    monitor = chart.render([CI / "monitoring-values.yaml"]).one("ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "http-metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"][0] == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "webhook-bridge",
    }
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def _alert_exprs(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


@pytest.mark.parametrize("job", [None, "wb-prod", 'a "quoted" job'])
def test_prometheus_rule_is_the_alerts_file_with_the_release_job(
    chart: Chart, job: str | None
) -> None:
    """files/alerts.yml as it is, but for WebhookBridgeDown, which selects the job the
    ServiceMonitors write and the release's namespace (until 2026-12-07 it kept
    job="webhook-bridge" whatever serviceMonitor.jobName said, in every namespace)."""
    values = {"serviceMonitor": {"jobName": job}} if job else {}
    rule = chart.render([CI / "monitoring-values.yaml"], values).one("PrometheusRule")
    alerts = yaml.safe_load((CHART_DIR / "files" / "alerts.yml").read_text())
    rendered, original = _alert_exprs(rule["spec"]["groups"]), _alert_exprs(alerts["groups"])
    assert any("webhook_bridge_dead_letters_total" in e for e in original.values())
    down = rendered.pop("WebhookBridgeDown")
    original.pop("WebhookBridgeDown")
    assert rendered == original
    name = json.dumps(job or VALUES["serviceMonitor"]["jobName"])
    selector = f'up{{job={name}, namespace="{NAMESPACE}"}}'
    assert down == f"{selector} == 0\nor\nabsent({selector})\n"
    monitor = chart.render([CI / "monitoring-values.yaml"], values).one("ServiceMonitor")
    relabel = monitor["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel["replacement"] == (job or "webhook-bridge")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('absent(up{job="webhook-bridge"})', "absent(up)"),
            "WebhookBridgeDown selects up as",
        ),
        (
            ("    expr: |\n          up{job=", "    expr: |\n          up{instance!='',job="),
            "WebhookBridgeDown selects up as",
        ),
        (
            ('{reason="internal_error"}', '{job="webhook-bridge",reason="internal_error"}'),
            'WebhookBridgeInternalErrors selects job="webhook-bridge"',
        ),
    ],
)
def test_prometheus_rule_refuses_alerts_it_cannot_point_at_the_release(
    chart: Chart, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    """A later edit of files/alerts.yml that the template's substitution would miss fails the
    render, instead of a PrometheusRule selecting docker-compose's job in every namespace."""
    copy = tmp_path / "webhook-bridge"
    shutil.copytree(CHART_DIR, copy)
    alerts = copy / "files" / "alerts.yml"
    text = alerts.read_text()
    assert edit[0] in text
    alerts.write_text(text.replace(edit[0], edit[1], 1))
    done = chart.run(
        "template", RELEASE, str(copy), "--set", "prometheusRule.enabled=true",
        "--show-only", "templates/prometheusrule.yaml",
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr


def test_dashboard_config_map_is_the_dashboard_file(chart: Chart) -> None:
    config_map = chart.render([CI / "monitoring-values.yaml"]).one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Webhooks"}
    text = (CHART_DIR / "files" / "grafana-dashboard.json").read_text()
    assert config_map["data"] == {"webhook-bridge.json": text}
    dashboard = json.loads(text)
    assert dashboard["panels"]


def _dashboard_queries(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "query") and isinstance(v, str)]
        return found + [q for v in node.values() for q in _dashboard_queries(v)]
    if isinstance(node, list):
        return [q for v in node for q in _dashboard_queries(v)]
    return []


def test_dashboard_selects_the_release_namespace_beside_the_job() -> None:
    """Two releases under one job (staging and prod in two namespaces) were one on the dashboard
    until 2026-12-07. Its `namespace` variable defaults to All (.*), which matches the series of
    docker-compose, which have no namespace label."""
    dashboard = json.loads((CHART_DIR / "files" / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    namespace = variables["namespace"]
    assert (
        namespace["query"]["query"]
        == 'label_values(webhook_bridge_build_info{job=~"$job"}, namespace)'
    )
    assert namespace["includeAll"] and namespace["allValue"] == ".*"
    assert namespace["current"]["value"] == "$__all"
    selectors = [
        s
        for q in _dashboard_queries(dashboard["panels"])
        for s in re.findall(r"(?<!\$)\{[^}]*\}", q)
    ]
    selectors.append(variables["instance"]["query"]["query"])
    assert len(selectors) > 40
    for selector in selectors:
        assert 'job=~"$job", namespace=~"$namespace"' in selector, selector


def test_monitoring_is_off_by_default(chart: Chart) -> None:
    kinds = chart.render().kinds()
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    assert "ConfigMap" not in kinds


# -- helm test --------------------------------------------------------------------------------


def test_helm_test_pod_gets_readyz_through_the_service(chart: Chart) -> None:
    rendered = chart.render()
    pod = rendered.one("Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    service = rendered.one("Service")
    port = service["spec"]["ports"][0]["port"]
    assert command[0] == "curl" and "--fail" in command
    assert command[-1] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/readyz"


# -- values.yaml ------------------------------------------------------------------------------


def undocumented_keys(text: str) -> list[str]:
    """Keys without a comment line above them (or on their line); list items are data."""
    lines = text.splitlines()
    key = re.compile(r"^\s*[A-Za-z0-9_.-]+:")
    item = re.compile(r"^(\s*)- ")
    undocumented = []
    list_indent: int | None = None
    for number, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if (found := item.match(line)) is not None:
            list_indent = len(found.group(1))
            continue
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        if not key.match(line):
            continue
        previous = next((p for p in reversed(lines[:number]) if p.strip()), "")
        if not previous.lstrip().startswith("#") and "#" not in line:
            undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
    return undocumented


def test_undocumented_keys_are_found() -> None:
    text = "# a\na:\n  b: 1\n  # c\n  c:\n    - x: 1\n      y: 2\n  d: 3  # d\n"
    assert undocumented_keys(text) == ["values.yaml:3: b: 1"]


def test_every_values_key_is_commented() -> None:
    undocumented = undocumented_keys((CHART_DIR / "values.yaml").read_text())
    assert not undocumented, "\n".join(undocumented)
