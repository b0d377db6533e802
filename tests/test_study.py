"""tools/reproduce.py study (issue 18), the CPS row of table1, evaluate.py --compare and the grouped pseudo-label
plot: plans and names by hand, a tiny real study on a generated BUSI folder (no /work/shared), tables by hand."""
import csv
import json
import os
import shlex

import numpy as np
import pytest

import cli
from PIL import Image

import evaluate as E
from tools import tables as T
import train
from tools import figures as Fg
from tools import reproduce as R


def test_table1_has_cps_row_with_papers_numbers():
    runs = {r.name for r in R.EXPERIMENTS["table1"].runs()}
    assert len(runs) == 8 * 8 * 3 and "busi-72-cps-seed2" in runs and "sztus-60-cps-seed0" in runs
    assert R.TABLE1[("busi", 72)]["cps"] == (72.21, 0.61) and R.TABLE1[("sztus", 60)]["cps"] == (74.26, 0.54)
    assert R.method_options(R.method(method="cps", dtcl=False, ias=False, itcl=False)) == [
        "--method", "cps", "--no-dtcl", "--no-ias", "--no-itcl"]


def test_study_plan_recipe_names_and_estimate(tmp_path, capsys):
    exp = R.EXPERIMENTS["study"]
    runs = exp.runs()
    assert len(runs) == 6 * 3 and len({r.name for r in runs}) == 18
    assert "busi-72-hermes-lrseg1e-3-lrcls1e-2-burnin500-seed0" in {r.name for r in R.study_experiment().runs()}
    assert R.parse_recipe("--lr-seg 2e-3 --unlabeled-bn separate") == {"lr_seg": 2e-3, "unlabeled_bn": "separate"}
    for bad in ("--lr 1e-3", "--burn-in", "--burn-in x"):
        with pytest.raises(R.UsageError):
            R.parse_recipe(bad)
    out = str(tmp_path / "s")
    argv = ["study", "--dry-run", "--out", out, "--data-root", "busi=/d", "--device", "cuda", "--seeds", "0",
            "--recipe", "--lr-cls 1e-2 --burn-in 100", "--groups", "suponly", "cps-recipe"]
    assert R.main(argv) == 0
    o = capsys.readouterr()
    lines = o.out.splitlines()
    assert len(lines) == 2
    ns = [vars(train.build_parser().parse_args(shlex.split(l)[2:])) for l in lines]
    assert [n["out"] for n in ns] == [os.path.join(out, "busi-72-suponly-seed0"),
                                      os.path.join(out, "busi-72-cps-lrcls1e-2-burnin100-seed0")]
    assert ns[1]["method"] == "cps" and ns[1]["lr_cls"] == 1e-2 and ns[1]["burn_in"] == 100
    assert all(n["iters"] == 3000 and n["eval_every"] == 250 and n["image_size"] == 224 and n["pretrained"] is False
               for n in ns)
    # by hand: SupOnly 3000 x 0.040 + CPS (100 burn-in steps as SupOnly x 0.040, 2900 x 0.090) = 385 s = 6.4 min
    assert "side by side at least 6.4 min" in o.err and "fits 9 min" in o.err
    assert R.main(["study", "--dry-run", "--groups", "nope", "--data-root", "/d"]) == 2
    assert R.main(["demo", "--dry-run", "--recipe", "--burn-in 5"]) == 2
    assert R.main(["study", "--dry-run", "--data-root", "/d", "--lr-seg", "1"]) == 2  # only through --recipe


