"""``GET /api/{name}/{version}/swagger.json``: a Swagger 2.0 document for one service, as ML
Server generates at publish (its clients link it from ``capabilities()`` and fetch it with
``swagger()``). It is built from the service's schema on each request."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from batchserve.server.deps import EngineDep, PrincipalDep
from batchserve.server.mlserver.errors import MLServerRoute

router = APIRouter(tags=["ML Server: consume"], route_class=MLServerRoute)

_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def _object(schema: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: {"type": _JSON_TYPES[t]} for n, t in schema.items()},
    }


def _error() -> dict[str, Any]:
    return {"description": "Error", "schema": {"$ref": "#/definitions/Error"}}


@router.get("/api/{name}/{version}/swagger.json", summary="The service's Swagger document")
def swagger(name: str, version: str, engine: EngineDep, who: PrincipalDep) -> dict[str, Any]:
    svc = engine.services.get(name, version)
    base = f"/api/{svc.name}/{svc.version}"
    web_result = {
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "errorMessage": {"type": "string"},
            "consoleOutput": {"type": "string"},
            "changedFiles": {"type": "array", "items": {"type": "string"}},
            "outputParameters": {"$ref": "#/definitions/OutputParameters"},
            "outputFiles": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    body = {"name": "inputs", "in": "body", "schema": {"$ref": "#/definitions/InputParameters"}}
    execution_id = {"name": "executionId", "in": "path", "required": True, "type": "string"}
    return {
        "swagger": "2.0",
        "info": {"title": svc.name, "description": svc.description, "version": svc.version},
        "schemes": ["http", "https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "Bearer": {"type": "apiKey", "name": "Authorization", "in": "header"}
        },
        "security": [{"Bearer": []}],
        "paths": {
            base: {
                "post": {
                    "operationId": svc.alias,
                    "parameters": [body],
                    "responses": {
                        "200": {"schema": {"$ref": "#/definitions/WebServiceResult"}},
                        "default": _error(),
                    },
                }
            },
            base + "/batch": {
                "post": {
                    "operationId": "StartBatchExecution",
                    "parameters": [
                        {**body, "schema": {"type": "array", "items": body["schema"]}},
                        {"name": "parallelCount", "in": "query", "type": "integer"},
                    ],
                    "responses": {"202": {"description": "Accepted"}, "default": _error()},
                },
                "get": {
                    "operationId": "GetBatchExecutions",
                    "responses": {
                        "200": {"schema": {"type": "array", "items": {"type": "string"}}},
                        "default": _error(),
                    },
                },
            },
            base + "/batch/{executionId}": {
                "get": {
                    "operationId": "GetBatchExecutionStatus",
                    "parameters": [
                        execution_id,
                        {"name": "showPartialResults", "in": "query", "type": "boolean"},
                    ],
                    "responses": {
                        "200": {"schema": {"$ref": "#/definitions/BatchWebServiceResult"}},
                        "default": _error(),
                    },
                },
                "delete": {
                    "operationId": "CancelAndDeleteBatchExecution",
                    "parameters": [execution_id],
                    "responses": {
                        "200": {"schema": {"type": "array", "items": {"type": "string"}}},
                        "default": _error(),
                    },
                },
            },
        },
        "definitions": {
            "InputParameters": _object(svc.inputs),
            "OutputParameters": _object(svc.outputs),
            "WebServiceResult": web_result,
            "BatchWebServiceResult": {
                "type": "object",
                "properties": {
                    "state": {
                        "type": "string",
                        "enum": ["pending", "inProgress", "complete", "failed"],
                    },
                    "completedItemCount": {"type": "integer"},
                    "totalItemCount": {"type": "integer"},
                    "batchExecutionResults": {
                        "type": "array",
                        "items": {"$ref": "#/definitions/WebServiceResult"},
                    },
                },
            },
            "Error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "code": {"type": "string"},
                    "fields": {"type": "object"},
                },
            },
        },
    }
