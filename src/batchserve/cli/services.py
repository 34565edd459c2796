"""``publish``, ``services list|show|delete|publishers|grant|revoke`` and ``consume``."""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from batchserve.cli.connection import CliError, Connection, connected
from batchserve.cli.output import JsonOption, Output, when
from batchserve.client import Service
from batchserve.errors import NotFoundError
from batchserve.type_names import TYPE_NAMES, TYPE_SPELLINGS

services_app = typer.Typer(
    name="services",
    no_args_is_help=True,
    help="List, show and delete services.",
    add_completion=False,
)

TYPES = TYPE_NAMES


def split_service(spec: str) -> tuple[str, str | None]:
    """``NAME[:VERSION]`` as (name, version or None)."""
    name, _, version = spec.partition(":")
    if not name:
        raise CliError(f"{spec!r} is not a service: write NAME or NAME:VERSION.")
    return name, version or None


def find_service(conn: Connection, spec: str) -> Service:
    """The service ``NAME[:VERSION]`` (the newest version without one), with a clear 404."""
    name, version = split_service(spec)
    try:
        return conn.client.get_service(name, version)
    except NotFoundError as exc:
        raise CliError(f"{exc.message} (see `batchserve services list`).") from None


def _schema(pairs: list[str], option: str) -> dict[str, str]:
    schema: dict[str, str] = {}
    for pair in pairs:
        name, sep, kind = pair.partition("=")
        if not sep or not name or kind not in TYPE_SPELLINGS:
            raise CliError(
                f"{option} {pair!r} is not NAME=TYPE with TYPE one of {', '.join(TYPES)} "
                f"or R's integer, numeric, character, logical (like {option} hp=float)."
            )
        schema[name] = TYPE_SPELLINGS[kind]
    return schema


def _number(text: str, option: str) -> int | float:
    """A CPU or GPU count given on the command line (the SDK checks its range)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CliError(
            f"{option} {text!r} is not a number; give one like {option} 2 or {option} 0.5."
        ) from None


def _asked_resources(
    num_cpus: str | None, num_gpus: str | None, memory: str | None
) -> dict[str, Any] | None:
    """The resources the publish options ask for; None when none is given (the defaults)."""
    if num_cpus is None and num_gpus is None and memory is None:
        return None
    asked: dict[str, Any] = {}
    if num_cpus is not None:
        asked["num_cpus"] = _number(num_cpus, "--num-cpus")
    if num_gpus is not None:
        asked["num_gpus"] = _number(num_gpus, "--num-gpus")
    if memory is not None:
        asked["memory"] = memory
    return asked


def _resources_text(resources: dict[str, Any]) -> str:
    """``2 CPU, 0.5 GPU, 4 GiB`` (no GPU and no memory reserved are left out)."""
    parts = [f"{resources.get('num_cpus') or 1:g} CPU"]
    if resources.get("num_gpus"):
        parts.append(f"{resources['num_gpus']:g} GPU")
    if resources.get("memory"):
        parts.append(_size(int(resources["memory"])))
    return ", ".join(parts)


def _size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} bytes"


def _load_module(path: Path) -> ModuleType:
    """Run the Python file ``path`` as a module whose functions are published by value."""
    import cloudpickle

    if path.suffix != ".py" or not path.is_file():
        raise CliError(f"There is no Python file at '{path}'.")
    name = "batchserve_published_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its neighbours are importable while it loads, as when it runs as a script.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        here = path.resolve()
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == here
        ]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise CliError(f"Running {path} failed{where}: {type(exc).__name__}: {exc}") from None
    # The workers cannot import this file: its functions and globals travel inside the bundle.
    cloudpickle.register_pickle_by_value(module)
    return module


def _function(module: ModuleType, path: Path, name: str) -> Any:
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and getattr(v, "__module__", None) == module.__name__
        )
        listed = ", ".join(found) if found else "none"
        raise CliError(f"{path} has no function {name!r}; its functions are: {listed}.")
    return fn


def publish(
    target: Annotated[
        str, typer.Argument(metavar="FILE.py:FUNCTION", help="The function to publish.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="The service name.")],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Default: one the server generates.")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="NAME=TYPE",
            help="An input and its type (int, float, str, bool); repeat for each. Default: read "
            "from the function's annotations.",
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--output", "-o", metavar="NAME=TYPE", help="An output; repeat for each."),
    ] = None,
    artifacts: Annotated[
        list[str] | None,
        typer.Option("--artifact", "-a", help="A file each call writes; repeat for each."),
    ] = None,
    init: Annotated[
        str | None, typer.Option("--init", help="A function of the file run once per worker.")
    ] = None,
    vectorized: Annotated[
        bool, typer.Option("--vectorized", help="Call the function once per chunk (a DataFrame).")
    ] = False,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    alias: Annotated[str | None, typer.Option("--alias", help="The consume method's name.")] = None,
    # Taken as text and read here: a bad value is then one line naming the option.
    num_cpus: Annotated[
        str | None,
        typer.Option(
            "--num-cpus", metavar="N", help="CPUs each worker needs (default 1; 0.5 shares one)."
        ),
    ] = None,
    num_gpus: Annotated[
        str | None,
        typer.Option(
            "--num-gpus", metavar="N", help="GPUs each worker needs (default 0; 0.5 shares one)."
        ),
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory",
            metavar="SIZE",
            help="Memory each worker needs, like 4GiB or 512MB (default: none reserved).",
        ),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Publish a function of a Python file as a service."""
    file, sep, fn_name = target.rpartition(":")
    if not sep or not file or not fn_name:
        raise CliError(f"{target!r} is not FILE.py:FUNCTION, like model.py:predict.")
    if not outputs:
        raise CliError("Name the outputs with --output NAME=TYPE, like --output answer=float.")
    input_schema = _schema(inputs, "--input") if inputs else None
    output_schema = _schema(outputs, "--output")
    resources = _asked_resources(num_cpus, num_gpus, memory)
    path = Path(file)
    module = _load_module(path)
    code = _function(module, path, fn_name)
    init_fn = _function(module, path, init) if init else None
    with connected() as conn:
        svc = conn.client.publish_service(
            name,
            code,
            init=init_fn,
            inputs=input_schema,
            outputs=output_schema,
            artifacts=list(artifacts or []),
            version=version,
            description=description,
            alias=alias,
            vectorized=vectorized,
            resources=resources,
        )
    out = Output(json_mode)
    if out.json:
        out.emit(svc.info)
    else:
        needs = f"; each worker: {_resources_text(svc.resources)}" if resources else ""
        out.say(f"Published {svc.name}:{svc.version} ({_signature(svc)}{needs}).")


