"""The committed generated code is what `make proto` makes; every proto field is documented."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from server import proto_gen


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = proto_gen.generate(tmp_path)
    names = sorted(p.name for p in written)
    assert names == [
        "__init__.py",
        "generation_pb2.py",
        "generation_pb2.pyi",
        "generation_pb2_grpc.py",
    ]
    for path in written:
        committed = proto_gen.OUT_DIR / path.name
        assert committed.read_text() == path.read_text(), f"run `make proto`: {path.name} differs"


def test_every_field_enum_value_and_rpc_has_a_comment() -> None:
    lines = (proto_gen.PROTO_ROOT / proto_gen.PROTO_FILE).read_text().splitlines()
    declaration = re.compile(r"^\s*((optional|repeated)\s+)?[\w.]+\s+\w+\s*=\s*\d+;|^\s*rpc\s")
    undocumented = [
        line.strip()
        for previous, line in itertools.pairwise(lines)
        if declaration.match(line) and not previous.strip().startswith("//")
    ]
    assert not undocumented


def test_generated_grpc_code_imports_its_sibling() -> None:
    text = (proto_gen.OUT_DIR / "generation_pb2_grpc.py").read_text()
    assert "from . import generation_pb2" in text and "from hagmoe.v1" not in text
