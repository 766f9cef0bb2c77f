#!/usr/bin/env bash
# The ablation of experiments/transfer_ablation/results.md: each transfer extension alone at eps 12 (two held-out
# families), then all of them together at eps 8, 12 and 16 for every held-out family, on the real-photo benchmark.
# Needs `make test-assets`. About 3 hours on 2 CPU cores (26 jobs; each also refines every held-out photo).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/transfer_ablation}
$PY run.py -m experiment=transfer_ablation hydra.sweep.dir="$OUT/alone"
$PY run.py -m experiment=transfer_ablation transfer=all attack.eps=8,12,16 \
  'surrogate=[faceres,mobileface,faceapi],[sface,mobileface,faceapi],[sface,faceres,faceapi],[sface,faceres,mobileface]' \
  hydra.sweep.dir="$OUT/together"
$PY experiments/transfer_ablation/summarize.py "$OUT/alone" "$OUT/together"
