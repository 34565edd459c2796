"""``batchserve``: run the server (more commands: see ``batchserve --help``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    name="batchserve",
    no_args_is_help=True,
    add_completion=False,
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
    workers: int = typer.Option(None, min=1, help="Worker processes (default: one per core)."),
    log_level: str = typer.Option("info", help="Log level: debug, info, warning, error."),
) -> None:
    """Run the embedded server: HTTP API, scheduler and a local worker pool."""
    import uvicorn

    from batchserve.engine.core import Engine
    from batchserve.server.app import create_app
    from batchserve.settings import Settings

    overrides: dict[str, Any] = {
        k: v
        for k, v in {"host": host, "port": port, "home": data_dir, "workers": workers}.items()
        if v is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = Engine(settings)
    engine.start()
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"batchserve is serving on {url} (API docs: {url}/docs)")
    typer.echo(f"data directory: {settings.home}; {settings.workers} worker process(es)")
    if engine.generated_admin_password:
        typer.echo(
            f"created the user 'admin' (owner) with password: {engine.generated_admin_password}"
        )
        typer.echo(f"the password is also in {settings.admin_password_file} (readable only by you)")
    elif settings.admin_password:
        typer.echo("the admin password is the one in BATCHSERVE_ADMIN_PASSWORD")
    else:
        typer.echo(f"log in as 'admin'; its first password is in {settings.admin_password_file}")
    try:
        uvicorn.run(
            create_app(engine, manage_engine=False),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            access_log=False,
        )
    finally:
        engine.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
