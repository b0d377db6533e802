#!/usr/bin/env bash
# Copies the 96 px study's run records (log.csv, metrics.json, config.json) from RUNS (default runs/s96) into
# docs/study96/ and writes its table (table.md) and curves (docs/study96_*.png), docs/classifier-study.md.
# Run from the repository root: bash docs/study96/collect.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/s96}
[ -d "$RUNS" ] || { echo "collect.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study96
source docs/records.sh
copy_records "$RUNS" $D
g() { group $D "$@"; }
G="$(g suponly SupOnly) $(g hermes Hermes)"
{ echo "## BUSI-72, 96 px, batch 4, 3,000 steps, random weights (the defaults: recipe scratch), Δ to SupOnly"
  python evaluate.py --compare $G --baseline SupOnly; } > $D/table.md
T="BUSI-72, 96 px, 3,000 steps, random weights, 3 seeds"
python -m tools.figures curves $G --metric dice_mean --title "$T: evaluation Dice" --out docs/study96_dice.png > $D/figures.txt
python -m tools.figures curves $G --metric auc --title "$T: evaluation AUC" --out docs/study96_auc.png >> $D/figures.txt
cat $D/table.md $D/figures.txt
