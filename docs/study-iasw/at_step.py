"""The log.csv figures of docs/classifier-study.md ("The IAS module after the burn-in"):
    python docs/study-iasw/at_step.py
Mean evaluation Dice, accuracy and AUC of each row at steps 250-2,000, and the Δ to SupOnly at each step (paired by
seed), over the seeds every row has, from the CPU records of SupOnly, the default Hermes (L^u_cls off) and
--ias-warmup 500."""
import csv
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
