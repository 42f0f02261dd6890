#!/usr/bin/env bash
# Set up a virtual environment with everything mdlm_fast needs, then build it in place.
# Idempotent: re-running only rebuilds the extension. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# torch first, pinned: on this project's machines the CPU build comes from local disk; an
# unpinned torch would pull the multi-GB CUDA wheels.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/pip install -q -r requirements-dev.txt
fi
# --no-build-isolation: compile against the torch installed above.
.venv/bin/pip install -q --no-build-isolation -e .
