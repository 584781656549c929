"""The chart refuses what the bridge refuses: ``values.schema.json`` and the chart's checks
(``webhook-bridge.validate`` in ``_helpers.tpl``) against bridge/config.py.

A value the bridge refuses when it starts crash-loops every worker; the chart must refuse it at
``helm install`` instead. The cases come from the tables of tests/unit/test_config.py (``BAD``:
values the bridge refuses; ``DEFAULTS`` and ``PARSED``: values it takes), from probing the schema
with hostile values judged by bridge/config.py itself, and, for the rules between settings, from
``REFUSED`` below. So the schema cannot drift from the settings unnoticed: a bound added to a
setting fails here until the chart refuses what it refuses too.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.config import Settings, parse_bool, parse_duration, parse_list, parse_schedule
from bridge.errors import ConfigError
from tests.deploy.chart import CHART_DIR, Chart, RenderError
from tests.deploy.test_helm_objects import camel, container, env_of
from tests.unit.test_config import BAD, DEFAULTS, PARSED, TOPIC_SETTINGS

pytestmark = pytest.mark.deploy

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SPECS = Settings.specs()
#: Setting name -> its key in the chart's ``config`` (every setting but the secret ones).
KEYS = {name: camel(name) for name, spec in SPECS.items() if not spec.secret}
BY_ENV = {spec.env: name for name, spec in SPECS.items()}
DEPLOYMENT = "templates/deployment.yaml"
#: A token file the workers can read: config.apiTokens needs a volume at its path.
TOKENS_MOUNTED = {
    "extraVolumes": [{"name": "tokens", "secret": {"secretName": "tokens"}}],
    "extraVolumeMounts": [{"name": "tokens", "mountPath": "/etc/bridge"}],
}
#: Values a setting needs beside it to be valid at all (bridge/config.py, __post_init__).
COMPANIONS: dict[str, dict[str, Any]] = {
    "delivery_log": {"config": {"apiTokens": "/etc/bridge/tokens.yaml"}, **TOKENS_MOUNTED},
    "api_tokens": TOKENS_MOUNTED,
}


def env_text(value: Any) -> str:
    """A ``config`` value as the chart writes it into the environment (``envValue``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(env_text(v) for v in value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        if "e" in repr(value):
            return f"{value:.12f}".rstrip("0")
    return str(value)


def plain_env(rendered: Any) -> dict[str, str]:
    env = env_of(container(rendered.one("Deployment", "worker")))
    return {k: v for k, v in env.items() if isinstance(v, str)}


def chart_default_env(chart: Chart) -> dict[str, str]:
    """The workers' environment with the chart's defaults."""
    return plain_env(chart.render(show_only=DEPLOYMENT))


def bridge_refuses(env: dict[str, str]) -> str | None:
    """Why the bridge refuses ``env`` (its ConfigError), or None when it takes it."""
    try:
        Settings.load(env=env)
    except ConfigError as exc:
        return str(exc)
    return None


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values layered as helm layers values files (mappings merged, the rest replaced)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def schema_takes(key: str, value: Any) -> bool:
    return bool(_validator().is_valid({"config": {key: value}}))


@cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


# -- values the bridge refuses ----------------------------------------------------------------


def _forms(raw: str) -> list[Any]:
    """A value of the environment as it may be written in values.yaml: the text, and what YAML
    reads it as (``"0"`` -> 0) when that differs and is not null (null sets nothing)."""
    forms: list[Any] = [raw]
    read = yaml.safe_load(raw) if raw.strip() else None
    if read is not None and read != raw:
        forms.append(read)
    return forms


def _bad_cases() -> list[tuple[dict[str, Any], str]]:
    cases: list[tuple[dict[str, Any], str]] = []
    for env, raw in BAD:
        name = BY_ENV[env]
        if name not in KEYS:
            continue  # a secret setting: refused in config, given through a Secret
        cases.extend(({"config": {KEYS[name]: form}}, KEYS[name]) for form in _forms(raw))
    return cases


#: Values the bridge refuses that BAD does not list: its rules across settings and the checks of
#: ``Settings.__post_init__``, and those the chart let through until 2026-12-06.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"config": {"httpClient": "aiohttp"}}, "httpClient"),
    ({"config": {"retryJitter": 1.5}}, "retryJitter"),
    ({"config": {"retryJitter": 1}}, "retryJitter"),
    ({"config": {"retryJitter": -0.1}}, "retryJitter"),
    ({"config": {"apiScanShare": 2}}, "apiScanShare"),
    ({"config": {"maxInFlight": 0}}, "maxInFlight"),
    ({"config": {"maxInFlight": 2.5}}, "maxInFlight"),
    ({"config": {"httpTimeout": 0}}, "httpTimeout"),
    ({"config": {"topicReplicationFactor": 0}}, "topicReplicationFactor"),
    ({"config": {"apiRateLimit": -1}}, "apiRateLimit"),
    ({"config": {"recoveryRetention": 0}}, "recoveryRetention"),
    ({"config": {"recoveryRetention": "0s"}}, "recoveryRetention"),
    ({"config": {"webPort": 70000}}, "webPort"),
    ({"config": {"attemptResponsePrefixBytes": 1025}}, "attemptResponsePrefixBytes"),
    ({"config": {"deliveryLogMaxAge": "1d"}}, "deliveryLogMaxAge"),
    ({"config": {"deliveryLogMaxAge": "6d"}}, "deliveryLogMaxAge"),
    ({"config": {"deliveryLogMaxAge": 86400}}, "deliveryLogMaxAge"),
    ({"config": {"kafkaRebalanceTimeout": 20}}, "kafkaSessionTimeout"),
    ({"config": {"kafkaSessionTimeout": 2}}, "kafkaSessionTimeout"),
    ({"config": {"kafkaSessionTimeout": 5, "kafkaRebalanceTimeout": 10}}, "kafkaSessionTimeout"),
    ({"config": {"allowNetworks": "notacidr"}}, "allowNetworks"),
    ({"config": {"allowNetworks": ["10.0.0.0/8", "notacidr"]}}, "allowNetworks"),
    ({"config": {"allowNetworks": ["10.0.0.0/33"]}}, "allowNetworks"),
    ({"config": {"allowNetworks": "10.0.0.0/8,10.1.0.1/16"}}, "allowNetworks"),
    ({"config": {"allowNetworks": ["fd00::1/8"]}}, "allowNetworks"),
    ({"config": {"retrySchedule": "0s"}}, "retrySchedule"),
    ({"config": {"retrySchedule": ["5s", "0s"]}}, "retrySchedule"),
    ({"config": {"retrySchedule": []}}, "retrySchedule"),
    ({"config": {"retrySchedule": ["5s", "2d"]}}, "retrySchedule"),
    ({"config": {"retrySchedule": [5, 90000]}}, "retrySchedule"),
    ({"config": {"retrySchedule": "5s, 1d, 24.5h"}}, "retrySchedule"),
    ({"config": {"successAny2xx": "maybe"}}, "successAny2xx"),
    ({"config": {"kafkaBootstrapServers": "bridge:s3cret@kafka:9092"}}, "kafkaBootstrapServers"),
    # Two uses of one topic (Settings._check_topics_apart): rendered until 2026-12-07, then the
    # topics hook failed after its retries, or the workers crash-looped without it.
    ({"config": {"eventsTopic": "postion.webhooks"}}, "config.eventsTopic"),
    ({"config": {"deadletterTopic": "postion.events"}}, "config.deadletterTopic"),
    ({"config": {"extraSourceTopics": ["postion.webhooks.attempts"]}}, "config.extraSourceTopics"),
    ({"config": {"extraSourceTopics": "a, postion.webhooks.retry.7"}}, "config.retryTopicPrefix"),
    ({"config": {"retryTopicPrefix": "r", "statusTopic": "r.2"}}, "config.retryTopicPrefix"),
    (
        {"config": {"retrySchedule": "5s,1m,1h", "recoveriesTopic": "postion.webhooks.retry.3"}},
        "config.recoveriesTopic",
    ),
    ({"config": {"role": "api"}}, "config.role"),
    ({"config": {"deliveryLog": True}}, "config.deliveryLog"),
    (
        {"config": {"deliveryLog": "on", "role": "deliver", "apiTokens": "/etc/bridge/t.json"}},
        "config.deliveryLog",
    ),
    (
        {"config": {"kafkaSecurityProtocol": "SASL_SSL", "kafkaSaslMechanism": "PLAIN"}},
        "kafkaSaslUsername",
    ),
    (
        {"config": {"kafkaSecurityProtocol": "SASL_PLAINTEXT", "kafkaSaslUsername": "bridge"}},
        "kafkaSaslMechanism",
    ),
    (
        {
            "config": {
                "kafkaSecurityProtocol": "SASL_SSL",
                "kafkaSaslMechanism": "SCRAM-SHA-512",
                "kafkaSaslUsername": "bridge",
            }
        },
        "kafkaSaslPassword",
    ),
    (
        {
            "config": {
                "kafkaSecurityProtocol": "SASL_SSL",
                "kafkaSaslMechanism": "SCRAM-SHA-512",
                "kafkaSaslUsername": "bridge",
            },
            "secret": {"existingSecret": "creds", "keys": {"kafkaSaslPassword": ""}},
        },
        "kafkaSaslPassword",
    ),
]


def _env_of_values(values: dict[str, Any]) -> dict[str, str]:
    """The environment the chart gives the workers for ``values`` (a secret as a marker)."""
    config = values["config"]
    env = {
        SPECS[name].env: env_text(config[key])
        for name, key in KEYS.items()
        if config.get(key) is not None
    }
    secret = merge(VALUES["secret"], values.get("secret", {}))
    for name, spec in SPECS.items():
        key = camel(name)
        if spec.secret:
            given = secret["keys"][key] if secret["existingSecret"] else secret["values"][key]
            if given:
                env[spec.env] = "from-the-secret"
    return env


CASES = [*_bad_cases(), *REFUSED]


_NOT_ALONE = object()


def _alone(values: dict[str, Any], named: str) -> Any:
    """The value of a case that sets ``config.<named>`` and nothing else, else _NOT_ALONE."""
    if values.keys() == {"config"} and values["config"].keys() == {named}:
        return values["config"][named]
    return _NOT_ALONE


def _batches() -> list[dict[str, Any]]:
    """The cases of one setting that the schema refuses, gathered into as few renderings as
    possible: helm names every value its schema refuses, not only the first, and a rendering per
    case would make this file several times slower."""
    batches: list[dict[str, Any]] = []
    for values, named in CASES:
        value = _alone(values, named)
        if value is _NOT_ALONE or schema_takes(named, value):
            continue
        batch = next((b for b in batches if named not in b), None)
        if batch is None:
            batches.append(batch := {})
        batch[named] = value
    return batches


BATCHES = _batches()


@cache
def _batch_error(chart: Chart, index: int) -> str:
    try:
        chart.render(values={"config": BATCHES[index]}, show_only=DEPLOYMENT)
    except RenderError as exc:
        return str(exc)
    return ""


def _refusal(chart: Chart, values: dict[str, Any], named: str) -> str:
    """helm's error for ``values`` ("" when it renders them): from the batch holding the case."""
    value = _alone(values, named)
    for index, batch in enumerate(BATCHES):
        if value is not _NOT_ALONE and named in batch and batch[named] == value:
            error = _batch_error(chart, index)
            # Helm's own validator names the value at /config/<key>, as Python's refused it.
            assert re.search(rf"at '/config/{named}['/]", error), error
            return error
    try:
        chart.render(values=values, show_only=DEPLOYMENT)
    except RenderError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(
    ("values", "named"),
    [pytest.param(v, n, id=json.dumps(v, separators=(",", ":"))) for v, n in CASES],
)
def test_a_value_the_bridge_refuses_fails_the_install(
    chart: Chart, values: dict[str, Any], named: str
) -> None:
    """Until 2026-12-06 values.schema.json took most settings as any number or string, so
    retryJitter 1.5, maxInFlight 0, webPort 70000, a retrySchedule of 0s, a CIDR that is none,
    SASL without a password and more installed, and every worker crash-looped on its settings."""
    env = {**chart_default_env(chart), **_env_of_values(values)}
    # The case is one the bridge refuses, or it does not belong here.
    assert bridge_refuses(env), f"the bridge takes {values}: not a case for this test"
    error = _refusal(chart, values, named)
    assert error, f"helm template takes {values}"
    # Refused for this value (by the schema at /config/<key>, or by a check naming it).
    assert named in error, error


# -- values the bridge takes ------------------------------------------------------------------


def _natural(value: Any) -> Any:
    """A parsed setting as YAML writes it: a list for a tuple, the rest as it is."""
    return list(value) if isinstance(value, tuple) else value


#: Settings whose bridge default the chart refuses, for a reason of its own (tested in
#: test_helm_objects.py): the web server on loopback, which no probe reaches.
CHART_REFUSES_DEFAULT = frozenset({"web_host"})


def _good_values() -> dict[str, dict[str, Any]]:
    """Form ("default", "parsed", "text") -> setting name -> the value in values.yaml."""
    forms: dict[str, dict[str, Any]] = {"default": {}, "parsed": {}, "text": {}}
    for name in KEYS:
        default = None if name in CHART_REFUSES_DEFAULT else DEFAULTS[name]
        if default is not None and default != ():
            forms["default"][name] = _natural(default)
        raw, parsed = PARSED[name]
        forms["parsed"][name] = _natural(parsed)
        # The text as written, but for whole numbers (integers only) and choices (the chart
        # takes their spelling in values.yaml: SSL, httpx, rocksdb, ...).
        whole = isinstance(parsed, int) and not isinstance(parsed, bool)
        if not whole and not (isinstance(parsed, str) and parsed != raw):
            forms["text"][name] = raw
    return forms


GOOD = _good_values()


def _good_render(chart: Chart, form: str, name: str) -> Any:
    """The rendering holding ``name``'s value of ``form``: one for every setting that needs no
    companion (cached by the chart), one of its own for those that do."""
    if name in COMPANIONS:
        values = merge(COMPANIONS[name], {"config": {KEYS[name]: GOOD[form][name]}})
    else:
        together = {n: v for n, v in GOOD[form].items() if n not in COMPANIONS}
        values = {"config": {KEYS[n]: v for n, v in together.items()}}
    return chart.render(values=values, show_only=DEPLOYMENT)


@pytest.mark.parametrize(
    ("form", "name"),
    [pytest.param(f, n, id=f"{KEYS[n]}-{f}") for f, names in GOOD.items() for n in names],
)
def test_a_value_the_bridge_takes_installs_and_reaches_it(
    chart: Chart, form: str, name: str
) -> None:
    """The bounds of the schema are the bridge's, not narrower: each default and each value of
    test_config.py's PARSED table installs, and the worker reads it back unchanged."""
    env = plain_env(_good_render(chart, form, name))
    spec, value = SPECS[name], GOOD[form][name]
    assert spec.parse(env[spec.env]) == spec.parse(env_text(value)), (spec.env, env[spec.env])
    Settings.load(env=env)


# -- the schema against the bridge, on hostile values -----------------------------------------

#: Values of every kind, meant to find a bound the schema lacks: each value the schema takes for
#: a setting must be one the bridge takes, or one the chart's checks refuse.
PROBES: list[Any] = [
    *(-1, 0, 0.5, 1, 1.5, 2, 2.5, 3, 8, 1023, 1024, 1025, 65535, 65536, 70000),
    *(86400, 604799, 604800, 1234567.5, 0.00001, 1e20),
    *(True, False),
    *("", " ", "0", "1", "-1", "2.5", "0.5", "1.5", "1e3", "nan", "inf", "-inf"),
    *("0s", "0.0s", "500ms", "5s", "5 s", "1d", "6d", "7d", "8d", "1w", "soon", "5 days", "-1s"),
    *("maybe", "true", "on", "TRUE", "yes", "off", "2"),
    *("notacidr", "10.0.0.0/8", "10.0.0.0/33", "10.1.0.1/16", "010.0.0.0/8", "fd00::/8"),
    *("fd00::1/8", "::ffff:10.0.0.1", "10.0.0.0/8,notacidr", "10.0.0.0/8, fd00::/8"),
    *("5s,0s", "5s,1m", ",", "5s 1m", "user:pw@kafka:9092", "kafka:9092"),
    *("http1", "aiohttp", "httpx", "api", "deliver", "all", "both", "Api"),
    *("SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT", "TLS", "ssl", "PLAIN", "GSSAPI"),
    *("DEBUG", "TRACE", "debug", "json", "yaml", "memory", "rocksdb", "uvloop", "asyncio"),
    [],
    [""],
    ["0s"],
    ["5s", "1m"],
    [5, 60],
    [0],
    ["notacidr"],
    ["10.0.0.0/8", "fd00::/8"],
    ["10.1.0.1/16"],
    ["a", "b"],
]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_whatever_the_schema_takes_the_bridge_takes(chart: Chart, name: str) -> None:
    """Every probe value the schema lets through for a setting starts the bridge (with the
    chart's other defaults), or is refused by the chart's own checks (rules across settings the
    schema cannot say): the schema has no hole, not only none at BAD's values."""
    key, spec = KEYS[name], SPECS[name]
    base = chart_default_env(chart)
    holes = []
    for probe in PROBES:
        if not schema_takes(key, probe):
            continue
        why = bridge_refuses({**base, spec.env: env_text(probe)})
        if why is None:
            continue
        try:
            chart.render(values={"config": {key: probe}}, show_only=DEPLOYMENT)
        except RenderError:
            continue
        holes.append(f"{key}={probe!r}: {why}")
    assert not holes, "\n".join(holes)


def test_the_schema_is_checked_by_the_engine_helm_uses_too(chart: Chart) -> None:
    """The probes above are judged by Python's jsonschema; helm's own validator (Go, RE2
    patterns) agrees with it on each kind of rule the schema uses."""
    for key, value in [
        ("retrySchedule", "1s, 2m,,3h "),
        ("retrySchedule", "5s,0s"),
        ("allowNetworks", "10.0.0.0/8, fd00::/8"),
        ("allowNetworks", "10.0.0.0/33"),
        ("successAny2xx", "On"),
        ("successAny2xx", "maybe"),
        ("apiScanShare", "1.0"),
        ("apiScanShare", "1.5"),
        ("deliveryLogMaxAge", 604800),
        ("deliveryLogMaxAge", 604799),
        ("kafkaBootstrapServers", "a:1,b:2"),
        ("kafkaBootstrapServers", "u:p@a:1"),
        ("maxInFlight", 3.0),
        ("maxInFlight", 2.5),
    ]:
        try:
            chart.render(values={"config": {key: value}}, show_only=DEPLOYMENT)
            helm_takes = True
        except RenderError:
            helm_takes = False
        assert helm_takes == schema_takes(key, value), (key, value)


def test_each_choice_the_schema_offers_is_one_the_bridge_reads() -> None:
    """Until 2026-12-06 the schema offered httpClient aiohttp, which the bridge refuses (a crash
    loop at start)."""
    config = SCHEMA["properties"]["config"]["properties"]
    for name, key in KEYS.items():
        for choice in config[key].get("enum", []):
            if choice is not None:
                SPECS[name].parse(choice)


def test_numbers_reach_the_bridge_without_an_exponent(chart: Chart) -> None:
    """YAML numbers reach the chart as float64, which Go prints as 1.2345675e+06 or 1e-05: the
    bridge's durations do not read that (until 2026-12-06 disableAfter: 1234567.5 crash-looped)."""
    values = {
        "disableAfter": 1234567.5,
        "kafkaOutputLinger": 0.00001,
        "maxBodyBytes": 1e20,
        "httpTimeout": 2.5,
        "retrySchedule": [0.5, 90, 0.00005],
    }
    env = plain_env(chart.render(values={"config": values}, show_only=DEPLOYMENT))
    settings = Settings.load(env=env)
    assert env["BRIDGE_DISABLE_AFTER"] == "1234567.5"
    assert settings.disable_after == parse_duration("1234567.5")
    assert settings.kafka_output_linger == pytest.approx(0.00001)
    assert settings.max_body_bytes == 10**20
    assert settings.retry_schedule == (0.5, 90.0, 0.00005)


# -- rules across settings --------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TOPIC_SETTINGS, "retry_topic_prefix"])
def test_a_topic_named_by_its_default_for_a_second_use_fails(chart: Chart, name: str) -> None:
    """The chart resolves an unset topic setting to the bridge's default, and the retry tiers
    to PREFIX.1 .. PREFIX.N of the default schedule, before comparing."""
    defaults = Settings()
    topic = defaults.retry_topics[-1] if name == "retry_topic_prefix" else getattr(defaults, name)
    values = {"config": {"extraSourceTopics": ["other.events", topic]}}
    assert bridge_refuses({**chart_default_env(chart), **_env_of_values(values)})
    with pytest.raises(RenderError, match=re.escape(f"config.{KEYS[name]}")) as info:
        chart.render(values=values, show_only=DEPLOYMENT)
    assert f'the same topic "{topic}"' in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        {"extraSourceTopics": ["a", "a", "b"]},
        {"extraSourceTopics": f"postion.webhooks.retry.{len(Settings().retry_schedule) + 1}"},
        {"retrySchedule": ["5s", "1m"], "extraSourceTopics": "postion.webhooks.retry.3"},
        {"retryTopicPrefix": "postion.events", "extraSourceTopics": ["postion.events.0"]},
        {"eventsTopic": "x", "subscriptionsTopic": "postion.events"},
    ],
)
def test_topics_the_bridge_takes_apart_install(chart: Chart, config: dict[str, Any]) -> None:
    env = plain_env(chart.render(values={"config": config}, show_only=DEPLOYMENT))
    Settings.load(env=env)


