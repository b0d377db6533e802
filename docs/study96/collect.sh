#!/usr/bin/env bash
# Copies the 96 px study's run records (log.csv, metrics.json, config.json) from RUNS (default runs/s96) into
# docs/study96/ and writes its table (table.md) and curves (docs/study96_*.png), docs/classifier-study.md.
# Run from the repository root: bash docs/study96/collect.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/s96}
[ -d "$RUNS" ] || { echo "collect.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study96
for r in "$RUNS"/*/; do
  n=$(basename "$r"); [ -f "$r/metrics.json" ] || continue     # finished runs only
  mkdir -p "$D/$n"; cp "$r"/{log.csv,config.json,metrics.json} "$D/$n/"
done
g() { local out=""; for s in 0 1 2; do [ -f "$D/$1-s$s/metrics.json" ] && out="$out,$D/$1-s$s"; done; [ -n "$out" ] && echo "$2=${out#,}"; true; }
G="$(g suponly SupOnly) $(g hermes Hermes)"
{ echo "## BUSI-72, 96 px, batch 4, 3,000 steps, random weights (the defaults: recipe scratch), Δ to SupOnly"
  python evaluate.py --compare $G --baseline SupOnly; } > $D/table.md
T="BUSI-72, 96 px, 3,000 steps, random weights, 3 seeds"
python -m tools.figures curves $G --metric dice_mean --title "$T: evaluation Dice" --out docs/study96_dice.png > $D/figures.txt
python -m tools.figures curves $G --metric auc --title "$T: evaluation AUC" --out docs/study96_auc.png >> $D/figures.txt
cat $D/table.md $D/figures.txt
