"""The log.csv figures of docs/classifier-study.md ("The IAS module after the burn-in"):
    python docs/study-iasw/at_step.py
Mean evaluation Dice, accuracy and AUC of each row at steps 250-2,000, and the final checkpoints per seed, with
the Δ to SupOnly (paired by seed), over the seeds every row has, from the CPU records of SupOnly, the default Hermes (L^u_cls off) and
--ias-warmup 500."""
import csv
import json
import os
import statistics as st

DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = {0: "study-defaults", 1: "study-defaults", 2: "study-defaults", 3: "study-seeds345",
          4: "study-seeds345", 5: "study-seeds345"}
ROWS = {"SupOnly": lambda s: f"{FOLDER[s]}/suponly-s{s}", "Hermes": lambda s: f"{FOLDER[s]}/hermesuc0-s{s}",
        "IAS warm-up": lambda s: f"study-iasw/iasw-s{s}"}
STEPS = range(250, 2001, 250)


def evals(run):
    path = os.path.join(DOCS, run, "log.csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return {int(r["iter"]): r for r in csv.DictReader(f) if r["kind"] == "eval"}


runs = {row: {s: evals(where(s)) for s in FOLDER} for row, where in ROWS.items()}
seeds = [s for s in FOLDER if all(runs[row][s] and 2000 in runs[row][s] for row in ROWS)]
print(f"seeds {seeds}; mean over them (points), Δ to SupOnly paired by seed")
for key in ("dice_mean", "accuracy", "auc"):
    print(key)
    for row in ROWS:
        v = {it: [100 * float(runs[row][s][it][key]) for s in seeds] for it in STEPS}
        d = {it: [a - b for a, b in zip(v[it], [100 * float(runs["SupOnly"][s][it][key]) for s in seeds])]
             for it in STEPS}
        print(f"  {row:12s} " + " ".join(f"{it}:{st.mean(v[it]):5.1f}" + ("" if row == "SupOnly" else
                                                                           f"({st.mean(d[it]):+.1f})")
                                          for it in STEPS))
print("final checkpoints per seed (metrics.json), Dice / accuracy / AUC, and Δ to SupOnly's")
for row, where in ROWS.items():
    finals = []
    for s in seeds:
        with open(os.path.join(DOCS, where(s), "metrics.json")) as f:
            m = json.load(f)
        finals.append([100 * m[k] for k in ("dice_mean", "accuracy", "auc")])
    if row == "SupOnly":
        base = finals
    print(f"  {row:12s} " + "  ".join(
        f"s{s} " + "/".join(f"{v:.2f}" for v in m) + ("" if row == "SupOnly" else " (" + "/".join(
            f"{v - b:+.2f}" for v, b in zip(m, b0)) + ")") for s, m, b0 in zip(seeds, finals, base)))
