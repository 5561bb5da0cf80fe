#!/usr/bin/env bash
# Set up a fresh machine: Debian packages (when apt and root are available), a venv in .venv, pip packages.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEB="libopencv-dev libturbojpeg0-dev pkg-config dataset-fashion-mnist"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $DEB; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "setup: no apt/root; make sure these Debian packages (or equivalents) are present: $DEB"
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: pip install -r requirements.txt (first time: several minutes)"
  # (the filter drops pip's noise about local index folders; pip's exit code is kept)
  pipq() { .venv/bin/pip install -q "$@" 2> >(grep -v "is ignored" >&2); }
  pipq --upgrade pip setuptools wheel
  grep -v -E '^\s*ffcv' requirements.txt > .venv/requirements-noffcv.txt
  pipq -r .venv/requirements-noffcv.txt
  pipq --no-build-isolation "$(grep -E '^\s*ffcv' requirements.txt)"
  echo "$want" > "$stamp"
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
