"""tools/figures.py: overlay colours, attention panels, Fig. 1's pseudo-label curves (second-half means by hand) and
learning curves (mean ± std over runs by hand)."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import evaluate as E
from tools import figures as Fg
from test_evaluate import FakeNet, _fake_batches, mask

# ----------------------------------------------------------------------------------------------- overlays
def test_overlay_colours():
    img = np.full((4, 4), 100, np.uint8)
    gt = mask((4, 4), (0, 0), (0, 1))
    pred = mask((4, 4), (0, 1), (0, 2))
    o = Fg.overlay_rgb(img, pred, gt, alpha=1.0)
    assert tuple(o[0, 0]) == Fg.RED      # ground truth only
    assert tuple(o[0, 1]) == Fg.YELLOW   # overlap
    assert tuple(o[0, 2]) == Fg.GREEN    # prediction only
    assert tuple(o[3, 3]) == (100, 100, 100)
    o = Fg.overlay_rgb(np.stack([img] * 3, -1), pred, gt)  # alpha 0.5: 0.5*100 + 0.5*255 = 177.5 -> 178
    assert tuple(o[0, 0]) == (178, 50, 50) and tuple(o[0, 2]) == (50, 178, 50) and tuple(o[0, 1]) == (178, 178, 50)


def test_heatmap_ends():
    h = Fg.heatmap(np.array([[0.0, 0.5, 1.0]]))
    assert h.shape == (1, 3, 3) and h.dtype == np.uint8
    assert h[0, 0, 2] > h[0, 0, 0] and h[0, 2, 0] > h[0, 2, 2]  # low blue, high red



def test_write_overlays_fake_model(tmp_path):
    _, x, masks, _ = _fake_batches()
    images = ((x.permute(0, 2, 3, 1).numpy() + 1) * 100).clip(0, 255).astype(np.uint8)
    gts = masks.numpy().astype(bool)
    preds = np.roll(gts, 1, axis=2)
    files = Fg.write_overlays(tmp_path / "ov", images, gts, preds, [f"im/{i}" for i in range(5)],
                             model=FakeNet(), x_panels=x[:2])
    names = sorted(os.listdir(tmp_path / "ov"))
    assert len(files) == 7 and names[:2] == ["0000_im_0.png", "0001_im_1.png"] and names[-1] == "panel_0001_im_1.png"
    ov = np.asarray(Image.open(tmp_path / "ov" / "0000_im_0.png"))
    assert ov.shape == (16, 32, 3)
    right = ov[:, 16:]
    assert right[2, 3, 0] > right[2, 3, 1]                # gt only (rolled away) -> red
    assert right[2, 9, 1] > right[2, 9, 0]                # prediction only -> green
    assert right[2, 5, 0] == right[2, 5, 1] > right[2, 5, 2] + 100  # overlap -> yellow
    panel = Image.open(tmp_path / "ov" / "panel_0000_im_0.png")
    assert panel.size == (4 * 192, 3 * (192 + 16))



def _pl_run(tmp_path, name, rows, threshold="dual"):
    """A run folder with config.json and a log.csv; rows: (kind, iter, {column: value}), missing -> ''."""
    import csv
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"threshold": threshold, "seed": 0}))
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, PL_COLUMNS)
        w.writeheader()
        for kind, it, vals in rows:
            w.writerow({"kind": kind, "iter": it, **vals})
    return str(d)


def _pix(all_, conf, kc, kept, kk):
    return {"pl_acc_pix_all": all_, "pl_acc_pix_conf": conf, "kept_pix_conf": kc, "pl_acc_pix_kept": kept,
            "kept_pix": kk, "loss": 1.0}


def _img(all_, conf, kc, kept, kk):
    return {"pl_acc_img_all": all_, "pl_acc_img_conf": conf, "kept_img_conf": kc, "pl_acc_img_kept": kept,
            "kept_img": kk}


def test_plot_pseudo_labels_png_and_second_half_means(tmp_path, capsys):
    # Run A logs iters 10-40 (+ an all-empty train row at 35 and eval rows), run B only 30 and 40, no img stats.
    # Last iter 40 -> second half = iters > 20: 30 and 40.
    a = _pl_run(tmp_path, "a", [
        ("train", 10, {**_pix(.1, .1, .5, .1, .2), **_img(.1, .1, .1, .1, .1)}),   # first half: not in the means
        ("train", 20, {**_pix(.1, .1, .5, .1, .3), **_img(.1, .1, .1, .1, .1)}),
        ("eval", 20, {"dice_mean": 0.5}),                                           # eval row: skipped
        ("train", 30, {**_pix(.8, .9, .6, 0, 0), **_img(.5, .6, .5, .7, .25)}),    # nothing kept: acc 0 not a point
        ("train", 35, {}),                                                          # empty values: skipped
        ("train", 40, {**_pix(.9, 1.0, .8, .95, .4), **_img(.7, 0, 0, .9, .75)}),
        ("eval", 40, {"dice_mean": 0.6})])
    b = _pl_run(tmp_path, "b", [("train", 30, _pix(.6, .7, .4, .9, .2)), ("train", 40, _pix(.7, .8, .6, .85, .2)),
                                ("eval", 40, {"dice_mean": 0.7})])
    out = tmp_path / "fig" / "fig1.png"
    res = E.main(["--plot-pseudo-labels", a, b, str(tmp_path / "nolog"), "--out", str(out), "--smooth", "3"])
    assert "skipping" in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.size == (1200, 500) and im.mode in ("RGB", "RGBA")
        assert len(im.getcolors(1 << 20)) > 10  # something was drawn
    assert list(res["curves"]["iter"]) == [10, 20, 30, 40]  # eval rows and the empty row add nothing
    got = {(r["target"], r["rule"]): (r["accuracy"], r["kept"], r["n"]) for r in res["table"]}
    # pixels, runs averaged at equal iterations: all (.8+.6)/2=.7 @30, (.9+.7)/2=.8 @40 -> .75;
    # conf .8, .9 -> .85, kept (.6+.4)/2=.5, (.8+.6)/2=.7 -> .6;
    # dual: A kept nothing @30, so .9 (B alone) @30 and (.95+.85)/2=.9 @40 -> .9; kept (0+.2)/2=.1, .3 -> .2.
    expect = {("pixels", "no threshold"): (.75, 1.0, 2), ("pixels", "confidence (τ)"): (.85, .6, 2),
              ("pixels", "dual threshold (τ, κ)"): (.9, .2, 2),
              # images, run A only: all .5, .7 -> .6; conf .6 @30 only (nothing kept @40), kept .5, 0 -> .25;
              # dual .7, .9 -> .8, kept .25, .75 -> .5
              ("images", "no threshold"): (.6, 1.0, 2), ("images", "confidence (τ)"): (.6, .25, 1),
              ("images", "dual threshold (τ, κ)"): (.8, .5, 2)}
    assert set(got) == set(expect)
    for k, (acc, kept, n) in expect.items():
        assert got[k][0] == pytest.approx(acc) and got[k][1] == pytest.approx(kept) and got[k][2] == n, k
    assert "| pixels | dual threshold (τ, κ) | 90.00 | 20.00 | 2 |" in res["text"]
    assert "| images | confidence (τ) | 60.00 | 25.00 | 1 |" in res["text"]


def test_pseudo_label_rule_label_and_moving_average(tmp_path):
    run = _pl_run(tmp_path, "c", [("train", i, _pix(.5, .6, .5, .7, .5)) for i in (1, 2)], threshold="confidence")
    labels = [r["rule"] for r in Fg.pseudo_label_table(Fg.pseudo_label_curves([run]))]
    assert labels[:3] == ["no threshold", "confidence (τ)", "run's rule: confidence (τ)"]
    # centred window 3, NaNs ignored and kept: [1, nan, 3, 5] -> [1, nan, (3+5)/2, (3+5)/2]
    np.testing.assert_allclose(Fg.moving_average([1, np.nan, 3, 5], 3), [1, np.nan, 4, 4])
    np.testing.assert_allclose(Fg.moving_average([1, 2, 3], 1), [1, 2, 3])


# ------------------------------------------------------------------------------ pseudo-label plot (Fig. 1)
PL_COLUMNS = ["kind", "iter", "loss", "kappa", "tau", "kept_pix", "kept_img", "pl_acc_pix_all", "pl_acc_pix_kept",
              "pl_acc_img_all", "pl_acc_img_kept", "kept_pix_conf", "pl_acc_pix_conf", "kept_img_conf",
              "pl_acc_img_conf", "dice_mean"]


def _eval_run(tmp_path, name, dice_by_iter):
    d = tmp_path / name
    d.mkdir()
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["kind", "iter", "loss", "dice_mean"])
        w.writeheader()
        w.writerow({"kind": "train", "iter": 1, "loss": 1.0})
        for it, v in dice_by_iter.items():
            w.writerow({"kind": "eval", "iter": it, "dice_mean": v})
    return str(d)


def test_learning_curves_mean_std_at_common_steps(tmp_path):
    a = _eval_run(tmp_path, "a", {50: 0.2, 100: 0.4, 150: 0.5})
    b = _eval_run(tmp_path, "b", {50: 0.4, 100: 0.6})                              # no eval at 150
    c = _eval_run(tmp_path, "c", {50: 0.3, 100: 0.3, 150: 0.9})
    out = tmp_path / "curves.png"
    res = Fg.main(["curves", f"A={a},{b}", f"C={c}", "--out", str(out)])
    its, mean, std, n = res["A"]
    assert its.tolist() == [50, 100] and n == 2
    np.testing.assert_allclose(mean, [0.3, 0.5])
    np.testing.assert_allclose(std, [0.2 / 2 ** 0.5] * 2, rtol=1e-6)              # two values 0.2 apart
    assert res["C"][0].tolist() == [50, 100, 150] and res["C"][2].tolist() == [0, 0, 0]
    with Image.open(out) as im:
        assert im.size == (700, 420) and len(im.getcolors(1 << 20)) > 10
