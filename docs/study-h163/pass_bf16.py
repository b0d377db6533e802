"""Sets of 3 runs of the bf16 check (plan-bf16.md) that pass it: mean Δ Dice ≥ +2 and mean Δ accuracy ≥ 0 over
SupOnly, each run its own metrics.json (Hermes at its estimate, SupOnly at ½), counted as report.py counts them.
From the repository root:

    python docs/study-h163/pass_bf16.py > docs/study-h163/bf16/pass.txt
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import numpy as np  # noqa: E402
from report import load, sets_of_3  # noqa: E402


def metrics(run):
    with open(os.path.join(HERE, "bf16", run, "metrics.json")) as f:
        return json.load(f)


runs = []                                       # (run, Δ Dice, Δ accuracy) in points, Hermes − SupOnly
for sub in "ABC":
    for s in range(4):                          # seed 3: plan-bf16.md's second addendum
        if all(os.path.exists(os.path.join(HERE, "bf16", f"{sub}-{n}bf-s{s}", "metrics.json"))
               for n in ("hermes", "suponly")):
            H, S = metrics(f"{sub}-hermesbf-s{s}"), metrics(f"{sub}-suponlybf-s{s}")
            runs.append((sub + str(s), 100 * (H["dice_mean"] - S["dice_mean"]),
                         100 * (H["accuracy"] - S["accuracy"])))
n, ok, dice_ok, acc_ok = sets_of_3([r[1:] for r in runs])
print(len(runs), "runs;", ok, "of", n, "sets of 3 pass; Dice half fails", n - dice_ok, "accuracy half fails",
      n - acc_ok)
for run, dice, acc in runs:
    print(run, f"{dice:+.2f} {acc:+.2f}")
deltas = {k: np.array([100 * (metrics(f"{r[0]}-hermesbf-s{r[1]}")[k] - metrics(f"{r[0]}-suponlybf-s{r[1]}")[k])
                       for r, _, _ in runs]) for k in ("dice_mean", "accuracy", "balanced_accuracy", "auc")}
print(f"{len(runs)} bf16 runs: " + ", ".join(f"Δ {k} {v.mean():+.2f} ± {v.std(ddof=1):.2f} (at or above in {(v >= 0).sum()})"
                                         for k, v in deltas.items()))
# the same subsets and seeds in fp32 (report.py's records: Hermes at its estimate, SupOnly at ½; seeds 0-2), pooled
# with these bf16 runs of the same seeds
fp32, with_fp32 = [], []
for run, dice, acc in runs:
    if not os.path.exists(os.path.join(HERE, "records", f"{run[0]}-hermes-s{run[1]}.json")):
        continue                                # no fp32 run of this seed
    with_fp32.append([dice, acc])
    H, S = load(None, run[0], "hermes", int(run[1]))["unlabeled"], load(None, run[0], "suponly", int(run[1]))["labeled"]
    fp32.append([100 * (H[k] - S[k]) for k in ("dice_mean", "accuracy")])
both = np.array(fp32 + with_fp32)
print(f"with the same runs in fp32, {len(both)} runs: Δ Dice {both[:, 0].mean():+.2f} ± {both[:, 0].std(ddof=1):.2f}, "
      f"Δ accuracy {both[:, 1].mean():+.2f} ± {both[:, 1].std(ddof=1):.2f}")
