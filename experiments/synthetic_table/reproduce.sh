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
cp "$sweep/psr_per_model.png" "$out/psr_per_model.png"
cp "$sweep/examples_grid.png" "$out/examples_grid.png"
{
  echo "# Synthetic table: every loss x both optimisers (CPU-sized)"
  echo
  echo "Command: \`bash experiments/synthetic_table/reproduce.sh\` = \`python run.py -m experiment=synthetic_table\`"
  echo "Commit: $commit. Machine: $(nproc) CPU cores, $(uname -m). Wall time: ${minutes} min."
  echo "World: the embedded synthetic default (30 identities x (10 mask + 5 test) images, 500 distractors);"
  echo "surrogate arcface (small ResNet); eps 8; FIM 16 iterations, DFANet + momentum 100 iterations."
  echo "Figures: [psr_per_model.png](psr_per_model.png), [examples_grid.png](examples_grid.png)."
  echo
  cat "$sweep/summary.md"
} > "$out/results.md"
echo "wrote $out/results.md from $sweep"
