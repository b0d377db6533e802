"""Issue 27's held-out check asks 3 seeds for Hermes >= SupOnly + 2 Dice with accuracy not below SupOnly's. From
the records of docs/study-prior/records (final checkpoints; Hermes deciding at the unlabeled images' estimate,
SupOnly at the labeled set's 1/2): paired differences per seed, and the share of all 3-seed subsets of the
given seeds that meet the check.

    python docs/study-iasw12/pass.py 0 1 2 3 4 5 6 7 8 9 10 11
"""
import itertools
import json
import sys

import numpy as np

seeds = [int(s) for s in sys.argv[1:]]
rec = {(n, s): json.load(open(f"docs/study-prior/records/{n}-s{s}.json")) for n in ("suponly", "uc0", "iasw")
       for s in seeds}
subsets = [list(c) for c in itertools.combinations(range(len(seeds)), 3)]
for name in ("uc0", "iasw"):
    # Hermes at the estimate minus SupOnly at 1/2, per seed, in points
    d = {k: np.array([(rec[name, s]["unlabeled"][k] - rec["suponly", s]["labeled"][k]) * 100 for s in seeds])
         for k in ("dice_mean", "accuracy", "auc")}
    dD, dA = d["dice_mean"], d["accuracy"]
    pD = np.mean([dD[c].mean() >= 2 for c in subsets])
    pA = np.mean([dA[c].mean() >= 0 for c in subsets])
    nB = sum(dD[c].mean() >= 2 and dA[c].mean() >= 0 for c in subsets)
    pB = nB / len(subsets)
    print(name, f"dDice {dD.mean():+.2f}±{dD.std(ddof=1):.2f} dAcc {dA.mean():+.2f}±{dA.std(ddof=1):.2f} "
          f"dAUC {d['auc'].mean():+.2f}", f"seeds acc>=: {(dA >= -1e-9).sum()}/{len(seeds)} dice ahead "
          f"{(dD > 0).sum()}", f"3-seed subsets: Dice>=2 {pD:.2f} acc>=0 {pA:.2f} both {pB:.2f} "
          f"({nB} of {len(subsets)})")
