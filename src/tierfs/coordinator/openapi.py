"""The OpenAPI 3.1 document of the coordinator, generated from the route table and the
pydantic models (request schemas in validation mode, answers in serialization mode)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from tierfs import __version__
from tierfs.coordinator.middlewares import MAX_BODY
from tierfs.coordinator.models import ErrorBody, PeerId
from tierfs.coordinator.routes import ROUTES, Route

REF = "#/components/schemas/{model}"
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "peer_id": TypeAdapter(PeerId).json_schema(ref_template=REF),
}
_ERRORS = {
    400: "Malformed JSON, or a body that is not a JSON object",
    401: "Missing or wrong token (`Authorization: Bearer <token>`)",
    404: "Unknown peer: it has to register",
    409: "The peer id is live at another address, registered by another process",
    413: f"Body larger than {MAX_BODY // 2**20} MiB",
    422: "A field missing, of the wrong type, unknown, or out of bounds; `details` names it",
}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, null]` as plain X: a query parameter is either given or absent."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**kept[0], **rest}
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _without_null(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(route: Route, refs: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    error_ref = refs[(ErrorBody, "serialization")]
    content: dict[str, Any] = {}
    if route.response is not None:
        content = {route.media_type: {"schema": refs[(route.response, "serialization")]}}
    else:
        kind = "object" if route.media_type == "application/json" else "string"
        content = {route.media_type: {"schema": {"type": kind}}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    codes = set(route.errors) | (set() if route.open else {401})
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": error_ref}},
        }
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "responses": responses,
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    if route.open:
        operation["security"] = []
    return operation


def build(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The document as a dict, ready for `json.dumps`."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in routes:
        mode: Literal["validation", "serialization"]
        for model, mode in ((route.body, "validation"), (route.response, "serialization")):
            if model is not None and (model, mode) not in wanted:
                wanted.append((model, mode))
    refs, definitions = models_json_schema(wanted, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tierfs coordinator",
            "version": __version__,
            "description": "Membership, file locations and cluster statistics of a tierfs "
            "cluster. Every endpoint but /api/health needs `Authorization: Bearer <token>` "
            "when the coordinator runs with -token.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
