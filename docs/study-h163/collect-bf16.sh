#!/usr/bin/env bash
# plan-bf16.md's report: copies the bf16 runs' records (log.csv, config.json, metrics.json) from RUNS (default
# runs/h163) into docs/study-h163/bf16/ and writes bf16/table.md (each run's own metrics.json, Δ to SupOnly).
# Run from the repository root: bash docs/study-h163/collect-bf16.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/h163}
[ -d "$RUNS" ] || { echo "collect-bf16.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study-h163/bf16
source docs/records.sh
copy_records "$RUNS" $D "?-*bf-s?"
{ for sub in A B; do
    G="$(group $D $sub-suponlybf SupOnly) $(group $D $sub-hermesbf Hermes)"
    [ "$G" = " " ] && continue
    echo "## subset $sub, bf16 autocast (the defaults on a CPU with AMX), Δ to SupOnly"
    python evaluate.py --compare $G --baseline SupOnly; echo
  done; } > $D/table.md
cat $D/table.md
