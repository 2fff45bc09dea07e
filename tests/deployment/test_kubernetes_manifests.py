"""deployment/kubernetes: valid against the Kubernetes schemas, hardened, and in step with the
chart's default render and with `hagmoe serve`'s settings."""

from __future__ import annotations

from typing import Any

from deploy_support import (
    KUBERNETES,
    check_pod_posture,
    container,
    load_documents,
    one,
    render_chart,
)
from kube_schemas import validate_all


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(load_documents(path.read_text()))
    return docs


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kinds = validate_all(manifests())
    assert sorted(kinds) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]


def test_deployment_is_hardened_probed_and_drains_in_time() -> None:
    docs = manifests()
    check_pod_posture(one(docs, "Deployment"), one(docs, "ConfigMap")["data"])


def test_service_selects_the_pods_and_names_the_ports() -> None:
    docs = manifests()
    service, deployment = one(docs, "Service"), one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"] for p in container(deployment)["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc", "metrics"}


def test_hpa_scales_the_deployment_on_waiting_requests() -> None:
    docs = manifests()
    hpa, deployment = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "hagmoe_num_requests_waiting"


def test_plain_manifests_match_the_charts_defaults() -> None:
    plain = manifests()
    chart = render_chart()
    assert one(plain, "ConfigMap")["data"] == one(chart, "ConfigMap")["data"]
    ours, theirs = one(plain, "Deployment"), one(chart, "Deployment")
    for key in ("ports", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle"):
        assert container(ours)[key] == container(theirs)[key], key
    for key in ("securityContext", "terminationGracePeriodSeconds", "volumes"):
        assert ours["spec"]["template"]["spec"][key] == theirs["spec"]["template"]["spec"][key]
    assert container(ours)["securityContext"] == container(theirs)["securityContext"]
    assert container(ours)["resources"] == container(theirs)["resources"]
