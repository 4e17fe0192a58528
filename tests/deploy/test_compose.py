"""The container deployment: compose stack, image, Prometheus scrape config and Grafana dashboard.

The compose file is checked by the compose CLI itself (`docker compose config`: schema,
interpolation, merge of the GPU override, consistency of depends_on), then the resolved
model is checked against what the workers, the gateway and the dashboards expect.
`make tools` builds that CLI into .tools/bin/ (this is what `make test` uses).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from pipeline import metrics
from pipeline.stages.base import STAGES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy/grafana/dashboards/speakerflow.json"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/speakerflow.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"


WORKER_METRICS_PORT = "9100"
GATEWAY_PORT = "8000"

# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


# -- compose CLI


def _compose_cli() -> list[str] | None:
    local = ROOT / ".tools" / "bin" / "docker-compose"
    if local.is_file() and os.access(local, os.X_OK):
        return [str(local)]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no compose CLI (docker compose plugin, docker-compose, or .tools/bin/docker-compose from `make tools`)"
        )
    return cli


def _compose_config(cli: list[str], *files: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [*cli, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SPEAKERFLOW_", "COMPOSE_"))}
    environment.update(env or {})
    return subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, env=environment, timeout=120
    )


def _load_project(cli: list[str], *files: Path, env: dict[str, str] | None = None) -> dict:
    result = _compose_config(cli, *files, env=env)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def project(compose_cli: list[str]) -> dict:
    return _load_project(compose_cli, COMPOSE_FILE)


def _image_services(project: dict) -> dict[str, dict]:
    """The services running the project's own image."""
    return {name: s for name, s in project["services"].items() if "build" in s}


