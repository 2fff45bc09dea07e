"""A real Prometheus (the Debian binary) with the repository's scrape config and alert rules,
scraping a real `hagmoe serve` on loopback: the series arrive, the rules evaluate cleanly, and
every dashboard query runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_support import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS,
    dashboard_expressions,
    grafana_to_promql,
    tool,
)

from loadtests.server_process import ServeProcess, free_port, stop_process, wait_until_ready

START_TIMEOUT = 30.0
SCRAPE = "1s"
# A dashboard query may be empty only where it selects outcomes that never happened here.
MAY_BE_EMPTY = ('outcome=~"error|unavailable|timeout"',)


class PrometheusProcess:
    """`prometheus` on a loopback port, its storage and log under a test folder."""

    def __init__(self, config: Path, folder: Path) -> None:
        self.port = free_port()
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("wb")
        args = [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=self._log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        wait_until_ready(self.proc, self.url + "/-/ready", "prometheus", self.log, START_TIMEOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = reply.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, ok: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result = self.query(expr)
        while not ok(result) and time.monotonic() < deadline:
            time.sleep(0.25)
            result = self.query(expr)
        assert ok(result), f"{expr} gave {result}\n{self.log()}"
        return result

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self._log.close()


def scrape_config(server: ServeProcess, folder: Path) -> Path:
    """The repository's prometheus.yml, pointed at the test server and scraping every second."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE)
    config["rule_files"] = [str(ALERTS)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    hagmoe = jobs["hagmoe"]
    hagmoe.update(scrape_interval=SCRAPE, scrape_timeout=SCRAPE)
    for static in hagmoe["static_configs"]:
        static["targets"] = [f"127.0.0.1:{server.port}"]
    config["scrape_configs"] = [hagmoe]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus(
    live_server: ServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    folder = tmp_path_factory.mktemp("prometheus")
    process = PrometheusProcess(scrape_config(live_server, folder), folder)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def generate(server: ServeProcess, n: int) -> None:
    body = {"inputs": "Scrape me", "parameters": {"max_new_tokens": 3, "ignore_eos": True}}
    for _ in range(n):
        httpx.post(server.url + "/generate", json=body, timeout=30).raise_for_status()


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(series["value"][1]) for series in result)


def test_prometheus_scrapes_hagmoe_series(
    live_server: ServeProcess, prometheus: PrometheusProcess
) -> None:
    prometheus.wait_for('up{job="hagmoe"}', lambda r: value(r) == 1)
    generate(live_server, 3)
    labels = 'outcome="success",route="/generate"'  # the exposition's (sorted) label order
    served = live_server.metric("hagmoe_requests_total", labels)
    assert served >= 3
    prometheus.wait_for(f"hagmoe_requests_total{{{labels}}}", lambda r: value(r) == served)
    tokens = prometheus.query('hagmoe_generation_tokens_total{job="hagmoe"}')
    assert value(tokens) >= 3 * 3
    experts = prometheus.query("sum(hagmoe_expert_tokens_total)")
    assert value(experts) > 0
    (series,) = prometheus.query("hagmoe_kv_cache_usage_ratio")
    assert series["metric"]["instance"] == f"127.0.0.1:{live_server.port}"


def test_alert_rules_load_and_evaluate_quietly(prometheus: PrometheusProcess) -> None:
    prometheus.wait_for('up{job="hagmoe"}', lambda r: value(r) == 1)

    def evaluated(groups: list[dict[str, Any]]) -> bool:
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(not r["lastEvaluation"].startswith("0001") for r in rules)

    deadline = time.monotonic() + 20
    groups = prometheus.api("rules")["groups"]
    while not evaluated(groups) and time.monotonic() < deadline:
        time.sleep(0.25)
        groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = {rule["name"] for rule in rules}
    on_disk = yaml.safe_load(ALERTS.read_text())["groups"]
    assert names == {rule["alert"] for group in on_disk for rule in group["rules"]}
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] == "inactive", f"{rule['name']} fires on a healthy server"


def test_every_dashboard_query_runs(
    live_server: ServeProcess, prometheus: PrometheusProcess
) -> None:
    generate(live_server, 2)
    # rate() needs two scrapes of the traffic inside the window.
    prometheus.wait_for("sum(rate(hagmoe_generation_tokens_total[1m]))", lambda r: value(r) > 0)
    board = json.loads(DASHBOARD.read_text())
    for expr in dashboard_expressions(board):
        result = prometheus.query(grafana_to_promql(expr))
        if not any(part in expr for part in MAY_BE_EMPTY):
            assert result, f"no data for the dashboard query {expr}"
