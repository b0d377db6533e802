#!/usr/bin/env bash
# plan-bf16.md's report: copies the bf16 runs' records (log.csv, config.json, metrics.json) from RUNS (default
# runs/h163) into docs/study-h163/bf16/ and writes bf16/table.md (each run's own metrics.json, Δ to SupOnly;
# plan-beta.md's β = 1.0 runs on subset A and plan-lapl.md's runs on A and C beside them, Δ to the default Hermes).
# Run from the repository root: bash docs/study-h163/collect-bf16.sh [RUNS]
set -euo pipefail
RUNS=${1:-runs/h163}
[ -d "$RUNS" ] || { echo "collect-bf16.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study-h163/bf16
source docs/records.sh
copy_records "$RUNS" $D "?-*bf-s?"
{ for sub in A B C; do
    G="$(group $D $sub-suponlybf SupOnly) $(group $D $sub-hermesbf Hermes)"
    [ "$G" = " " ] && continue
    echo "## subset $sub, bf16 autocast (the defaults on a CPU with AMX), Δ to SupOnly"
    python evaluate.py --compare $G --baseline SupOnly; echo
  done
  V=$(group $D A-beta1bf Hermes-beta1.0)
  if [ -n "$V" ]; then
    echo "## subset A, bf16: Hermes with --beta 1.0 (plan-beta.md), Δ to SupOnly"
    python evaluate.py --compare $(group $D A-suponlybf SupOnly) $(group $D A-hermesbf Hermes) "$V" --baseline SupOnly; echo
    echo "## subset A, bf16: the same, Δ to the default Hermes"
    python evaluate.py --compare $(group $D A-hermesbf Hermes) "$V" --baseline Hermes; echo
  fi
  for sub in A B C; do
    G="$(SEEDS="0 1 2 3" group $D $sub-suponlybf SupOnly) $(SEEDS="0 1 2 3" group $D $sub-hermesbf Hermes)"
    [[ "$G" != *s3* ]] && continue
    echo "## subset $sub, bf16, seeds 0-3 (plan-bf16.md's second addendum), Δ to SupOnly"
    python evaluate.py --compare $G --baseline SupOnly; echo
  done
  for sub in A C; do
    V=$(group $D $sub-laplbf Hermes-plprior)
    [ -z "$V" ] && continue
    echo "## subset $sub, bf16: Hermes with --pseudo-label-prior unlabeled --unsup-weight-cls 1 (plan-lapl.md), Δ to the default Hermes"
    python evaluate.py --compare $(group $D $sub-hermesbf Hermes) "$V" --baseline Hermes; echo
  done; } > $D/table.md
cat $D/table.md
