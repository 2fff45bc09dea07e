"""Kubernetes schema validation (kubernetes-validate: the API's OpenAPI schemas, offline)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from deploy_support import KUBERNETES_VERSIONS

# Custom resources have no schema in the Kubernetes API; their own tests check them.
CUSTOM_RESOURCES = {"monitoring.coreos.com/v1"}


def versions() -> list[str]:
    return [
        kubernetes_validate.latest_version() if v == "latest" else v for v in KUBERNETES_VERSIONS
    ]


def validate_all(documents: list[dict[str, Any]]) -> list[str]:
    """Strictly validate every built-in resource against every checked Kubernetes version;
    the kinds validated (custom resources are returned as `Kind (custom)`)."""
    checked = []
    for doc in documents:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"] in CUSTOM_RESOURCES:
            checked.append(f"{doc['kind']} (custom)")
            continue
        for version in versions():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name} is invalid for Kubernetes {version}: {exc}") from exc
        checked.append(doc["kind"])
    return checked