def test_a_token_file_the_workers_read_must_be_mounted(chart: Chart) -> None:
    """Until 2026-12-06 config.apiTokens without api.enabled set BRIDGE_API_TOKENS to a path no
    volume was mounted at: the workers (roles all and api) failed to read it at start."""
    tokens = {"config": {"apiTokens": "/etc/bridge/tokens.yaml"}}
    with pytest.raises(RenderError, match="config.apiTokens: no volume is mounted"):
        chart.render(values=tokens)
    mounted = chart.render(values=merge(tokens, TOKENS_MOUNTED))
    env = plain_env(mounted)
    assert env["BRIDGE_API_TOKENS"] == "/etc/bridge/tokens.yaml"
    # A worker that only delivers never reads it.
    deliver = merge(tokens, {"config": {"role": "deliver"}})
    assert plain_env(chart.render(values=deliver))["BRIDGE_ROLE"] == "deliver"
    # The file mounted by itself (subPath) counts too.
    file_mount = {"extraVolumeMounts": [{"name": "t", "mountPath": "/etc/bridge/tokens.yaml"}]}
    chart.render(values=merge(tokens, file_mount, {"extraVolumes": TOKENS_MOUNTED["extraVolumes"]}))


def test_sasl_credentials_from_an_existing_secret_or_extra_env_satisfy_the_chart(
    chart: Chart,
) -> None:
    """The SASL check counts the password wherever the workers get it from."""
    sasl = {
        "kafkaSecurityProtocol": "SASL_SSL",
        "kafkaSaslMechanism": "SCRAM-SHA-512",
        "kafkaSaslUsername": "bridge",
    }
    chart.render(values={"config": sasl, "secret": {"existingSecret": "creds"}})
    chart.render(values={"config": sasl, "secret": {"values": {"kafkaSaslPassword": "pw"}}})
    password = {"name": "BRIDGE_KAFKA_SASL_PASSWORD", "value": "from-extra-env"}
    chart.render(values={"config": sasl, "extraEnv": [password]})


