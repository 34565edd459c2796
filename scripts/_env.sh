#!/usr/bin/env bash
# Sourced by the other scripts: make sure .venv exists and has batchserve installed (editable)
# with the extras in BATCHSERVE_EXTRAS (a comma-separated list, e.g. "test" or "dev").
#
# The install is skipped when nothing changed: a stamp file per set of extras in .venv holds a
# hash of pyproject.toml and the extras, and pip runs again only when that hash differs. Source
# changes need no reinstall (the install is editable); dependency or entry-point changes do, and
# those live in pyproject.toml.
#
# Override the interpreter used to create .venv with PYTHON=/path/to/python3.11. Run directly
# (BATCHSERVE_EXTRAS=dev scripts/_env.sh) it only prepares .venv.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV="$REPO_ROOT/.venv"
BATCHSERVE_EXTRAS="${BATCHSERVE_EXTRAS:-}"

_say() { printf '==> %s\n' "$*" >&2; }
_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

_python_ok() {
  # True when "$1" runs and is Python >= 3.11 (a pyenv shim for a missing version fails here).
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

_find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if _python_ok "$candidate"; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

mkdir -p "$VENV"

# Two scripts started at once (a server in one terminal, the tests in another) must not run pip
# into the same environment concurrently. flock is optional (absent on macOS).
_locked=0
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV/.setup.lock"
  flock 9
  _locked=1
fi

if [[ ! -x "$VENV/bin/python" ]] || ! _python_ok "$VENV/bin/python"; then
  PY="$(_find_python)" || _die "batchserve needs Python >= 3.11, and neither \$PYTHON, python3.11 \
nor python3 is one (python3 is $(python3 --version 2>&1 || echo 'missing')). Install Python 3.11 \
or newer, or point PYTHON at it."
  _say "creating .venv with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
  # Start from an empty directory, so a half-made or too-old .venv does not linger.
  find "$VENV" -mindepth 1 -maxdepth 1 ! -name .setup.lock -exec rm -rf {} +
  "$PY" -m venv "$VENV" || _die "could not create .venv with '$PY -m venv' (on Debian/Ubuntu: \
apt-get install python3-venv, or python3.11-venv)."
fi

if [[ ! -e "$VENV/.pip-upgraded" ]]; then
  _say "upgrading pip in .venv"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  touch "$VENV/.pip-upgraded"
fi

_stamp_name="${BATCHSERVE_EXTRAS//,/-}"
_stamp="$VENV/.installed-${_stamp_name:-base}"
_wanted="$(
  "$VENV/bin/python" - "$BATCHSERVE_EXTRAS" <<'PY'
import hashlib
import sys

digest = hashlib.sha256(open("pyproject.toml", "rb").read())
digest.update(b"\nextras=" + sys.argv[1].encode())
print(digest.hexdigest())
PY
)"

if [[ ! -f "$_stamp" || "$(cat "$_stamp")" != "$_wanted" ]]; then
  _spec="."
  [[ -n "$BATCHSERVE_EXTRAS" ]] && _spec=".[$BATCHSERVE_EXTRAS]"
  _say "installing batchserve${BATCHSERVE_EXTRAS:+[$BATCHSERVE_EXTRAS]} into .venv (editable; again only when pyproject.toml changes)"
  rm -f "$_stamp"
  "$VENV/bin/python" -m pip install --quiet --editable "$_spec"
  printf '%s\n' "$_wanted" >"$_stamp"
fi

# _system_package COMMAND PACKAGE PURPOSE IF_MISSING: install a Debian package that provides
# COMMAND, where the system's package manager can do it unattended (as root with apt-get); else,
# or if that fails, say IF_MISSING.
_system_package() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    _say "installing $2 ($3)"
    { apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$2" >/dev/null 2>&1; }; } &&
      return 0
    _say "could not install $2: $4"
  else
    _say "$1 is missing: $4. Install it (Debian/Ubuntu: sudo apt-get install $2)."
  fi
}

if [[ "$(uname -s)" == Linux ]]; then
  # Workers run service code in a bubblewrap sandbox on Linux (see "Sharing a server safely" in
  # the README); without it, the server says at start that its workers are not sandboxed.
  _system_package bwrap bubblewrap "the workers' sandbox" \
    "workers will run without a sandbox; install it before sharing the server"
  # The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download is
  # not used): needed with the test extras only.
  if [[ ",$BATCHSERVE_EXTRAS," == *",test,"* ]]; then
    _system_package chromium chromium "the dashboard's browser tests" \
      "the browser tests will skip (and fail with CI=true)"
    # Prometheus's promtool checks the alert rules of docs/observability.md: taken alone from
    # Debian's prometheus package into .venv/bin (installing the package would start a server).
    if ! command -v promtool >/dev/null 2>&1 && [[ ! -x "$VENV/bin/promtool" ]] &&
      command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
      _say "fetching promtool from Debian's prometheus package (the alert rules' tests)"
      _tmp="$(mktemp -d)"
      if ! (
        cd "$_tmp" &&
          { apt-get download -qq prometheus || { apt-get update -qq && apt-get download -qq prometheus; }; } &&
          dpkg-deb -x prometheus_*.deb root && install -m 755 root/usr/bin/promtool "$VENV/bin/promtool"
      ) >/dev/null 2>&1; then
        _say "could not fetch promtool: the alert rules' tests will skip (and fail with CI=true)"
      fi
      rm -rf "$_tmp"
      unset _tmp
    fi
  fi
fi

# Release the lock: the caller execs a long-running process (the server) that would inherit it.
if [[ "$_locked" == 1 ]]; then
  exec 9>&-
fi

unset _locked _stamp _stamp_name _wanted _spec
unset -f _system_package
