"""The unlabeled images' class share by three estimators, on finished BUSI runs: Saerens' EM (what
--class-prior unlabeled uses), the share called malignant at 1/2 ("classify and count") and the mean score;
each run's final checkpoint scored once on its labeled, unlabeled and evaluation images, then the decision
redone at each estimate (π = (n_l π_l + n_u π_u) / (n_l + n_u), as evaluate.class_prior).

    python docs/study-iasw12/estimators.py runs/s27 0 1 2 3 4 5 6 7 8     # needs the runs' checkpoints
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import augment  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402

ROWS = ("suponly", "uc0", "iasw")
ESTIMATORS = {"1/2": lambda s, pi_l: pi_l, "EM": evaluate.estimate_prior,
              "count": lambda s, pi_l: float(np.mean(s > 0.5)), "mean score": lambda s, pi_l: float(np.mean(s))}


def scores(run):
    """{"l", "u", "e"}: (scores, labels) of the run's final checkpoint on its labeled, unlabeled, evaluation
    images (eval preprocessing, as evaluate_run)."""
    ckpt = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=True)
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"])
    idx = dict(zip("lue", data.split_indices(ds, data.load_split(os.path.join(run, "split.json")))))
    model = evaluate.load_model(ckpt, cfg)
    out = {}
    for k, i in idx.items():
        loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, i, train=False), batch_size=8)
        out[k] = (evaluate.class_scores(model, loader, "cpu"), ds.labels[i])
    return out


def accuracy_at(sc, estimator):
    (s_l, y_l), (s_u, _), (s_e, y_e) = sc["l"], sc["u"], sc["e"]
    pi_l = float(y_l.mean())
    pi = (len(y_l) * pi_l + len(s_u) * estimator(s_u, pi_l)) / (len(y_l) + len(s_u))
    pred = evaluate.adjust_scores(s_e, pi, pi_l) > 0.5
    return 100 * float(np.mean(pred == y_e)), pi


def main(runs, seeds):
    acc = {}
    for name in ROWS:
        for s in seeds:
            sc = scores(os.path.join(runs, f"{name}-s{s}"))
            res = {k: accuracy_at(sc, e) for k, e in ESTIMATORS.items()}
            acc[name, s] = {k: a for k, (a, _) in res.items()}
            print(f"{name}-s{s}: " + ", ".join(f"{k} {a:.1f} at {pi:.3f}" for k, (a, pi) in res.items()),
                  flush=True)
    print(f"\nmean accuracy over seeds {', '.join(map(str, seeds))}:")
    for name in ROWS:
        print(f"  {name}: " + ", ".join(f"{k} {np.mean([acc[name, s][k] for s in seeds]):.2f}"
                                       for k in ESTIMATORS))


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2:]])
