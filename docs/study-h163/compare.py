"""plan-alpha.md's comparison: a Hermes variant against default Hermes, paired by subset and seed, from the
records report.py writes (Hermes and the variant at the estimate, SupOnly at ½; final checkpoints), and its
decision rule. Area ratio (predicted / true lesion pixels) from each run's metrics.json, kept in records/.

    python docs/study-h163/compare.py alpha02 A,B 0 1 2 [--runs runs/h163]
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import load  # noqa: E402  (report.py's records, read the same way)


def area(runs, run):
    path = os.path.join(HERE, "records", "area_ratio.json")
    table = json.load(open(path)) if os.path.exists(path) else {}
    if runs is not None:
        with open(os.path.join(runs, run, "metrics.json")) as f:
            table[run] = json.load(f)["area_ratio"]
        with open(path, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
    return table[run]


def main(argv):
    runs = None
    if "--runs" in argv:
        i = argv.index("--runs")
        runs, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    variant, subs, seeds = argv[0], argv[1].split(","), [int(s) for s in argv[2:]]
    keys = (("Dice", "dice_mean"), ("acc", "accuracy"), ("AUC", "auc"))
    print(f"| subset | seed | SupOnly Dice / acc / AUC / area | Hermes | {variant} | {variant} − Hermes: "
          f"Dice, acc, AUC | {variant} − SupOnly: Dice, acc |")
    print("|---|---|---|---|---|---|---|")
    d_h, d_s = [], []
    for sub in subs:
        for s in seeds:
            r = {n: load(None, sub, n, s)["labeled" if n == "suponly" else "unlabeled"] for n in ("suponly", "hermes", variant)}
            a = {n: area(runs, f"{sub}-{n}-s{s}") for n in r}
            cell = lambda n: " / ".join(f"{100 * r[n][k]:.1f}" for _, k in keys) + f" / {a[n]:.2f}"
            d_h.append([100 * (r[variant][k] - r["hermes"][k]) for _, k in keys])
            d_s.append([100 * (r[variant][k] - r["suponly"][k]) for _, k in keys[:2]])
            print(f"| {sub} | {s} | {cell('suponly')} | {cell('hermes')} | {cell(variant)} | "
                  + ", ".join(f"{x:+.1f}" for x in d_h[-1]) + " | " + ", ".join(f"{x:+.1f}" for x in d_s[-1]) + " |")
    d_h, d_s = np.array(d_h), np.array(d_s)
    ms = lambda v: f"{v.mean():+.2f} ± {v.std(ddof=1):.2f}"
    print(f"\n{variant} − Hermes over {len(d_h)} pairs: Dice {ms(d_h[:, 0])} (ahead in {int((d_h[:, 0] > 0).sum())}), "
          f"accuracy {ms(d_h[:, 1])}, AUC {ms(d_h[:, 2])}")
    print(f"{variant} − SupOnly: Dice {ms(d_s[:, 0])}, accuracy {ms(d_s[:, 1])}")
    adopt = d_h[:, 0].mean() >= 1.0 and (d_h[:, 0] > 0).sum() >= 4 and d_h[:, 1].mean() >= -0.5
    print(f"plan-alpha.md's rule (Dice ≥ +1.0 in the mean and ahead in ≥ 4 of 6, accuracy ≥ −0.5): "
          f"{'met' if adopt else 'not met'}")


if __name__ == "__main__":
    main(sys.argv[1:])