def make_busi(root, n=60, size=64):
    """n benign + n malignant BUSI-style images with masks (a bright disc), seeded."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        os.makedirs(root / cls)
        for i in range(1, n + 1):
            yy, xx = np.mgrid[:size, :size]
            r = rng.integers(6, 14)
            m = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r
            img = (rng.random((size, size)) * 80 + 120 * m).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            Image.fromarray((m * 255).astype(np.uint8)).save(root / cls / f"{cls} ({i})_mask.png")


def test_tiny_real_study_writes_table_and_figures(tmp_path, capsys):
    make_busi(tmp_path / "busi")
    out = str(tmp_path / "s")
    tiny = ["--iters", "2", "--eval-every", "1", "--image-size", "32", "--batch-size", "2", "--seg-encoder",
            "resnet18", "--n-anchors", "16", "--pixel-bank-size", "64", "--image-bank-size", "8", "--log-every", "1"]
    argv = ["study", "--out", out, "--data-root", f"busi={tmp_path / 'busi'}", "--seeds", "0", "--groups", "suponly", "cps", "hermes-recipe",
            "--recipe", "--lr-seg 1e-3 --burn-in 1", "--jobs", "2", *tiny]
    assert R.main(argv) == 0, capsys.readouterr().err
    table = open(os.path.join(out, "study.md")).read()
    for title in ("SupOnly", "CPS", "Hermes + recipe"):
        assert f"| {title} | " in table
    cps = os.path.join(out, "busi-72-cps-seed0")
    assert json.load(open(os.path.join(cps, "config.json")))["method"] == "cps"
    assert "Paired difference to SupOnly" in table and "| CPS | " in table.split("Paired difference")[1]
    for png in ("study_dice.png", "study_accuracy.png", "study_pseudo_labels.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000, png
    assert T.method_name(json.load(open(os.path.join(
        out, "busi-72-hermes-lrseg1e-3-burnin1-seed0", "config.json")))) == "Hermes (seg lr 0.001, burn-in 1)"


# ------------------------------------------------------------------------- evaluate.py: names and --compare
@pytest.mark.parametrize("cfg, name", [
    ({"method": "cps", "dtcl": False, "ias": False, "itcl": False}, "CPS"),
    ({"method": "cps", "dtcl": False, "ias": False, "itcl": False, "cps_weight": 6.0}, "CPS (λ_cps 6)"),
    ({"lr_seg": 1e-3, "lr_cls": 1e-2, "burn_in": 500, "lr": 1e-4}, "Hermes (seg lr 0.001, cls lr 0.01, burn-in 500)"),
    ({"dtcl": False, "ias": False, "itcl": False, "lr_seg": 1e-3, "lr_cls": 1e-4, "burn_in": 500},
     "SupOnly (seg lr 0.001)"),                                    # burn-in delays nothing in SupOnly
    ({"lr": 1e-3, "lr_seg": 1e-3, "lr_cls": 1e-3}, "Hermes (lr 0.001)"),  # --lr alone sets both
])
def test_method_name_cps_and_recipe(cfg, name):
    assert T.method_name(cfg) == name
    assert T._method_key("CPS")[0] == T.ORDER.index("SupOnly") + 1


def _run(root, name, seed, final, evals, **cfg):
    """A run folder: config.json, metrics.json (final Dice, Acc; None = unfinished) and log.csv eval rows."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"seed": seed, "dtcl": True, "ias": True, "itcl": True, **cfg}))
    if final is not None:
        (d / "metrics.json").write_text(json.dumps({"dice_mean": final[0], "accuracy": final[1]}))
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "iter", "loss", "dice_mean", "accuracy"])
        w.writerow(["train", 1, 0.5, "", ""])
        for it, (dice, acc) in evals.items():
            w.writerow(["eval", it, "", dice, acc])
    return str(d)


