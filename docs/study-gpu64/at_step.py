"""The figures of docs/classifier-study.md ("Eight seeds on a GPU") that read log.csv rather than metrics.json:
    python docs/study-gpu64/at_step.py
Δ to SupOnly at the evaluation of step 1,750 (paired by seed), each group's mean evaluation AUC at steps 500 and
1,500, and the image pseudo-labels after step 1,000 (fraction kept, accuracy of the kept ones, mean over the
logged training rows with any kept)."""
import csv
import os
import statistics as st

HERE, SEEDS = os.path.dirname(os.path.abspath(__file__)), range(8)
GROUPS = {"Hermes (default)": "hermes", "EMA + uc0": "emauc0", "uc0": "uc0", "CPS": "cps"}


def rows(name, seed):
    with open(os.path.join(HERE, f"{name}-s{seed}", "log.csv")) as f:
        return list(csv.DictReader(f))


def at(name, seed, it, key):
    return float(next(r for r in rows(name, seed) if r["kind"] == "eval" and int(r["iter"]) == it)[key])


keys = ("dice_mean", "accuracy", "balanced_accuracy", "auc")
print("step 1750, Δ to SupOnly (points, mean ± sample std over 8 seeds):", ", ".join(keys))
for title, name in GROUPS.items():
    d = [[100 * (at(name, s, 1750, k) - at("suponly", s, 1750, k)) for s in SEEDS] for k in keys]
    print(f"  {title}: " + "  ".join(f"{st.mean(x):+.2f} ± {st.stdev(x):.2f}" for x in d))
for it in (500, 1500):
    print(f"step {it}, mean AUC: " + "  ".join(f"{n} {100 * st.mean(at(n, s, it, 'auc') for s in SEEDS):.1f}"
                                               for n in ("suponly", "hermes")))
for name in ("hermes", "emauc0"):
    late = [r for s in SEEDS for r in rows(name, s) if r["kind"] == "train" and int(r["iter"]) > 1000]
    acc = [float(r["pl_acc_img_kept"]) for r in late if r["pl_acc_img_kept"] and float(r["kept_img"]) > 0]
    print(f"{name} after step 1000: kept_img {st.mean(float(r['kept_img']) for r in late):.3f}, "
          f"pl_acc_img_kept {st.mean(acc):.3f}")
