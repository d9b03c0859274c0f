#!/usr/bin/env bash
# Build each benchmark peer's own virtual environment inside the repository (git-ignored):
#   bench/peers/.venv-tfra   TFRA 0.8.1 on TensorFlow 2.16.2 + tf_keras (tfra-requirements.txt)
# Idempotent: a venv whose installed requirements file matches the pinned one is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
for req in "$here"/*-requirements.txt; do
  name="$(basename "$req" -requirements.txt)"
  venv="$here/.venv-$name"
  if [[ -f "$venv/.requirements" ]] && cmp -s "$req" "$venv/.requirements"; then
    echo "peers: $name up to date ($venv)"
    continue
  fi
  echo "peers: building $name in $venv (downloads TensorFlow; a few minutes the first time)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$req"
  TF_USE_LEGACY_KERAS=1 "$venv/bin/python" -c \
    "import tensorflow_recommenders_addons as t, tensorflow as tf; print('peers:', '$name', 'TF', tf.__version__, 'TFRA', t.__version__)"
  cp "$req" "$venv/.requirements"
done
