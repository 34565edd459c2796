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


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    # Swagger 2.0 requires a description on every response object.
    return {"description": description, **({"schema": schema} if schema else {})}


def _responses(status: str, description: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    return {
        status: _answer(description, schema),
        "default": _answer("Error", {"$ref": "#/definitions/Error"}),
    }


_STRINGS = {"type": "array", "items": {"type": "string"}}


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
    body = {
        "name": "inputs",
        "in": "body",
        "required": True,
        "schema": {"$ref": "#/definitions/InputParameters"},
    }
    execution_id = {"name": "executionId", "in": "path", "required": True, "type": "string"}
    index = {"name": "index", "in": "path", "required": True, "type": "integer"}
    file_name = {"name": "fileName", "in": "path", "required": True, "type": "string"}
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
                    "summary": "Run the service once with the given inputs",
                    "parameters": [body],
                    "responses": _responses(
                        "200", "The outputs", {"$ref": "#/definitions/WebServiceResult"}
                    ),
                }
            },
            base + "/batch": {
                "post": {
                    "operationId": "StartBatchExecution",
                    "summary": "Start a batch execution over an array of inputs",
                    "parameters": [
                        {**body, "schema": {"type": "array", "items": body["schema"]}},
                        {"name": "parallelCount", "in": "query", "type": "integer"},
                    ],
                    "responses": _responses(
                        "202",
                        "Accepted",
                        {"$ref": "#/definitions/StartBatchExecutionResponse"},
                    ),
                },
                "get": {
                    "operationId": "GetBatchExecutions",
                    "summary": "The batch execution ids of the service",
                    "responses": _responses("200", "The execution ids", _STRINGS),
                },
            },
            base + "/batch/{executionId}": {
                "get": {
                    "operationId": "GetBatchExecutionStatus",
                    "summary": "A batch execution's state and results",
                    "parameters": [
                        execution_id,
                        {"name": "showPartialResults", "in": "query", "type": "boolean"},
                    ],
                    "responses": _responses(
                        "200", "The state", {"$ref": "#/definitions/BatchWebServiceResult"}
                    ),
                },
                "delete": {
                    "operationId": "CancelAndDeleteBatchExecution",
                    "summary": "Cancel a batch execution and delete it with its results",
                    "parameters": [execution_id],
                    "responses": _responses("200", "The deleted execution id", _STRINGS),
                },
            },
            base + "/batch/{executionId}/{index}/files": {
                "get": {
                    "operationId": "GetBatchExecutionFiles",
                    "summary": "The file names a record of the batch produced",
                    "parameters": [execution_id, index],
                    "responses": _responses("200", "The file names", _STRINGS),
                },
            },
            base + "/batch/{executionId}/{index}/files/{fileName}": {
                "get": {
                    "operationId": "GetBatchExecutionFile",
                    "summary": "One file a record of the batch produced",
                    "produces": ["application/octet-stream"],
                    "parameters": [execution_id, index, file_name],
                    # A binary string rather than Swagger's ``type: file``, which the JSON
                    # schema of Swagger 2.0 (and so its validators) reject inside ``schema``.
                    "responses": _responses(
                        "200", "The file", {"type": "string", "format": "binary"}
                    ),
                },
            },
        },
        "definitions": {
            "InputParameters": _object(svc.inputs),
            "OutputParameters": _object(svc.outputs),
            "WebServiceResult": web_result,
            "StartBatchExecutionResponse": {
                "type": "object",
                # both spellings are sent (see schemas.StartBatchExecutionResponse)
                "properties": {
                    "batchExecutionId": {"type": "string"},
                    "BatchExecutionId": {"type": "string"},
                },
            },
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
