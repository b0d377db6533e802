"""Shared by the experiment assignments (fig1, ablation): the settings every run must have, and reading the
student's answers.txt, log.csv, config.json and metrics.json. No student code runs: these only read files.
EXP_CONFIG and parse_answers live in assignment_runs.py, which the visible tests share in the student's copy."""
import csv
import json
import math
import os
import re

from .assignment_runs import EXP_CONFIG, parse_answers  # noqa: F401 - EXP_CONFIG: the checks import it from here
from .observe import Fail

EXP_COMMON = "--iters 60 --image-size 64 --seg-encoder resnet18 --eval-every 30 --recipe paper"
# The paper's settings and the switches that are not in the paper: when config.json has them, they must have
# these values (the paper's method).
PAPER_SWITCHES = {"unlabeled_bn": "shared", "unsup_seg_loss": "dice", "unsup_weight": 1.0, "contrast_warmup": 0,
                  "gamma_ramp": 0, "ita_form": "paper", "init": None, "init_seg_encoder": None,
                  "init_cls_encoder": None, "cross_grad": False, "contrast_level": 3, "temperature": 0.07,
                  "lambda_seg": 0.5, "lambda_cls": 1.0, "alpha": 0.8, "beta": 0.2, "gamma": 0.1, "eta_max": 0.75,
                  "eta_min": 0.25, "n_anchors": 256, "lr": 1e-4}
TERMS = ("seg_u", "seg_c", "cls_u", "cls_c", "itc")  # log.csv columns: unlabeled, contrastive, consistency terms


def answer_number(answers, key, fractions=()):
    """The answer `key` as a float; a fraction key given in percent (> 1) is divided by 100. Fail if absent."""
    v = answers.get(key, "")
    try:
        x = float(v.rstrip("%"))
    except ValueError:
        raise Fail(f"answers.txt: {key} = {v!r} is not a number")
    if not math.isfinite(x):
        raise Fail(f"answers.txt: {key} = {v!r} is not finite")
    return x / 100 if key in fractions and (x > 1 or v.endswith("%")) else x


def answer_terms(answers, key):
    v = answers.get(key, "")
    names = {t for t in re.split(r"[\s,;]+", v) if t}
    if not names or names - set(TERMS) - {"none"}:
        raise Fail(f"answers.txt: {key} = {v!r}: give names among {', '.join(TERMS)} (or none)")
    return names - {"none"}


def read_log(run):
    """Train rows of RUN/log.csv as dicts of floats (empty cells left out)."""
    path = os.path.join(run, "log.csv")
    if not os.path.isfile(path):
        raise Fail(f"{path} is missing: run the training command first")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("kind") == "train":
                rows.append({k: float(v) for k, v in r.items() if k != "kind" and v not in ("", None)})
    if not rows:
        raise Fail(f"{path} has no train rows")
    return rows


def second_half_means(rows):
    """The Fig. 1 numbers of one run, as evaluate.py --plot-pseudo-labels prints them: means over the logged train
    rows of the second half (iter > last iter / 2); an accuracy only where its rule kept something."""
    last = max(r["iter"] for r in rows)
    half = [r for r in rows if r["iter"] > last / 2]

    def mean(col, kept=None):
        vals = [r[col] for r in half if col in r and (kept is None or r.get(kept, 0) > 0)]
        return sum(vals) / len(vals) if vals else float("nan")

    return {"pix_acc_all": mean("pl_acc_pix_all"), "pix_acc_conf": mean("pl_acc_pix_conf", "kept_pix_conf"),
            "pix_kept_conf": mean("kept_pix_conf"), "pix_acc_dual": mean("pl_acc_pix_kept", "kept_pix"),
            "pix_kept_dual": mean("kept_pix"), "img_kept_conf": mean("kept_img_conf")}


def first_binding_step(total):
    """First step it (0-based, as hermes_step gets it) at which κ(it) < H(τ(it)) for two classes: from there on the
    entropy bound of eq. (7) is stricter than the confidence bound. Uses the project's schedules (eqs. (16)–(17))."""
    import sys
    from .grader import ROOT
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import hermes
    H = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))
    for it in range(total):
        if hermes.uncertainty_threshold(it, total) < H(hermes.confidence_threshold(it, total)):
            return it
    return None


def check_config(run, want):
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise Fail(f"{path} is missing: run the training command of ASSIGNMENT.md")
    with open(path) as f:
        cfg = json.load(f)
    want = dict(want, **{k: v for k, v in PAPER_SWITCHES.items() if k in cfg})
    wrong = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) != v}
    if wrong:
        raise Fail(f"{path}: " + ", ".join(f"{k} is {a!r}, expected {b!r}" for k, (a, b) in sorted(wrong.items())))
    return cfg


def check_finished(run, iters):
    if not os.path.isfile(os.path.join(run, "metrics.json")):
        raise Fail(f"{run}/metrics.json is missing: the run did not finish (continue it with --resume --out {run})")
    last = max(r["iter"] for r in read_log(run))
    if last < iters:
        raise Fail(f"{run}/log.csv stops at step {last:g} of {iters}")




def answers(ctx):
    path = os.path.join(ctx.dir, "answers.txt")
    if not os.path.isfile(path):
        raise Fail("answers.txt is missing")
    return parse_answers(path)


def check_ranges(ctx, ranges, fractions):
    """Fail naming every answer outside its range {key: (lo, hi)} measured with the committed code."""
    ans = answers(ctx)
    out = [f"{k} = {answer_number(ans, k, fractions):.4f} (range {lo:.3f}-{hi:.3f})" for k, (lo, hi) in ranges.items()
           if not lo <= answer_number(ans, k, fractions) <= hi]
    if out:
        raise Fail("outside the measured ranges: " + "; ".join(out))
