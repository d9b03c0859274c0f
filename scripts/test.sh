#!/usr/bin/env bash
# Install everything (with the test extras) and run the whole test suite: lint, types, pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k logs
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
echo "test: ruff"
.venv/bin/ruff check .
echo "test: mypy"
.venv/bin/mypy
echo "test: panel unit tests (vitest)"
npm --prefix labextension test --silent
echo "test: Kubernetes test control plane (built once into a cache; the first build takes ~15-20 min)"
scripts/k8s-build.sh
echo "test: pytest"
export PATH="$PWD/node_modules/.bin:$PWD/.venv/bin:$PATH"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
