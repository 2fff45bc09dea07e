"""The OpenAPI schema (bearer security, the error responses every route can give, in its
family's shape) and the offline docs: Swagger UI at /docs and ReDoc at /redoc, served from
the assets of the `fastapi-offline` package, never from a CDN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from server.auth import OPEN_HTTP_PATHS
from server.errors import api_of_path

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
SCHEME = "bearerAuth"
ERROR_REF = {"openai": "#/components/schemas/OpenAIError", "tgi": "#/components/schemas/ErrorBody"}
FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")
WHY = {
    400: "Invalid request: malformed JSON, a wrong type, or a field outside its limit",
    401: "Missing or wrong API key",
    413: "Body larger than --max-body-bytes",
    422: "Invalid input: malformed JSON, a wrong type, or a field outside its limit",
    503: "Not ready, shutting down, or the engine has stopped",
}


def install_docs(app: FastAPI, keys_enabled: bool) -> None:
    """Serve /docs, /redoc and their assets, and make app.openapi() the documented schema.
    The app must be built with docs_url=None and redoc_url=None."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = document_errors(schema, keys_enabled)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(schema: dict[str, Any], keys_enabled: bool) -> dict[str, Any]:
    """Add the bearer scheme and, per operation, what the HTTP guard and validation answer:
    401 and 503 on protected routes (with `security`), 413 and 400 (/v1) or 422 (TGI) on
    routes with a body, in the route family's error shape; FastAPI's own 422 is replaced."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`, needed when the server has API keys.",
    }
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            _document_operation(path, operation, keys_enabled)
    schemas = components.get("schemas", {})
    for name in FASTAPI_ERRORS:
        schemas.pop(name, None)
    return schema


def _document_operation(path: str, operation: dict[str, Any], keys_enabled: bool) -> None:
    api = api_of_path(path)
    responses: dict[str, Any] = operation.setdefault("responses", {})
    codes: list[int] = []
    if path not in OPEN_HTTP_PATHS:
        # Without keys anonymous calls are allowed too: the empty requirement says so.
        operation["security"] = [{SCHEME: []}] if keys_enabled else [{SCHEME: []}, {}]
        codes += [401, 503]
    if "requestBody" in operation:
        validation = 400 if api == "openai" else 422
        codes += [413, validation]
        if validation != 422:
            responses.pop("422", None)
    for code in codes:
        _error_response(responses, code, api)


def _error_response(responses: dict[str, Any], code: int, api: str) -> None:
    """Document `code` with the family's error schema (keeping a route's own description)."""
    entry = responses.setdefault(str(code), {"description": WHY[code]})
    if code in WHY and "HTTPValidationError" in str(entry):
        entry["description"] = WHY[code]
    entry["content"] = {"application/json": {"schema": {"$ref": ERROR_REF[api]}}}
