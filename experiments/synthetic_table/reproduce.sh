#!/usr/bin/env bash
# Reproduce experiments/synthetic_table/results.md: the paper's table protocol at CPU size on the synthetic
# world (every loss with both optimisers, plus the random-noise floor; conf/experiment/synthetic_table.yaml).
# Usage: bash experiments/synthetic_table/reproduce.sh     (from a clone; about 15-30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
sweep="multirun/synthetic_table/$(date +%Y-%m-%d_%H-%M-%S)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src conf run.py || echo '+local changes')"
start=$(date +%s)
"$PY" run.py -m experiment=synthetic_table hydra.sweep.dir="$sweep"
minutes=$(( ($(date +%s) - start + 59) / 60 ))
out=experiments/synthetic_table
env=$("$PY" -c 'import json, sys; from opom.evaluation.provenance import describe
print(describe(json.load(open(sys.argv[1]))["environment"]))' \
      "$(ls "$sweep"/*/results.json | head -1)")
cp "$sweep/psr_per_model.png" "$out/psr_per_model.png"
cp "$sweep/examples_grid.png" "$out/examples_grid.png"
{
  echo "# Synthetic table: every loss x both optimisers (CPU-sized)"
  echo
  echo "Command: \`bash experiments/synthetic_table/reproduce.sh\` = \`python run.py -m experiment=synthetic_table\`"
  echo "Commit: $commit. Wall time: ${minutes} min."
  echo "Environment: $env."
  echo "These digits repeat on this machine, not across CPUs or torch versions; experiments/demo/results.md shows"
  echo "how much the numbers move with the seeds, the size of difference to expect elsewhere."
  echo "World: the embedded synthetic default (30 identities x (10 mask + 5 test) images, 500 distractors);"
  echo "surrogate arcface (a small ResNet trained on the synthetic world; the black box resnet_cosface is the same"
  echo "small ResNet architecture with another loss and seed, the MobileFaceNets differ); eps 8; FIM 16 iterations,"
  echo "DFANet + momentum 100 iterations."
  echo "Figures: [psr_per_model.png](psr_per_model.png), [examples_grid.png](examples_grid.png)."
  echo
  cat "$sweep/summary.md"
} > "$out/results.md"
echo "wrote $out/results.md from $sweep"
