"""Issue 27's held-out check asks 3 seeds for Hermes >= SupOnly + 2 Dice with accuracy not below SupOnly's. From
the records of docs/study-prior/records (final checkpoints; Hermes deciding at the unlabeled images' estimate,
SupOnly at the labeled set's 1/2): paired differences per seed, and the share of all 3-seed subsets of the
given seeds that meet the check.

    python docs/study-iasw12/pass.py 0 1 2 3 4 5 6 7 8 9 10 11
"""
import json, itertools, numpy as np, sys
seeds = [int(s) for s in sys.argv[1:]]
R = "docs/study-prior/records"
g = lambda n, s, m: json.load(open(f"{R}/{n}-s{s}.json"))[m]
for name in ("uc0", "iasw"):
    dD = np.array([(g(name, s, "unlabeled")["dice_mean"] - g("suponly", s, "labeled")["dice_mean"]) * 100 for s in seeds])
    dA = np.array([(g(name, s, "unlabeled")["accuracy"] - g("suponly", s, "labeled")["accuracy"]) * 100 for s in seeds])
    dU = np.array([(g(name, s, "unlabeled")["auc"] - g("suponly", s, "labeled")["auc"]) * 100 for s in seeds])
    subs = list(itertools.combinations(range(len(seeds)), 3))
    pD = np.mean([dD[list(c)].mean() >= 2 for c in subs]); pA = np.mean([dA[list(c)].mean() >= 0 for c in subs])
    nB = sum(dD[list(c)].mean() >= 2 and dA[list(c)].mean() >= 0 for c in subs)
    pB = nB / len(subs)
    print(name, f"dDice {dD.mean():+.2f}±{dD.std(ddof=1):.2f} dAcc {dA.mean():+.2f}±{dA.std(ddof=1):.2f} dAUC {dU.mean():+.2f}",
          f"seeds acc>=: {(dA >= -1e-9).sum()}/{len(seeds)} dice ahead {(dD>0).sum()}", f"3-seed subsets: Dice>=2 {pD:.2f} acc>=0 {pA:.2f} both {pB:.2f} ({nB} of {len(subs)})")
