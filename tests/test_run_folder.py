"""Run-folder safety of train.py and evaluate.py (issue 11): nothing lost, nothing silently wrong.

Tiny runs (demo set of 40 images at 64 px, ResNet-18 U-Net, batch 2, 1-3 steps) in tmp_path; every refused
command must leave the files that were there unchanged."""
import csv
import json
import os

import pytest
import torch

import cli
import data
import evaluate
import runner
import train
from test_cli import snapshot

# The run machinery is tested with the paper's settings (cheaper steps than the scratch recipe's separate
# BatchNorm passes); the default recipe has its own tests (test_config, test_methods, test_one_truth).
TINY = ["--dataset", "demo", "--demo-size", "40", "--image-size", "32", "--labels", "4", "--batch-size", "2",
        "--seg-encoder", "resnet18", "--n-anchors", "16", "--pixel-bank-size", "64", "--image-bank-size", "8",
        "--log-every", "1",
        "--recipe", "paper"]


def refused(argv, *expected):
    """train.train(argv) must raise a DataError whose one-line message holds every expected text."""
    with pytest.raises(cli.DataError) as e:
        train.train(argv)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for text in expected:
        assert text in msg, (text, msg)
    return msg


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A 3-step run stopped after step 2 (checkpoint at 2), copied fresh for each test that changes it."""
    out = str(tmp_path_factory.mktemp("stopped") / "run")
    assert train.train(TINY + ["--out", out, "--iters", "3", "--eval-every", "100", "--stop-after", "2"]) is None
    return out


def copy_run(src, dst):
    os.makedirs(dst)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return str(dst)


def read_rows(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------- refused before anything is written
def test_failed_data_load_creates_no_run_folder(tmp_path):
    out = tmp_path / "run"
    refused(["--dataset", "folder", "--data-root", str(tmp_path / "nowhere"), "--out", str(out), "--iters", "1"],
            "nowhere")
    assert not out.exists()
    refused(TINY + ["--split", str(tmp_path / "nope.json"), "--out", str(out), "--iters", "1"], "nope.json")
    assert not out.exists()
    refused(TINY + ["--labels", "200", "--out", str(out), "--iters", "1"], "maximum labels")
    assert not out.exists()
    assert train.train(TINY + ["--out", str(out), "--iters", "1"])["iter"] == 1   # the corrected command runs


def test_resume_without_checkpoint_is_refused_and_touches_nothing(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "run")
    os.remove(os.path.join(run, "checkpoint.pt"))
    before = snapshot(run)
    refused(TINY + ["--out", run, "--resume", "--labels", "8"], "checkpoint.pt", run)
    assert snapshot(run) == before
    refused(TINY + ["--out", str(tmp_path / "new"), "--resume"], "checkpoint.pt")
    assert not (tmp_path / "new").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    refused(TINY + ["--out", str(f), "--iters", "1"], "notes.txt", "is a file")
    assert f.read_text() == "mine"


def test_split_in_the_run_folder_must_agree(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "run")
    before = snapshot(run)
    refused(["--out", run, "--resume", "--labels", "8"], "--labels", "4", "8")
    refused(["--out", run, "--resume", "--seed", "3"], "--seed", "0", "3")
    other = tmp_path / "other.json"
    data.save_split(data.make_split(data.load_dataset("demo", image_size=64, demo_size=40), 8, 0), other)
    refused(["--out", run, "--resume", "--split", str(other)], "--split")
    assert snapshot(run) == before
    os.replace(other, os.path.join(run, "split.json"))                 # a split.json that is not the run's own
    before = snapshot(run)
    refused(["--out", run, "--resume"], "split.json", "labels 8", "4")
    assert snapshot(run) == before


def test_truncated_checkpoint_is_named_with_the_way_out(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "run")
    ckpt = os.path.join(run, "checkpoint.pt")
    with open(ckpt, "r+b") as f:
        f.truncate(os.path.getsize(ckpt) // 2)
    before = snapshot(run)
    msg = refused(["--out", run, "--resume"], ckpt)
    assert "without --resume" in msg
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------- resume bookkeeping
def test_resume_removes_stale_temporaries_and_appends_the_log(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "run")
    with open(os.path.join(run, "best.pt.tmp4242"), "wb") as f:
        f.write(b"half a checkpoint")
    rows_before = read_rows(run)
    with open(os.path.join(run, "log.csv"), "rb") as f:
        log_before = f.read()
    train.train(["--out", run, "--resume"])
    assert not os.path.exists(os.path.join(run, "best.pt.tmp4242"))
    with open(os.path.join(run, "log.csv"), "rb") as f:
        assert f.read().startswith(log_before)                          # appended, earlier rows untouched
    rows = read_rows(run)
    assert rows[:len(rows_before)] == rows_before
    assert [r["iter"] for r in rows if r["kind"] == "train"] == ["1", "2", "3"]


def test_resume_drops_log_rows_past_the_checkpoint(tmp_path, stopped):
    run = copy_run(stopped, tmp_path / "run")
    with open(os.path.join(run, "log.csv"), "a", newline="") as f:   # a row written after the checkpoint, then a kill
        csv.DictWriter(f, runner.LOG_COLUMNS).writerow({"kind": "train", "iter": 3, "loss": 99.0})
    train.train(["--out", run, "--resume", "--eval-every", "1"])     # cadences may change on resume
    rows = [r for r in read_rows(run) if r["kind"] == "train"]
    assert [r["iter"] for r in rows] == ["1", "2", "3"] and float(rows[-1]["loss"]) != 99.0


def test_train_seconds_add_up_over_resumes(tmp_path, stopped, monkeypatch):
    run = copy_run(stopped, tmp_path / "run")
    before = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["train_seconds"]
    assert before > 0
    monkeypatch.setattr(train.time, "perf_counter", lambda: 1000.0)   # the resumed part takes no time at all
    result = train.train(["--out", run, "--resume"])
    assert result["train_seconds"] == round(before, 1)


# ------------------------------------------------------------------------------------------ smaller best.pt
def test_best_holds_what_evaluation_needs_and_evaluate_keeps_metrics_json(tmp_path):
    out = str(tmp_path / "run")
    train.train(TINY + ["--out", out, "--iters", "2", "--eval-every", "1", "--keep-optimizer"])
    best = torch.load(os.path.join(out, "best.pt"), weights_only=True)
    assert set(best) == {"model", "banks", "iter", "config", "best_dice", "best_iter"}
    assert "pixel.feats" in best["banks"] and "image.feats" in best["banks"]  # memory banks kept
    full = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert {"opt_seg", "opt_cls", "rng"} <= set(full)                      # --keep-optimizer: resumable
    assert os.path.getsize(os.path.join(out, "best.pt")) < 0.7 * os.path.getsize(os.path.join(out, "checkpoint.pt"))
    with open(os.path.join(out, "metrics.json"), "rb") as f:
        metrics_before = f.read()
    m = evaluate.evaluate_run(out, which="best")
    assert m["iter"] == best["iter"] and 0 <= m["dice_mean"] <= 1
    m = evaluate.evaluate_run(out)
    with open(os.path.join(out, "metrics.json"), "rb") as f:
        assert f.read() == metrics_before                                    # train.py's record stays as written
    assert os.path.basename(m["metrics_file"]) != "metrics.json"
    assert json.loads(metrics_before)["dice_mean"] == pytest.approx(m["dice_mean"], abs=1e-6)


def test_evaluations_do_not_change_training(tmp_path):
    """Evaluating every step or never trains the same weights (an evaluation draws nothing from the RNG)."""
    weights = []
    for every in ("1", "100"):
        out = str(tmp_path / f"every{every}")
        train.train(TINY + ["--out", out, "--iters", "2", "--eval-every", every, "--ckpt-every", "2"])
        weights.append(torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"])
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0, msg=k)
