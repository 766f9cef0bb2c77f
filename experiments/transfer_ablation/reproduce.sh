#!/usr/bin/env bash
# The ablation of experiments/transfer_ablation/results.md on the real-photo benchmark (needs `make test-assets
# models`): each transfer extension alone at eps 12 (two held-out families), the best transforms combined, with the
# perceptual budget (face region, less colour, texture), then all of it together at eps 8, 12 and 16 for every
# held-out family. Every job also refines each held-out photo (20 steps). 32 jobs; about 1 h 40 min on 2 CPU cores
# (OMP_NUM_THREADS=1 and two sweeps at a time: ~2 min a job).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/transfer_ablation}
SETS='[faceres,mobileface,faceapi],[sface,faceres,mobileface]'
ALL='[faceres,mobileface,faceapi],[sface,mobileface,faceapi],[sface,faceres,faceapi],[sface,faceres,mobileface]'
$PY run.py -m experiment=transfer_ablation hydra.sweep.dir="$OUT/alone"
$PY run.py -m experiment=transfer_ablation 'crafting.transforms=[diversity,jpeg,resize,blur]' "surrogate=$SETS" \
  hydra.sweep.dir="$OUT/combo_full"
$PY run.py -m experiment=transfer_ablation 'crafting.transforms=[diversity,jpeg,resize,blur]' crafting.region=face \
  crafting.chroma=0.5 crafting.texture=0,0.75 "surrogate=$SETS" hydra.sweep.dir="$OUT/combo_face"
$PY run.py -m experiment=transfer_ablation transfer=all attack.eps=8,12,16 "surrogate=$ALL" \
  hydra.sweep.dir="$OUT/together"
$PY experiments/transfer_ablation/summarize.py "$OUT/alone" "$OUT/combo_full" "$OUT/combo_face" "$OUT/together"
