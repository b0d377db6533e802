#!/usr/bin/env bash
# Copies the study's run records (log.csv, metrics.json, config.json) from RUNS (default runs/study64) into
# docs/study64/ and writes the tables (table.md) and figures (docs/study64_*.png) of docs/gain-study.md.
# Run from the repository root: bash docs/study64/collect.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/study64}
[ -d "$RUNS" ] || { echo "collect.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study64
for r in "$RUNS"/*/; do
  n=$(basename "$r"); [ -f "$r/metrics.json" ] || continue     # finished runs only
  mkdir -p "$D/$n"; cp "$r"/{log.csv,config.json,metrics.json} "$D/$n/"
done
g() { local out=""; for s in 0 1 2; do [ -f "$D/$1-s$s/metrics.json" ] && out="$out,$D/$1-s$s"; done; [ -n "$out" ] && echo "$2=${out#,}"; true; }
PAPER="$(g suponly SupOnly) $(g cps CPS) $(g hermes Hermes)"
RECIPE="$(g suponlyR SupOnly+R) $(g cpsR CPS+R) $(g hermesR Hermes+R) $(g hermesRB Hermes+R+sepBN)"
{
  echo "## paper settings, Δ to SupOnly"; python evaluate.py --compare $PAPER --baseline SupOnly
  echo; echo "## recipe, Δ to SupOnly+R"; python evaluate.py --compare $RECIPE --baseline SupOnly+R
  echo; echo "## recipe against the paper's SupOnly"; python evaluate.py --compare $(g suponly SupOnly) $RECIPE --baseline SupOnly
  echo; echo "## Hermes with the recipe against Hermes with the paper's settings"
  python evaluate.py --compare $(g hermes Hermes) $(g hermesR Hermes+R) $(g hermesRB Hermes+R+sepBN) --baseline Hermes
  echo; echo "## Hermes against CPS, the paper's settings"; python evaluate.py --compare $(g cps CPS) $(g hermes Hermes) --baseline CPS
} > $D/table.md
{
  python -m tools.figures curves $PAPER $RECIPE --out docs/study64_dice.png
  python -m tools.figures curves $PAPER $RECIPE --metric accuracy --out docs/study64_accuracy.png
  python -m tools.figures pseudo-labels $(g cps CPS) $(g hermes Hermes) $(g cpsR CPS+R) $(g hermesR Hermes+R) --out docs/study64_pseudo_labels.png
} > $D/figures.txt
cat $D/table.md $D/figures.txt
