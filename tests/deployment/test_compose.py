"""deployment/docker-compose.yml: valid for docker-compose, its mounts exist and line up with
the Prometheus and Grafana configuration, and hagmoe runs hardened with time to drain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import COMPOSE, DEPLOYMENT, load_yaml, run_tool, tool


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (relative to the file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_docker_compose_accepts_the_file(variant: str) -> None:
    proc = run_tool(
        [tool("docker-compose"), "-f", str(COMPOSE), "config"], env={"HAGMOE_VARIANT": variant}
    )
    resolved = yaml.safe_load(proc.stdout)
    hagmoe = resolved["services"]["hagmoe"]
    assert hagmoe["build"]["args"]["VARIANT"] == variant
    assert Path(hagmoe["build"]["context"]).resolve() == DEPLOYMENT.parent


def test_prometheus_mounts_its_config_and_the_rules_it_loads() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    host_config = mounts[config_path]
    assert host_config.is_file()
    config = load_yaml(host_config)
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert mounts[in_container].is_file(), f"{rule_file} is loaded but not mounted"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "hagmoe"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["hagmoe:8000"], "the compose service name and the REST port"
    assert job["metrics_path"] == "/metrics"
    assert "8000:8000" in compose()["services"]["hagmoe"]["ports"]


def test_grafana_provisions_the_datasource_and_dashboard_it_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (datasource,) = datasources
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = load_yaml(provisioning / "dashboards" / "hagmoe.yml")["providers"]
    dashboards_path = providers[0]["options"]["path"]
    host_dashboards = mounts[dashboards_path]
    assert (host_dashboards / "hagmoe.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (host_dashboards / Path(home).relative_to(dashboards_path)).is_file()
    dashboard = json.loads((host_dashboards / "hagmoe.json").read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]


def test_hagmoe_runs_read_only_without_capabilities_and_drains_before_the_kill() -> None:
    hagmoe = compose()["services"]["hagmoe"]
    assert hagmoe["read_only"] is True
    tmpfs = {entry.split(":")[0] for entry in hagmoe["tmpfs"]}
    assert tmpfs == {"/tmp", "/home/hagmoe"}
    assert hagmoe["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in hagmoe["security_opt"]
    drain = float(hagmoe["environment"]["HAGMOE_DRAIN_TIMEOUT"])
    assert seconds(hagmoe["stop_grace_period"]) > drain
    assert hagmoe["healthcheck"]["test"][-1] == "/usr/local/lib/hagmoe/healthcheck.py"