def _signature(svc: Service) -> str:
    args = ", ".join(f"{n}: {t}" for n, t in svc.inputs.items())
    results = ", ".join(f"{n}: {t}" for n, t in svc.outputs.items())
    return f"{svc.alias}({args}) -> {results}"


@services_app.command("list")
def services_list(
    name: Annotated[str | None, typer.Argument(help="Only the versions of this service.")] = None,
    json_mode: JsonOption = False,
) -> None:
    """List services (every version, oldest first)."""
    with connected() as conn:
        try:
            services = conn.client.list_services(name)
        except NotFoundError as exc:
            raise CliError(exc.message) from None
    out = Output(json_mode)
    if out.json:
        out.emit_lines(s.info for s in services)
        return
    out.table(
        [
            "name",
            "version",
            "mode",
            "inputs",
            "outputs",
            "artifacts",
            "resources",
            "by",
            "published",
        ],
        [
            [
                s.name,
                s.version,
                s.mode,
                s.inputs,
                s.outputs,
                s.artifacts,
                _resources_text(s.resources),
                s.published_by,
                when(s.created_at),
            ]
            for s in services
        ],
        empty="no services",
    )


@services_app.command("show")
def services_show(
    service: Annotated[str, typer.Argument(metavar="NAME[:VERSION]")],
    json_mode: JsonOption = False,
) -> None:
    """Show one service version (the newest without VERSION)."""
    with connected() as conn:
        svc = find_service(conn, service)
    out = Output(json_mode)
    if out.json:
        out.emit(svc.info)
        return
    out.fields(
        {
            "name": svc.name,
            "version": svc.version,
            "description": svc.description,
            "call": _signature(svc),
            "mode": svc.mode,
            "inputs": svc.inputs,
            "outputs": svc.outputs,
            "artifacts": svc.artifacts,
            "kind": svc.bundle_kind,
            "resources": _resources_text(svc.resources),
            "published by": svc.published_by,
            "published": when(svc.created_at),
        }
    )


@services_app.command("delete")
def services_delete(
    service: Annotated[str, typer.Argument(metavar="NAME:VERSION")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Owners only: delete it even though other users have batches of it (their "
            "batches are deleted with it).",
        ),
    ] = False,
) -> None:
    """Delete one service version, with its batches (refused while other users have some)."""
    name, version = split_service(service)
    if version is None:
        raise CliError(f"Say which version of {name} to delete: NAME:VERSION.")
    with connected() as conn:
        conn.client.delete_service(name, version, force=force)
    Output().say(f"Deleted {name}:{version}.")


