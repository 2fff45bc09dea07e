"""Every HAGMOE_* setting the artefacts pass (ConfigMaps, chart, compose, image) is one that
`hagmoe serve` reads (`hagmoe serve --help` lists each flag's environment variable)."""

from __future__ import annotations

import re

import pytest
from deploy_support import COMPOSE, KUBERNETES, ROOT, load_yaml, one, render_chart

from hagmoe.cli import main

# Set by the Dockerfile for its own build steps, not read by the server.
IMAGE_ONLY = {"HAGMOE_TORCH_INDEX"}


def serve_env_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> set[str]:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    return set(re.findall(r"\benv\s+(HAGMOE_[A-Z0-9_]+)", capsys.readouterr().out))


def test_every_setting_passed_is_a_serve_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = serve_env_names(capsys, monkeypatch)
    assert {"HAGMOE_PORT", "HAGMOE_DRAIN_TIMEOUT", "HAGMOE_API_KEY_FILE"} <= known
    passed: dict[str, set[str]] = {
        "kubernetes": set(load_yaml(KUBERNETES / "configmap.yaml")["data"]),
        "compose": set(load_yaml(COMPOSE)["services"]["hagmoe"]["environment"]),
        "dockerfile": set(re.findall(r"\b(HAGMOE_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text())),
    }
    every = render_chart(
        *("--set", "model.source=pvc,model.pvc.claimName=m,model.servedModelName=m"),
        *("--set", "server.threads=2,apiKeys.enabled=true,apiKeys.keys={k}"),
    )
    deployment = one(every, "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    passed["helm"] = set(one(every, "ConfigMap")["data"]) | {e["name"] for e in env}
    for source, names in passed.items():
        unknown = names - known - IMAGE_ONLY
        assert not unknown, f"{source} sets {unknown}, which hagmoe serve does not read"
