#!/usr/bin/env bash
# Lint: ruff and mypy for Python, and (with --format) the formatters' checks for Python and C++/CUDA.
#
#   scripts/lint.sh            ruff check + mypy mdlm_fast
#   scripts/lint.sh --format   also ruff format --check and clang-format --dry-run --Werror
#   scripts/lint.sh --fix      apply the formatters and ruff's fixes instead of checking (no mypy)
#
# The tools come from the environment's bin folder (.venv/bin by default; LINT_BIN overrides), as
# requirements-dev.txt installs them; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${LINT_BIN:-.venv/bin}
format=0 fix=0
for arg in "$@"; do
  case "$arg" in
    --format) format=1 ;;
    --fix) fix=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "lint.sh: unknown argument $arg (expected --format or --fix)" >&2; exit 2 ;;
  esac
done

# The C++/CUDA sources clang-format owns (git-tracked, so build outputs never count).
cxx_files() {
  git ls-files -- 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' \
    'tests/cuda_emulation/*.h' 'tests/cuda_emulation/*.cc' 'tests/cuda_emulation/*.cu'
}

if [ "$fix" = 1 ]; then
  "$bin/ruff" check --fix .
  "$bin/ruff" format .
  cxx_files | xargs "$bin/clang-format" -i
  exit 0
fi

status=0
run() { echo "+ $*"; "$@" || status=1; }
run "$bin/ruff" check .
run "$bin/mypy" mdlm_fast
if [ "$format" = 1 ]; then
  run "$bin/ruff" format --check .
  echo "+ clang-format --dry-run --Werror (csrc, tests/cuda_emulation)"
  cxx_files | xargs "$bin/clang-format" --dry-run --Werror || status=1
fi
exit $status
