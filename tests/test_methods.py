"""Every --method trains 3 steps through train.py on generated data with finite losses, resumes exactly, and is
named by the summary table (comparators/; Tables 1-2)."""
import csv
import json
import math
import os

import pytest

import config
import train
from tools import tables

TINY = ["--dataset", "demo", "--demo-size", "40", "--image-size", "32", "--labels", "4", "--batch-size", "2",
        "--seg-encoder", "resnet18", "--log-every", "1", "--iters", "3", "--eval-every", "3"]


@pytest.mark.parametrize("method", [m for m in config.METHODS if m != "cps"])
def test_method_trains_three_steps_and_is_named(tmp_path, method):
    out = str(tmp_path / method)
    extra = ["--admt-threshold", "0"] if method == "admt" else []
    train.train(TINY + ["--method", method, "--out", out, *extra])
    rows = [r for r in csv.DictReader(open(os.path.join(out, "log.csv"))) if r["kind"] == "train"]
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    md = tables.summary_markdown([out])
    assert f"| {config.METHODS[method]} (scratch recipe) |" in md


def test_class_prior_changes_the_evaluation_not_the_training(tmp_path):
    """--class-prior unlabeled (the scratch recipe's) only moves the decision: same steps, same weights."""
    runs = {p: str(tmp_path / p) for p in ("labeled", "unlabeled")}
    for prior, out in runs.items():
        train.train(TINY + ["--class-prior", prior, "--out", out, "--iters", "4", "--eval-every", "2"])
    rows = {p: list(csv.DictReader(open(os.path.join(d, "log.csv")))) for p, d in runs.items()}
    drop = lambda r: {k: v for k, v in r.items() if k != "sec_per_step"}
    assert [drop(r) for r in rows["labeled"] if r["kind"] == "train"] == \
        [drop(r) for r in rows["unlabeled"] if r["kind"] == "train"]
    ev = {p: [r for r in rs if r["kind"] == "eval"][-1] for p, rs in rows.items()}
    assert (ev["labeled"]["dice_mean"], ev["labeled"]["auc"]) == (ev["unlabeled"]["dice_mean"], ev["unlabeled"]["auc"])
    assert float(ev["labeled"]["class_prior"]) == 0.5 and float(ev["unlabeled"]["class_prior"]) != 0.5
    names = {p: tables.method_name(json.load(open(os.path.join(d, "config.json")))) for p, d in runs.items()}
    assert names == {"labeled": "Hermes (scratch recipe, class prior: labeled)", "unlabeled": "Hermes (scratch recipe)"}


@pytest.mark.parametrize("method", ["hermes", "hermes-ema", "admt", "pefat"])   # the default (scratch) recipe
def test_comparator_resumes_exactly(tmp_path, method):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    extra = ["--iters", "6", "--eval-every", "6", "--burn-in", "2"] if method.startswith("hermes") else []
    if method == "hermes-ema":   # --teacher ema: the teacher is saved and restored with the run
        method, extra = "hermes", extra + ["--teacher", "ema"]
    args = TINY + ["--method", method, *extra]
    train.train(args + ["--out", full])
    train.train(args + ["--out", part, "--stop-after", "1"])
    train.train(args + ["--out", part, "--resume"])
    read = lambda d: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in csv.DictReader(
        open(os.path.join(d, "log.csv")))]
    assert read(full) == read(part)
