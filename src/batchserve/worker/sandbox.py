"""Where worker processes run: a sandbox on Linux, a scrubbed environment everywhere.

The threat: a contributor publishes a service whose code reads the server's environment (its
admin password, its database URL), opens the metadata database and makes itself an owner, or
reads the inputs and results of other users' batches. Service code is untrusted with respect
to the server, so a worker gets only what its tasks need:

- **A scrubbed environment**, everywhere: none of the server's variables, only a minimal base
  (``PATH``, ``HOME`` and ``TMPDIR`` in its own scratch folder, the thread caps) and, while a
  task runs, the batch's ``environment``.
- **Files by descriptor**: the server opens a task's files (bundle, upload parts, result file)
  and hands the worker their descriptors (:mod:`batchserve.worker.grants`); artifacts go back
  over the channel. A worker needs no path into the data directory.
- **On Linux, bubblewrap** (``bwrap``): the fork server that starts the workers runs in a mount
  namespace that shows the system's read-only folders, the Python installation and the
  packages, and nothing else: not the data directory (the SQLite database, the blobs, the admin
  password file), not the home folders, not the server's configuration. No network by default
  (``worker_network = "none"``): the database server and anything else on the host stay out of
  reach. The fork server's environment is cleared by bwrap itself.
- **As root, one unprivileged uid per worker slot** (``worker_uid_base + slot``), no groups, no
  capabilities, ``no_new_privs``: a worker can read neither root's files nor another slot's
  scratch folder, nor, through ``/proc``, another process's memory or environment. A worker
  process is not dumpable.
- **Not as root** (bwrap in a user namespace): the same view of the file system; workers share
  the server's uid, so they are kept apart from the server (which makes itself not dumpable)
  but not from one another.
- **Without bubblewrap** (macOS, or a Linux without it): the scrubbed environment and the
  descriptors only. Service code then runs with the server's user rights: such a server must
  not be shared with users who may publish code. ``sandbox = "auto"`` says so in the log;
  ``sandbox = "bwrap"`` refuses to start instead.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38

#: Folders of the system a worker may read (those that exist); the rest of the file system is
#: not there for it.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")

#: Variables a worker keeps from the server: none that could hold a secret.
KEPT_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")


class SandboxUnavailable(RuntimeError):
    """The sandbox asked for cannot be set up on this machine."""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def not_dumpable() -> None:
    """Keep processes of the same user out of this one's memory, environment and descriptors
    (``/proc/<pid>/mem``, ``environ``, ``fd``; ptrace)."""
    if sys.platform.startswith("linux"):
        _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


@dataclass(frozen=True)
class WorkerSandbox:
    """How the workers of one server are confined; built once, in the composition root."""

    mode: str  # "bwrap" or "off"
    root: Path  # the workers' scratch folders live under it
    hidden: tuple[Path, ...] = ()
    network: bool = False
    uid_base: int | None = None  # as root: the uid of slot 0; None: keep the server's uid
    memory_limit: int | None = None  # bytes of address space per worker
    base_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        setting: str,
        hidden: list[Path],
        *,
        network: str = "none",
        uid_base: int = 64000,
        memory_limit: int | None = None,
        base_env: dict[str, str] | None = None,
    ) -> WorkerSandbox:
        """The sandbox ``setting`` asks for (``auto``, ``bwrap`` or ``off``) on this machine."""
        _remove_stale_roots()
        root = Path(tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-"))
        os.chmod(root, 0o711)  # each slot's folder is reachable by its own uid only
        env = _base_env(base_env or {})
        mode = "off"
        if setting not in ("auto", "bwrap", "off"):
            raise SandboxUnavailable(f"sandbox must be auto, bwrap or off, not {setting!r}.")
        if setting != "off":
            problem = bwrap_problem()
            if problem is None:
                mode = "bwrap"
            elif setting == "bwrap":
                shutil.rmtree(root, ignore_errors=True)
                raise SandboxUnavailable(
                    f"Workers cannot be sandboxed: {problem}. Install bubblewrap (Debian and "
                    "Ubuntu: apt-get install bubblewrap), or start with --sandbox off on a "
                    "server that only trusted users publish to."
                )
            else:
                log.warning(
                    "workers are NOT sandboxed (%s): service code runs with this server's user "
                    "rights and can read its data directory. Do not share this server with "
                    "users who may publish code; install bubblewrap to sandbox the workers.",
                    problem,
                )
        return cls(
            mode=mode,
            root=root,
            hidden=tuple(p.resolve() for p in hidden),
            network=network == "host",
            uid_base=uid_base if mode == "bwrap" and os.geteuid() == 0 else None,
            memory_limit=memory_limit,
            base_env=env,
        )

    def describe(self) -> str:
        if not self.sandboxed:
            return "NOT sandboxed (service code runs with this server's rights)"
        return ", ".join(
            [
                "sandboxed (bubblewrap)",
                "no network" if not self.network else "host network",
                "one uid per slot" if self.uid_base is not None else "the server's uid",
                *([f"memory {self.memory_limit >> 20} MiB each"] if self.memory_limit else []),
            ]
        )

    def with_env(self, env: dict[str, str]) -> WorkerSandbox:
        return dataclasses.replace(self, base_env={**self.base_env, **env})

    @property
    def sandboxed(self) -> bool:
        return self.mode == "bwrap"

    def executable(self) -> str | None:
        """The program the fork server starts with: a script that runs Python in the sandbox;
        None to start it as usual."""
        if not self.sandboxed:
            return None
        script = self.root / "python-in-sandbox"
        command = [*self._bwrap_arguments(), "--", sys.executable]
        # Ctrl-C in a terminal goes to its whole process group: the server stops its workers
        # itself, so bwrap must not die of it first (taking the workers with it). An ignored
        # SIGINT is inherited through exec, and Python then leaves it ignored.
        script.write_text("#!/bin/sh\ntrap '' INT\nexec " + shlex.join(command) + ' "$@"\n')
        os.chmod(script, 0o700)
        return str(script)

    def _bwrap_arguments(self) -> list[str]:
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-uts"]
        if os.geteuid() != 0:
            args.append("--unshare-user")
        if not self.network:
            args.append("--unshare-net")
        args.append("--clearenv")
        for name, value in self.base_env.items():
            args += ["--setenv", name, value]
        made: set[str] = {"/"}
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
                made.add(path)
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
                made.add(path)
        args += ["--dev", "/dev", "--tmpfs", "/dev/shm", "--proc", "/proc", "--tmpfs", "/tmp"]
        # New, empty file systems: what is under them is not shown unless bound below.
        made |= {"+/dev", "+/proc", "+/tmp"}
        for path in _python_paths(self.hidden):
            if _within(path, made):
                continue
            args += _parents(path, made)
            args += ["--ro-bind", path, path]
            made.add(path)
        args += _parents(str(self.root), made)
        args += ["--bind", str(self.root), str(self.root)]
        made.add(str(self.root))
        for hidden in self.hidden:
            # Hidden even where a folder around it is shown: an empty, read-only folder on top.
            if _within(str(hidden), made) and hidden.exists():
                args += ["--perms", "0000", "--tmpfs", str(hidden)]
        cwd = os.getcwd()  # the fork server's children start there, before their scratch folder
        args += ["--chdir", "/"]
        if not _within(cwd, made):
            args += [*_parents(cwd, made), "--dir", cwd]
        return args

    # --- per worker -------------------------------------------------------------------------

    def prepare_slot(self, slot: int, generation: int) -> dict[str, Any]:
        """Make a fresh scratch folder for a worker about to start in ``slot``; returns what
        the worker needs to confine itself (:func:`enter`)."""
        scratch = self.root / f"slot-{slot}-{generation}"
        scratch.mkdir(mode=0o700)
        uid = None if self.uid_base is None else self.uid_base + slot
        if uid is not None:
            os.chown(scratch, uid, uid)
        return {
            "scratch": str(scratch),
            "uid": uid,
            "env": dict(self.base_env, HOME=str(scratch), TMPDIR=str(scratch)),
            "memory_limit": self.memory_limit,
            "sandboxed": self.sandboxed,
        }

    def release_slot(self, setup: dict[str, Any]) -> None:
        shutil.rmtree(setup["scratch"], ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def enter(setup: dict[str, Any]) -> None:
    """In a new worker process, before any service code: confine it as ``setup`` says."""
    os.environ.clear()
    os.environ.update(setup["env"])
    os.chdir(setup["scratch"])
    limit = setup.get("memory_limit")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from batchserve.worker import tries

        tries.worker_memory_limit = limit
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    uid = setup.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to another uid: every capability goes
    # After the uid change, which clears it: die with the fork server (and so with the server).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if setup.get("sandboxed") and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not set no_new_privs")
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "USER": "batchserve-worker"}
    env["LOGNAME"] = env["USER"]
    env.setdefault("LANG", "C.UTF-8")
    for name in KEPT_VARIABLES:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


def _python_paths(hidden: tuple[Path, ...]) -> list[str]:
    """The folders Python and the installed packages are read from, shortest first; never the
    current folder, a home folder or a hidden folder itself."""
    cwd = os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.expanduser("~"))
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *(p for p in sys.path if p),
    }
    out: set[str] = set()
    for candidate in candidates:
        path = os.path.realpath(candidate)
        if not os.path.exists(path) or path in ("/", cwd, home):
            continue
        if any(str(h) == path for h in hidden):
            continue  # a hidden folder inside a shown one is masked (see _bwrap_arguments)
        out.add(path)
    # The interpreter's own prefix may hold the venv (python -m venv inside a project): fine.
    return sorted(out, key=lambda p: (p.count("/"), p))


def _parents(path: str, made: set[str]) -> list[str]:
    """bwrap arguments that create the missing folders above ``path`` as traversable (bwrap
    would make them 0700, which a worker with its own uid could not pass). ``made`` holds the
    folders mounted so far (whose insides exist) and, as ``+folder``, those created."""
    args: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if _within(parent, made) or "+" + parent in made:
            continue
        args += ["--perms", "0755", "--dir", parent]
        made.add("+" + parent)
    return args


_ROOT_PREFIX = "batchserve-workers-"


def _remove_stale_roots() -> None:
    """Remove the scratch roots of servers that died without cleaning up (killed): a root's
    name holds its server's pid."""
    base = Path(tempfile.gettempdir())
    for root in base.glob(f"{_ROOT_PREFIX}*-*"):
        pid = root.name.removeprefix(_ROOT_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or root.stat().st_uid != os.geteuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _within(path: str, folders: set[str]) -> bool:
    """True when ``path`` is one of ``folders`` or inside one (the root folder aside)."""
    return any(path == f or path.startswith(f + "/") for f in folders if f != "/")


def bwrap_problem() -> str | None:
    """Why bwrap cannot sandbox a worker here; None when it can."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap is Linux-only and this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    probe = ["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--new-session"]
    if os.geteuid() != 0:
        probe.append("--unshare-user")
    try:
        done = subprocess.run([*probe, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap does not run: {exc}"
    if done.returncode != 0:
        return f"bwrap does not run here: {done.stderr.strip() or done.returncode}"
    return None