def test_session_timeout_check_uses_the_bridge_defaults(chart: Chart) -> None:
    """The chart compares kafkaSessionTimeout with half of kafkaRebalanceTimeout using the
    bridge's own defaults for whichever is unset."""
    session, rebalance = DEFAULTS["kafka_session_timeout"], DEFAULTS["kafka_rebalance_timeout"]
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    assert f"kafkaSessionTimeout | default {session}" in helpers
    assert f"kafkaRebalanceTimeout | default {rebalance}" in helpers
    # Just longer than half: taken; exactly half: refused, as by the bridge.
    chart.render(values={"config": {"kafkaRebalanceTimeout": 2 * session - 0.5}})
    with pytest.raises(RenderError, match="kafkaSessionTimeout"):
        chart.render(values={"config": {"kafkaRebalanceTimeout": 2 * session}})


def test_probe_helpers() -> None:
    assert env_text([0.5, 90.0, True]) == "0.5,90,true"
    assert _forms("0") == ["0", 0] and _forms("") == [""] and _forms("soon") == ["soon"]
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}, "d": 4}) == {
        "a": {"b": 3, "c": 2},
        "d": 4,
    }
    assert parse_bool(env_text(False)) is False
    assert parse_list(env_text(["a", "b"])) == ("a", "b")
    assert parse_schedule(env_text([5, 60.0])) == (5.0, 60.0)


