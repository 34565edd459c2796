"""Running the ``batchserve`` command line in tests: in a pipe, and on a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "batchserve"]

# Escape sequences a terminal interprets (colours, cursor moves, hiding the cursor).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]")


def plain_text(raw: str) -> str:
    """Terminal output without its escape sequences, carriage returns made newlines."""
    return _ANSI.sub("", raw).replace("\r\n", "\n").replace("\r", "\n")


def cli_env(config: Path, **extra: str) -> dict[str, str]:
    """The environment of a command: its own configuration file, no inherited login."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BATCHSERVE_URL", "BATCHSERVE_TOKEN", "COLUMNS", "LINES", "NO_COLOR")
    }
    env.update(BATCHSERVE_CONFIG=str(config), PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Cli:
    """``cli("batch", "list")`` runs the command with stdout and stderr as pipes."""

    config: Path
    cwd: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(self.config, **{**self.env_extra, **extra})

    def __call__(
        self,
        *args: str,
        expect: int | None = 0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*COMMAND, *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.env(**dict(env or {})),
            cwd=self.cwd,
            timeout=180,
        )
        shown = f"$ batchserve {' '.join(args)}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, shown
        if expect is not None:
            assert result.returncode == expect, shown
        return result

    def error(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """Run a command that must fail; its one-line message (stderr) is returned."""
        result = self(*args, expect=None, env=env)
        assert result.returncode != 0, f"$ batchserve {' '.join(args)} succeeded: {result.stdout}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: "), result.stderr
        return lines[0]

    def usage_error(self, *args: str) -> str:
        """Run a command whose command line is wrong: exit status 2, and its message (the usage
        error's box taken away, its lines joined) is returned."""
        result = self(*args, expect=2)
        return " ".join(_BOX.sub(" ", result.stderr).split())


_BOX = re.compile(r"[─-╿]")  # the lines Rich draws a usage error's box with


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A command on a pseudo-terminal: its output is read as a terminal would show it."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], cwd: Path, columns: int = 140
    ) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color"},
            cwd=cwd,
            # Its own session, with the terminal as its controlling terminal: getpass() opens
            # /dev/tty to turn echo off, as it does for a person typing.
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self.master = master
        self.raw = ""
        self.consumed = 0  # how much of the text earlier expect() calls matched

    @property
    def text(self) -> str:
        return plain_text(self.raw)

    def _read(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False at end of output."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the command has exited and closed the terminal
            return False
        if not data:
            return False
        self.raw += data.decode("utf-8", "replace")
        return True

    def expect(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """Wait until ``pattern`` shows up after what earlier calls matched."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.consumed)
            if match:
                self.consumed = match.end()
                return match
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} did not appear within {timeout} s; output:\n{self.text}")
            if not self._read(0.2):
                match = regex.search(self.text, self.consumed)
                if match:
                    self.consumed = match.end()
                    return match
                pytest.fail(f"the command ended before {pattern!r} appeared; output:\n{self.text}")

    def wait_echo_off(self, timeout: float = 30.0) -> None:
        """Wait until the command has turned echo off (a password prompt is ready). Typing
        earlier would be echoed, and then discarded when the prompt flushes the input."""
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.master)[3] & termios.ECHO:
            if time.monotonic() > deadline:
                pytest.fail(f"echo was not turned off within {timeout} s; output:\n{self.text}")
            time.sleep(0.02)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def interrupt(self) -> None:
        """What Ctrl-C does: SIGINT to the command."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 90.0) -> int:
        """Read the rest of the output and return the exit status."""
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the command did not end within {timeout} s; output:\n{self.text}")
        status = self.process.wait(timeout=30)
        os.close(self.master)
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):  # finish() closed it already
            os.close(self.master)
