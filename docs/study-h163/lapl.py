"""plan-lapl.md's report: `--pseudo-label-prior unlabeled --unsup-weight-cls 1` (laplbf) on subsets A and C, bf16,
against the default Hermes (hermesbf) and SupOnly (suponlybf) of the same subset and seed, each run its own
metrics.json (Hermes rows at the estimate, SupOnly at ½); the kept image pseudo-labels over steps 1,501–2,000 of
log.csv; the plan's decision rule. From the repository root, after collect-bf16.sh:

    python docs/study-h163/lapl.py > docs/study-h163/bf16/lapl.txt
"""
import csv
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = ("dice_mean", "accuracy", "balanced_accuracy", "auc")


def run_dir(sub, name, s):
    return os.path.join(HERE, "bf16", f"{sub}-{name}-s{s}")


def metrics(sub, name, s):
    with open(os.path.join(run_dir(sub, name, s), "metrics.json")) as f:
        return json.load(f)


def late_pseudo_labels(sub, name, s):
    """Means over the training rows after step 1,500: share of images kept, accuracy of the kept ones."""
    with open(os.path.join(run_dir(sub, name, s), "log.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "train" and int(r["iter"]) > 1500]
    return [np.mean([float(r[k]) for r in rows]) for k in ("kept_img", "pl_acc_img_kept")]


pairs = [(sub, s) for sub in "AC" for s in range(3)
         if os.path.exists(os.path.join(run_dir(sub, "laplbf", s), "metrics.json"))]
print("run    " + "  ".join(f"{k:>17}" for k in KEYS) + "   (lapl; Δ to default Hermes; Δ to SupOnly, points)")
d_h, d_s = [], []
for sub, s in pairs:
    L, H, S = (metrics(sub, n, s) for n in ("laplbf", "hermesbf", "suponlybf"))
    d_h.append([100 * (L[k] - H[k]) for k in KEYS])
    d_s.append([100 * (L[k] - S[k]) for k in KEYS])
    print(f"{sub}-s{s}   " + "  ".join(f"{100 * L[k]:5.1f} {a:+5.1f} {b:+5.1f}" for k, a, b in zip(KEYS, d_h[-1], d_s[-1]))
          + f"   decided at {L['class_prior']:.0%}, π̂_u {L['prior_unlabeled']:.2f} (default Hermes {H['prior_unlabeled']:.2f})")
d_h, d_s = np.array(d_h), np.array(d_s)
for name, d in (("Δ to the default Hermes", d_h), ("Δ to SupOnly", d_s)):
    if len(d) > 1:
        print(f"{len(d)} runs, {name}: " + ", ".join(f"{k} {m:+.2f} ± {v:.2f}" for k, m, v in
                                                    zip(KEYS, d.mean(0), d.std(0, ddof=1))))
print("kept image pseudo-labels, steps 1,501-2,000 (share kept, accuracy of the kept): lapl / default Hermes")
for sub, s in pairs:
    a, b = late_pseudo_labels(sub, "laplbf", s), late_pseudo_labels(sub, "hermesbf", s)
    print(f"{sub}-s{s}  {a[0]:.2f} {a[1]:.2f} / {b[0]:.2f} {b[1]:.2f}")
if len(pairs) == 6:
    dice, acc, auc = d_h[:, 0].mean(), d_h[:, 1].mean(), d_h[:, 3].mean()
    keep = acc >= 1 and d_h[:, 1].min() >= -4 and dice >= -1 and auc >= 0
    print(f"decision rule (plan-lapl.md): mean Δ accuracy {acc:+.2f} (≥ +1), lowest run {d_h[:, 1].min():+.2f} (≥ −4), "
          f"mean Δ Dice {dice:+.2f} (≥ −1), mean Δ AUC {auc:+.2f} (≥ 0) -> "
          + ("worth the BUSI-72 study" if keep else "rejected"))
