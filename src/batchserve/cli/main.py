"""``batchserve``: the command line's entry point, ``serve``, and how errors are reported.

The other commands live in one module per subject (``auth.py``, ``services.py``, ``run.py``,
``batches.py``, ``control.py``); ``main()`` turns every error a user can cause (an unreachable
server, a refused token, an unknown batch, a bad file) into one line on stderr and a non-zero exit
status, never a traceback. A malformed option value is the command line's own usage error (exit
status 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import typer

from batchserve.cli import auth, batches, control, nodes, run, services
from batchserve.cli.config import TOKEN_ENV, ConfigError, load
from batchserve.cli.connection import CliError, chosen_url
from batchserve.cli.output import error_line
from batchserve.errors import (
    APIError,
    AuthenticationError,
    BatchserveError,
    TransportError,
    UsageError,
)

app = typer.Typer(
    name="batchserve",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's locals could show a token or a password.
    pretty_exceptions_show_locals=False,
    help="Publish Python functions as versioned services and run batches.",
)


@app.callback()
def _root() -> None:
    """batchserve command line."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to listen on (default 8000)."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Data directory (default $BATCHSERVE_HOME or ~/.batchserve)."
    ),
    workers: int = typer.Option(
        None,
        min=0,
        help="Worker processes (default: one per core); with --executor ray, actors at once "
        "(default: the cluster's CPUs). 0: an API node, which runs no service code (compute "
        "nodes started with batchserve worker, on the same PostgreSQL, do).",
    ),
    log_level: str = typer.Option("info", help="Log level: debug, info, warning, error."),
    log_format: nodes.LogFormatOption = nodes.LogFormat.text,
    shutdown_timeout: float = typer.Option(
        None,
        min=0,
        help="Seconds a stopping server waits for the requests in progress before it cancels "
        "them (default 10).",
    ),
    blob_url: str = typer.Option(
        None,
        "--blob-url",
        help="Where batch data lives (default: the data directory's blobs folder); "
        "file:///path for another folder, s3://bucket/prefix for an S3-compatible store "
        "(credentials and endpoint from the AWS_* variables).",
    ),
    executor: str = typer.Option(
        None,
        help="Where chunks run: local (worker processes of this server, the default) or ray "
        "(actors on the Ray cluster at --ray-address; needs the ray extra).",
    ),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="The Ray cluster for --executor ray: its head's host:port, or auto (default).",
    ),
    sandbox: str = typer.Option(
        None,
        help="Where service code runs: auto (in a bubblewrap sandbox where it runs, Linux), "
        "bwrap (refuse to start without it) or off (with the server's rights; trusted users "
        "only). Default auto.",
    ),
    worker_network: str = typer.Option(
        None, help="Network for sandboxed workers: none (default) or host."
    ),
    worker_memory: str = typer.Option(
        None, help="Memory one worker may take (2GiB, 512MB); a record needing more fails."
    ),
) -> None:
    """Run the embedded server: HTTP API, scheduler and a local worker pool."""
    import uvicorn

    from batchserve.server.app import create_app, uvicorn_options

    given = {
        "host": host,
        "port": port,
        "home": data_dir,
        "workers": workers,
        "shutdown_timeout": shutdown_timeout,
        "blob_url": blob_url,
        "executor": executor,
        "ray_address": ray_address,
        "sandbox": sandbox,
        "worker_network": worker_network,
        "worker_memory": worker_memory,
    }
    engine = nodes.started_engine(given, log_level, log_format=log_format)
    settings = engine.settings
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"batchserve is serving on {url} (API docs: {url}/docs)")
    typer.echo(f"data directory: {settings.home}; blob store: {engine.blobs.url}")
    typer.echo(f"workers: {engine.executor.describe()}")
    if engine.generated_admin_password:
        # The password goes to the file only: a terminal's scrollback or a service manager's
        # log would keep a copy of what is printed here.
        typer.echo(
            "created the user 'admin' (owner); its password is in "
            f"{settings.admin_password_file} (readable only by you)"
        )
    elif settings.admin_password:
        typer.echo("the admin password is the one in BATCHSERVE_ADMIN_PASSWORD")
    else:
        typer.echo(f"log in as 'admin'; its first password is in {settings.admin_password_file}")
    try:
        uvicorn.run(
            create_app(engine, manage_engine=False, stop_engine=True),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            log_config=None,  # uvicorn logs through the handler of batchserve.logs
            access_log=False,
            **uvicorn_options(settings),
        )
    finally:
        engine.stop()


app.command()(nodes.worker)
app.command("nodes")(nodes.nodes_list)
app.command()(auth.login)
app.command()(auth.logout)
app.command()(auth.whoami)
app.command()(auth.password)
app.add_typer(auth.users_app)
app.command()(services.publish)
app.add_typer(services.services_app)
app.command()(services.consume)
app.command()(run.run)
app.add_typer(batches.batch_app)
batches.batch_app.command("update")(control.batch_update)
batches.batch_app.command("add")(control.batch_add)
batches.batch_app.command("close")(control.batch_close)
batches.batch_app.command("cancel")(control.batch_cancel)
batches.batch_app.command("pause")(control.batch_pause)
batches.batch_app.command("resume")(control.batch_resume)
batches.batch_app.command("terminate")(control.batch_terminate)
batches.batch_app.command("delete")(control.batch_delete)


def main() -> None:
    try:
        app(standalone_mode=True)
    except CliError as exc:
        error_line(exc.message)
        sys.exit(exc.exit_code)
    except (BatchserveError, ConfigError) as exc:
        error_line(describe(exc))
        sys.exit(1)
    except OSError as exc:  # a file that cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        error_line(f"{exc.strerror or exc}{where}")
        sys.exit(1)


def describe(exc: BaseException) -> str:
    """The one-line message of an error a command let through."""
    if isinstance(exc, AuthenticationError):
        if _env_token():
            return f"The token in {TOKEN_ENV} was refused (not valid, or expired)."
        url = _url() or "URL"
        return f"Not logged in to {url}, or the login has expired: run `batchserve login {url}`."
    if isinstance(exc, TransportError):
        url = _origin(exc.url) or _url() or "the server"
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return f"The batchserve server at {url} did not answer in time; is it overloaded?"
        return (
            f"Cannot reach the batchserve server at {url}: is it running (`batchserve serve`), "
            "and is the URL right?"
        )
    if isinstance(exc, APIError):
        return exc.message
    if isinstance(exc, UsageError):
        return str(exc)
    return str(exc) or type(exc).__name__


def _origin(url: str | None) -> str | None:
    """``scheme://host:port`` of a request URL (the server that could not be reached)."""
    if not url:
        return None
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _env_token() -> bool:
    return bool(os.environ.get(TOKEN_ENV))


def _url() -> str | None:
    try:
        return chosen_url(load())
    except ConfigError:
        return None


if __name__ == "__main__":
    main()
