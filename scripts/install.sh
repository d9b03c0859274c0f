#!/usr/bin/env bash
# Install everything the platform needs into this checkout: a Python virtual environment at
# .venv (the package, editable, with its extras) and configurable-http-proxy from npm.
# Usage: scripts/install.sh [extras]     e.g. scripts/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install: Python >= 3.11 is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "install: npm (Node.js >= 18) is required for the proxy" >&2; exit 1; }
command -v git >/dev/null || echo "install: warning: git not found; jobs with git sources will fail" >&2

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "install: Python packages (the first run downloads TensorFlow, ~1-2 min)"
.venv/bin/python -m pip install --quiet --upgrade pip
# Not quiet: pip's "Collecting ..." lines are the progress of the long first install.
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --progress-bar off -e ".[$extras]"
else
  .venv/bin/python -m pip install --progress-bar off -e .
fi
echo "install: configurable-http-proxy (npm)"
npm install --no-audit --no-fund --loglevel=error
echo "install: done"
