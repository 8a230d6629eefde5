"""deploy/: every file parses, the pieces agree with each other and with the gateway, and every
metric the Grafana dashboard and the alert rules query is one the gateway really exports.

No Docker engine, promtool or kubeconform runs where these tests run, so nothing here builds
the image or asks a Kubernetes API server: the checks are at the level of YAML, JSON and the
Dockerfile's text, plus the gateway itself answering the paths the probes, the healthcheck
and Prometheus use.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.metrics import MetricWrapperBase

from proxy.app import create_app
from proxy.config import load_config, parse_config
from proxy.metrics import Metrics
from tests.deploy_check import expand_variables

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "woozlit.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Labels that Prometheus adds to every scraped series, or that histograms add.
TARGET_LABELS = frozenset({"job", "instance"})
METRIC = re.compile(r"woozlit_[a-z_]+")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- every file parses ---------------------------------------------------------------------


def test_the_deploy_files_exist() -> None:
    expected = [
        "Dockerfile",
        "Dockerfile.dockerignore",
        "compose.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/woozlit.yml",
        "grafana/dashboards/woozlit.json",
        "k8s/kustomization.yaml",
    ]
    missing = [name for name in expected if not (DEPLOY / name).is_file()]
    assert not missing


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_yaml_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{rel(path)} has no document"
    assert all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=rel)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# -- metric names: the dashboard and the alerts query only what the gateway exports --------


def exported() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name /metrics can show -> (its metric, the label names it carries)."""
    metrics = Metrics()
    # prometheus_client shows label names only on samples, and a labelled metric has none
    # until first used: take them from the metric objects.
    labels = {
        m._name: frozenset(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = {}
    for family in metrics.registry.collect():
        assert family.type in suffixes, f"{family.name}: unhandled metric type {family.type}"
        for suffix in suffixes[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = (family.name, labels[family.name] | extra)
    return names


SERIES = exported()
EXPORTED = {name: own for name, (_, own) in SERIES.items()}


def families(exprs: list[str]) -> set[str]:
    """The gateway metrics that some expression uses: woozlit_redis_seconds_bucket counts
    as woozlit_redis_seconds."""
    return {SERIES[n][0] for expr in exprs for n in METRIC.findall(expr) if n in SERIES}


def query_problems(expr: str) -> list[str]:
    """What in a PromQL expression names a metric or a label the gateway does not export."""
    problems = []
    used = set(METRIC.findall(expr))
    for name in sorted(used - EXPORTED.keys()):
        problems.append(f"{name} is not exported")
    known = [EXPORTED[name] for name in used if name in EXPORTED]
    in_expr = frozenset().union(*known) | TARGET_LABELS
    for name, matchers in re.findall(r"(woozlit_[a-z_]+)\s*\{([^}]*)\}", expr):
        for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
            if name in EXPORTED and label not in EXPORTED[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in re.findall(r"[a-zA-Z_]\w*", clause):
            if label not in in_expr:
                problems.append(f"no metric in the expression has a label {label!r}")
    for name, label in re.findall(r"label_values\(\s*(woozlit_[a-z_]+)[^,]*,\s*(\w+)\s*\)", expr):
        if name in EXPORTED and label not in EXPORTED[name] | TARGET_LABELS:
            problems.append(f"{name} has no label {label!r}")
    return problems


def dashboard_queries() -> list[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    yield value
                elif key == "query" and isinstance(value, str | dict):
                    yield from ([value] if isinstance(value, str) else walk(value))
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return list(walk(json.loads(DASHBOARD.read_text())))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_the_metric_check_catches_mistakes() -> None:
    # The check below is only worth something if it fails on the usual slips.
    assert query_problems("rate(woozlit_request_total[5m])")  # misspelt
    assert query_problems("rate(woozlit_requests[5m])")  # a counter without _total
    assert query_problems("woozlit_request_duration_seconds")  # a histogram without suffix
    assert query_problems('woozlit_admissions_total{reason="quota"}')  # the label is result
    assert query_problems("sum by (reason) (rate(woozlit_admissions_total[5m]))")
    assert query_problems("label_values(woozlit_requests_total, deployment)")
    good = 'sum by (le, op) (rate(woozlit_redis_seconds_bucket{job="x"}[5m]))'
    assert not query_problems(f"histogram_quantile(0.99, {good})")


def test_the_dashboard_queries_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    problems = [f"{expr!r}: {p}" for expr in queries for p in query_problems(expr)]
    assert not problems, "\n".join(problems)


def test_the_dashboard_covers_the_gateway() -> None:
    used = families(dashboard_queries())
    assert len(used) >= 8
    wanted = {
        "woozlit_requests",  # traffic by model and status
        "woozlit_request_duration_seconds",
        "woozlit_time_to_first_token_seconds",
        "woozlit_tokens",
        "woozlit_admissions",
        "woozlit_upstream_errors",
        "woozlit_deployment_cooldown",
        "woozlit_open_streams",
        "woozlit_in_flight_requests",
        "woozlit_gateway_overhead_seconds",
        "woozlit_redis_seconds",
        "woozlit_redis_errors",
    }
    assert not wanted - used


def test_the_alert_rules_query_only_exported_metrics() -> None:
    rules = alert_rules()
    problems = [f"{r['alert']}: {p}" for r in rules for p in query_problems(r["expr"])]
    assert not problems, "\n".join(problems)
    used = families([r["expr"] for r in rules])
    assert {
        "woozlit_requests",
        "woozlit_upstream_errors",
        "woozlit_redis_errors",
        "woozlit_admissions",
        "woozlit_deployment_cooldown",
        "woozlit_request_duration_seconds",
    } <= used
    assert any(re.search(r"\bup\{", r["expr"]) for r in rules)  # gateway down


def test_every_alert_rule_is_complete() -> None:
    names = []
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        names.append(rule["alert"])
    assert len(names) == len(set(names))


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == datasource["type"]
    assert variables["datasource"]["current"]["value"] == datasource["uid"]

    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for ds in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ds["uid"] in ("${datasource}", datasource["uid"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# -- Kubernetes ---------------------------------------------------------------------------


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for name in load(K8S / "kustomization.yaml")["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def container_port(c: dict[str, Any], ref: int | str) -> int:
    """The container port a probe or a Service names, by number or by name."""
    for port in c["ports"]:
        if ref in (port["containerPort"], port.get("name")):
            return int(port["containerPort"])
    raise AssertionError(f"no container port {ref!r}")


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    images = {i["name"] for i in kustomization.get("images", [])}
    image = container(k8s_objects())["image"].split(":")[0]
    assert not images or image in images


def test_the_manifests_have_the_expected_kinds() -> None:
    objects = k8s_objects()
    assert {kind: o["apiVersion"] for kind, o in objects.items()} == {
        "Deployment": "apps/v1",
        "Service": "v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "PodDisruptionBudget": "policy/v1",
        "ConfigMap": "v1",
        "Secret": "v1",
    }
    for o in objects.values():
        assert o["metadata"]["name"]


def test_the_deployment_probes_drains_and_runs_as_non_root() -> None:
    objects = k8s_objects()
    spec = objects["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    c = container(objects)
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in c:
            assert container_port(c, c[probe]["httpGet"]["port"]) == 8080

    command = c["command"]
    assert command[:2] == ["woozlit-proxy", "serve"]
    assert command[command.index("--port") + 1] == "8080"
    assert int(command[command.index("--workers") + 1]) >= 1

    # preStop sleeps so that endpoints drop before SIGTERM; then the gateway drains for up to
    # aiohttp's 60 s shutdown timeout: the grace period must cover both.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert 3 <= int(pre_stop[1]) <= 30
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 60

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()

    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert container_port(c, int(annotations["prometheus.io/port"])) == 8080
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_hpa_and_pdb_point_at_the_deployment() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    c = container(objects)

    service = objects["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    (port,) = service["ports"]
    assert container_port(c, port["targetPort"]) == 8080

    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]

    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    # With maxUnavailable below the HPA's floor, a drain never takes every pod at once.
    assert pdb.get("maxUnavailable", 0) < hpa["minReplicas"] or pdb.get("minAvailable", 0) >= 1


def pod_env(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The environment the gateway container gets, with the Secret's (placeholder) values."""
    secret = objects["Secret"]
    values = secret.get("stringData", {})
    env = {}
    for var in container(objects)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], var["name"]
            assert ref["key"] in values, f"{var['name']}: the Secret has no key {ref['key']}"
            env[var["name"]] = values[ref["key"]]
    return env


def test_secrets_come_from_the_secret() -> None:
    objects = k8s_objects()
    env = pod_env(objects)
    secret_refs = {var["name"] for var in container(objects)["env"] if "valueFrom" in var}
    wanted = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY"}
    assert wanted | {"WOOZLIT_ADMIN_TOKEN"} <= secret_refs
    # An empty Redis URL would mean the embedded, per-process store: wrong on several pods.
    assert re.match(r"(redis|rediss|redis\+cluster|unix)://.", env["WOOZLIT_REDIS_URL"])


def test_the_configmap_is_the_shipped_routing_table_and_valid() -> None:
    objects = k8s_objects()
    c = container(objects)
    env = pod_env(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]

    # WOOZLIT_CONFIG names the file that the ConfigMap volume puts there.
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    (item,) = volume["configMap"]["items"]
    assert env["WOOZLIT_CONFIG"] == f"{mount['mountPath']}/{item['path']}"
    text = objects["ConfigMap"]["data"][item["key"]]

    config = parse_config(yaml.safe_load(text), "configmap", env)
    assert yaml.safe_load(text) == load(ROOT / "config" / "woozlit.yaml"), (
        "deploy/k8s/configmap.yaml differs from config/woozlit.yaml: copy it over"
    )
    assert len(config.models) == 12
    assert config.server.port == 8080


# -- compose, Prometheus and Grafana -----------------------------------------------------


def compose() -> dict[str, Any]:
    return load(DEPLOY / "compose.yaml")


def host_path(service: dict[str, Any], target: str) -> Path:
    """Where a path inside a compose service's container comes from on the host."""
    for volume in service.get("volumes", []):
        source, mounted = volume.split(":")[:2]
        if source.startswith(".") and (target == mounted or target.startswith(mounted + "/")):
            return (DEPLOY / source / target[len(mounted) :].lstrip("/")).resolve()
    raise AssertionError(f"{target} is not mounted from the host")


def test_compose_has_the_stack() -> None:
    services = compose()["services"]
    assert {"gateway", "redis", "prometheus", "grafana"} <= services.keys()

    gateway = services["gateway"]
    build = gateway["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = gateway["environment"]
    assert env["WOOZLIT_REDIS_URL"].startswith("redis://redis:")
    assert env["WOOZLIT_ADMIN_TOKEN"].startswith("${WOOZLIT_ADMIN_TOKEN:-")
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY"):
        assert env[var] == f"${{{var}:-}}"
    assert any(p.endswith(":8080") for p in gateway["ports"])
    assert gateway["command"][gateway["command"].index("--port") + 1] == "8080"

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])

    # Every file mounted from the host exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume


def test_prometheus_scrapes_the_gateway_and_loads_the_alerts() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    flags = dict(f.split("=", 1) for f in prometheus["command"] if "=" in f)
    config_path = host_path(prometheus, flags["--config.file"])
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    config = load(config_path)

    # Prometheus resolves relative rule files against the config file's directory, which is
    # what lets `promtool check config` pass on the file as shipped (deploy_check runs it).
    config_dir = flags["--config.file"].rsplit("/", 1)[0]
    assert all(not f.startswith("/") for f in config["rule_files"]), config["rule_files"]
    rule_files = [host_path(prometheus, f"{config_dir}/{f}") for f in config["rule_files"]]
    assert rule_files == [ALERTS]

    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "woozlit"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and port == "8080"
    # The alert rules select that job.
    assert all('job="woozlit"' in r["expr"] for r in alert_rules() if "up{" in r["expr"])


def test_every_service_of_the_gateway_image_checks_its_own_health() -> None:
    # The image's HEALTHCHECK asks /healthz on 8080: a service that runs something else from
    # the image (the demo's fake upstream) must bring its own, or it reports unhealthy.
    services = compose()["services"]
    image = services["gateway"]["image"]
    healthz = " ".join(json.loads(final_stage_healthcheck()))
    others = [n for n, s in services.items() if n != "gateway" and s.get("image") == image]
    assert others  # the demo's fake upstream
    for name in others:
        service = services[name]
        assert "serve" not in service["command"], name
        check = service.get("healthcheck")
        assert check, f"{name} inherits the gateway's HEALTHCHECK"
        assert check.get("disable") or " ".join(check["test"]) != healthz, name
        port = re.search(r"--port\W+(\d+)", " ".join(service["command"]))
        assert check.get("disable") or (port and port.group(1) in " ".join(check["test"])), name


def test_the_job_variable_all_selects_only_gateway_jobs() -> None:
    # Grafana replaces All by the variable's allValue, else by a regex of its values (those
    # of label_values(woozlit_..., job)): an allValue of .* matched Prometheus's own job, and
    # "Instances up" counted it.
    expanded = [expand_variables(q, {"job": ["woozlit"], "model": ["woozlit/gpt-4o"]})
                for q in dashboard_queries()]  # fmt: skip
    selectors = [m for q in expanded for m in re.findall(r'job=~"([^"]*)"', q)]
    assert selectors
    for regex in selectors:
        assert re.fullmatch(regex, "woozlit"), regex
        assert not re.fullmatch(regex, "prometheus"), regex
    assert any(re.search(r'\bup\{job=~"', q) for q in expanded)


def test_grafana_is_provisioned() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (datasource,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in services

    (provider,) = load(provisioning / "dashboards" / "woozlit.yml")["providers"]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == DASHBOARD


# -- Dockerfile ---------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in text.splitlines() if line.strip())
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    result = []
    for op, args in dockerfile():
        if op == "COPY" and "--from=" not in args:
            *sources, dest = args.split()
            result.append((sources, dest))
    return result


def test_the_dockerfile_builds_offline() -> None:
    # A `# syntax=` parser directive makes BuildKit pull that frontend image from a registry.
    head = (DEPLOY / "Dockerfile").read_text().splitlines()
    directives = [line for line in head[:5] if re.match(r"#\s*syntax\s*=", line, re.I)]
    assert not directives


def test_the_dockerfile() -> None:
    instructions = dockerfile()
    assert all(args.startswith("python:3.11-slim") for op, args in instructions if op == "FROM")
    assert any(op == "RUN" and re.search(r"pip install \.$", args) for op, args in instructions)

    final = dict(final_stage())
    assert final["USER"].split(":")[0] not in ("root", "0")
    assert final["EXPOSE"] == "8080"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in final["HEALTHCHECK"] and "urllib" in final["HEALTHCHECK"]
    assert "curl" not in final["HEALTHCHECK"]
    assert json.loads(final["CMD"]) == [
        "woozlit-proxy",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]

    # The image's default config is where WOOZLIT_CONFIG says, and the sources it copies exist.
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), source
    (dest,) = [dest for sources, dest in copies() if sources == ["proxy/woozlit.yaml"]]
    assert f"WOOZLIT_CONFIG={dest}" in final["ENV"].split()


def dockerignore_keeps(path: str) -> bool:
    """Whether the Dockerfile's ignore file lets `path` into the context (Docker's rules:
    the last matching pattern wins; a pattern matching a parent directory matches)."""
    keep = True
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            ".*"
            if part == "**"
            else "[^/]*"
            if part == "*"
            else "[^/]"
            if part == "?"
            else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            keep = negate
    return keep


def test_the_dockerignore_keeps_what_the_build_copies() -> None:
    for sources, _ in copies():
        for source in sources:
            path = ROOT / source
            files = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            )
            for f in files:
                assert dockerignore_keeps(str(f.relative_to(ROOT))), f
    for kept_out in (".git/config", ".env", "tests/conftest.py", "proxy/__pycache__/app.pyc"):
        assert not dockerignore_keeps(kept_out), kept_out


# -- the paths everything above relies on answer on a real gateway -----------------------


async def test_the_probed_paths_and_the_healthcheck_work_on_a_live_gateway() -> None:
    config = load_config(ROOT / "config" / "woozlit.yaml", env={})
    objects = k8s_objects()
    c = container(objects)
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    paths = {
        c["readinessProbe"]["httpGet"]["path"],
        c["livenessProbe"]["httpGet"]["path"],
        annotations["prometheus.io/path"],
    }
    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        for path in sorted(paths):
            resp = await client.get(path)
            assert resp.status == 200, path
        body = await (await client.get("/metrics")).text()
        assert "woozlit_in_flight_requests" in body

        # The image's HEALTHCHECK command itself, pointed at this server's port.
        health = json.loads(final_stage_healthcheck())
        assert health[:2] == ["python", "-c"]
        code = health[2].replace(":8080/", f":{client.port}/")
        assert await run_python(code) == 0
    assert await run_python(code) != 0  # and it fails once the server is gone


def final_stage_healthcheck() -> str:
    check = dict(final_stage())["HEALTHCHECK"]
    return check[check.index("CMD") + 3 :].strip()


async def run_python(code: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait()
