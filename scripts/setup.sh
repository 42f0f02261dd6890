#!/usr/bin/env bash
# Set up a virtual environment with everything mdlm_fast needs, then build it in place.
# Idempotent: a re-run installs what is missing and rebuilds the extension only when its sources
# changed. Usage: scripts/setup.sh [--dev]
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
# --no-build-isolation: compile against the torch installed above. A re-run (e.g. with --dev after
# the first) reuses the build when the extension imports from this clone and is newer than every
# build input; an edit under csrc/ or of the build files, or another torch, rebuilds it.
so=$(ls mdlm_fast/_C*.so 2>/dev/null | head -n 1 || true)
root=$PWD
if [ -n "$so" ] && [ -x .venv/bin/mdlm-fast ] \
    && [ -z "$(find csrc setup.py pyproject.toml build_backend -type f -newer "$so" 2>/dev/null | head -n 1)" ] \
    && (cd / && "$root/.venv/bin/python" -c "import os, sys, mdlm_fast
sys.exit(os.path.dirname(os.path.abspath(mdlm_fast.__file__)) != os.path.join(sys.argv[1], 'mdlm_fast'))" "$root") 2>/dev/null
then
  echo "mdlm_fast: $so is newer than its sources and imports; not rebuilding"
else
  .venv/bin/pip install -q --no-build-isolation -e .
fi
