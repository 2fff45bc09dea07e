"""Shared helpers of the deployment tests: where the artefacts and tools are, running the tools,
rendering the chart, reading YAML and PromQL, and the pod posture every manifest must keep."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "deployment"
CHART = ROOT / "helm" / "hagmoe"
GPU_VALUES = CHART / "values-gpu.yaml"
KUBERNETES = DEPLOYMENT / "kubernetes"
PROMETHEUS = DEPLOYMENT / "prometheus"
GRAFANA = DEPLOYMENT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "hagmoe.json"
ALERTS = PROMETHEUS / "alerts.yml"
COMPOSE = DEPLOYMENT / "docker-compose.yml"
HEALTHCHECK = DEPLOYMENT / "docker" / "healthcheck.py"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion is >=1.27; 1.29 is the
# oldest schema set we check) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", "latest")
WRITABLE_PATHS = ("/tmp", "/home/hagmoe")

# Where `make deploy-tools` puts each tool: the venv, its tools/ folder, or the system (apt).
VENV_BIN = Path(sys.executable).parent
TOOL_PLACES = {
    "helm": [ROOT / ".venv" / "tools" / "helm"],
    "hadolint": [VENV_BIN / "hadolint"],
}
TOOL_TIMEOUT = 60.0


def tool(name: str) -> str:
    """The path of a tool the Makefile installs; a loud failure (never a skip) without it."""
    for place in TOOL_PLACES.get(name, []):
        if place.is_file() and os.access(place, os.X_OK):
            return str(place)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make deploy-tools` (see the Makefile)")
    return found


def run_tool(
    args: Sequence[str], *, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ok=True a non-zero exit fails the test with the tool's output."""
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_template(*options: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_tool(
        [tool("helm"), "template", "hagmoe", str(CHART), "--namespace", "serving", *options], ok=ok
    )


def render_chart(*options: str) -> list[dict[str, Any]]:
    """The chart's manifests, rendered with `helm template` and these extra options."""
    return load_documents(helm_template(*options).stdout)


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def by_kind(documents: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc.get("kind") == kind]


def one(documents: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def check_pod_posture(deployment: dict[str, Any], config: dict[str, str]) -> None:
    """What every hagmoe Deployment must do: run non-root with a read-only root filesystem and
    no privileges, probe /health and /ready, drain inside the grace period."""
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    pod_security = pod["securityContext"]
    security = main["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("privileged", False)
    assert pod["automountServiceAccountToken"] is False

    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in WRITABLE_PATHS:
        assert path in mounts, f"no writable volume at {path}"
        assert "emptyDir" in volumes[mounts[path]]

    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["http"] == int(config["HAGMOE_PORT"])
    assert config["HAGMOE_HOST"] == "0.0.0.0"
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    readiness = main["readinessProbe"]
    assert readiness.get("httpGet") == {"path": "/ready", "port": "http"} or readiness.get(
        "grpc"
    ) == {"port": int(config["HAGMOE_GRPC_PORT"])}
    startup = main["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 120, "the startup probe must leave time to load the model"

    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(config["HAGMOE_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain


HAGMOE_NAME = re.compile(r"\bhagmoe_[a-zA-Z0-9_]*[a-zA-Z0-9]")
SELECTOR = re.compile(r"\b(hagmoe_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_names(expressions: Iterable[str]) -> set[str]:
    """The hagmoe_* series names PromQL expressions read (sample names, suffixes included)."""
    return {name for expr in expressions for name in HAGMOE_NAME.findall(expr)}


def label_matchers(expressions: Iterable[str]) -> set[tuple[str, str]]:
    """(series name, label name) for every label matcher inside `name{...}`."""
    found: set[tuple[str, str]] = set()
    for expr in expressions:
        for name, body in SELECTOR.findall(expr):
            found.update((name, label) for label in MATCHER.findall(body))
    return found


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_expressions() -> list[str]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def grafana_to_promql(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression as Prometheus runs it: Grafana's variables filled in
    (`label_values(...)` variable queries become the series selector they read)."""
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr.strip())
    if match:
        expr = match.group(1)
    for variable, value in (
        ("$__rate_interval", rate_interval),
        ("$__interval", "15s"),
        ("$instance", ".*"),
        ("$layer", ".*"),
    ):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr
