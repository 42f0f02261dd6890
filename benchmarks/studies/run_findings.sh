#!/usr/bin/env bash
# The analyses behind docs/findings.md, on the embedded models (2 CPU cores: about 30 minutes).
# Every command is resumable or cheap: rerun this script to continue an interrupted search.
# Usage: [HEAVY_SEED1=DIR] benchmarks/studies/run_findings.sh [OUT_DIR]   (default docs/findings; DIR: see the end)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/findings}
BIN=.venv/bin
SAMPLING=(--steps 64 --length 64 --batch-size 16)

# Step importance (eq. 5-7) on 64 held-out windows of 256 tokens, 20 points of t.
$BIN/mdlm-fast importance --windows 64 --t-points 20 --threads 2 --no-progress --out "$OUT"
# Placements at 25% light (q1..q4, sandwich; all-heavy and all-light as anchors), 64 samples each.
$BIN/mdlm-fast search --study placement --fraction 0.25 "${SAMPLING[@]}" --samples 64 --threads 2 \
  --no-progress --out "$OUT"
# Light-fraction sweep, sandwich placement, 32 samples each.
$BIN/mdlm-fast search --study fraction --fractions 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 "${SAMPLING[@]}" \
  --samples 32 --threads 2 --no-progress --out "$OUT"
# The exhaustive 10-segment / 4-light search (210 schedules, the same seeds for every schedule),
# data-parallel on 2 ranks of 1 thread each.
OMP_NUM_THREADS=1 $BIN/torchrun --standalone --nproc_per_node 2 -m mdlm_fast.cli search --study exhaustive \
  "${SAMPLING[@]}" --samples 16 --threads 1 --no-progress --out "$OUT"
# Calibration at the search's budget (4 of 10 segments light), with the search's settings and seeds.
$BIN/mdlm-fast calibrate --importance "$OUT/importance.json" --search "$OUT" --threads 2 --no-progress --out "$OUT"

# Normalized step importance (section 1b) needs a second heavy seed, which is not in the wheel.
# Train it first (about 62 CPU-minutes, resumable) with the heavy card's command plus a seed:
#   .venv/bin/mdlm-fast train --kind mdlm --data ../shared/data/shakespeare.txt --run-dir runs/heavy_seed1 \
#     --tokenizer embedded --n-blocks 8 --hidden-dim 256 --n-heads 4 --cond-dim 16 --length 256 \
#     --batch-size 16 --amp bf16 --threads 2 --max-steps 2500 --eval-every 250 --seed 1 \
#     --export runs/heavy_seed1/export --export-dtype bf16 --export-no-tokenizer
SEED1=${HEAVY_SEED1:-runs/heavy_seed1/export}
if [ -d "$SEED1" ]; then
  $BIN/mdlm-fast importance --windows 64 --t-points 20 --threads 2 --no-progress --heavy-twin "$SEED1" \
    --out "$OUT/importance_normalized"
  $BIN/mdlm-fast calibrate --importance "$OUT/importance_normalized/importance.json" --metric kl_normalized \
    --search "$OUT" --threads 2 --no-progress --out "$OUT/importance_normalized"
else
  echo "no second heavy seed at $SEED1: skipping the normalized step importance (section 1b)" >&2
fi
