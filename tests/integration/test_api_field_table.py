"""docs/api.md's "Request fields by route" tables agree with what the server publishes: every
property of each route's request schema (GET /openapi.json of a real server; TGI's
`parameters` one level down) has a row and every row a property, each schema maximum is in
its row, the ignored rows are IGNORED_FIELDS; the gRPC table matches the proto descriptor."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.descriptor import Descriptor
from live_server import launch_server

from loadtests.server_process import ServeProcess
from server._generated import generation_pb2 as pb
from server.openai_schemas import IGNORED_FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECTION = "## Request fields by route"
STATUSES = {"supported", "refused", "ignored"}
REST_ROUTES = ("/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions")
NESTED = {"/generate": "parameters", "/generate_stream": "parameters"}
# Tool calls are being added to the chat schema: the table may list them before it has them.
PENDING = {"/v1/chat/completions": {"tools", "tool_choice", "parallel_tool_calls"}}
GRPC = "gRPC"
Row = tuple[str, str]  # status, meaning


def field_tables(text: str) -> dict[str, dict[str, Row]]:
    """Route (its heading's `POST <path>`, or GRPC) -> field -> (status, meaning)."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    tables: dict[str, dict[str, Row]] = {}
    route: str | None = None
    for line in section.splitlines():
        if line.startswith("### "):
            found = re.search(r"`POST (/[\w/]*)`", line)
            route = found.group(1) if found else GRPC if "gRPC" in line else None
            assert route is not None and route not in tables, line
            tables[route] = {}
        elif line.startswith("| `") and route is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            field, status, meaning = cells[0].strip("`"), cells[1], " | ".join(cells[2:])
            assert status in STATUSES, line
            assert field not in tables[route], f"{route}: {field} listed twice"
            tables[route][field] = (status, meaning)
    return tables


def _ref(node: Any) -> str | None:
    """The first $ref in a property's schema (a model, possibly behind anyOf / allOf)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return str(node["$ref"])
        return next((r for v in node.values() if (r := _ref(v)) is not None), None)
    if isinstance(node, list):
        return next((r for v in node if (r := _ref(v)) is not None), None)
    return None


def _model(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    model: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return model


def request_properties(schema: dict[str, Any], route: str) -> dict[str, dict[str, Any]]:
    body = schema["paths"][route]["post"]["requestBody"]["content"]["application/json"]
    ref = _ref(body["schema"])
    assert ref is not None, route
    props: dict[str, dict[str, Any]] = dict(_model(schema, ref)["properties"])
    nested = NESTED.get(route)
    if nested is not None:
        inner_ref = _ref(props[nested])
        assert inner_ref is not None, f"{route}: {nested} is not a model"
        for name, prop in _model(schema, inner_ref)["properties"].items():
            props[f"{nested}.{name}"] = prop
    return props


def _limits(node: Any) -> set[int | float]:
    """Every maximum and maxItems in a property's own schema (not behind $ref)."""
    found: set[int | float] = set()
    if isinstance(node, dict):
        for key in ("maximum", "maxItems"):
            if isinstance(node.get(key), int | float):
                found.add(node[key])
        for value in node.values():
            found |= _limits(value)
    elif isinstance(node, list):
        for value in node:
            found |= _limits(value)
    return found


def _shown(number: int | float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def proto_fields(descriptor: Descriptor, prefix: str = "") -> set[str]:
    return {prefix + f.name for f in descriptor.fields}


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, Row]]:
    return field_tables(DOC.read_text())


@pytest.fixture(scope="module")
def openapi(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("field-table") / "serve.log"
    server: ServeProcess = launch_server(model_dir, log)
    try:
        server.wait_ready()
        response = httpx.get(server.url + "/openapi.json", timeout=30)
        assert response.status_code == 200
        yield response.json()
    finally:
        server.stop()


def test_every_route_has_a_table(tables: dict[str, dict[str, Row]]) -> None:
    assert set(tables) == {*REST_ROUTES, GRPC}
    assert all(tables.values())


@pytest.mark.parametrize("route", REST_ROUTES)
def test_table_lists_exactly_the_published_fields(
    tables: dict[str, dict[str, Row]], openapi: Any, route: str
) -> None:
    props = request_properties(openapi, route)
    table = tables[route]
    assert sorted(set(props) - set(table)) == [], f"{route}: fields missing from docs/api.md"
    extra = set(table) - set(props) - PENDING.get(route, set())
    assert sorted(extra) == [], f"{route}: rows for fields the schema does not have"
    for name, prop in props.items():
        meaning = table[name][1]
        for limit in _limits(prop):
            assert _shown(limit) in meaning, f"{route}: {name}'s row lacks its limit {limit}"


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_ignored_rows_are_the_ignored_fields(tables: dict[str, dict[str, Row]], route: str) -> None:
    ignored = {name for name, (status, _) in tables[route].items() if status == "ignored"}
    assert ignored == set(IGNORED_FIELDS)


def test_refused_rows_quote_their_message(tables: dict[str, dict[str, Row]]) -> None:
    refused = {
        (route, name): meaning
        for route, table in tables.items()
        for name, (status, meaning) in table.items()
        if status == "refused"
    }
    assert refused
    for (route, name), meaning in refused.items():
        leaf = name.rsplit(".", 1)[-1]
        assert f"`{leaf}: " in meaning, f"{route}: {name} must quote its refusal message"


def test_grpc_table_matches_the_proto(tables: dict[str, dict[str, Row]]) -> None:
    expected = proto_fields(pb.GenerateRequest.DESCRIPTOR) | proto_fields(
        pb.SamplingParameters.DESCRIPTOR, "parameters."
    )
    assert set(tables[GRPC]) == expected
