"""Where the command line keeps its logins: one JSON file, readable only by its owner.

The file is ``$BATCHSERVE_CONFIG``, else ``$XDG_CONFIG_HOME/batchserve/config.json``, else
``~/.config/batchserve/config.json``. It holds one login per server URL and which of them is the
default::

    {"default": "http://127.0.0.1:8000",
     "servers": {"http://127.0.0.1:8000": {"username": "admin", "access_token": "...",
                                           "refresh_token": "...", "expires_on": 1700000000}}}

The file is written with mode 0600 (replaced in one step, so a reader never sees half of it), and a
directory the command line creates for it gets mode 0700. ``BATCHSERVE_URL`` picks another stored
server than the default, and ``BATCHSERVE_TOKEN`` supplies an access token instead of a stored
one (nothing is then written back).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "BATCHSERVE_CONFIG"
URL_ENV = "BATCHSERVE_URL"
TOKEN_ENV = "BATCHSERVE_TOKEN"


class ConfigError(Exception):
    """The configuration file cannot be read or written; the message says what to do."""


def config_path() -> Path:
    """The configuration file's path (it may not exist yet)."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "batchserve" / "config.json"


def normalise_url(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass
class Login:
    """The tokens of one server."""

    username: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    expires_on: int | None = None  # epoch seconds when the access token expires


@dataclass
class Config:
    """The whole configuration file."""

    default: str | None = None
    servers: dict[str, Login] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "servers": {url: asdict(login) for url, login in self.servers.items()},
        }


def load(path: Path | None = None) -> Config:
    """The configuration in ``path`` (default :func:`config_path`); empty when there is none."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"Cannot read the configuration file {path}: {exc.strerror}.") from None
    try:
        raw = json.loads(text)
        servers = {
            normalise_url(url): Login(**{k: v for k, v in entry.items() if k in _LOGIN_FIELDS})
            for url, entry in (raw.get("servers") or {}).items()
        }
        return Config(default=raw.get("default"), servers=servers)
    except (ValueError, TypeError, AttributeError):
        raise ConfigError(
            f"The configuration file {path} is not valid; remove it and run `batchserve login` "
            "again."
        ) from None


_LOGIN_FIELDS = frozenset(Login.__dataclass_fields__)


def save(config: Config, path: Path | None = None) -> Path:
    """Write ``config`` to ``path`` with mode 0600, replacing the file in one step."""
    path = path or config_path()
    directory = path.parent
    try:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            # mkdir's mode is filtered by the umask; the directory must end up 0700 regardless.
            os.chmod(directory, 0o700)
        # mkstemp creates the file with mode 0600, so the tokens are never readable by others,
        # not even for the moment before a chmod.
        fd, temp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config.to_json(), f, indent=2)
                f.write("\n")
            os.chmod(temp, 0o600)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(
            f"Cannot write the configuration file {path}: {exc.strerror or exc}. Set "
            f"{CONFIG_ENV} to a file in a directory you can write."
        ) from None
    return path
