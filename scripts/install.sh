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

# Debian packages, as root only; a stale package index is refreshed once on failure.
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv"
  "$PYTHON" -m venv .venv
fi
# The JupyterLab panel is built from labextension/ (npm) by the package's build hook when its
# built copy (mlp_magics/labextension) is missing; a changed source makes it stale: rebuild it.
panel=mlp_magics/labextension/package.json
if [ -f "$panel" ] && [ -n "$(find labextension/src labextension/style labextension/package.json \
    labextension/package-lock.json -newer "$panel" -print -quit)" ]; then
  echo "install: the panel's sources changed; rebuilding it"
  rm -rf mlp_magics/labextension
fi
echo "install: Python packages (the first run downloads TensorFlow, ~1-2 min)"
.venv/bin/python -m pip install --quiet --upgrade pip
# Not quiet: pip's "Collecting ..." lines are the progress of the long first install.
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --progress-bar off -e ".[$extras]"
else
  .venv/bin/python -m pip install --progress-bar off -e .
fi
# vlps's hash-table kernel (vlps/kernels/, C++ against the installed TensorFlow); a no-op when
# this build exists. Built here, by the installing account: users' kernels cannot write here.
command -v g++ >/dev/null || command -v c++ >/dev/null || [ -n "${CXX:-}" ] || {
  if can_apt; then
    echo "install: g++ (apt) for vlps's kernel"
    apt_install g++
  else
    echo "install: a C++ compiler (g++) is required to build vlps's kernel" >&2; exit 1
  fi
}
echo "install: vlps's hash-table kernel"
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c 'import vlps.native as n; n.build()'
# Editable install: the lab loads the panel from this checkout (a link), so `npm run build` in
# labextension/ is seen after a reload.
.venv/bin/jupyter-builder develop --overwrite mlp_magics >/dev/null
if [[ ",$extras," == *",test,"* ]]; then
  # The browser tests drive Debian's Chromium through Playwright (never Playwright's own builds).
  if [ ! -x /usr/bin/chromium ]; then
    if can_apt; then
      echo "install: chromium (apt) for the browser tests"
      apt_install chromium
    else
      echo "install: warning: /usr/bin/chromium is missing; the browser tests will fail until" \
        "it is installed (as root: apt-get install chromium)" >&2
    fi
  fi
  [ -d labextension/node_modules ] || npm --prefix labextension ci --no-audit --no-fund --loglevel=error
fi
# The model servers' own environment (kserve + TensorFlow): kserve pins protobuf<7 and
# psutil<6, which would downgrade .venv's; model servers are separate processes anyway.
serving_req=mlp/serving/requirements.txt
if [[ ! -f .venv-serving/.requirements ]] || ! cmp -s "$serving_req" .venv-serving/.requirements; then
  echo "install: the model-serving environment .venv-serving (kserve, TensorFlow)"
  [ -x .venv-serving/bin/python ] || "$PYTHON" -m venv .venv-serving
  .venv-serving/bin/python -m pip install --quiet --upgrade pip
  .venv-serving/bin/python -m pip install --progress-bar off --quiet -r "$serving_req"
  cp "$serving_req" .venv-serving/.requirements
fi
echo "install: configurable-http-proxy (npm)"
npm install --no-audit --no-fund --loglevel=error
echo "install: done"
