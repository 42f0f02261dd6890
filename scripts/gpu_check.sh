#!/usr/bin/env bash
# The whole GPU verification in one command, sized for ~8 minutes on a fresh H100/H200 machine
# with a CUDA torch and nvcc: build for sm_90 (+PTX), run the CUDA tests, bench_head on the GPU
# (N = 1..1024, GB/s and % of a measured device-to-device copy bandwidth, beside the estimate of
# scripts/kernel_report's model for an H100 SXM), bench_sampler --config paper at 0/25/50/100% light,
# bench_breakdown --config paper and bench_engine --config paper (the engine against sample() at the
# same row budget, T = L and 4L) with few repeats. Everything
# lands in one folder named after the device; summary.md there is the page to read first.
#
# usage: scripts/gpu_check.sh [--out DIR] [--repeats N] [--skip-build] [--dry-run] [-h|--help]
#   --out DIR      results folder (default runs/gpu-check-<device>-<UTC time>)
#   --repeats N    repeats of the sampler benchmarks (default 1; bench_head times each N 5 times)
#   --skip-build   use the installed build (it must have CUDA kernels for this GPU)
#   --dry-run      print the steps and exit; needs no GPU and writes nothing
# Environment: PYTHON (default .venv/bin/python), STEP_TIMEOUT (seconds per step, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check: error: $*" >&2; exit 2; }

out="" repeats=1 skip_build=0 dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --repeats) [ $# -ge 2 ] || die "--repeats needs a number"; repeats="$2"; shift 2 ;;
    --repeats=*) repeats="${1#--repeats=}"; shift ;;
    --skip-build) skip_build=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || die "--repeats must be a positive integer, got '$repeats'"
python="${PYTHON:-.venv/bin/python}"
step_timeout="${STEP_TIMEOUT:-240}"
[[ "$step_timeout" =~ ^[1-9][0-9]*$ ]] || die "STEP_TIMEOUT must be a positive integer, got '$step_timeout'"

if [ "$dry_run" = 1 ]; then
  device="<device>"
else
  [ -x "$python" ] || command -v "$python" >/dev/null || die "no Python at '$python' (set PYTHON)"
  device="$("$python" -c 'import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))' 2>/dev/null)" ||
    die "no CUDA device visible to $python"
fi
slug="$(echo "$device" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')"
out="${out:-runs/gpu-check-${slug}-$(date -u +%Y%m%dT%H%M%SZ)}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
[ ! -e "$out" ] || [ -d "$out" ] || die "--out '$out' exists and is not a folder"

steps=()
names=()
add() { names+=("$1"); steps+=("$2"); }
if [ "$skip_build" = 0 ]; then
  add build "TORCH_CUDA_ARCH_LIST='9.0+PTX' $python -m pip install -q --no-build-isolation -e ."
fi
add device "$python scripts/gpu_check_report.py device --out '$out'"
add copy_bandwidth "$python scripts/gpu_check_report.py copy --out '$out'"
add model "$python scripts/kernel_report --archs 90 --dtypes bf16 --ds 768 --ns 1,2,4,8,16,32,64,128,256,512,1024 --fail-on none --build '$out/kernel-report' --json '$out/model.json'"
add cuda_tests "$python -m pytest -q -m cuda -p no:cacheprovider --junitxml='$out/cuda_tests.xml' tests"
add bench_head "$python benchmarks/bench_head.py --device cuda --ns 1,2,4,8,16,32,64,128,256,512,1024 --repeats 5 --name '$out/head_cuda'"
add bench_sampler "$python benchmarks/bench_sampler.py --config paper --fractions 0,0.25,0.5,1 --repeats $repeats --name '$out/sampler_paper'"
add bench_breakdown "$python benchmarks/bench_breakdown.py --config paper --repeats $repeats --name '$out/breakdown_paper'"
add bench_engine "$python benchmarks/bench_engine.py --config paper --repeats $repeats --curve-repeats 3 --name '$out/engine_paper'"
add summary "$python scripts/gpu_check_report.py summary --out '$out'"

if [ "$dry_run" = 1 ]; then
  echo "gpu_check: dry run; results would go to $out"
  for i in "${!steps[@]}"; do
    echo "[${names[$i]}] timeout ${step_timeout}s: ${steps[$i]}"
  done
  exit 0
fi

mkdir -p "$out"
status=0
for i in "${!steps[@]}"; do
  name="${names[$i]}"
  echo "gpu_check: [$name] ${steps[$i]}"
  start=$(date +%s)
  if timeout "$step_timeout" bash -c "${steps[$i]}" >"$out/$name.log" 2>&1; then
    echo "gpu_check: [$name] ok ($(( $(date +%s) - start )) s)"
  else
    rc=$?
    echo "gpu_check: [$name] FAILED (exit $rc after $(( $(date +%s) - start )) s; see $out/$name.log)" >&2
    tail -n 20 "$out/$name.log" >&2 || true
    status=1
    [ "$name" = build ] && exit 1  # nothing else can run without the build
  fi
done
echo "gpu_check: results in $out (summary.md)"
exit "$status"
