"""Request and response bodies of the ML Server face, with ML Server's (camelCase) field names,
and the mapping between ML Server's parameter types and batchserve's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batchserve.engine.errors import BadRequest
from batchserve.states import ML_SERVER_STATES
from batchserve.type_names import R_TYPE_NAMES, TYPE_SPELLINGS

# ML Server's type names (its clients send ``integer``, ``numeric``, ``character``, ``logical``)
# and the Python names people also write, onto batchserve's four types: the spellings every face
# reads.
TYPES_IN = TYPE_SPELLINGS
# What this face answers: always ML Server's spelling, which its clients cast back to Python.
TYPES_OUT = R_TYPE_NAMES
UNSUPPORTED = ("vector", "matrix", "data.frame", "DataFrame", "numpy.array", "numpy.matrix")

# The canonical batch states in ML Server's spelling (see the README, "Coming from Machine
# Learning Server"); BatchState compares equal to them too.
STATES = ML_SERVER_STATES


class ParameterDefinition(BaseModel):
    name: str
    type: str


class PublishRequest(BaseModel):
    """``POST /services/{name}[/{version}]`` and ``PATCH /services/{name}/{version}``."""

    model_config = ConfigDict(extra="ignore")

    snapshotId: str | None = None
    code: str | None = None
    initCode: str | None = None
    description: str | None = None
    operationId: str | None = None
    inputParameterDefinitions: list[ParameterDefinition] | None = None
    outputParameterDefinitions: list[ParameterDefinition] | None = None
    runtimeType: str | None = "Python"
    outputFileNames: list[str] | None = None


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    runtimeType: str = "Python"
    name: str | None = None
    snapshotId: str | None = None


class CreateSessionResponse(BaseModel):
    sessionId: str


class CreateSnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None


class CreateSnapshotResponse(BaseModel):
    snapshotId: str


class ServiceMetadata(BaseModel):
    name: str
    version: str
    versionPublishedBy: str | None
    runtimeType: str = "Python"
    description: str
    creationTime: str
    snapshotId: str | None
    initCode: str | None
    code: str | None
    operationId: str
    inputParameterDefinitions: list[ParameterDefinition]
    outputParameterDefinitions: list[ParameterDefinition]
    outputFileNames: list[str]


class WebServiceResult(BaseModel):
    success: bool
    errorMessage: str = ""
    consoleOutput: str = ""
    changedFiles: list[str] = Field(default_factory=list)
    outputParameters: dict[str, Any] = Field(default_factory=dict)
    outputFiles: dict[str, str] = Field(default_factory=dict)


class StartBatchExecutionResponse(BaseModel):
    # ML Server's swagger names it ``batchExecutionId``; its Python client reads
    # ``BatchExecutionId``. Both are sent.
    batchExecutionId: str
    BatchExecutionId: str


class BatchWebServiceResult(BaseModel):
    state: str
    completedItemCount: int
    totalItemCount: int
    batchExecutionResults: list[WebServiceResult]


def types_in(defs: list[ParameterDefinition] | None, what: str) -> dict[str, str]:
    """ML Server parameter definitions as a batchserve schema (order kept); 400 when unsupported."""
    schema: dict[str, str] = {}
    for d in defs or []:
        mapped = TYPES_IN.get(d.type)
        if mapped is None:
            hint = (
                " batchserve services take scalar parameters only; send vectors, matrices or "
                "data frames as one record per row (a batch) instead."
                if d.type in UNSUPPORTED
                else ""
            )
            raise BadRequest(
                f"{what} parameter {d.name!r} has the type {d.type!r}, which is not supported; "
                "use one of integer, numeric, character or logical." + hint,
                **{d.name: d.type},
            )
        if d.name in schema:
            raise BadRequest(f"{what} parameter {d.name!r} is defined twice.")
        schema[d.name] = mapped
    return schema


def types_out(schema: dict[str, str]) -> list[ParameterDefinition]:
    return [ParameterDefinition(name=n, type=TYPES_OUT[t]) for n, t in schema.items()]