def test_workers_holding_the_delivery_log_advertise_their_pod_ip(chart: Chart) -> None:
    """config.deliveryLog in the workers (no api.enabled): each advertises its pod IP, where
    the others route reads of its partitions, and the NetworkPolicy lets them (until 2026-12-07
    every pod advertised http://0.0.0.0:6066 and took every partition for its own)."""
    values = merge(
        {"config": {"deliveryLog": True, "apiTokens": "/etc/bridge/tokens.yaml"}},
        TOKENS_MOUNTED,
        {"networkPolicy": {"enabled": True}},
    )
    rendered = chart.render(values=values)
    env = container(rendered.one("Deployment", "worker"))["env"]
    names = [e["name"] for e in env]
    assert names[0] == "POD_IP" and env[0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    advertised = next(e["value"] for e in env if e["name"] == "BRIDGE_ADVERTISED_URL")
    assert advertised == "http://$(POD_IP):6066"
    policy = rendered.one("NetworkPolicy")
    worker = {"app.kubernetes.io/component": "worker"}
    assert any(
        worker.items() <= peer["podSelector"]["matchLabels"].items()
        for rule in policy["spec"]["ingress"]
        for peer in rule.get("from", [])
        if "podSelector" in peer
    )
    assert any(
        rule.get("ports") == [{"port": 6066, "protocol": "TCP"}]
        and worker.items() <= rule["to"][0]["podSelector"]["matchLabels"].items()
        for rule in policy["spec"]["egress"]
        if "to" in rule and "podSelector" in rule["to"][0]
    )
    # One given is kept; without the delivery log in the workers there is none.
    given = chart.render(values=merge(values, {"config": {"advertisedUrl": "http://w:6066"}}))
    env = env_of(container(given.one("Deployment", "worker")))
    assert env["BRIDGE_ADVERTISED_URL"] == "http://w:6066" and "POD_IP" not in env
    assert "BRIDGE_ADVERTISED_URL" not in env_of(container(chart.render().one("Deployment")))


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"networkPolicy": {"enabled": True, "kafka": {"ports": []}}}, "kafka[./]ports"),
        ({"networkPolicy": {"enabled": True, "dns": {"ports": []}}}, "dns[./]ports"),
        ({"keda": {"enabled": True, "minReplicaCount": 0}}, "minReplicaCount"),
    ],
    ids=["kafka-ports", "dns-ports", "keda-zero"],
)
@pytest.mark.parametrize("schema", [True, False], ids=["schema", "template"])
def test_values_that_open_every_port_or_stop_retries_are_refused(
    chart: Chart, values: dict[str, Any], said: str, schema: bool
) -> None:
    """An empty port list made a NetworkPolicy rule allowing every port (every address, for
    Kafka without peers); KEDA at zero workers left the retry topics unread (until
    2026-12-07, both installed)."""
    from tests.deploy.test_helm_api import template_text

    extra = () if schema else ("--skip-schema-validation",)
    with pytest.raises(RenderError) as refused:
        template_text(chart, values, extra=extra)
    assert re.search(said, str(refused.value)), str(refused.value)


@pytest.mark.parametrize(
    "keys", ["k1:YWJj", "k1:" + "A" * 44, "k1:" + "A" * 43 + "=,k2:YWJj"], ids=["3", "33", "second"]
)
def test_a_keyring_key_of_another_length_fails_the_install(chart: Chart, keys: str) -> None:
    """The workers refuse a key that is not 32 bytes at start: until 2026-12-07 the chart took
    it (its pattern any base64), the install went through and every worker crash-looped."""
    from bridge.subscriptions.secretbox import Keyring

    with pytest.raises(ConfigError):
        Keyring.from_setting(keys)
    with pytest.raises(RenderError, match="secretKeys"):
        chart.render(values={"secret": {"values": {"secretKeys": keys}}})
    chart.render(values={"secret": {"values": {"secretKeys": "k1:" + "A" * 43 + "="}}})
