"""One run, one folder, one truth: the run lock, the dataset from the layout, the budget rule, unlabeled folders
over the data root, unfinished runs and the tables of several runs (README: Training, Evaluation)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cli
import data
import runner
import train
from tests.test_cli import clis, make_folder_set
from tests.test_data import fake_set, make_busi, make_sztus, make_udiat
from tools import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--demo-size", "40", "--image-size", "32", "--labels", "4", "--batch-size", "2", "--seg-encoder",
        "resnet18", "--n-anchors", "16", "--pixel-bank-size", "64", "--image-bank-size", "8", "--log-every", "1"]


# -------------------------------------------------------------------------------------------- run lock
HOLD = ("import sys, time, runner; lock = runner.RunLock(sys.argv[1]).acquire(); print('held', "
        "flush=True); time.sleep(60)")


def test_a_second_writer_is_refused_while_the_first_lives_new_and_resume(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for r in clis(*[("train.py", *TINY, "--iters", "2", "--out", out, *extra) for extra in ([], ["--resume"])],
                      cwd=ROOT):                                     # side by side: each pays a torch import
            assert r.returncode != 0
            assert f"PID {holder.pid}" in r.stderr and "another train.py" in r.stderr, r.stderr
            assert not os.path.exists(out)   # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_said(tmp_path, capsys):
    out = str(tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = runner.RunLock(out)
    with open(lock.path, "w") as f:
        json.dump({"pid": dead.pid, "host": __import__("socket").gethostname(), "started": "earlier"}, f)
    train.train(TINY + ["--iters", "1", "--out", out])
    assert "took over the lock" in capsys.readouterr().err
    assert not os.path.exists(lock.path)   # released at the end
    assert os.path.isfile(os.path.join(out, "metrics.json"))


# ------------------------------------------------------------------------------ dataset from the layout
@pytest.mark.parametrize("make, name", [(make_busi, "busi"), (make_udiat, "udiat"), (make_sztus, "sztus"),
                                        (lambda r: make_folder_set(r, n=3), "folder")])
def test_the_dataset_is_recognised_from_the_layout(tmp_path, make, name):
    root = tmp_path / "d"
    root.mkdir()
    made = make(root)
    assert data.detect_dataset(str(root)) == name
    if name == "busi":   # also the class folders themselves
        assert data.detect_dataset(str(made)) == "busi"


def test_data_root_alone_never_trains_the_demo(tmp_path, capsys):
    root = make_folder_set(tmp_path / "data", n=6)
    args = train.resolve(train.build_parser().parse_args(["--data-root", str(root)]), {"data_root"})
    assert args.dataset == "folder" and "the folder layout" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.DataError, match="no known dataset layout.*DatasetB.xlsx.*labels.csv"):
        train.resolve(train.build_parser().parse_args(["--data-root", str(tmp_path / "empty")]), {"data_root"})


# ----------------------------------------------------------------------------------------- budget rule
def test_budget_rule_each_class_keeps_an_unlabeled_image():
    ds = fake_set(12, 8, S=8)            # train part: round(0.7·12) = 8 benign, round(0.7·8) = 6 malignant
    sp = data.make_split(ds, 10, seed=0)  # 5 per class: one malignant image left unlabeled
    assert len(sp["train_labeled"]) == 10
    unl = [ds.labels[ds.index[n]] for n in sp["train_unlabeled"]]
    assert 1 in unl and 0 in unl
    with pytest.raises(cli.DataError, match="malignant image .* no unlabeled image .*maximum labels: 10"):
        data.make_split(ds, 12, seed=0)   # 6 per class: every malignant training image labeled


# --------------------------------------------------------------------------- unlabeled folder over root
def test_unlabeled_dir_over_the_data_root_adds_none_of_the_datasets_own_files(tmp_path, capsys):
    root = make_folder_set(tmp_path / "data", n=3)
    (root / "extra").mkdir()
    rng = np.random.default_rng(5)
    from PIL import Image
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "extra" / "new.png")
    ds = data.load_dataset("folder", str(root), image_size=32, unlabeled_dirs=[str(root)])
    assert ds.from_dirs == 1 and ds.names[-1] == "extra/new"
    said = capsys.readouterr().out
    assert "left out its 12 own files (6 masks, 6 images)" in said


# -------------------------------------------------------------------------------------- unfinished runs
def test_evaluate_says_a_run_stopped_early(tmp_path, capsys):
    import evaluate
    out = str(tmp_path / "run")
    train.train(["--dataset", "demo", *TINY, "--iters", "5", "--out", out, "--stop-after", "2"])
    m = evaluate.main([out])
    assert m["stopped_at"] == "step 2 of 5" and m["finished"] is False
    assert json.load(open(os.path.join(out, "metrics_checkpoint.json")))["stopped_at"] == "step 2 of 5"
    assert "UNFINISHED RUN: stopped at step 2 of 5" in capsys.readouterr().out


def test_final_line_names_sensitivity_and_specificity(tmp_path, capsys):
    train.train(["--dataset", "demo", *TINY, "--iters", "1", "--out", str(tmp_path / "r")])
    last = [l for l in capsys.readouterr().out.splitlines() if l.startswith("final checkpoint")][0]
    assert "(sens " in last and "spec " in last


# ------------------------------------------------------------------------------------------------ tables
def _run(root, name, metrics, **cfg):
    d = root / name
    d.mkdir()
    config = {"dataset": "busi", "labels": 72, "seed": 0, "image_size": 224, "iters": 3000, **cfg}
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.json").write_text(json.dumps({"iter": config["iters"], **metrics}))
    return str(d)


def test_summary_of_labels_all_runs(tmp_path):
    runs = [_run(tmp_path, "a", {"dice_mean": 0.7, "accuracy": 0.8}, dataset="folder", labels="all"),
            _run(tmp_path, "b", {"dice_mean": 0.6, "accuracy": 0.7}, dataset="folder", labels=40)]
    md = tables.summary_markdown(runs)
    assert "| Method | folder all labels | folder 40 labels |" in md


def test_compare_never_pools_two_datasets(tmp_path):
    runs = [_run(tmp_path, "u0", {"dice_mean": 0.7, "accuracy": 0.8}, dataset="udiat", labels=40),
            _run(tmp_path, "d0", {"dice_mean": 0.5, "accuracy": 0.6}, dataset="folder", labels=40),
            _run(tmp_path, "s0", {"dice_mean": 0.6, "accuracy": 0.7}, dataset="udiat", labels=40, dtcl=False,
                 ias=False, itcl=False)]
    groups = tables.group_runs(runs)
    assert set(groups) == {"Hermes [dataset folder]", "Hermes [dataset udiat]", "SupOnly"}
    rows = {r["group"]: r for r in tables.compare_groups(groups, "SupOnly")}
    # the UDIAT Hermes run pairs with the UDIAT SupOnly run; the folder run has no baseline to pair with
    assert rows["Hermes [dataset udiat]"]["delta_final_dice_mean"][0] == pytest.approx(0.1)
    assert rows["Hermes [dataset folder]"]["delta_final_dice_mean"] is None


def test_baseline_names_the_method_whatever_its_notes(tmp_path):
    runs = [_run(tmp_path, "h", {"dice_mean": 0.7, "accuracy": 0.8}, recipe="scratch", iters=8, lr_seg=1e-3,
                 lr_cls=1e-2, burn_in=2, unlabeled_bn="separate"),
            _run(tmp_path, "s", {"dice_mean": 0.6, "accuracy": 0.7}, recipe="scratch", iters=8, lr_seg=1e-3,
                 lr_cls=1e-2, burn_in=2, unlabeled_bn="separate", dtcl=False, ias=False, itcl=False)]
    groups = tables.group_runs(runs)
    assert set(groups) == {"Hermes (scratch recipe)", "SupOnly (scratch recipe)"}
    rows = {r["group"]: r for r in tables.compare_groups(groups, "SupOnly")}
    assert rows["Hermes (scratch recipe)"]["delta_final_dice_mean"][0] == pytest.approx(0.1)
    with pytest.raises(cli.DataError, match="no group 'CPS'"):
        tables.compare_groups(groups, "CPS")


def test_expected_time_is_measured_again_after_the_burn_in(capsys):
    import torch
    p = runner.Progress(0, 20, torch.device("cpu"), None, lines=True, burn_in=5)
    loss = torch.zeros(())
    for done in range(1, 21):
        p.step(done, 1.0 if done <= 5 else 3.0, loss)   # burn-in steps 1 s, full steps 3 s
        if done == 12:
            p.evaluated(done, 2.0, 4)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 more steps at ~1 s/step on cpu (burn-in)") and "15 full steps after step 5" in out[0]
    assert out[1].startswith("12 more steps at ~3 s/step on cpu: ~36 s of steps")
    assert out[2] == "an evaluation took 2.0 s; with the 4 still to come, ~32 s left"   # 8 × 3 s + 4 × 2 s


def test_a_lock_leaves_no_parent_folder_it_made_for_nothing(tmp_path):
    """A run refused after the lock (bad input) leaves no empty runs/ behind; a parent with files stays."""
    lock = runner.RunLock(str(tmp_path / "runs" / "r")).acquire()
    assert os.path.isdir(tmp_path / "runs")
    lock.release()
    assert not os.path.exists(tmp_path / "runs")
    lock = runner.RunLock(str(tmp_path / "runs" / "r")).acquire()
    (tmp_path / "runs" / "other.txt").write_text("keep")
    lock.release()
    assert (tmp_path / "runs" / "other.txt").read_text() == "keep"
