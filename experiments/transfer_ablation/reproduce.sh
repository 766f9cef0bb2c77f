#!/usr/bin/env bash
# The ablation of experiments/transfer_ablation/results.md on the real-photo benchmark (needs `make test-assets
# models`). Every job also refines each held-out photo (20 steps, opom.refine).
#   alone:         each transfer extension alone at eps 12, two held-out families (sface; dlib + faceapi)
#   combo_full:    the best transforms together (diversity + JPEG / resize / blur)
#   combo_face:    the same on a soft face region with half the colour budget, with and without the texture budget
#   together:      everything (conf/transfer/all.yaml) at eps 8, 12, 16, each of the four families held out in turn
#   together_soft: everything plus chroma 0.5 and texture 0.75 at eps 12 and 16 (the enroll presets balanced, strong)
# 40 jobs; ~2 min each on this 2-core CPU with OMP_NUM_THREADS=1 and two sweeps side by side (~45 min wall).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-multirun/transfer_ablation}
TWO='[faceres,mobileface,faceapi],[sface,faceres,mobileface]'
FOUR='[faceres,mobileface,faceapi],[sface,mobileface,faceapi],[sface,faceres,faceapi],[sface,faceres,mobileface]'
BEST='crafting.transforms=[diversity,jpeg,resize,blur]'
$PY run.py -m experiment=transfer_ablation hydra.sweep.dir="$OUT/alone"
$PY run.py -m experiment=transfer_ablation "$BEST" "surrogate=$TWO" hydra.sweep.dir="$OUT/combo_full"
$PY run.py -m experiment=transfer_ablation "$BEST" crafting.region=face crafting.chroma=0.5 crafting.texture=0,0.75 \
  "surrogate=$TWO" hydra.sweep.dir="$OUT/combo_face"
$PY run.py -m experiment=transfer_ablation transfer=all attack.eps=8,12,16 "surrogate=$FOUR" \
  hydra.sweep.dir="$OUT/together"
$PY run.py -m experiment=transfer_ablation transfer=all crafting.chroma=0.5 crafting.texture=0.75 attack.eps=12,16 \
  "surrogate=$FOUR" hydra.sweep.dir="$OUT/together_soft"
$PY experiments/transfer_ablation/summarize.py "$OUT"/{alone,combo_full,combo_face,together,together_soft}
