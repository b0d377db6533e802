"""The class prior of the decision (--class-prior) on finished BUSI runs: each run's final checkpoint evaluated
with the labeled set's prior (what the runs recorded) and with the unlabeled images' estimate; per seed and
paired Δ to SupOnly at the labeled prior. Training does not depend on the prior, so this is what the same runs
with --class-prior unlabeled record (tests/test_methods.py checks that the steps are the same).

    python docs/study-prior/prior.py runs/s27 0 1 2 3 4 5        # evaluates, writes records/NAME-sS.json
    python docs/study-prior/prior.py --records 0 1 2 3 4 5       # the tables from the records alone
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
ROWS = [("SupOnly", "suponly"), ("Hermes (default)", "uc0"), ("Hermes, --ias-warmup 500", "iasw")]
KEYS = [("Dice", "dice_mean"), ("acc", "accuracy"), ("bal. acc", "balanced_accuracy"), ("AUC", "auc"),
        ("sens", "sensitivity"), ("spec", "specificity")]


def evaluate_both(run):
    """Final checkpoint of `run` at the labeled prior and at the unlabeled estimate, the training images' true
    malignant share, and a check that the run's own prior gives its metrics.json -> (record dict, config)."""
    import evaluate
    out = {}
    for mode in ("labeled", "unlabeled"):
        m = evaluate.evaluate_run(run, prior_mode=mode, device="cpu")
        out[mode] = {k: m[k] for k in [k for _, k in KEYS] + ["class_prior", "prior_unlabeled", "prior_shift",
                                                              "predicted_malignant"]}
    import data
    with open(os.path.join(run, "config.json")) as f:
        cfg = json.load(f)
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"])
    idx_l, idx_u, _ = data.split_indices(ds, data.load_split(os.path.join(run, "split.json")))
    out["true_share"] = float(np.concatenate([ds.labels[idx_l], ds.labels[idx_u]]).mean())
    with open(os.path.join(run, "metrics.json")) as f:   # train.py's record, at the run's own prior
        recorded = json.load(f)
    own = cfg.get("class_prior", "labeled")
    assert abs(recorded["accuracy"] - out[own]["accuracy"]) < 1e-9, (run, "does not match its record")
    return out, cfg


def record(runs, name, seed):
    path = os.path.join(HERE, "records", f"{name}-s{seed}.json")
    out, _ = evaluate_both(os.path.join(runs, f"{name}-s{seed}"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv):
    if argv[0] == "--records":
        runs, seeds = None, [int(s) for s in argv[1:]]
    else:
        runs, seeds = argv[0], [int(s) for s in argv[1:]]
    rec = {}
    for _, name in ROWS:
        for s in seeds:
            path = os.path.join(HERE, "records", f"{name}-s{s}.json")
            if runs is not None:
                rec[name, s] = record(runs, name, s)
            else:
                with open(path) as f:
                    rec[name, s] = json.load(f)
    base = np.array([[rec["suponly", s]["labeled"][k] for _, k in KEYS] for s in seeds]) * 100
    print(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); mean ± sample std in %; Δ paired by seed against "
          "SupOnly at the labeled prior\n")
    print("| row | prior | " + " | ".join(t for t, _ in KEYS) + " | Δ Dice | Δ acc | Δ bal. acc | Δ AUC | estimated "
          "malignant share |")
    print("|---|---|" + "---|" * (len(KEYS) + 5))
    for title, name in ROWS:
        for mode in ("labeled", "unlabeled"):
            v = np.array([[rec[name, s][mode][k] for _, k in KEYS] for s in seeds]) * 100
            d = v - base
            share = [rec[name, s][mode]["class_prior"] for s in seeds]
            cells = [f"{v[:, j].mean():.2f} ± {v[:, j].std(ddof=1):.2f}" for j in range(len(KEYS))]
            deltas = [f"{d[:, j].mean():+.2f} ± {d[:, j].std(ddof=1):.2f}" for j in range(4)]
            print(f"| {title} | {mode} | " + " | ".join(cells + deltas) + f" | {np.mean(share):.3f} |")
    print("\nper seed, accuracy / balanced accuracy at the labeled → unlabeled prior:")
    for title, name in ROWS:
        print(f"  {title}: " + ", ".join(
            f"s{s} {100 * rec[name, s]['labeled']['accuracy']:.1f}/{100 * rec[name, s]['labeled']['balanced_accuracy']:.1f}"
            f" → {100 * rec[name, s]['unlabeled']['accuracy']:.1f}/{100 * rec[name, s]['unlabeled']['balanced_accuracy']:.1f}"
            for s in seeds))
    print("\nestimated malignant share of the training images (labeled + unlabeled), against the truth " +
          ", ".join(f"{rec['suponly', s]['true_share']:.3f}" for s in seeds) + ":")
    for title, name in ROWS:
        print(f"  {title}: " + ", ".join(f"{rec[name, s]['unlabeled']['class_prior']:.3f}" for s in seeds))


if __name__ == "__main__":
    main(sys.argv[1:])
