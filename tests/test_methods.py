"""Every --method trains 3 steps through train.py on generated data with finite losses, resumes exactly, and is
named by the summary table (comparators/; Tables 1-2)."""
import csv
import math
import os

import pytest

import config
import train
from tools import tables

TINY = ["--dataset", "demo", "--demo-size", "40", "--image-size", "32", "--labels", "4", "--batch-size", "2",
        "--seg-encoder", "resnet18", "--log-every", "1", "--iters", "3", "--eval-every", "3"]


def _log(d):
    """log.csv's rows without the wall-clock column."""
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in csv.DictReader(
        open(os.path.join(d, "log.csv")))]


@pytest.mark.parametrize("method", [m for m in config.METHODS if m != "cps"])
def test_method_trains_three_steps_resumes_exactly_and_is_named(tmp_path, method):
    """3 steps with finite losses; the same 3 steps stopped after step 1 and resumed log the same rows (the
    comparators' extra networks, memories, EMAs and queues are in the checkpoint); named by the summary."""
    out, part = str(tmp_path / method), str(tmp_path / "part")
    args = TINY + ["--method", method] + (["--admt-threshold", "0"] if method == "admt" else [])
    train.train(args + ["--out", out])
    rows = [r for r in _log(out) if r["kind"] == "train"]
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    md = tables.summary_markdown([out])
    assert f"| {config.METHODS[method]} (scratch recipe) |" in md
    if method != "hermes":                         # Hermes: across the burn-in, below
        train.train(args + ["--out", part, "--stop-after", "1"])
        train.train(args + ["--out", part, "--resume"])
        assert _log(out) == _log(part)


def test_hermes_resumes_exactly_across_the_burn_in(tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    args = TINY + ["--iters", "6", "--eval-every", "6", "--burn-in", "2"]     # the default (scratch) recipe
    train.train(args + ["--out", full])
    train.train(args + ["--out", part, "--stop-after", "1"])
    train.train(args + ["--out", part, "--resume"])
    assert _log(full) == _log(part)
