#!/usr/bin/env bash
# Reproduce experiments/demo/results.md: the README's demo table (python run.py -m experiment=demo, default
# seeds) and its spread over seeds - the attack's random start (attack.seed), the synthetic world with the models
# trained on it (dataset.seed) and the models' training seeds alone.
# Usage: bash experiments/demo/reproduce.sh     (from a clone; ~25 min on 2 CPU cores, most of it training models
# for the other worlds and seeds once; they are cached)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
root="multirun/demo/$(date +%Y-%m-%d_%H-%M-%S)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src conf run.py || echo '+local changes')"
start=$(date +%s)
"$PY" run.py -m experiment=demo hydra.sweep.dir="$root/default"
"$PY" run.py -m experiment=demo 'attack.seed=1,2' hydra.sweep.dir="$root/attack_seed"
"$PY" run.py -m experiment=demo 'dataset.seed=1,2' hydra.sweep.dir="$root/world_seed"
"$PY" run.py -m experiment=demo surrogate.seed=100 blackbox.resnet_cosface.seed=101 \
    blackbox.mobilefacenet_arcface.seed=102 blackbox.mobilefacenet_softmax.seed=103 hydra.sweep.dir="$root/model_seed"
minutes=$(( ($(date +%s) - start + 59) / 60 ))
out=experiments/demo
env=$("$PY" -c 'import json, sys; from opom.evaluation.provenance import describe
print(describe(json.load(open(sys.argv[1]))["environment"]))' \
      "$(ls "$root"/default/*/results.json | head -1)")
{
  echo "# The demo table and its spread over seeds"
  echo
  echo "Command: \`bash experiments/demo/reproduce.sh\`; the table is \`python run.py -m experiment=demo\` (= \`make demo\`)."
  echo "Commit: $commit. Wall time: ${minutes} min (all four sweeps)."
  echo "Environment: $env."
  echo
  echo "The numbers are the same on every run on one machine (the world, the models and the masks are seeded) but"
  echo "not across CPUs or torch versions: floating-point reductions round differently, the models trained on the"
  echo "synthetic world come out slightly different, and the sign steps of the attack amplify any difference. On"
  echo "another machine expect values within the spread below rather than these exact digits."
  echo
  echo "## Default seeds (the README's table)"
  echo
  cat "$root/default/summary.md"
  echo
  echo "## Spread over seeds: mean black-box PSR@1 per method, clean top-1 per black box"
  echo
  echo "Columns: the default seeds; the attack's random start (\`attack.seed\`); another synthetic world, new people"
  echo "and the models retrained on it (\`dataset.seed\`); the models' training seeds (\`surrogate.seed\`,"
  echo "\`blackbox.<name>.seed\`) on the default world."
  echo
  "$PY" experiments/demo/spread.py "$root/default" "$root/attack_seed" "$root/world_seed" "$root/model_seed"
} > "$out/results.md"
echo "wrote $out/results.md from $root"
