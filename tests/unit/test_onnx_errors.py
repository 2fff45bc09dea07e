"""Typed errors of the ONNX path: a missing onnx / onnxruntime names the extra to install, and a
graph that does not match its manifest names the missing and extra inputs and outputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from hagmoe.model import named_config, random_model
from hagmoe.onnx import (
    ManifestError,
    ManifestMismatchError,
    OnnxDependencyError,
    OnnxGenerator,
    OnnxSessions,
    default_providers,
    export_onnx,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    model = random_model(named_config("tiny", num_layers=1, router="linear"), seed=0)
    export_onnx(model, out)
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest


def test_missing_onnxruntime_names_the_extra(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(OnnxDependencyError, match=r"pip install hagmoe\[onnx\]") as info:
        OnnxGenerator(folder)
    assert info.value.package == "onnxruntime"
    assert isinstance(info.value, ImportError)


def test_missing_onnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    model = random_model(named_config("tiny", num_layers=1), seed=0)
    with pytest.raises(OnnxDependencyError, match=r"'onnx'.*pip install hagmoe\[onnx\]"):
        export_onnx(model, tmp_path)
    assert not (tmp_path / "prefill.onnx").exists()


def test_manifest_mismatch_lists_missing_and_extra_names(folder: Path, tmp_path: Path) -> None:
    dest = _copy(folder, tmp_path)
    path = dest / "manifest.json"
    data = json.loads(path.read_text())
    decode = data["graphs"]["decode"]
    decode["inputs"][1]["name"] = "positions"
    decode["outputs"] = decode["outputs"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestMismatchError) as info:
        OnnxSessions.load(dest, ["CPUExecutionProvider"])
    err = info.value
    assert err.graph == "decode"
    assert err.missing_inputs == ["positions"] and err.extra_inputs == ["past_lengths"]
    assert err.missing_outputs == [] and err.extra_outputs == ["present.0.value"]
    assert "positions" in str(err) and "present.0.value" in str(err)


def test_unreadable_or_foreign_manifest(folder: Path, tmp_path: Path) -> None:
    dest = _copy(folder, tmp_path)
    (dest / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ManifestError, match="hagmoe-onnx"):
        OnnxSessions.load(dest)
    (dest / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json"):
        OnnxSessions.load(dest)


def test_provider_choice() -> None:
    assert default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
