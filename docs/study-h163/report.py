"""The plan's report (plan.md): final checkpoints of SupOnly and Hermes on the held-out-sized BUSI subsets,
each evaluated at ½ ("labeled", the labeled set's share) and at the unlabeled images' estimate ("unlabeled");
per seed, per subset, and the issue's check (Hermes at its own prior against SupOnly at ½: mean Δ Dice ≥ 2
and mean Δ accuracy ≥ 0 over the subset's 3 seeds).

    python docs/study-h163/report.py runs/h163 A,B 0 1 2     # evaluates, writes records/SUB-NAME-sS.json
    python docs/study-h163/report.py --records A,B 0 1 2     # the tables from the records alone
    python docs/study-h163/report.py --records A,B,C:0:1 0 1 2   # subset C with seeds 0 and 1 only
    python docs/study-h163/report.py --hermes alpha02 runs/h163 A,B 0 1 2   # runs SUB-alpha02-sS as "Hermes"
"""
import csv
import itertools
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "study-prior"))
from prior import KEYS, evaluate_both  # noqa: E402  (the same evaluation both ways as docs/study-prior)


def record(runs, sub, name, seed):
    run = os.path.join(runs, f"{sub}-{name}-s{seed}")
    out, cfg = evaluate_both(run)
    own = cfg.get("class_prior", "labeled")
    assert cfg["recipe"] == "scratch", (run, cfg["recipe"])
    out["own"], out["recipe"] = own, cfg["recipe"]
    with open(os.path.join(run, "log.csv")) as f:        # the decision's prior at each evaluation
        out["evals"] = [{k: float(r[k]) for k in ("iter", "accuracy", "predicted_malignant", "class_prior")}
                        for r in csv.DictReader(f) if r["kind"] == "eval"]
    path = os.path.join(HERE, "records", f"{sub}-{name}-s{seed}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def load(runs, sub, name, seed):
    if runs is not None:
        return record(runs, sub, name, seed)
    with open(os.path.join(HERE, "records", f"{sub}-{name}-s{seed}.json")) as f:
        return json.load(f)


def sets_of_3(pooled):
    """(Δ Dice, Δ accuracy) of each run -> over every set of 3 runs: (sets, sets meeting the check (mean Δ Dice
    ≥ +2 and mean Δ accuracy ≥ 0), sets meeting its Dice half, sets meeting its accuracy half)."""
    combos = [np.mean(c, 0) for c in itertools.combinations(pooled, 3)]
    return (len(combos), sum(c[0] >= 2 and c[1] >= 0 for c in combos), sum(c[0] >= 2 for c in combos),
            sum(c[1] >= 0 for c in combos))


def main(argv):
    hermes = "hermes"
    if argv[0] == "--hermes":                            # a variant's runs in Hermes' rows (plan-alpha.md)
        hermes, argv = argv[1], argv[2:]
    runs = None if argv[0] == "--records" else argv[0]
    subs, all_seeds = argv[1].split(","), [int(s) for s in argv[2:]]
    pooled = []                                          # (Δ Dice, Δ accuracy) of every run, every subset
    pooled_half, pooled_more = [], []                    # the same with Hermes at ½; Δ balanced accuracy, Δ AUC
    for sub in subs:                                     # "C:0:1" = subset C, seeds 0 and 1 only
        sub, seeds = (sub.split(":")[0], [int(s) for s in sub.split(":")[1:]]) if ":" in sub else (sub, all_seeds)
        rec = {(n, s): load(runs, sub, m, s) for n, m in (("suponly", "suponly"), ("hermes", hermes))
               for s in seeds}
        print(f"## subset {sub}, Hermes = runs {sub}-{hermes}-sS, seeds {', '.join(map(str, seeds))} (final checkpoints, %)\n")
        print("| row | seed | " + " | ".join(t for t, _ in KEYS) + " | decided at | Δ Dice | Δ acc | Δ AUC |")
        print("|---|---|" + "---|" * (len(KEYS) + 4))
        rows = [("SupOnly at ½", "suponly", "labeled"), ("Hermes at ½", "hermes", "labeled"),
                ("Hermes at the estimate (its own)", "hermes", "unlabeled")]
        for title, name, mode in rows:
            d = []
            for s in seeds:
                v, b = rec[name, s][mode], rec["suponly", s]["labeled"]
                d.append([100 * (v[k] - b[k]) for k in ("dice_mean", "accuracy", "auc")])
                print(f"| {title} | {s} | " + " | ".join(f"{100 * v[k]:.1f}" for _, k in KEYS)
                      + f" | {v['class_prior']:.3f} | " + " | ".join(f"{x:+.1f}" for x in d[-1]) + " |")
            d = np.array(d)
            print(f"| {title} | mean | " + " | ".join(
                f"{100 * np.mean([rec[name, s][mode][k] for s in seeds]):.1f}" for _, k in KEYS)
                + f" | {np.mean([rec[name, s][mode]['class_prior'] for s in seeds]):.3f} | "
                + " | ".join(f"{d[:, j].mean():+.2f} ± {d[:, j].std(ddof=min(1, len(seeds) - 1)):.2f}" for j in range(3))
                + " |")
        d = np.array([[100 * (rec["hermes", s]["unlabeled"][k] - rec["suponly", s]["labeled"][k])
                       for k in ("dice_mean", "accuracy")] for s in seeds])
        pooled += list(d)
        pooled_half += [[100 * (rec["hermes", s]["labeled"][k] - rec["suponly", s]["labeled"][k])
                         for k in ("dice_mean", "accuracy")] for s in seeds]
        pooled_more += [[100 * (rec["hermes", s]["unlabeled"][k] - rec["suponly", s]["labeled"][k])
                         for k in ("balanced_accuracy", "auc")] for s in seeds]
        own = d.mean(0)
        print(f"\nthe check (Hermes at its own prior vs SupOnly at ½): Δ Dice {own[0]:+.2f} (≥ +2: "
              f"{'yes' if own[0] >= 2 else 'no'}), Δ accuracy {own[1]:+.2f} (≥ 0: {'yes' if own[1] >= 0 else 'no'})"
              f" -> {'PASS' if own[0] >= 2 and own[1] >= 0 else 'FAIL'}")
        print("\nHermes' decision prior at each evaluation (step: prior / predicted malignant / accuracy):")
        for s in seeds:
            print(f"  seed {s}: " + ", ".join(f"{int(e['iter'])}: {e['class_prior']:.2f}/{100 * e['predicted_malignant']:.0f}%"
                                              f"/{100 * e['accuracy']:.0f}" for e in rec["hermes", s]["evals"]))
        print()
    if len(pooled) > 3:
        n, ok, dice_ok, acc_ok = sets_of_3(pooled)
        p = np.array(pooled)
        print(f"all {len(p)} pairs: Δ Dice {p[:, 0].mean():+.2f} ± {p[:, 0].std(ddof=1):.2f}, Δ accuracy "
              f"{p[:, 1].mean():+.2f} ± {p[:, 1].std(ddof=1):.2f}; 3-run sets of them meeting the check: "
              f"{ok} of {n} ({ok / n:.2f}; Dice half alone {dice_ok}, accuracy half alone {acc_ok})")
        m = np.array(pooled_more)
        print(f"  Hermes ahead in Dice in {(p[:, 0] > 0).sum()}, at or above in accuracy in {(p[:, 1] >= 0).sum()}; "
              f"Δ balanced accuracy {m[:, 0].mean():+.2f} ± {m[:, 0].std(ddof=1):.2f}, Δ AUC {m[:, 1].mean():+.2f} ± "
              f"{m[:, 1].std(ddof=1):.2f}")
        n, ok, _, _ = sets_of_3(pooled_half)
        print(f"  Hermes at ½ instead: Δ accuracy {np.mean(pooled_half, 0)[1]:+.2f}; {ok} of {n} sets meet the check")


if __name__ == "__main__":
    main(sys.argv[1:])