def test_compare_final_best_and_paired_delta_by_hand(tmp_path, capsys):
    sup = {"dtcl": False, "ias": False, "itcl": False}
    runs = [_run(tmp_path, "s0", 0, (0.50, 0.70), {1: (0.40, 0.72), 2: (0.50, 0.70)}, **sup),
            _run(tmp_path, "s1", 1, (0.60, 0.60), {1: (0.65, 0.60), 2: (0.60, 0.60)}, **sup),
            _run(tmp_path, "h0", 0, (0.55, 0.60), {1: (0.58, 0.66), 2: (0.55, 0.60)}),
            _run(tmp_path, "h1", 1, (0.61, 0.62), {1: (0.50, 0.62), 2: (0.61, 0.62)}),
            _run(tmp_path, "h2", 2, None, {1: (0.70, 0.50)})]           # unfinished, no SupOnly seed 2: no pair
    rows = {r["group"]: r for r in T.compare_groups(T.group_runs(runs[2:] + runs[:2]), "SupOnly")}
    assert list(rows) == ["SupOnly", "Hermes"] and rows["Hermes"]["n"] == 3  # ORDER, whatever the paths' order
    h = rows["Hermes"]
    np.testing.assert_allclose(h["final_dice_mean"], (0.58, 0.03 * 2 ** 0.5, 2))   # 0.55, 0.61
    # 0.58, 0.61, 0.70: mean 0.63, deviations -.05, -.02, +.07 -> sqrt((.0025 + .0004 + .0049) / 2)
    np.testing.assert_allclose(h["best_dice_mean"], (0.63, 0.0039 ** 0.5, 3))
    # paired by seed: final Dice 0.55-0.50 = +0.05, 0.61-0.60 = +0.01 -> +0.03 ± 0.0283;
    # best Dice 0.58-0.50 = +0.08, 0.61-0.65 = -0.04 -> +0.02 ± 0.0849 (seed 2 has no SupOnly)
    np.testing.assert_allclose(h["delta_final_dice_mean"], (0.03, 0.04 / 2 ** 0.5, 2), atol=1e-12)
    np.testing.assert_allclose(h["delta_best_dice_mean"], (0.02, 0.12 / 2 ** 0.5, 2), atol=1e-12)
    np.testing.assert_allclose(h["delta_best_accuracy"], (-0.02, 0.08 / 2 ** 0.5, 2), atol=1e-12)  # -.06, +.02
    assert rows["SupOnly"]["delta_final_dice_mean"] is None
    md = E.main(["--compare", f"SupOnly={runs[0]},{runs[1]}", f"H={','.join(runs[2:])}", "--baseline", "SupOnly",
                 "--out", str(tmp_path / "c.md")])
    assert "| H | 3 | 58.00 ± 4.24 (n=2) | 63.00 ± 6.24 (n=3) |" in md
    assert "| H | +3.00 ± 2.83 (n=2) | +2.00 ± 8.49 (n=2) |" in md and (tmp_path / "c.md").read_text() == md
    with pytest.raises(Exception, match="no group 'Nope'"):
        T.compare_groups({"H": runs[2:]}, "Nope")
    with pytest.raises(cli.DataError, match="group 'H': no run folder .*missing-run"):   # a typo is named, not skipped
        T.group_runs([f"H={runs[2]},{tmp_path / 'missing-run'}"])


# ----------------------------------------------------------------- figures.py: kept vs all, grouped by method
def _pl(root, name, rows):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    cols = ["kind", "iter", "pl_acc_pix_all", "pl_acc_pix_kept", "kept_pix"]
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    return str(d)


def test_pseudo_label_groups_kept_vs_all_band_by_hand(tmp_path, capsys):
    a = _pl(tmp_path, "a", [["train", 10, .5, .6, .2], ["train", 20, .6, .8, .5], ["eval", 20, "", "", ""]])
    b = _pl(tmp_path, "b", [["train", 10, .7, 0, 0], ["train", 20, .8, .9, .5]])  # kept nothing at 10: no point
    c = _pl(tmp_path, "c", [["train", 10, .9, .9, 1], ["train", 20, .9, .9, 1]])
    out = tmp_path / "pl.png"
    res = Fg.main(["pseudo-labels", f"Hermes={a},{b}", f"CPS={c}", "--out", str(out), "--smooth", "1"])
    its, mean, std, n = res["curves"]["Hermes"]["kept"]
    assert its.tolist() == [10, 20] and n == 2
    np.testing.assert_allclose(mean, [.6, .85])                  # b's 0 at step 10 left out
    np.testing.assert_allclose(std, [0, .1 / 2 ** 0.5], atol=1e-12)
    np.testing.assert_allclose(res["curves"]["Hermes"]["all"][1], [.6, .7])
    # second half = step 20: kept 85.00, all 70.00, kept - all 15.00, fraction kept 50.00
    assert "| Hermes | 85.00 | 70.00 | 15.00 | 50.00 |" in res["text"]
    assert "| CPS | 90.00 | 90.00 | 0.00 | 100.00 |" in res["text"]
    with Image.open(out) as im:
        assert im.size == (1000, 600) and len(im.getcolors(1 << 20)) > 10


