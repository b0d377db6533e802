"""Is the class-share estimate what limits accuracy? For each bf16 run of NAME (hermesbf, suponlybf, laplbf) on
subsets A, B, C: accuracy on the evaluation split decided at ½, at the run's own decision (metrics.json), and at
the true share of the training images, π = (n_l ½ + n_u π_u) / (n_l + n_u) with π_u the unlabeled images' true
malignant share (from split.json's file names), as evaluate.class_prior combines them. Needs the run folders
(checkpoint.pt; not in the repository): it evaluates a copy of each with evaluate.py, then moves the decision.

    python docs/study-h163/oracle_share.py [RUNS] > docs/study-h163/bf16/oracle.txt      # RUNS: runs/h163
"""
import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUNS = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "runs", "h163"))


def logit(p):
    return math.log(p / (1 - p))


def scores(run, sub, work):
    """(labels, p(malignant)) of the evaluation split from `run`'s final checkpoint, at the labeled share."""
    tmp = os.path.join(work, os.path.basename(run))
    os.makedirs(tmp)
    for f in ("config.json", "split.json", "checkpoint.pt"):
        shutil.copy(os.path.join(run, f), tmp)
    subprocess.run([sys.executable, "evaluate.py", tmp, "--class-prior", "labeled", "--data-root",
                    os.path.join(RUNS, sub, "Dataset_BUSI_with_GT")], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    with open(glob.glob(os.path.join(tmp, "per_image_*.csv"))[0]) as f:
        per = list(csv.DictReader(f))
    s = np.clip([float(r["score"]) for r in per], 1e-7, 1 - 1e-7)
    return np.array([int(r["label"]) for r in per]), s


with tempfile.TemporaryDirectory() as work:
    for name in ("hermesbf", "suponlybf", "laplbf"):
        rows = []
        for sub in "ABC":
            for seed in range(4):
                run = os.path.join(RUNS, f"{sub}-{name}-s{seed}")
                if not os.path.exists(os.path.join(run, "metrics.json")):
                    continue
                y, s = scores(run, sub, work)
                with open(os.path.join(run, "split.json")) as f:
                    split = json.load(f)
                with open(os.path.join(run, "metrics.json")) as f:
                    m = json.load(f)
                n_l, n_u = len(split["train_labeled"]), len(split["train_unlabeled"])
                pi_u = np.mean([n.startswith("malignant") for n in split["train_unlabeled"]])
                pi_true = (n_l * 0.5 + n_u * pi_u) / (n_l + n_u)
                acc = lambda pi: 100 * np.mean(((np.log(s / (1 - s)) + logit(pi) - logit(0.5)) > 0) == y)
                est = m["prior_unlabeled"] if m["prior_unlabeled"] is not None else float("nan")
                rows.append((est, pi_u, acc(0.5), acc(m["class_prior"]), acc(pi_true)))
                print(f"{sub}-{name}-s{seed}  estimated π_u {est:.3f}, true {pi_u:.3f} | accuracy at ½ {rows[-1][2]:.1f}, "
                      f"at the run's decision {rows[-1][3]:.1f}, at the true share {rows[-1][4]:.1f}")
        a = np.array(rows)
        print(f"{name}, {len(rows)} runs, means: accuracy at ½ {a[:, 2].mean():.2f}, at the run's decision "
              f"{a[:, 3].mean():.2f}, at the true share {a[:, 4].mean():.2f}\n")