def test_compose_cli_rejects_an_invalid_file(compose_cli: list[str], tmp_path: Path) -> None:
    """The validation below means something only if the CLI refuses a broken file."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n"
        "  worker:\n"
        "    image: speakerflow:local\n"
        "    depends_on:\n"
        "      missing:\n"
        "        condition: service_completed_successfully\n"
    )
    assert _compose_config(compose_cli, broken).returncode != 0
    broken.write_text("services:\n  worker:\n    image: speakerflow:local\n    restart_policy: always\n")
    assert _compose_config(compose_cli, broken).returncode != 0


def test_stack_services(project: dict) -> None:
    assert set(project["services"]) == {"kafka", "topics", *STAGES, "gateway", "prometheus", "grafana"}
    for name, service in project["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image!r} is not pinned"
    assert project["services"]["kafka"]["image"].startswith("apache/kafka:")


def test_workers_and_gateway_reach_kafka_after_topics_exist(project: dict) -> None:
    kafka = project["services"]["kafka"]["environment"]
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"]
    advertised = {listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    services = _image_services(project)
    assert services["topics"]["command"] == ["topics"]
    for name, service in services.items():
        env = service["environment"]
        assert env["SPEAKERFLOW_KAFKA"] in advertised, f"{name} bootstraps from {env['SPEAKERFLOW_KAFKA']}"
        assert env["SPEAKERFLOW_PROFILE"] == "accurate"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        if name != "topics":
            assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in project["services"]["kafka"]


def test_stage_workers(project: dict) -> None:
    for stage in STAGES:
        service = project["services"][stage]
        assert service["command"] == ["worker", stage]
        assert service["environment"]["SPEAKERFLOW_METRICS_PORT"] == WORKER_METRICS_PORT
    embed = project["services"]["embed"]
    # `--scale embed=N` starts N containers: a fixed name or host port would make the second one fail.
    assert "container_name" not in embed
    assert not embed.get("ports")


def test_gateway_listens_on_all_interfaces(project: dict) -> None:
    gateway = project["services"]["gateway"]
    assert gateway["command"] == ["gateway"]
    assert gateway["environment"]["SPEAKERFLOW_GATEWAY_HOST"] == "0.0.0.0"
    assert gateway["environment"].get("SPEAKERFLOW_GATEWAY_PORT", GATEWAY_PORT) == GATEWAY_PORT
    assert {(str(p["target"]), str(p.get("published"))) for p in gateway["ports"]} >= {(GATEWAY_PORT, GATEWAY_PORT)}


def test_livekit_ingest_runs_only_with_its_profile_and_takes_credentials_from_the_environment(
    compose_cli: list[str],
) -> None:
    env = {"COMPOSE_PROFILES": "livekit", "LIVEKIT_URL": "ws://lk.example:7880", "LIVEKIT_API_SECRET": "s" * 32}
    project = _load_project(compose_cli, COMPOSE_FILE, env={**env, "LIVEKIT_API_KEY": "key"})
    ingest = project["services"]["livekit"]
    assert ingest["command"] == ["livekit", "--url", "ws://lk.example:7880", "--all-rooms", "--publish-results"]
    assert ingest["environment"]["LIVEKIT_API_KEY"] == "key"
    assert ingest["environment"]["LIVEKIT_API_SECRET"] == "s" * 32
    # The secret reaches the SDK through the environment, never the command line.
    assert not any("s" * 32 in part for part in ingest["command"])
    assert ingest["environment"]["SPEAKERFLOW_METRICS_PORT"] == WORKER_METRICS_PORT
    # Replicas share the rooms by lease: no fixed name or host port may stop a second one.
    assert "container_name" not in ingest and not ingest.get("ports")


def test_prometheus_discovers_livekit_ingest_replicas() -> None:
    names = {name for job in _scrape_jobs().values() for sd in job.get("dns_sd_configs", ()) for name in sd["names"]}
    assert "livekit" in names
    assert _raw_compose()["services"]["livekit"]["environment"]["SPEAKERFLOW_METRICS_PORT"] == WORKER_METRICS_PORT


def test_profile_comes_from_the_environment(compose_cli: list[str]) -> None:
    project = _load_project(compose_cli, COMPOSE_FILE, env={"SPEAKERFLOW_PROFILE": "fast"})
    for name, service in _image_services(project).items():
        assert service["environment"]["SPEAKERFLOW_PROFILE"] == "fast", name


def test_kafka_security_comes_from_the_environment(compose_cli: list[str]) -> None:
    from pipeline.settings import KafkaSecurity, Settings

    plaintext = _load_project(compose_cli, COMPOSE_FILE)
    for name, service in _image_services(plaintext).items():
        assert Settings.from_env(service["environment"]).kafka_security == KafkaSecurity(), name

    secured = {
        "SPEAKERFLOW_KAFKA": "broker.example:9093",
        "SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SPEAKERFLOW_KAFKA_USERNAME": "speakerflow",
        "SPEAKERFLOW_KAFKA_PASSWORD": "p" * 24,
        "SPEAKERFLOW_KAFKA_CA_FILE": "/certs/ca.pem",
    }
    project = _load_project(compose_cli, COMPOSE_FILE, env=secured)
    for name, service in _image_services(project).items():
        settings = Settings.from_env(service["environment"])
        assert settings.kafka == "broker.example:9093", name
        assert settings.kafka_security == KafkaSecurity(
            protocol="SASL_SSL", username="speakerflow", password="p" * 24, ca_file=Path("/certs/ca.pem")
        ), name
        assert not any("p" * 24 in part for part in service.get("command", [])), name


def test_gpu_override_reserves_nvidia_devices_for_embed_only(compose_cli: list[str]) -> None:
    project = _load_project(compose_cli, COMPOSE_FILE, GPU_FILE)
    devices = project["services"]["embed"]["deploy"]["resources"]["reservations"]["devices"]
    assert [d["driver"] for d in devices] == ["nvidia"]
    assert "gpu" in devices[0]["capabilities"]
    assert project["services"]["embed"]["command"] == ["worker", "embed"]
    for name, service in project["services"].items():
        if name != "embed":
            assert "deploy" not in service, name


def _mount(service: dict, source: Path) -> str:
    for volume in service["volumes"]:
        if volume["type"] == "bind" and Path(volume["source"]) == source:
            return volume["target"]
    raise AssertionError(f"{source} is not mounted")


def test_monitoring_mounts_the_deploy_configs(project: dict) -> None:
    prometheus = project["services"]["prometheus"]
    config_path = _mount(prometheus, PROMETHEUS)
    assert f"--config.file={config_path}" in prometheus["command"]
    grafana = project["services"]["grafana"]
    assert _mount(grafana, ROOT / "deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = _mount(grafana, DASHBOARD.parent)
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [dashboards_dir]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"


# -- Prometheus


def _raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _scrape_jobs() -> dict[str, dict]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_worker_replica_and_the_gateway() -> None:
    compose = _raw_compose()["services"]
    jobs = _scrape_jobs()
    dns_targets = {
        (name, sd["port"]) for job in jobs.values() for sd in job.get("dns_sd_configs", ()) for name in sd["names"]
    }
    for stage in STAGES:
        assert compose[stage]["command"] == ["worker", stage]
        port = int(compose[stage]["environment"]["SPEAKERFLOW_METRICS_PORT"])
        assert (stage, port) in dns_targets, f"no DNS discovery of {stage}:{port}"
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", ()):
            # One A record per replica: SRV or a single static target would miss scaled replicas.
            assert sd.get("type", "SRV") == "A"
    static = {t for job in jobs.values() for sc in job.get("static_configs", ()) for t in sc["targets"]}
    assert f"gateway:{GATEWAY_PORT}" in static
    for target in static:
        host = target.split(":")[0]
        assert host == "localhost" or host in compose, f"{target} is no compose service"


def _target_labels() -> set[str]:
    """Labels Prometheus attaches to every scraped series of the stack."""
    labels = {"job", "instance"}
    for job in _scrape_jobs().values():
        labels |= {r["target_label"] for r in job.get("relabel_configs", ()) if "target_label" in r}
        labels |= {k for sc in job.get("static_configs", ()) for k in sc.get("labels", {})}
    return labels


# -- Grafana


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", ()))
    return panels


def _expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", ()) if t.get("expr")]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    uid = datasources[0]["uid"]
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)/?", datasources[0]["url"]).groups()
    assert host in _raw_compose()["services"] and port == "9090"
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    for panel in _panels(dashboard):
        refs = [panel.get("datasource"), *(t.get("datasource") for t in panel.get("targets", ()))]
        for ref in filter(None, refs):
            assert ref == {"type": "prometheus", "uid": uid}, panel["title"]


def test_dashboard_layout() -> None:
    panels = _panels(_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets") and panel.get("description"), panel["title"]


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # exponent of a number literal
        if match.group() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def promql_labels(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    labels = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    for _, matchers in _MATCHERS.findall(expr):
        labels |= {m.group(1) for m in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers)}
    return labels


def test_promql_parsing() -> None:
    expr = 'histogram_quantile(0.95, sum by (stage, le) (rate(speakerflow_stage_processing_seconds_bucket{stage="embed"}[$__rate_interval]))) * 1e3'
    assert promql_metric_names(expr) == {"speakerflow_stage_processing_seconds_bucket"}
    assert promql_labels(expr) == {"stage", "le"}
    assert promql_metric_names("sum(a_total) / ignoring(x) b offset 5m") == {"a_total", "b"}


def _series_names(name: str, kind: str) -> set[str]:
    """The series a metric family exposes (counters carry _total, histograms their parts)."""
    base = name.removesuffix("_total") if kind == "counter" else name
    return {
        "counter": {f"{base}_total", f"{base}_created"},
        "histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"},
        "summary": {base, f"{base}_sum", f"{base}_count", f"{base}_created"},
        "info": {f"{base}_info"},
    }.get(kind, {base})


def _process_series() -> set[str]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return {s for family in registry.collect() for s in _series_names(family.name, family.type)}


def _series_owner(contract: dict[str, tuple[str, frozenset[str]]]) -> dict[str, str]:
    """Contract series name -> the contract metric it belongs to."""
    return {s: name for name, (kind, _) in contract.items() for s in _series_names(name, kind)}


def test_dashboard_queries_only_contract_metrics(metric_contract) -> None:
    owner = _series_owner(metric_contract)
    allowed = set(owner) | _process_series() | PROMETHEUS_SERIES
    used: set[str] = set()
    for expr in _expressions(_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"{expr!r} queries {sorted(names - allowed)}"
        used |= {owner[n] for n in names if n in owner}
    assert used == set(metric_contract), f"no panel shows {sorted(set(metric_contract) - used)}"


def test_dashboard_groups_by_labels_the_series_carry(metric_contract) -> None:
    target_labels = _target_labels()
    for expr in _expressions(_dashboard()):
        carried = set(target_labels)
        for name in promql_metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base in metric_contract:
                carried |= metric_contract[base][1]
            if name.endswith("_bucket"):
                carried.add("le")
        assert promql_labels(expr) <= carried, f"{expr!r} uses labels {sorted(promql_labels(expr) - carried)}"


def _registered_series(module) -> dict[str, str]:
    """Series name -> family name for every metric the module declares."""
    families = [f for obj in vars(module).values() if isinstance(obj, MetricWrapperBase) for f in obj.describe()]
    families += [f for obj in vars(module).values() if isinstance(obj, CollectorRegistry) for f in obj.collect()]
    return {s: f.name for f in families for s in _series_names(f.name, f.type)}


def test_dashboard_metrics_are_registered_by_the_code(metric_contract) -> None:
    registered = _registered_series(metrics)
    allowed = set(registered) | _process_series() | PROMETHEUS_SERIES
    for expr in _expressions(_dashboard()):
        missing = promql_metric_names(expr) - allowed
        assert not missing, f"{expr!r} queries {sorted(missing)}, which pipeline.metrics does not register"
    for name, (kind, _) in metric_contract.items():
        assert _series_names(name, kind) & set(registered), f"pipeline.metrics does not register {name}"


# -- Dockerfile


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        lines.append((keyword.upper(), args.strip()))
        current = ""
    return lines


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(path):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def test_dockerfile_is_multi_stage_and_runs_as_a_user() -> None:
    stages = _stages(DOCKERFILE)
    assert len(stages) >= 2
    runtime = stages[-1]
    builder_name = stages[0][0][1].split()[-1]
    assert any(k == "COPY" and f"--from={builder_name}" in a for k, a in runtime), (
        "runtime does not copy the builder's venv"
    )
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = next(json.loads(a) for k, a in runtime if k == "ENTRYPOINT")
    assert entrypoint == ["speakerflow"]
    assert re.search(r'^speakerflow = "pipeline\.cli:main"$', (ROOT / "pyproject.toml").read_text(), re.M)
    args = dict(a.split("=", 1) for k, a in _instructions(DOCKERFILE) if k == "ARG" and "=" in a)
    assert re.match(r"python:3\.11[.-]", args["PYTHON_IMAGE"]) and all("${PYTHON_IMAGE}" in s[0][1] for s in stages)


def test_dockerfile_installs_like_the_makefile() -> None:
    builder_runs = " ".join(a for k, a in _stages(DOCKERFILE)[0] if k == "RUN")
    assert re.search(r"pip install \.(\s|$)", builder_runs)
    pin = re.search(r"install (?:-q )?--no-deps (resemblyzer==\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"pip install --no-deps {pin}" in builder_runs


def test_image_downloads_nothing_at_run_time() -> None:
    runtime = _stages(DOCKERFILE)[-1]
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", env)
    assert re.search(r"\bPYANNOTE_METRICS_ENABLED=0\b", env)
    for keyword, args in _instructions(DOCKERFILE):
        assert not (keyword == "ADD" and re.search(r"https?://", args)), args
    for keyword, args in runtime:
        if keyword in {"RUN", "CMD", "ENTRYPOINT"}:
            assert not re.search(r"\b(curl|wget|pip|huggingface-cli|hf download)\b", args), args


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    # The file is an allow-list: everything is excluded, then the needed paths are let back in.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, args in _instructions(DOCKERFILE):
        if keyword == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"{source} is not in the build context"
                assert (ROOT / source).exists(), source