def _show_publishers(found: dict[str, Any], json_mode: bool) -> None:
    out = Output(json_mode)
    if out.json:
        out.emit(found)
        return
    out.say(f"{found['name']} belongs to {found.get('owner') or '(a removed user)'}.")
    out.table(
        ["granted to", "by", "since"],
        [
            [g["username"], g.get("granted_by") or "", when(g.get("granted_at"))]
            for g in found.get("granted") or []
        ],
        empty="granted to nobody else (owners may always publish)",
    )


@services_app.command("publishers")
def services_publishers(
    name: Annotated[str, typer.Argument(help="The service name.")],
    json_mode: JsonOption = False,
) -> None:
    """Show who may add versions under a service name: its owner and the users granted it."""
    with connected() as conn:
        try:
            found = conn.client.service_publishers(name)
        except NotFoundError as exc:
            raise CliError(exc.message) from None
    _show_publishers(found, json_mode)


@services_app.command("grant")
def services_grant(
    name: Annotated[str, typer.Argument(help="The service name.")],
    username: Annotated[str, typer.Argument(help="The user who may publish under it.")],
    json_mode: JsonOption = False,
) -> None:
    """Let a user add versions under a service name (its owner, or an owner, may)."""
    with connected() as conn:
        found = conn.client.grant_publisher(name, username)
    _show_publishers(found, json_mode)


@services_app.command("revoke")
def services_revoke(
    name: Annotated[str, typer.Argument(help="The service name.")],
    username: Annotated[str, typer.Argument(help="The user to take the grant from.")],
    json_mode: JsonOption = False,
) -> None:
    """Take back a user's grant of a service name; the versions they published stay."""
    with connected() as conn:
        found = conn.client.revoke_publisher(name, username)
    _show_publishers(found, json_mode)


def convert(value: str, kind: str, name: str) -> Any:
    """A command-line value as the input type the service declares."""
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            lowered = value.lower()
            if lowered in ("true", "yes", "1"):
                return True
            if lowered in ("false", "no", "0"):
                return False
            raise ValueError
    except ValueError:
        raise CliError(f"{name}={value!r} is not a valid {kind}.") from None
    return value


def consume(
    service: Annotated[str, typer.Argument(metavar="NAME[:VERSION]")],
    values: Annotated[
        list[str] | None, typer.Argument(metavar="INPUT=VALUE...", help="The inputs, by name.")
    ] = None,
    download: Annotated[
        Path | None,
        typer.Option("--download", "-d", help="Save the call's artifact files in this directory."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Call a service once with its inputs, like: consume mtService hp=120 wt=2.8."""
    given: dict[str, str] = {}
    for pair in values or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"{pair!r} is not INPUT=VALUE, like hp=120.")
        given[name] = value
    with connected() as conn:
        svc = find_service(conn, service)
        unknown = [n for n in given if n not in svc.inputs]
        missing = [n for n in svc.inputs if n not in given]
        if unknown or missing:
            problems = []
            if unknown:
                problems.append(f"unknown input(s) {', '.join(unknown)}")
            if missing:
                problems.append(f"missing input(s) {', '.join(missing)}")
            raise CliError(
                f"{svc.name}:{svc.version} takes {_signature(svc)}: {'; '.join(problems)}."
            )
        inputs = {n: convert(given[n], kind, n) for n, kind in svc.inputs.items()}
        response = svc.consume(**inputs)
        saved: list[str] = []
        if download is not None and response.artifacts:
            download.mkdir(parents=True, exist_ok=True)
            for artifact in response.artifacts:
                target = download / Path(artifact).name
                target.write_bytes(response.artifact(artifact))
                saved.append(str(target))
    out = Output(json_mode)
    raw = {k: v for k, v in response.raw.items() if k != "artifact_data"}
    if out.json:
        out.emit({**raw, "saved": saved} if download is not None else raw)
    elif response.status == "succeeded":
        out.fields(response.outputs)
        if response.console_output.strip():
            out.say(response.console_output.rstrip(), style="dim")
        for path in saved:
            out.say(f"saved {path}")
    if response.status != "succeeded":
        raise CliError(
            f"The call failed: {response.error_type or 'error'}: {response.error}",
            exit_code=1,
        )
