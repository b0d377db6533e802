#!/usr/bin/env bash
# Copies the study's run records (log.csv, metrics.json, config.json) from RUNS (default runs/study64) into
# docs/study64/ and writes the tables (table.md) and figures (docs/study64_*.png) of docs/gain-study.md.
# Run from the repository root: bash docs/study64/collect.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/study64}
[ -d "$RUNS" ] || { echo "collect.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study64
source docs/records.sh
copy_records "$RUNS" $D
g() { group $D "$@"; }
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
