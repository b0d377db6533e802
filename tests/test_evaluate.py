"""evaluate.py: metrics against hand-computed values and naive twins, method names, the multi-run table,
evaluate_model on a fake model (incl. the area ratio), and an end-to-end evaluate_run on a tiny demo run."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import cli
import data
import evaluate as E
from tools import tables as T
import models


def mask(shape, *pixels):
    m = np.zeros(shape, bool)
    for r, c in pixels:
        m[r, c] = True
    return m


# ------------------------------------------------------------------------------------------ segmentation
def test_dice_iou_hd95_hand_computed_4x4():
    # pred: rows 0-1 x cols 0-1 (4 px); gt: rows 0-1 x cols 1-2 (4 px); overlap: col 1, rows 0-1 (2 px).
    pred = mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))
    gt = mask((4, 4), (0, 1), (0, 2), (1, 1), (1, 2))
    assert E.dice(pred, gt) == pytest.approx(2 * 2 / (4 + 4))   # 0.5
    assert E.iou(pred, gt) == pytest.approx(2 / (4 + 4 - 2))    # 1/3
    # Every pixel of a 2x2 square is a boundary pixel. pred -> gt: (.,0) at 1, (.,1) at 0; gt -> pred: (.,1) at 0,
    # (.,2) at 1. Pooled [0,0,0,0,1,1,1,1]: the 95th percentile (position 0.95*7 = 6.65) is 1.
    assert E.hd95(pred, gt) == pytest.approx(1.0)
    assert E.hd95(pred, pred) == 0.0 and E.dice(pred, pred) == 1.0 and E.iou(pred, pred) == 1.0


def test_hd95_single_pixels_and_interpolation():
    # Two single pixels 3 columns apart: both directed distances are 3.
    assert E.hd95(mask((4, 4), (0, 0)), mask((4, 4), (0, 3))) == pytest.approx(3.0)
    # Diagonal: (0,0) vs (3,3): sqrt(18).
    assert E.hd95(mask((4, 4), (0, 0)), mask((4, 4), (3, 3))) == pytest.approx(math.sqrt(18))
    # pred {(0,0)}, gt {(0,0),(0,3)}: pred->gt [0], gt->pred [0, 3]. Pooled sorted [0,0,3]: position
    # 0.95*2 = 1.9 -> 0 + 0.9*(3-0) = 2.7 (the plain Hausdorff distance would be 3).
    assert E.hd95(mask((4, 4), (0, 0)), mask((4, 4), (0, 0), (0, 3))) == pytest.approx(2.7)


def test_squares_offset_by_two():
    # 3x3 squares at cols 1-3 and 3-5: boundary rings of 8 px. Ring A -> ring B: col 3 (3 px) 0, col 2 (rows 1
    # and 3; the centre is interior) 1, col 1 (3 px) 2; same the other way. Pooled: six 0, four 1, six 2 -> 2.
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[1:4, 1:4] = True
    b[1:4, 3:6] = True
    assert E.hd95(a, b) == pytest.approx(2.0)
    assert E.dice(a, b) == pytest.approx(2 * 3 / 18)
    assert E.iou(a, b) == pytest.approx(3 / 15)


def test_empty_conventions():
    empty, one = np.zeros((4, 4), bool), mask((4, 4), (2, 2))
    diag = math.sqrt(4 ** 2 + 4 ** 2)
    assert (E.dice(empty, empty), E.iou(empty, empty), E.hd95(empty, empty)) == (1.0, 1.0, 0.0)
    for p, g in ((empty, one), (one, empty)):  # empty prediction, empty ground truth
        assert (E.dice(p, g), E.iou(p, g)) == (0.0, 0.0)
        assert E.hd95(p, g) == pytest.approx(diag)
    assert E.hd95(np.zeros((3, 5), bool), mask((3, 5), (0, 0))) == pytest.approx(math.sqrt(34))


def test_mask_shape_mismatch_raises():
    with pytest.raises(ValueError, match="evaluate.py"):
        E.dice(np.zeros((4, 4)), np.zeros((4, 5)))


def _naive_surface(m):
    H, W = m.shape
    out = np.zeros_like(m)
    for r in range(H):
        for c in range(W):
            if m[r, c]:
                nb = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
                out[r, c] = any(not (0 <= i < H and 0 <= j < W) or not m[i, j] for i, j in nb)
    return out


def _naive_hd95(p, g):
    sp, sg = np.argwhere(_naive_surface(p)), np.argwhere(_naive_surface(g))
    d = [min(math.dist(a, b) for b in sg) for a in sp] + [min(math.dist(a, b) for b in sp) for a in sg]
    return float(np.percentile(d, 95))


def test_hd95_matches_naive_pairwise_twin():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.random((12, 14)) < 0.3
        g = np.zeros((12, 14), bool)
        g[rng.integers(0, 6):rng.integers(7, 12), rng.integers(0, 6):rng.integers(7, 14)] = True
        assert E.hd95(p, g) == pytest.approx(_naive_hd95(p, g))


# -------------------------------------------------------------------------------------------- classification
def test_classification_rates_hand_computed():
    y, y_pred = [1, 1, 1, 0, 0], [1, 0, 1, 0, 1]
    assert E.accuracy(y, y_pred) == pytest.approx(3 / 5)
    assert E.sensitivity(y, y_pred) == pytest.approx(2 / 3)  # TP 2, FN 1
    assert E.specificity(y, y_pred) == pytest.approx(1 / 2)  # TN 1, FP 1
    assert math.isnan(E.sensitivity([0, 0], [0, 1])) and math.isnan(E.specificity([1, 1], [1, 0]))


def test_auc_hand_computed_and_degenerate():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4; lost 0.35<0.4 -> 3/4.
    assert E.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert E.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert math.isnan(E.auc([1, 1, 1], [0.2, 0.3, 0.9]))
    assert math.isnan(E.auc([0, 0], [0.2, 0.3]))


def test_auc_matches_naive_pairwise_loop_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.random(40), 1)  # 11 distinct values: many ties
        pos, neg = s[y == 1], s[y == 0]
        naive = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg) / (len(pos) * len(neg))
        assert E.auc(y, s) == pytest.approx(naive)


def test_summarize_mean_sample_std_and_nan():
    recs = [{"dice": d, "iou": d, "hd95": 0.0, "label": 1, "pred": 1, "score": 0.9} for d in (0.6, 0.8)]
    s = E.summarize(recs)
    assert s["dice_mean"] == pytest.approx(0.7)
    assert s["dice_std"] == pytest.approx(math.sqrt(0.02))  # ((0.1)^2 + (0.1)^2) / (2 - 1)
    assert s["n_images"] == 2 and s["accuracy"] == 1.0
    assert math.isnan(s["auc"]) and math.isnan(s["specificity"])  # no benign image
    assert E.summarize(recs[:1])["dice_std"] == 0.0


# ------------------------------------------------------------------------------------------- method names
@pytest.mark.parametrize("cfg, name", [
    ({}, "Hermes"),
    ({"dtcl": True, "ias": True, "itcl": True, "task": "joint", "threshold": "dual"}, "Hermes"),
    ({"dtcl": False, "ias": False, "itcl": False}, "SupOnly"),
    ({"dtcl": False, "ias": False, "itcl": False, "threshold": "none"}, "SupOnly"),  # threshold unused
    ({"ias": False, "itcl": False}, "DTCL only"),
    ({"dtcl": False, "itcl": False}, "IAS only"),
    ({"dtcl": False}, "Hermes w/o DTCL"),
    ({"itcl": False}, "Hermes w/o ITCL"),
    ({"ias": False}, "Hermes w/o IAS"),
    ({"threshold": "confidence"}, "Hermes (conf. threshold)"),
    ({"threshold": "none"}, "Hermes (no threshold)"),
    ({"task": "seg"}, "DTCL only (SS)"),
    ({"task": "cls", "dtcl": False}, "SupOnly (SC)"),
    ({"task": "seg", "threshold": "confidence"}, "DTCL only (SS, conf. threshold)"),
])
def test_method_name(cfg, name):
    assert T.method_name(cfg) == name


# ------------------------------------------------------------------------------------------- summary table
def _fake_run(root, name, metrics, **cfg):
    d = root / name
    d.mkdir()
    config = {"dataset": "busi", "labels": 72, "seed": 0, "dtcl": True, "ias": True, "itcl": True,
              "task": "joint", "threshold": "dual", "image_size": 224, **cfg}
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.json").write_text(json.dumps(metrics))
    return str(d)


def test_summary_table_mean_std_over_runs(tmp_path, capsys):
    runs = [_fake_run(tmp_path, "h0", {"dice_mean": 0.70, "accuracy": 0.80}, seed=0),
            _fake_run(tmp_path, "h1", {"dice_mean": 0.74, "accuracy": 0.84}, seed=1),
            _fake_run(tmp_path, "s0", {"dice_mean": 0.65, "accuracy": None},
                      dtcl=False, ias=False, itcl=False),
            _fake_run(tmp_path, "u0", {"dice_mean": 0.81, "accuracy": 0.9}, dataset="udiat", labels=20),
            _fake_run(tmp_path, "b216", {"dice_mean": 0.85, "accuracy": 0.9}, labels=216)]
    (tmp_path / "empty").mkdir()
    out = tmp_path / "table.md"
    md = E.main(["--summary", *runs, str(tmp_path / "empty"), "--out", str(out)])
    assert out.read_text() == md
    lines = md.splitlines()
    dice_rows = lines[:lines.index("### Accuracy (%): final checkpoint, mean ± std over runs "
                                   "(seeds; sample std, 0 for one run)")]
    header = next(l for l in dice_rows if l.startswith("| Method"))
    # columns: BUSI by descending budget, then UDIAT (the paper's order)
    assert header == "| Method | BUSI 216 labels | BUSI 72 labels | UDIAT 20 labels |"
    hermes = next(l for l in dice_rows if l.startswith("| Hermes |"))
    # Dice 70 and 74: mean 72, sample std sqrt((2^2 + 2^2) / 1) = 2.83
    assert hermes == "| Hermes | 85.00 ± 0.00 (n=1) | 72.00 ± 2.83 (n=2) | 81.00 ± 0.00 (n=1) |"
    sup = next(l for l in dice_rows if l.startswith("| SupOnly |"))
    assert sup == "| SupOnly | – | 65.00 ± 0.00 (n=1) | – |"
    assert dice_rows.index(sup) < dice_rows.index(hermes)  # baseline first, as in Tables 1-2
    acc_rows = lines[len(dice_rows):]
    assert "| Hermes | 90.00 ± 0.00 (n=1) | 82.00 ± 2.83 (n=2) | 90.00 ± 0.00 (n=1) |" in acc_rows
    assert "| SupOnly | – | – | – |" in acc_rows  # accuracy null -> skipped
    assert "skipping" in capsys.readouterr().err
    with pytest.raises(cli.MissingFileError, match="none of .*empty is a finished run folder"):
        E.main(["--summary", str(tmp_path / "empty")])               # only a wrong folder: an error, not rc 0


def test_summary_skips_single_task_metric_and_flags_mixed_configs(tmp_path):
    runs = [_fake_run(tmp_path, "ss", {"dice_mean": 0.7, "accuracy": 0.5}, task="seg"),
            _fake_run(tmp_path, "a", {"dice_mean": 0.7, "accuracy": 0.8}, contrast_level=3),
            _fake_run(tmp_path, "b", {"dice_mean": 0.7, "accuracy": 0.8}, contrast_level=2, seed=5)]
    md = T.summary_markdown(runs)
    acc = md[md.index("### Accuracy"):]
    assert "| DTCL only (SS) | – |" in acc  # the SS run's untrained cls head is not reported
    # runs that differ in a setting that changes results are never one row; a seed is no such setting
    assert "| Hermes [contrast_level 2] | 70.00 ± 0.00 (n=1) |" in md
    assert "| Hermes [contrast_level 3] | 70.00 ± 0.00 (n=1) |" in md
    assert "seed 5" not in md and "[seed" not in md


class FakeNet(nn.Module):
    """Predicts the lesion where channel 0 > 0; malignant score from the image mean; attention-like outputs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, ias=None):
        B, _, H, W = x.shape
        lesion = self.w * x[:, :1]
        cls = torch.stack([-x.mean((1, 2, 3)), x.mean((1, 2, 3))], 1)
        return {"seg_logits": torch.cat([-lesion, lesion], 1), "cls_logits": cls,
                "saliency": torch.rand(B, 1, H, W), "M_c": [torch.rand(B, 8, 1, 1) for _ in range(3)],
                "M_s": [torch.rand(B, 1, H // 2 ** k, W // 2 ** k) for k in (1, 2, 3)]}


def _fake_batches(n=5, S=16):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, S, S, dtype=torch.int64)
    for i in range(n):
        masks[i, 2 + i:8 + i, 3:9] = 1
    masks[-1] = 0  # one image without lesion: predicted empty too (both empty -> Dice 1)
    x = (masks[:, None].float() * 2 - 1).repeat(1, 3, 1, 1) + 0.01 * torch.rand(n, 3, S, S, generator=g)
    labels = torch.tensor([1, 0, 1, 0, 1])
    return [(x[:3], masks[:3], labels[:3]), (x[3:], masks[3:], labels[3:])], x, masks, labels


def test_evaluate_model_on_fake_model_restores_mode():
    loader, x, masks, labels = _fake_batches()
    net = FakeNet().train()
    summary, per_image = E.evaluate_model(net, loader, "cpu", keep_masks=True)
    assert net.training
    assert set(E.SUMMARY_KEYS) <= set(summary) and summary["n_images"] == 5
    assert summary["dice_mean"] == pytest.approx(1.0) and summary["hd95_mean"] == 0.0
    assert [r["index"] for r in per_image] == list(range(5))
    assert all(np.array_equal(r["pred_mask"], m.numpy().astype(bool)) for r, m in zip(per_image, masks))
    pred = [int(x[i].mean() > 0) for i in range(5)]
    assert summary["accuracy"] == pytest.approx(np.mean(np.array(pred) == labels.numpy()))
    net.eval()
    E.evaluate_model(net, loader, "cpu")
    assert not net.training


# --------------------------------------------------------------------------- class prior (--class-prior)
def test_adjust_scores_by_hand_as_a_logit_shift_and_a_loop():
    # s = 0.8 trained at 1/2, decided at 1/4: 0.8·(1/2) / (0.8·(1/2) + 0.2·(3/2)) = 0.4 / 0.7
    assert E.adjust_scores(0.8, 0.25, 0.5) == pytest.approx(4 / 7)
    logits = torch.tensor([[0.0, math.log(0.8 / 0.2)]]) + torch.tensor([0.0, E.logit(0.25) - E.logit(0.5)])
    assert logits.softmax(1)[0, 1].item() == pytest.approx(4 / 7)
    s = np.random.default_rng(0).random(50)
    loop = [si * 0.3 / 0.4 / (si * 0.3 / 0.4 + (1 - si) * 0.7 / 0.6) for si in s]
    np.testing.assert_allclose(E.adjust_scores(s, 0.3, 0.4), loop, rtol=1e-12)


def test_estimate_prior_em_steps_by_hand_fixed_point_and_recovery():
    s = np.array([0.9, 0.2, 0.1, 0.4])
    assert E.estimate_prior(s, 0.5, iters=1) == pytest.approx(0.4)          # step 1: the mean score
    # step 2 at π = 0.4: 0.72/0.84, 0.16/1.12, 0.08/1.16, 0.32/1.04, averaged
    assert E.estimate_prior(s, 0.5, iters=2) == pytest.approx((0.72 / 0.84 + 0.16 / 1.12 + 0.08 / 1.16
                                                               + 0.32 / 1.04) / 4)
    pi = E.estimate_prior(s, 0.5)
    assert E.adjust_scores(s, pi, 0.5).mean() == pytest.approx(pi, abs=1e-8)  # the EM fixed point
    # calibrated scores of a classifier trained at 1/2 (x ~ N(±1, 1): log-odds 2x) on a set 30 % malignant
    rng = np.random.default_rng(1)
    y = rng.random(20000) < 0.3
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    assert E.estimate_prior(1 / (1 + np.exp(-2 * x)), 0.5) == pytest.approx(0.3, abs=0.015)
    assert E.estimate_prior(np.zeros(3), 0.5) == 1e-3                        # bounded: finite log-odds
    with pytest.raises(ValueError, match="no scores"):
        E.estimate_prior([], 0.5)


def test_class_prior_and_the_shifted_decision_on_a_fake_model():
    loader, x, _, labels = _fake_batches()
    scores = torch.stack([-x.mean((1, 2, 3)), x.mean((1, 2, 3))], 1).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(E.class_scores(FakeNet(), loader, "cpu"), scores, rtol=1e-6)
    lab = E.class_prior("labeled", [0, 1, 0, 1])
    assert (lab["class_prior"], lab["prior_shift"], lab["prior_unlabeled"]) == (0.5, 0.0, None)
    u = E.class_prior("unlabeled", [0, 1, 0, 1, 1, 1], FakeNet(), loader, "cpu")      # labeled share 2/3
    pi_u = E.estimate_prior(scores, 2 / 3)
    assert u["prior_unlabeled"] == pytest.approx(pi_u) and u["prior_labeled"] == pytest.approx(2 / 3)
    assert u["class_prior"] == pytest.approx((6 * 2 / 3 + 5 * pi_u) / 11)
    assert u["prior_shift"] == pytest.approx(E.logit(u["class_prior"]) - E.logit(2 / 3))
    plain, per = E.evaluate_model(FakeNet(), loader, "cpu")
    moved, per_moved = E.evaluate_model(FakeNet(), loader, "cpu", shift=-50.0)
    assert moved["predicted_malignant"] == 0.0 and moved["auc"] == plain["auc"]   # the order of scores stays
    assert [r["score"] for r in per_moved] == pytest.approx(list(E.adjust_scores(
        [r["score"] for r in per], 1 / (1 + math.exp(50)), 0.5)), abs=1e-12)


def test_resolve_checkpoint_names(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "best.pt").write_bytes(b"x")
    c, m, p = E.resolve_checkpoint(str(tmp_path))
    assert (os.path.basename(c), os.path.basename(m), os.path.basename(p)) == \
        ("checkpoint.pt", "metrics_checkpoint.json", "per_image_checkpoint.csv")  # metrics.json is train.py's
    c, m, _ = E.resolve_checkpoint(str(tmp_path), "best")
    assert (os.path.basename(c), os.path.basename(m)) == ("best.pt", "metrics_best.json")
    assert os.path.basename(E.resolve_checkpoint(str(tmp_path / "best.pt"))[1]) == "metrics_best.json"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        E.resolve_checkpoint(str(tmp_path / "nope.pt"))


# ---------------------------------------------------------------------------------------------- end to end
def test_evaluate_run_end_to_end_demo(tmp_path):
    torch.manual_seed(0)
    cfg = {"dataset": "demo", "data_root": None, "image_size": 64, "labels": 8, "seed": 0, "demo_size": 24,
           "seg_encoder": "resnet18", "pretrained": False, "contrast_level": 3, "ias": True, "cross_grad": False,
           "dtcl": True, "itcl": True, "task": "joint", "threshold": "dual", "git_commit": "test"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg))
    ds = data.load_dataset("demo", image_size=64, seed=0, demo_size=24)
    split = data.make_split(ds, 8, 0)
    data.save_split(split, str(run / "split.json"))
    net = models.HermesNet(seg_encoder="resnet18")
    state = net.state_dict()
    state["pixel_bank.feats"] = torch.zeros(2, 4, 8)  # training-time memory banks: dropped on loading
    state["image_bank.feats"] = torch.zeros(2, 4, 8)
    torch.save({"model": state, "iter": 0, "config": cfg, "best_dice": 0.0}, run / "checkpoint.pt")
    torch.save({"model": state, "iter": 0, "config": cfg, "best_dice": 0.0}, run / "best.pt")
    (run / "metrics.json").write_text(json.dumps({"best": {"iter": 0}, "dice_mean": -1}))

    m = E.evaluate_run(str(run), overlays=str(tmp_path / "ov"), batch_size=4, n_panels=2)
    n_eval = len(split["eval"])
    assert json.loads((run / "metrics.json").read_text()) == {"best": {"iter": 0}, "dice_mean": -1}  # train.py's
    written = json.loads((run / "metrics_checkpoint.json").read_text())
    assert set(E.SUMMARY_KEYS) <= set(written) and written["n_images"] == n_eval
    assert written["checkpoint"] == "checkpoint.pt" and written["iter"] == 0 and written["method"] == "Hermes"
    assert written["dice_mean"] == pytest.approx(m["dice_mean"]) and 0 <= m["dice_mean"] <= 1
    files = sorted(os.listdir(tmp_path / "ov"))
    assert len([f for f in files if f.startswith("panel_")]) == 2 and len(files) == n_eval + 2
    lines = (run / "per_image_checkpoint.csv").read_text().splitlines()
    assert lines[0] == "name,label,pred,score,dice,iou,hd95" and len(lines) == n_eval + 1
    assert [l.split(",")[0] for l in lines[1:]] == split["eval"]

    moved = E.main([str(run), "--class-prior", "unlabeled", "--device", "cpu"])   # another prior than the run's
    written = json.loads((run / "metrics_checkpoint_prior-unlabeled.json").read_text())
    assert written["prior_unlabeled"] is not None and written["prior_labeled"] == 0.5
    assert (written["dice_mean"], written["auc"]) == pytest.approx((m["dice_mean"], m["auc"]))
    assert moved["metrics_file"].endswith("metrics_checkpoint_prior-unlabeled.json") and m["prior_shift"] == 0.0
    E.main([str(run), "--checkpoint", "best", "--device", "cpu"])
    best = json.loads((run / "metrics_best.json").read_text())
    assert best["selected_on"].startswith("evaluation split") and best["dice_mean"] == pytest.approx(m["dice_mean"])


def test_area_ratio_by_hand():
    recs = [{"dice": 1, "iou": 1, "hd95": 0, "label": 0, "pred": 0, "score": 0.2, "pred_area": 10, "gt_area": 20},
            {"dice": 1, "iou": 1, "hd95": 0, "label": 1, "pred": 1, "score": 0.8, "pred_area": 5, "gt_area": 10}]
    assert E.summarize(recs)["area_ratio"] == pytest.approx(15 / 30)              # under-segmentation
    recs = [{**r, "gt_area": 0} for r in recs]
    assert math.isnan(E.summarize(recs)["area_ratio"])
