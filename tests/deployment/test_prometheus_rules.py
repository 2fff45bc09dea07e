"""deployment/prometheus: promtool accepts the config and the rules, the rules' own unit tests
pass, and the alerts an operator needs are there, each with a severity and words to act on."""

from __future__ import annotations

from deploy_support import ALERTS, PROMETHEUS, load_yaml, run_tool, tool

REQUIRED_ALERTS = {
    "HagmoeInstanceDown",
    "HagmoeHighErrorRate",
    "HagmoeHighQueue",
    "HagmoeHighTimeToFirstToken",
    "HagmoeKVCacheNearlyFull",
}


def alerts() -> list[dict[str, object]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_promtool_checks_the_config() -> None:
    proc = run_tool([tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_checks_the_rules() -> None:
    proc = run_tool([tool("promtool"), "check", "rules", str(ALERTS)])
    assert f"SUCCESS: {len(alerts())} rules found" in proc.stdout + proc.stderr


def test_every_alert_fires_in_the_rule_unit_tests() -> None:
    run_tool([tool("promtool"), "test", "rules", str(PROMETHEUS / "alerts_test.yml")])
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alerts()}


def test_the_operators_alerts_exist_with_severity_and_guidance() -> None:
    rules = alerts()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert "for" in rule, f"{rule['alert']} would fire on a single bad evaluation"
