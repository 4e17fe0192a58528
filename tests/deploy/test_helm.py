"""The Helm chart (deploy/helm/speakerflow), checked offline.

`helm lint` and `helm template` run from .tools/ (`make tools`); every rendered manifest is
validated against the Kubernetes OpenAPI schemas that kubernetes-validate ships, and the two
custom resources (KEDA ScaledObject, Prometheus Operator ServiceMonitor) against the subset
of their CRDs written out below. The rest asserts what the chart promises: the commands and
environment the code reads, GPU scheduling, one autoscaler per worker group, non-root pods.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from pipeline.settings import Settings
from pipeline.stages.base import STAGES
from topics import AUDIO, SPEECH_STEPS, STEP_EMBEDDINGS, TopicSpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "speakerflow"
GPU_KEDA_VALUES = CHART / "ci" / "gpu-keda-values.yaml"

INPUT_TOPICS: dict[str, TopicSpec] = {"segment": AUDIO, "embed": SPEECH_STEPS, "cluster": STEP_EMBEDDINGS}
# The oldest Kubernetes the chart admits (Chart.yaml kubeVersion) and the newest with schemas here.
KUBE_VERSIONS = ("1.25", latest_version())
RELEASE = "sf"

Manifests = list[dict]

# --- the two custom resources, as far as the chart uses them -------------------------------

_DNS_NAME = {
    "type": "string",
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "maxLength": 253,
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _DNS_NAME, "labels": _STRING_MAP, "annotations": _STRING_MAP},
}
# Prometheus Operator's duration format.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _custom_resource(api_version: str, kind: str, spec: dict) -> tuple[tuple[str, str], dict]:
    schema = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }
    return (api_version, kind), schema


SCALED_OBJECT = _custom_resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    key: {"type": "string"} for key in ("name", "apiVersion", "kind", "envSourceContainerName")
                },
            },
            **{
                key: {"type": "integer", "minimum": 0}
                for key in (
                    "pollingInterval",
                    "initialCooldownPeriod",
                    "cooldownPeriod",
                    "idleReplicaCount",
                    "minReplicaCount",
                    "maxReplicaCount",
                )
            },
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                    },
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                },
            },
            "fallback": {"type": "object"},
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        # map[string]string in KEDA's types: a number here is refused by the API server.
                        "metadata": _STRING_MAP,
                        "authenticationRef": {"type": "object", "required": ["name"]},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                },
            },
        },
    },
)

SERVICE_MONITOR = _custom_resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector"],
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
            },
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    },
                },
            },
        },
    },
)

_SECRET_KEY_REF = {
    "type": "object",
    "required": ["parameter", "name", "key"],
    "additionalProperties": False,
    "properties": {"parameter": {"type": "string"}, "name": _DNS_NAME, "key": {"type": "string", "minLength": 1}},
}

TRIGGER_AUTHENTICATION = _custom_resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {"secretTargetRef": {"type": "array", "items": _SECRET_KEY_REF}},
    },
)

CUSTOM_SCHEMAS = dict([SCALED_OBJECT, SERVICE_MONITOR, TRIGGER_AUTHENTICATION])


def validate_manifest(manifest: dict, kube_version: str) -> None:
    """Raises if the manifest does not match its schema (strict: unknown fields are errors)."""
    custom = CUSTOM_SCHEMAS.get((manifest.get("apiVersion"), manifest.get("kind")))
    if custom is not None:
        jsonschema.Draft202012Validator(custom).validate(manifest)
    else:
        kubernetes_validate.validate(manifest, kube_version, strict=True)


# --- running helm --------------------------------------------------------------------------


def _helm_binary() -> Path:
    explicit = os.environ.get("HELM")
    helm = Path(explicit) if explicit else ROOT / ".tools" / "bin" / "helm"
    if not helm.exists():
        pytest.fail(f"helm not found at {helm}: `make tools` builds it (or set HELM)")
    return helm


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = _helm_binary()
    home = tmp_path_factory.mktemp("helm-home")
    # Keep helm away from the user's repositories, registry logins and plugins.
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="module")
def render(helm, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Manifests]:
    workdir = tmp_path_factory.mktemp("values")

    def run(*values_files: Path, values: dict | None = None, sets: tuple[str, ...] = ()) -> Manifests:
        # Rendered for the oldest Kubernetes the chart admits, which also checks that it admits it.
        args = ["template", RELEASE, str(CHART), "--namespace", "speech", "--kube-version", f"{KUBE_VERSIONS[0]}.0"]
        for path in values_files:
            args += ["--values", str(path)]
        if values is not None:
            path = workdir / f"values-{len(list(workdir.iterdir()))}.yaml"
            path.write_text(yaml.safe_dump(values))
            args += ["--values", str(path)]
        for assignment in sets:
            args += ["--set", assignment]
        return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]

    return run


@pytest.fixture(scope="module")
def default(render) -> Manifests:
    return render()


@pytest.fixture(scope="module")
def gpu_keda(render) -> Manifests:
    return render(GPU_KEDA_VALUES)


# Kafka over SASL_SSL with a private CA and a client certificate, every optional container on.
SASL_SSL_VALUES = {
    "kafka": {
        "securityProtocol": "SASL_SSL",
        "sasl": {"secretName": "kafka-login", "usernameKey": "user"},
        "tls": {"caSecretName": "kafka-ca", "clientCertSecretName": "kafka-client"},
    },
    "livekit": {"enabled": True, "url": "wss://lk.example"},
}


@pytest.fixture(scope="module")
def sasl_ssl(render) -> Manifests:
    return render(GPU_KEDA_VALUES, values=SASL_SSL_VALUES)


# --- reading manifests ---------------------------------------------------------------------


def of_kind(manifests: Manifests, kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def component(manifest: dict) -> str:
    return manifest["metadata"]["labels"]["app.kubernetes.io/component"]


def deployments(manifests: Manifests) -> dict[str, dict]:
    return {component(d): d for d in of_kind(manifests, "Deployment")}


def pod_specs(manifests: Manifests) -> Iterator[tuple[str, dict]]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            yield f"{manifest['kind']}/{manifest['metadata']['name']}", manifest["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    """The literal environment; entries from a Secret (valueFrom) are left out."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def autoscaled_targets(manifests: Manifests) -> list[tuple[str, str]]:
    return [
        (m["kind"], m["spec"]["scaleTargetRef"]["name"])
        for m in manifests
        if m["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, GPU_KEDA_VALUES], ids=["default", "gpu-keda"])
def test_helm_lint_passes(helm, values: Path | None) -> None:
    helm(
        "lint",
        "--strict",
        "--kube-version",
        f"{KUBE_VERSIONS[0]}.0",
        str(CHART),
        *(["--values", str(values)] if values else []),
    )


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", ["default", "gpu_keda", "sasl_ssl"])
def test_every_manifest_matches_its_schema(request, which: str, kube_version: str) -> None:
    manifests = request.getfixturevalue(which)
    assert manifests
    errors = []
    for manifest in manifests:
        try:
            validate_manifest(manifest, kube_version)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(part) for part in exc.absolute_path)
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']} at {where}: {exc.message[:300]}")
        except kubernetes_validate.utils.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert errors == [], f"manifests invalid for Kubernetes {kube_version}"


def test_schema_validation_catches_broken_manifests(gpu_keda: Manifests) -> None:
    deployment = deployments(gpu_keda)["embed"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["runAsNonRoot"] = True  # belongs in securityContext
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(broken, KUBE_VERSIONS[0])

    scaled = yaml.safe_load(yaml.safe_dump(of_kind(gpu_keda, "ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(scaled, KUBE_VERSIONS[0])


def test_each_role_runs_its_speakerflow_command(default: Manifests) -> None:
    deploys = deployments(default)
    assert set(deploys) == {*STAGES, "gateway"}
    for stage in STAGES:
        (container,) = deploys[stage]["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["speakerflow", "worker", stage, "--loglevel", "warning"]
        assert env_of(container)["SPEAKERFLOW_PROFILE"] == "accurate"  # the default profile
        assert container["image"] == "speakerflow:0.1.0"  # the chart's appVersion when no tag is given
    (gateway,) = deploys["gateway"]["spec"]["template"]["spec"]["containers"]
    assert gateway["command"] == ["speakerflow", "gateway"]

    (job,) = of_kind(default, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["speakerflow", "topics"]
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_environment_is_what_the_code_reads(render) -> None:
    bootstrap = "kafka-0.kafka:9092,kafka-1.kafka:9092"
    manifests = render(values={"kafka": {"bootstrapServers": bootstrap}, "profile": "fast", "metrics": {"port": 9300}})
    seen = 0
    for name, spec in pod_specs(manifests):
        for container in spec["containers"]:
            env = env_of(container)
            assert env["PYANNOTE_METRICS_ENABLED"] == "0", name
            with mock.patch.dict(os.environ, env, clear=True):
                settings = Settings.from_env()
            assert settings.kafka == bootstrap, name
            assert settings.profile == "fast", name
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            if container["command"][:2] == ["speakerflow", "worker"]:
                assert settings.metrics_port == 9300 == ports["metrics"], name
            elif container["command"] == ["speakerflow", "gateway"]:
                assert settings.gateway_host == "0.0.0.0", name
                assert settings.gateway_port == 8000 == ports["http"], name
            seen += 1
    assert seen == len(STAGES) + 2  # the workers, the gateway and the topics job

    for scaled in of_kind(render(GPU_KEDA_VALUES, values={"kafka": {"bootstrapServers": bootstrap}}), "ScaledObject"):
        assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == bootstrap


def test_kafka_security_reaches_every_container_from_secrets(sasl_ssl: Manifests, tmp_path: Path) -> None:
    """Every pod reads the login and certificates the code expects, from the Secrets named, never from values."""
    secrets = {
        ("kafka-login", "user"): "speakerflow",
        ("kafka-login", "password"): "from-the-secret",
        ("kafka-ca", "ca.crt"): "CA",
        ("kafka-client", "tls.crt"): "CERT",
        ("kafka-client", "tls.key"): "KEY",
    }
    seen = 0
    for name, spec in pod_specs(sasl_ssl):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in spec["containers"]:
            # The pod's Secret volumes laid out under tmp_path, as the kubelet would mount them.
            root = tmp_path / str(seen)
            mounts = {}
            for mount in container["volumeMounts"]:
                secret = volumes[mount["name"]].get("secret")
                if secret is None:
                    continue
                assert mount["readOnly"] is True, name
                mounts[mount["mountPath"]] = root / mount["name"]
                for item in secret["items"]:
                    path = root / mount["name"] / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(secrets[(secret["secretName"], item["key"])])
            env = env_of(container)
            for item in container["env"]:
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and item["name"].startswith("SPEAKERFLOW_KAFKA_"):
                    env[item["name"]] = secrets[(ref["name"], ref["key"])]
            assert "SPEAKERFLOW_KAFKA_PASSWORD" not in env, name  # a file, never a variable
            for variable in ("PASSWORD_FILE", "CA_FILE", "CERT_FILE", "KEY_FILE"):
                path = Path(env[f"SPEAKERFLOW_KAFKA_{variable}"])
                env[f"SPEAKERFLOW_KAFKA_{variable}"] = str(mounts[str(path.parent)] / path.name)
            with mock.patch.dict(os.environ, env, clear=True):
                security = Settings.from_env().kafka_security
            assert (security.protocol, security.sasl_mechanism, security.username) == (
                "SASL_SSL",
                "SCRAM-SHA-512",
                "speakerflow",
            ), name
            assert security.resolved_password() == "from-the-secret", name
            assert [p.read_text() for p in (security.ca_file, security.cert_file, security.key_file)] == [
                "CA",
                "CERT",
                "KEY",
            ], name
            seen += 1
    assert seen == len(STAGES) + 3  # the workers, the gateway, the LiveKit ingest and the topics job

    (authentication,) = of_kind(sasl_ssl, "TriggerAuthentication")
    parameters = {ref["parameter"]: (ref["name"], ref["key"]) for ref in authentication["spec"]["secretTargetRef"]}
    assert {parameter: secrets[ref] for parameter, ref in parameters.items()} == {
        "username": "speakerflow",
        "password": "from-the-secret",
        "ca": "CA",
        "cert": "CERT",
        "key": "KEY",
    }
    scaled = of_kind(sasl_ssl, "ScaledObject")
    assert len(scaled) == len(STAGES)
    for scaled_object in scaled:
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
        assert trigger["authenticationRef"] == {"name": authentication["metadata"]["name"]}


def test_gateway_replicas_share_one_resume_secret(render, default: Manifests) -> None:
    """Every replica signs resume tokens with one key, so a session resumes on whichever the client reaches."""

    def resume_env(manifests: Manifests) -> tuple[dict[str, str], dict]:
        (gateway,) = deployments(manifests)["gateway"]["spec"]["template"]["spec"]["containers"]
        (secret,) = [e for e in gateway["env"] if e["name"] == "SPEAKERFLOW_RESUME_SECRET"]
        return env_of(gateway), secret["valueFrom"]["secretKeyRef"]

    env, ref = resume_env(default)
    with mock.patch.dict(os.environ, env, clear=True):
        assert Settings.from_env().resume_grace_s == 30.0
    (secret,) = [s for s in of_kind(default, "Secret") if s["metadata"]["name"].endswith("-gateway-resume")]
    assert ref == {"name": secret["metadata"]["name"], "key": "resume-secret"}
    assert len(secret["data"]["resume-secret"]) >= 48  # random, base64

    given = render(values={"gateway": {"resume": {"secretName": "speech-resume", "graceSeconds": 10}}})
    assert [s for s in of_kind(given, "Secret") if s["metadata"]["name"].endswith("-gateway-resume")] == []
    env, ref = resume_env(given)
    assert ref == {"name": "speech-resume", "key": "resume-secret"}
    assert env["SPEAKERFLOW_RESUME_GRACE_S"] == "10"


def test_gateways_require_credentials_by_default_and_share_one_jwt_secret(render, default: Manifests) -> None:
    """Auth is on in a deployment; every replica verifies and signs tokens with one key (docs/security.md)."""

    def auth_env(manifests: Manifests) -> tuple[dict[str, str], dict]:
        (gateway,) = deployments(manifests)["gateway"]["spec"]["template"]["spec"]["containers"]
        (secret,) = [e for e in gateway["env"] if e["name"] == "SPEAKERFLOW_AUTH_JWT_SECRET"]
        return env_of(gateway), secret["valueFrom"]["secretKeyRef"]

    env, ref = auth_env(default)
    with mock.patch.dict(os.environ, env, clear=True):
        settings = Settings.from_env()
    assert settings.auth_mode == "required" and settings.auth_token_ttl_s == 300.0
    assert (settings.quota_max_sessions, settings.quota_max_connections) == (100, 200)
    (secret,) = [s for s in of_kind(default, "Secret") if s["metadata"]["name"] == ref["name"]]
    assert ref["key"] == "jwt-secret" and len(secret["data"]["jwt-secret"]) >= 48

    given = render(values={"gateway": {"auth": {"mode": "open", "secretName": "speech-jwt"}}})
    env, ref = auth_env(given)
    assert env["SPEAKERFLOW_AUTH_MODE"] == "open" and ref == {"name": "speech-jwt", "key": "jwt-secret"}
    assert not [s for s in of_kind(given, "Secret") if s["metadata"]["name"].endswith("-gateway-auth")]
    assert "SPEAKERFLOW_AUTH_JWKS_FILE" not in env and "SPEAKERFLOW_AUTH_JWT_ISSUER" not in env


def test_an_identity_providers_jwks_is_mounted_with_its_issuer_and_audience(render) -> None:
    values = {"jwksConfigMap": "idp-keys", "issuer": "https://idp.example", "audience": "speakerflow"}
    manifests = render(values={"gateway": {"auth": values}})
    spec = deployments(manifests)["gateway"]["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]
    with mock.patch.dict(os.environ, env_of(gateway), clear=True):
        settings = Settings.from_env()
    assert str(settings.auth_jwks_file) == "/etc/speakerflow/jwks/jwks.json"
    assert (settings.auth_jwt_issuer, settings.auth_jwt_audience) == ("https://idp.example", "speakerflow")
    (mount,) = [m for m in gateway["volumeMounts"] if m["name"] == "jwks"]
    assert mount == {"name": "jwks", "mountPath": "/etc/speakerflow/jwks", "readOnly": True}
    (volume,) = [v for v in spec["volumes"] if v["name"] == "jwks"]
    assert volume["configMap"] == {"name": "idp-keys"}


def test_plaintext_kafka_mounts_nothing(default: Manifests, gpu_keda: Manifests) -> None:
    assert of_kind(gpu_keda, "TriggerAuthentication") == []
    for name, spec in pod_specs(default):
        assert [volume["name"] for volume in spec["volumes"]] == ["tmp"], name
        for container in spec["containers"]:
            assert env_of(container)["SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT", name


def test_every_container_runs_as_non_root_without_privileges(default: Manifests, gpu_keda: Manifests) -> None:
    for name, spec in [*pod_specs(default), *pod_specs(gpu_keda)]:
        pod = spec.get("securityContext", {})
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = {**pod, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, name
            assert ctx.get("runAsUser", 1) != 0, name
            assert ctx.get("privileged", False) is False, name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            assert ctx.get("readOnlyRootFilesystem") is True, name
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), name
            # The read-only root needs a writable /tmp, where the env points the library caches.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], name
            for key in ("XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "FAUST_DATADIR"):
                assert env_of(container)[key].startswith("/tmp/"), (name, key)


def test_embedding_workers_get_a_gpu_only_when_asked(default: Manifests, gpu_keda: Manifests) -> None:
    def gpus(deployment: dict) -> tuple[object, object]:
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        return resources.get("requests", {}).get("nvidia.com/gpu"), resources.get("limits", {}).get("nvidia.com/gpu")

    for manifest in default:
        assert "nvidia.com/gpu" not in yaml.safe_dump(manifest), manifest["metadata"]["name"]

    deploys = deployments(gpu_keda)
    assert gpus(deploys["embed"]) == (1, 1)
    assert gpus(deploys["segment"]) == gpus(deploys["cluster"]) == (None, None)

    chosen = yaml.safe_load(GPU_KEDA_VALUES.read_text())["workers"]["embed"]
    embed = deploys["embed"]["spec"]["template"]["spec"]
    assert embed["nodeSelector"] == chosen["nodeSelector"]
    assert embed["tolerations"] == chosen["tolerations"]
    assert embed["affinity"] == chosen["affinity"]
    assert embed["runtimeClassName"] == "nvidia"
    # The GPU's memory and the values' own requests both survive the merge.
    assert embed["containers"][0]["resources"]["limits"]["memory"] == chosen["resources"]["limits"]["memory"]
    assert embed["containers"][0]["resources"]["requests"]["cpu"] == chosen["resources"]["requests"]["cpu"]
    for stage in ("segment", "cluster"):
        spec = deploys[stage]["spec"]["template"]["spec"]
        assert "nodeSelector" not in spec and "tolerations" not in spec and "runtimeClassName" not in spec


def test_hpa_by_default_and_never_beside_a_scaled_object(render, default: Manifests, gpu_keda: Manifests) -> None:
    names = {stage: f"{RELEASE}-speakerflow-{stage}" for stage in STAGES}
    assert sorted(autoscaled_targets(default)) == sorted(("HorizontalPodAutoscaler", n) for n in names.values())
    assert sorted(autoscaled_targets(gpu_keda)) == sorted(("ScaledObject", n) for n in names.values())

    # KEDA on for one group while the CPU autoscaler is still enabled everywhere.
    mixed = render(sets=("workers.embed.keda.enabled=true",))
    assert sorted(autoscaled_targets(mixed)) == sorted(
        [
            ("ScaledObject", names["embed"]),
            ("HorizontalPodAutoscaler", names["segment"]),
            ("HorizontalPodAutoscaler", names["cluster"]),
        ]
    )

    static = render(
        sets=tuple(f"workers.{stage}.autoscaling.enabled=false" for stage in STAGES)
        + ("workers.cluster.replicaCount=3",)
    )
    assert autoscaled_targets(static) == []
    assert deployments(static)["cluster"]["spec"]["replicas"] == 3

    for manifests in (default, gpu_keda, mixed, static):
        targets = [name for _, name in autoscaled_targets(manifests)]
        assert len(targets) == len(set(targets)), "two autoscalers on one Deployment"
        deploys = {d["metadata"]["name"]: d for d in of_kind(manifests, "Deployment")}
        for name in targets:
            # An autoscaled Deployment leaves its count to the autoscaler, so upgrades do not reset it.
            assert "replicas" not in deploys[name]["spec"], name


def test_scaled_objects_watch_each_stage_consumer_group_and_input_topic(gpu_keda: Manifests) -> None:
    from pipeline.agents.app import build_app

    scaled = {component(s): s for s in of_kind(gpu_keda, "ScaledObject")}
    assert set(scaled) == set(STAGES)
    for stage, manifest in scaled.items():
        (trigger,) = manifest["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        # A Faust app's consumer group is its app id.
        assert metadata["consumerGroup"] == build_app(stage, Settings()).conf.id == f"speakerflow-{stage}"
        assert metadata["topic"] == INPUT_TOPICS[stage].name
        assert int(metadata["lagThreshold"]) > 0
        # More consumers than partitions would sit idle.
        assert manifest["spec"]["maxReplicaCount"] <= INPUT_TOPICS[stage].partitions


def test_default_autoscaling_bounds_fit_the_partitions(default: Manifests) -> None:
    for hpa in of_kind(default, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["maxReplicas"] <= INPUT_TOPICS[component(hpa)].partitions
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_probes_use_what_the_processes_provide(default: Manifests) -> None:
    from pipeline.gateway.app import create_app

    deploys = deployments(default)
    for stage in STAGES:
        (container,) = deploys[stage]["spec"]["template"]["spec"]["containers"]
        ready_file = env_of(container)["SPEAKERFLOW_READY_FILE"]
        assert container["startupProbe"]["exec"]["command"] == ["test", "-f", ready_file]
        assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", ready_file]
        assert container["livenessProbe"]["tcpSocket"]["port"] == "metrics"
        assert ready_file.startswith("/tmp/")

    (gateway,) = deploys["gateway"]["spec"]["template"]["spec"]["containers"]
    routes = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    assert gateway["readinessProbe"]["httpGet"]["path"] in routes
    assert "/metrics" in routes  # what the ServiceMonitor scrapes on the same port
    port_names = {port["name"] for port in gateway["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        handler = gateway[probe].get("httpGet") or gateway[probe]["tcpSocket"]
        assert handler["port"] in port_names


def test_services_and_service_monitor_reach_the_pods(default: Manifests, gpu_keda: Manifests) -> None:
    assert of_kind(default, "ServiceMonitor") == []
    (monitor,) = of_kind(gpu_keda, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    pods = {component(d): d["spec"]["template"] for d in of_kind(gpu_keda, "Deployment")}
    services = of_kind(gpu_keda, "Service")
    scraped: dict[str, str] = {}
    for service in services:
        targets = [
            name
            for name, template in pods.items()
            if matches(service["spec"]["selector"], template["metadata"]["labels"])
        ]
        assert targets == [component(service)], service["metadata"]["name"]
        container_ports = {p["name"] for p in pods[targets[0]]["spec"]["containers"][0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
        if matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
            (hit,) = endpoint_ports & {p["name"] for p in service["spec"]["ports"]}
            scraped[component(service)] = hit
    assert scraped == {"segment": "metrics", "embed": "metrics", "cluster": "metrics", "gateway": "http"}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def test_livekit_ingest_is_off_by_default_and_takes_its_credentials_from_a_secret(render, default: Manifests) -> None:
    assert "livekit" not in deployments(default)
    manifests = render(
        values={"livekit": {"enabled": True, "url": "wss://lk.example", "replicaCount": 2}, "metrics": {"port": 9300}}
    )
    for manifest in manifests:
        validate_manifest(manifest, KUBE_VERSIONS[0])
    ingest = deployments(manifests)["livekit"]
    assert ingest["spec"]["replicas"] == 2  # replicas divide the rooms by lease
    assert "livekit" not in [name for _, name in autoscaled_targets(manifests)]
    (container,) = ingest["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "speakerflow",
        "livekit",
        "--url",
        "wss://lk.example",
        "--all-rooms",
        "--publish-results",
    ]
    with mock.patch.dict(os.environ, env_of(container), clear=True):
        settings = Settings.from_env()
    assert settings.metrics_port == 9300 == {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {
        "LIVEKIT_API_KEY": {"name": "livekit-credentials", "key": "api-key"},
        "LIVEKIT_API_SECRET": {"name": "livekit-credentials", "key": "api-secret"},
    }
    (service,) = [s for s in of_kind(manifests, "Service") if component(s) == "livekit"]
    assert matches(service["spec"]["selector"], ingest["spec"]["template"]["metadata"]["labels"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]

    one_room = deployments(render(sets=("livekit.enabled=true", "livekit.url=ws://lk:7880", "livekit.room=standup")))
    assert one_room["livekit"]["spec"]["template"]["spec"]["containers"][0]["command"][3:6] == [
        "ws://lk:7880",
        "--room",
        "standup",
    ]


def test_ingress_routes_to_the_gateway_service(default: Manifests, gpu_keda: Manifests) -> None:
    assert of_kind(default, "Ingress") == []
    (ingress,) = of_kind(gpu_keda, "Ingress")
    (service,) = [s for s in of_kind(gpu_keda, "Service") if component(s) == "gateway"]
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports
    assert ingress["spec"]["tls"][0]["secretName"] == "speakerflow-tls"


def test_service_account_choice_reaches_every_pod(render, default: Manifests) -> None:
    (account,) = of_kind(default, "ServiceAccount")
    for name, spec in pod_specs(default):
        if name.startswith("Job/"):
            # A pre-install hook runs before the chart's own account exists.
            assert "serviceAccountName" not in spec
        else:
            assert spec["serviceAccountName"] == account["metadata"]["name"]

    existing = render(sets=("serviceAccount.create=false", "serviceAccount.name=speech-runner"))
    assert of_kind(existing, "ServiceAccount") == []
    assert {spec["serviceAccountName"] for _, spec in pod_specs(existing)} == {"speech-runner"}


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("profile=slow", "profile"),
        ("kafka.bootstrapServers=", "bootstrapServers"),
        ("workers.embed.gpus=1", "gpus"),
        ("workers.segment.keda.lagThreshold=0", "lagThreshold"),
        ("gateway.service.type=Internal", "type"),
        ("livekit.url=livekit:7880", "url"),
        ("kafka.securityProtocol=SSL", "securityProtocol"),
        ("kafka.securityProtocol=SASL_SSL", "secretName"),
        ("kafka.sasl.mechanism=GSSAPI", "mechanism"),
    ],
)
def test_values_schema_rejects_mistakes(helm, assignment: str, complaint: str) -> None:
    result = helm(
        "template", RELEASE, str(CHART), "--kube-version", f"{KUBE_VERSIONS[0]}.0", "--set", assignment, check=False
    )
    assert result.returncode != 0, f"{assignment} was accepted"
    assert complaint in result.stderr


def _value_paths(node: object, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _value_paths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


# Kubernetes objects passed through whole: documented as one row, not per field.
_PASSTHROUGH = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "affinity",
    "strategy",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "hosts",
}


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented: set[str] = set()
    for row in re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, flags=re.MULTILINE):
        documented |= {row.replace("<stage>", stage) for stage in STAGES}

    missing = []
    for path in _value_paths(values):
        parts = path.split(".")
        prefixes = {".".join(parts[: i + 1]) for i, part in enumerate(parts) if part in _PASSTHROUGH}
        if path not in documented and not prefixes & documented:
            missing.append(path)
    assert missing == [], f"values without a row in {CHART / 'README.md'}"

    known = set(_value_paths(values))
    stale = [row for row in documented if not any(path == row or path.startswith(row + ".") for path in known)]
    assert stale == [], "README rows for values that do not exist"
