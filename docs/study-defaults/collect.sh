#!/usr/bin/env bash
# Copies the runs of docs/classifier-study.md (log.csv, metrics.json, config.json) from RUNS (default runs/s27)
# into docs/study-defaults/ and writes its tables (table.md), the early evaluations (early.md), what
# inter-task attention does to the classifier's features (ita.md) and each eq. (15) term's gradient
# (gradients.md) -- these two from the runs' final checkpoints, while RUNS still holds them -- and the figures
# (docs/study-defaults_*.png). Run from the repository root: bash docs/study-defaults/collect.sh [RUNS]
# Each run: python train.py --data-root BUSI --labels 72 --image-size 64 --batch-size 4 --iters 2000
#   --eval-every 250 --no-pretrained --seg-encoder resnet18 --seed S [--no-dtcl --no-ias --no-itcl |
#   --ita-form residual | --method cps] --out RUNS/NAME-sS   (OMP_NUM_THREADS=1, two at a time)
set -euo pipefail
RUNS=${1:-runs/s27}
[ -d "$RUNS" ] || { echo "collect.sh: no run folder $RUNS (nothing was changed)" >&2; exit 1; }
D=docs/study-defaults
source docs/records.sh
copy_records "$RUNS" $D
g() { group $D "$@"; }
ALL="$(g suponly SupOnly) $(g cps CPS) $(g hermes Hermes) $(g hermesres Hermes+resITA)"
{
  echo "## Δ to SupOnly"; python evaluate.py --compare $ALL --baseline SupOnly
  echo; echo "## residual inter-task attention against the paper's (Hermes, the same seeds)"
  python evaluate.py --compare $(g hermes Hermes) $(g hermesres Hermes+resITA) --baseline Hermes
} > $D/table.md
python - "$D" > $D/early.md <<'PY'
import csv, os, sys
D = sys.argv[1]
print("| run | " + " | ".join(f"step {s}: Acc / BalAcc / AUC / malignant share" for s in (250, 500, 1000, 2000)) + " |")
print("|---|---|---|---|---|")
for name in ("suponly", "hermes", "hermesres", "cps"):
    for s in range(3):
        p = os.path.join(D, f"{name}-s{s}", "log.csv")
        if not os.path.isfile(p):
            continue
        ev = {int(r["iter"]): r for r in csv.DictReader(open(p)) if r["kind"] == "eval"}
        cell = lambda r: " / ".join(f"{100 * float(r[k]):.1f}" if r.get(k) else "–" for k in
                                    ("accuracy", "balanced_accuracy", "auc", "predicted_malignant"))
        print(f"| {name}-s{s} | " + " | ".join(cell(ev[i]) if i in ev else "–" for i in (250, 500, 1000, 2000)) + " |")
PY
{
  for n in hermes hermesres; do for s in 0 1 2; do
    [ -f "$RUNS/$n-s$s/checkpoint.pt" ] && python -m tools.diagnose "$RUNS/$n-s$s" --ita --batches 8 && echo
  done; done
} > $D/ita.md || true
{
  for n in hermes hermesres; do for s in 0 1 2; do
    [ -f "$RUNS/$n-s$s/checkpoint.pt" ] && python -m tools.diagnose "$RUNS/$n-s$s" --batches 4 && echo
  done; done
} > $D/gradients.md || true
{
  python -m tools.figures curves $ALL --out docs/study-defaults_dice.png
  python -m tools.figures curves $ALL --metric accuracy --out docs/study-defaults_accuracy.png
  python -m tools.figures curves $ALL --metric auc --out docs/study-defaults_auc.png
} > $D/figures.txt
cat $D/table.md $D/early.md $D/ita.md $D/gradients.md $D/figures.txt
