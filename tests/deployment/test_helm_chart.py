"""helm/hagmoe: `helm lint`, `helm template` with the default, GPU and every-option values,
the renders validated against the Kubernetes schemas, and what each option must render."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import (
    CHART,
    GPU_VALUES,
    by_kind,
    check_pod_posture,
    container,
    helm_template,
    load_yaml,
    one,
    render_chart,
    run_tool,
    tool,
)
from kube_schemas import validate_all

EVERY_OPTION = (
    *("--set", "autoscaling.enabled=true"),
    *("--set", "serviceMonitor.enabled=true"),
    *("--set", "model.source=pvc,model.pvc.claimName=models,model.pvc.path=hagmoe-small"),
    *("--set", "apiKeys.enabled=true,apiKeys.keys={key-one,key-two}"),
    *("--set", "probes.type=grpc"),
)


def pod(documents: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(documents, "Deployment")["spec"]["template"]["spec"]
    return spec


def env(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e for e in container(one(documents, "Deployment")).get("env", [])}


def mounts(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(one(documents, "Deployment"))["volumeMounts"]}


@pytest.mark.parametrize("values", [[], ["-f", str(GPU_VALUES)]], ids=["default", "gpu"])
def test_helm_lint(values: list[str]) -> None:
    run_tool([tool("helm"), "lint", "--strict", str(CHART), *values])


@pytest.mark.parametrize(
    "options",
    [(), ("-f", str(GPU_VALUES)), EVERY_OPTION],
    ids=["default", "gpu", "every-option"],
)
def test_renders_validate_against_the_kubernetes_schemas(options: tuple[str, ...]) -> None:
    documents = render_chart(*options)
    kinds = validate_all(documents)
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(kinds)
    assert "PodDisruptionBudget" in kinds
    check_pod_posture(one(documents, "Deployment"), one(documents, "ConfigMap")["data"])


def test_default_serves_the_bundled_model_on_cpu_over_http_grpc_and_metrics() -> None:
    documents = render_chart()
    config = one(documents, "ConfigMap")["data"]
    assert "HAGMOE_MODEL" not in config, "no --model: the image's bundled model"
    assert config["HAGMOE_DEVICE"] == "cpu"
    main = container(one(documents, "Deployment"))
    assert main["image"] == f"hagmoe:{load_yaml(CHART / 'Chart.yaml')['appVersion']}-cpu"
    assert main["args"] == ["serve"]
    service = one(documents, "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "grpc": "grpc",
        "metrics": "http",
    }
    annotations = one(documents, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == config["HAGMOE_PORT"]
    assert "nvidia.com/gpu" not in str(main["resources"])
    assert not by_kind(documents, "HorizontalPodAutoscaler")
    assert not by_kind(documents, "Secret")


def test_gpu_values_request_a_gpu_on_gpu_nodes_with_the_cuda_image() -> None:
    documents = render_chart("-f", str(GPU_VALUES))
    spec = pod(documents)
    main = container(one(documents, "Deployment"))
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["resources"]["limits"]["memory"]
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"]
    assert main["image"].endswith("-cuda")
    config = one(documents, "ConfigMap")["data"]
    assert config["HAGMOE_DEVICE"] == "cuda"
    assert mounts(documents)["/dev/shm"]["name"] == "shm"


def test_every_option_renders_pvc_model_key_file_grpc_probes_hpa_and_servicemonitor() -> None:
    documents = render_chart(*EVERY_OPTION)
    config = one(documents, "ConfigMap")["data"]
    assert config["HAGMOE_MODEL"] == "/models/hagmoe-small"
    assert mounts(documents)["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod(documents)["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}

    secret = one(documents, "Secret")
    key_file = env(documents)["HAGMOE_API_KEY_FILE"]["value"]
    directory, _, item = key_file.rpartition("/")
    assert mounts(documents)[directory]["readOnly"] is True
    assert volumes["api-keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["stringData"][item].split() == ["key-one", "key-two"]

    main = container(one(documents, "Deployment"))
    assert main["readinessProbe"]["grpc"] == {"port": int(config["HAGMOE_GRPC_PORT"])}
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"

    hpa = one(documents, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "hagmoe_num_requests_waiting"
    assert "replicas" not in one(documents, "Deployment")["spec"], "the HPA owns replicas"

    monitor = one(documents, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    service = one(documents, "Service")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_api_keys_from_env_come_from_the_secret() -> None:
    documents = render_chart(
        "--set", "apiKeys.enabled=true,apiKeys.mode=env,apiKeys.existingSecret=prod-keys"
    )
    ref = env(documents)["HAGMOE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "prod-keys", "key": "api-keys"}
    assert not by_kind(documents, "Secret"), "an existing Secret is used, not created"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--set", "terminationGracePeriodSeconds=30"), "terminationGracePeriodSeconds"),
        (("--set", "model.source=s3"), "model"),
        (("--set", "model.source=pvc"), "claimName"),
        (("--set", "probes.type=grpc,server.grpcPort=0"), "grpcPort"),
        (("--set", "apiKeys.enabled=true"), "apiKeys"),
        (("--set", "securityContext.allowPrivilegeEscalation=true"), "allowPrivilegeEscalation"),
        (("--set", "servr.port=1"), "servr"),
    ],
    ids=[
        "grace-too-short",
        "unknown-source",
        "pvc-unnamed",
        "grpc-off",
        "no-keys",
        "escalate",
        "typo",
    ],
)
def test_broken_values_are_refused(options: tuple[str, ...], message: str) -> None:
    proc = helm_template(*options, ok=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_notes_tell_how_to_reach_it() -> None:
    proc = run_tool(
        [tool("helm"), "install", "hagmoe", str(CHART), "--dry-run=client", "-n", "serving"]
    )
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n serving port-forward service/hagmoe 8000:8000 50051:50051" in notes
    assert "/generate" in notes and "drains" in notes