def test_other_methods_settings_never_split_a_row():
    """A Hermes run whose config.json has a comparator's settings (written by newer code, e.g. on --resume) and
    one without them are one row; a comparator's own setting still splits its runs."""
    old = {"method": "hermes", "seed": 0, "lr": 1e-4}
    new = dict(old, seed=1, diffrect_width=8, abd_grid=4)
    assert T.signature(old) == T.signature(new)
    assert list(T.split_rows({"Hermes": [old, new]}, key_of=lambda c: c)) == ["Hermes"]
    a, b = {"method": "abd", "seed": 0, "abd_grid": 4}, {"method": "abd", "seed": 1, "abd_grid": 8}
    assert list(T.split_rows({"ABD": [a, b]}, key_of=lambda c: c)) == ["ABD [abd_grid 4]", "ABD [abd_grid 8]"]


def test_unsup_weight_cls_named_and_grouped_by_the_weight_it_stands_for():
    """unsup_weight_cls None means --unsup-weight on L^u_cls: such a run and one with that weight written out are
    one row; the scratch recipe's 0 is not noted, a scratch run made before it (L^u_cls on) is; runs with no
    L^u_cls (SupOnly) are one row whatever they recorded."""
    scratch = {"recipe": "scratch", "iters": 8, "lr": 1e-4, "lr_seg": 1e-3, "lr_cls": 1e-2, "burn_in": 2,
               "unlabeled_bn": "separate", "ita_form": "residual", "unsup_weight": 1.0}
    before, spelled, now = (dict(scratch, seed=s, unsup_weight_cls=w) for s, w in ((0, None), (1, 1.0), (2, 0.0)))
    assert T.signature(before) == T.signature(spelled) != T.signature(now)
    assert T.method_name(before) == T.method_name(spelled) == "Hermes (scratch recipe, L^u_cls ×1)"
    assert T.method_name(now) == "Hermes (scratch recipe)"
    assert T.method_name({"unsup_weight": 0.1, "unsup_weight_cls": None}) == "Hermes (unlabeled ×0.1)"
    sup = [dict(c, dtcl=False, ias=False, itcl=False) for c in (before, now)]
    assert T.signature(sup[0]) == T.signature(sup[1])
    assert list(T.split_rows({"SupOnly": sup}, key_of=lambda c: c)) == ["SupOnly"]
    assert T.method_name(sup[0]) == T.method_name(sup[1]) == "SupOnly (scratch recipe)"
    # the class prior: SupOnly keeps the labeled set's (no unlabeled images), given otherwise it is named
    assert T.method_name(dict(sup[1], class_prior="labeled")) == "SupOnly (scratch recipe)"
    assert T.method_name(dict(sup[1], class_prior="unlabeled")) == "SupOnly (scratch recipe, class prior: unlabeled)"
    assert T.method_name(dict(now, class_prior="unlabeled")) == "Hermes (scratch recipe)"
    # the IAS module's settings are inert without it: SupOnly runs with either ITA form are one row
    paper_ita = dict(sup[1], ita_form="paper", ias_warmup=500)
    assert T.signature(paper_ita) == T.signature(sup[1])
    assert T.method_name(paper_ita) == "SupOnly (scratch recipe)"
    assert T.signature(dict(now, ias_warmup=500)) != T.signature(now)
    # the recipe's IAS warm-up is its burn-in: a scratch run made before it joined the recipe (0) is noted
    assert T.method_name(dict(now, ias_warmup=2)) == "Hermes (scratch recipe)"
    assert T.method_name(dict(now, ias_warmup=0)) == "Hermes (scratch recipe, IAS warm-up 0)"
