"""plan-beta.md's look inside the runs: mean over the training rows of steps 1,501–2,000 of log.csv of L^cls_c,
the supervised classification loss and the accuracy of the kept image pseudo-labels, default Hermes against
--beta 1.0, subset A, bf16 records. From anywhere:

    python docs/study-h163/beta_terms.py
"""
import csv
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ("cls_c", "cls_l", "pl_acc_img_kept")

for s in range(3):
    for name in ("hermesbf", "beta1bf"):
        with open(os.path.join(HERE, "bf16", f"A-{name}-s{s}", "log.csv")) as f:
            rows = [r for r in csv.DictReader(f) if r["kind"] == "train" and int(r["iter"]) > 1500]
        means = {k: sum(float(r[k]) for r in rows) / len(rows) for k in COLUMNS}
        print(f"A-{name}-s{s}", " ".join(f"{k} {v:.3f}" for k, v in means.items()))
# embeddings with no structure: every key equally similar -> ln(number of keys in the denominator)
print(f"ln(2 * 256 bank slots + 2 * 4 - 1 other views) = {math.log(2 * 256 + 2 * 4 - 1):.2f}")
