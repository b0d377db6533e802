"""Figures of Hermes runs: overlays and Fig.-7 attention panels (PIL composites of the images themselves),
Fig. 1's pseudo-label accuracy curves and learning curves (matplotlib, imported only when a plot is drawn).

    python -m tools.figures pseudo-labels runs/busi-72-seed* --out fig1.png  # paper Fig. 1 from log.csv
    python -m tools.figures curves SupOnly=runs/sup-s0,runs/sup-s1 Hermes=runs/h-s0,runs/h-s1 --out dice.png
    python -m tools.figures pseudo-labels CPS=runs/c-s0,runs/c-s1 Hermes=runs/h-s0,runs/h-s1 --out pl.png  # kept vs all
    python evaluate.py RUN --overlays DIR                                    # overlays + attention panels

matplotlib draws the plots (axes, ticks, legends and Greek letters done well, by a well-kept library); it is
optional for training and evaluation, and the plotting commands say how to install it when it is missing.
"""
import argparse
import csv
import json
import os
import re
import sys
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw

if __package__ in (None, ""):  # run by path (python tools/NAME.py): the project's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli
from models import InterTaskAttention

# Colours of the paper's Fig. 4 / 12-14: red ground truth, green prediction, yellow overlap.
RED, GREEN, YELLOW = (255, 0, 0), (0, 255, 0), (255, 255, 0)


def _pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or a clear error naming the install command."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("figures.py: plotting needs matplotlib: pip install matplotlib") from e
    return plt


# -------------------------------------------------------------------------------------------- overlays
def _grey(image):
    """(H,W) or (H,W,3) uint8 -> (H,W,3) float grey (RGB mean, replicated)."""
    a = np.asarray(image, dtype=np.float64)
    g = a.mean(axis=2) if a.ndim == 3 else a
    return np.repeat(g[..., None], 3, axis=2)


def overlay_rgb(image, pred, gt, alpha=0.5):
    """Grey image with red = ground truth only, green = prediction only, yellow = overlap (paper Fig. 4).

    image (H,W) or (H,W,3) uint8, pred/gt (H,W) bool -> (H,W,3) uint8; coloured pixels are
    (1-alpha)·grey + alpha·colour, the others stay grey.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"figures.py: prediction {pred.shape} and ground truth {gt.shape} differ in size")
    out = _grey(image)
    if out.shape[:2] != pred.shape:
        raise ValueError(f"figures.py: image {out.shape[:2]} and mask {pred.shape} differ in size")
    for sel, colour in ((gt & ~pred, RED), (pred & ~gt, GREEN), (pred & gt, YELLOW)):
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, dtype=np.float64)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def heatmap(a):
    """Jet colouring of a (h,w) array in [0,1]: blue (low) -> cyan -> yellow -> red (high), uint8 (h,w,3).

    Red = high attention and the red-to-yellow gradient = decreasing weight, as the paper's Fig. 7 reads."""
    a = np.clip(np.asarray(a, dtype=np.float64), 0, 1)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * a - c), 0, 1) for c in (3, 2, 1)], axis=-1)  # (h,w,3)
    return np.rint(255 * rgb).astype(np.uint8)


def _minmax(a):
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), lo, hi


def _resize(a, size, resample=Image.BILINEAR):
    """(h,w) float map -> (size,size) float by PIL (bilinear)."""
    return np.asarray(Image.fromarray(np.asarray(a, dtype=np.float32)).resize((size, size), resample))


def _blend_heat(grey, a, alpha=0.5):
    return np.rint((1 - alpha) * grey + alpha * heatmap(a)).astype(np.uint8)


def _bars(values, width, height):
    """Channel weights in [0,1] as a bar image (one column per channel, absolute scale), uint8 (height,width,3)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)
    rows = np.arange(height)[:, None]                               # (height,1)
    filled = rows >= np.rint((1 - v) * (height - 1))[None, :]       # (height,C)
    img = np.where(filled[..., None], heatmap(v[None, :].repeat(height, 0)), 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((width, height), Image.NEAREST))


def attention_maps(model, x, device="cpu", ias=None):
    """Saliency (eq. (6)), M_s (eq. (4)), M_c (eq. (3)) and the M_c-weighted energy for a batch x (B,3,S,S).

    The energy E = mean_c |M_c,c · x_cls,c| (the channel mean of |x_m|, eq. (5)) is read by forward hooks on
    the model's InterTaskAttention modules; it is shown because M_c (B,C,1,1) has no spatial extent itself.
    Returns one dict per image: "saliency" (S,S) or None, "M_s" [(h,w)]*L, "M_c" [(C,)]*L, "energy" [(h,w)]*L.
    """
    device = torch.device(device)
    energy, handles = [], []

    def hook(module, inputs, output):
        x_cls, M_c = inputs[0], output[1]
        energy.append((M_c * x_cls).abs().mean(dim=1).float().cpu().numpy())  # (B,h,w)

    for m in model.modules():
        if isinstance(m, InterTaskAttention):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device), ias=ias)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    sal = out.get("saliency")
    M_s = [m.float().cpu().numpy()[:, 0] for m in out.get("M_s") or []]        # [(B,h,w)]
    M_c = [m.float().cpu().numpy()[:, :, 0, 0] for m in out.get("M_c") or []]  # [(B,C)]
    energy = energy[-len(M_s):] if M_s else []
    return [{"saliency": None if sal is None else sal[b, 0].float().cpu().numpy(),
             "M_s": [m[b] for m in M_s], "M_c": [m[b] for m in M_c], "energy": [e[b] for e in energy]}
            for b in range(len(x))]


def attention_panel(image, pred, gt, maps, tile=192):
    """Figure-7-style panel, uint8 (3·(tile+16), 4·tile, 3); every tile has a title bar.

    row 1: image | overlay (red GT, green prediction, yellow overlap) | saliency (eq. (6)) | M_c bars (3 levels)
    row 2: M_s of the ITA after layer1, layer2, layer3 (eq. (4), upsampled bilinear) | colour scale
    row 3: M_c-weighted feature energy mean_c|M_c·x_cls| per level (see attention_maps)
    Heat maps are min-max normalised per map (the title gives the raw range) and blended over the image;
    the M_c bars use the absolute [0,1] scale. Missing maps (IAS off) give an empty tile saying so.
    """
    S = np.asarray(pred).shape[0]
    grey = _grey(np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((tile, tile), Image.BILINEAR)))
    blank = np.full((tile, tile, 3), 255, np.uint8)
    tiles = [(grey.astype(np.uint8), "image"),
             (np.asarray(Image.fromarray(overlay_rgb(image, pred, gt)).resize((tile, tile), Image.NEAREST)),
              "red GT, green pred, yellow both")]
    if maps.get("saliency") is not None:
        tiles.append((_blend_heat(grey, _resize(maps["saliency"], tile)), "saliency (eq. (6))"))
    else:
        tiles.append((blank, "saliency: n/a (IAS off)"))
    if maps.get("M_c"):
        h = tile // len(maps["M_c"])
        bars = np.concatenate([_bars(m, tile, h) for m in maps["M_c"]], axis=0)
        tiles.append((np.pad(bars, ((0, tile - bars.shape[0]), (0, 0), (0, 0)), constant_values=255),
                      "M_c per channel, L1/L2/L3"))
    else:
        tiles.append((blank, "M_c: n/a (IAS off)"))
    legend = heatmap(np.linspace(1, 0, tile)[:, None].repeat(tile // 4, 1))
    for key, name in (("M_s", "M_s"), ("energy", "mean|M_c x_cls|")):
        for lvl in range(3):
            m = maps.get(key) or []
            if lvl < len(m):
                a, lo, hi = _minmax(m[lvl])
                tiles.append((_blend_heat(grey, _resize(a, tile)), f"{name} L{lvl + 1} [{lo:.2f},{hi:.2f}]"))
            else:
                tiles.append((blank, f"{name} L{lvl + 1}: n/a"))
        if key == "M_s":
            t = blank.copy()
            t[:, :tile // 4] = legend
            tiles.append((t, "scale: top high, bottom low"))
        else:
            tiles.append((blank, f"{S}x{S} px input"))
    title_h = 16
    canvas = Image.new("RGB", (4 * tile, 3 * (tile + title_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (arr, title) in enumerate(tiles):
        r, c = divmod(i, 4)
        canvas.paste(Image.fromarray(arr), (c * tile, r * (tile + title_h) + title_h))
        draw.text((c * tile + 2, r * (tile + title_h) + 2), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def _safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:80]


def write_overlays(out_dir, images, gts, preds, names, model=None, x_panels=None, device="cpu"):
    """Write <out_dir>/<k>_<name>.png (image | overlay) for every image and, when model and x_panels
    (n,3,S,S) are given, <out_dir>/panel_<k>_<name>.png (attention_panel) for the first n images.

    images (N,S,S,3) uint8, gts/preds (N,S,S) bool, names N strings (made file-safe); per-image scores are in
    per_image*.csv. Returns the list of files written.
    """
    os.makedirs(out_dir, exist_ok=True)
    files = []
    for k, (img, gt, pr, name) in enumerate(zip(images, gts, preds, names)):
        both = np.concatenate([_grey(img).astype(np.uint8), overlay_rgb(img, pr, gt)], axis=1)  # (S,2S,3)
        path = os.path.join(out_dir, f"{k:04d}_{_safe(name)}.png")
        Image.fromarray(both).save(path)
        files.append(path)
    if model is not None and x_panels is not None and len(x_panels):
        for k, maps in enumerate(attention_maps(model, x_panels, device)):
            path = os.path.join(out_dir, f"panel_{k:04d}_{_safe(names[k])}.png")
            Image.fromarray(attention_panel(images[k], preds[k], gts[k], maps)).save(path)
            files.append(path)
    return files


# ------------------------------------------------------------------------------ pseudo-label plot (Fig. 1)
PL_TARGETS = [("pix", "pixels", "Segmentation pseudo-masks (pixels)"),
              ("img", "images", "Classification pseudo-labels (images)")]
RULE_LABELS = {"dual": "dual threshold (τ, κ)", "confidence": "confidence (τ)", "none": "no threshold"}
# Curves per target: (curve key, accuracy column, kept-fraction column or None = all kept, colour).
PL_CURVES = [("all", "pl_acc_{t}_all", None, "#1f77b4"),
             ("conf", "pl_acc_{t}_conf", "kept_{t}_conf", "#ff7f0e"),
             ("kept", "pl_acc_{t}_kept", "kept_{t}", "#2ca02c")]


def _float_or_nan(v):
    try:
        return float(v) if v is not None and str(v).strip() != "" else float("nan")
    except ValueError:
        return float("nan")


def load_pl_log(run_dir):
    """Pseudo-label statistics of one run from RUN_DIR/log.csv (train rows only; eval rows are skipped).

    Returns (iters (n,) int, {column: (n,) float}, rule): the pl_acc_* / kept_* columns, NaN where a row leaves
    them empty or the log lacks the column; an accuracy whose kept fraction is 0 (0 by convention) is NaN too.
    rule = config.json's "threshold" (the rule behind *_kept), "dual" (train.py's default) if unknown.
    Rows without any of these values are left out; a repeated iteration keeps its last row.
    """
    path = os.path.join(run_dir, "log.csv")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kind", "train") in ("train", None)]
    names = [c.format(t=t) for t, *_ in PL_TARGETS for _, *cs, _ in PL_CURVES for c in cs if c is not None]
    by_iter = {}
    for r in rows:
        it = _float_or_nan(r.get("iter"))
        if np.isfinite(it) and any(np.isfinite(_float_or_nan(r.get(c))) for c in names):
            by_iter[int(it)] = r
    iters = np.array(sorted(by_iter), dtype=np.int64)
    cols = {}
    for t, _, _ in PL_TARGETS:
        for _, acc_col, kept_col, _ in PL_CURVES:
            for c in (acc_col, kept_col):
                if c is not None:
                    c = c.format(t=t)
                    cols[c] = np.array([_float_or_nan(by_iter[i].get(c)) for i in iters], dtype=np.float64)
            if kept_col is not None:  # kept fraction 0 -> accuracy 0 by convention: not a measurement
                acc, kept = cols[acc_col.format(t=t)], cols[kept_col.format(t=t)]
                acc[~(kept > 0)] = np.nan
    rule = "dual"
    cfg_path = os.path.join(run_dir, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            rule = json.load(f).get("threshold", "dual")
    return iters, cols, rule


def moving_average(y, window):
    """Centred moving average over `window` consecutive entries of y, ignoring NaNs (the window shrinks at
    the ends); entries that are NaN stay NaN, so smoothing never invents points. window <= 1: y unchanged."""
    y = np.asarray(y, dtype=np.float64)
    if window is None or window <= 1 or y.size == 0:
        return y.copy()
    ok = np.isfinite(y)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(y.size)
    lo, hi = np.clip(i - (window - 1) // 2, 0, y.size), np.clip(i + window // 2 + 1, 0, y.size)
    cnt = ccnt[hi] - ccnt[lo]
    out = (csum[hi] - csum[lo]) / np.maximum(cnt, 1)
    out[~ok] = np.nan
    return out


def pseudo_label_curves(run_dirs):
    """Curves of the runs averaged at equal iterations (NaN-aware: a run without a value there is left out).

    Returns {"iter": (n,), "runs": [dirs], "rule": str, "pix"/"img": {"all"|"conf"|"kept": (n,) accuracy,
    "kept_conf"|"kept_kept": (n,) fraction kept}}. Folders without log.csv are reported on stderr and skipped.
    """
    logs = []
    for d in run_dirs:
        if not os.path.isfile(os.path.join(d, "log.csv")):
            print(f"figures.py pseudo-labels: skipping {d}: no log.csv", file=sys.stderr)
            continue
        logs.append((d, *load_pl_log(d)))
    if not logs:
        raise FileNotFoundError("figures.py pseudo-labels: no run folder with a log.csv")
    iters = np.array(sorted({int(i) for _, its, _, _ in logs for i in its}), dtype=np.int64)
    rules = sorted({rule for *_, rule in logs})
    if len(rules) > 1:
        print(f"figures.py pseudo-labels: runs use different threshold rules ({', '.join(rules)}); "
              "their kept curves are averaged together", file=sys.stderr)

    def mean_over_runs(col):
        stack = np.full((len(logs), iters.size), np.nan)
        for k, (_, its, cols, _) in enumerate(logs):
            stack[k, np.searchsorted(iters, its)] = cols[col]
        cnt = np.isfinite(stack).sum(0)
        return np.where(cnt > 0, np.nansum(stack, 0) / np.maximum(cnt, 1), np.nan)

    out = {"iter": iters, "runs": [d for d, *_ in logs], "rule": rules[0] if len(rules) == 1 else "mixed"}
    for t, _, _ in PL_TARGETS:
        out[t] = {}
        for key, acc_col, kept_col, _ in PL_CURVES:
            out[t][key] = mean_over_runs(acc_col.format(t=t))
            out[t][f"kept_{key}"] = (mean_over_runs(kept_col.format(t=t)) if kept_col
                                     else np.where(np.isfinite(out[t][key]), 1.0, np.nan))
    return out


def _curve_label(key, rule):
    if key == "all":
        return "no threshold"
    if key == "conf":
        return "confidence (τ)"
    return RULE_LABELS["dual"] if rule == "dual" else f"run's rule: {RULE_LABELS.get(rule, rule)}"


def pseudo_label_table(curves):
    """Rows {target, rule, accuracy, kept, n} of the run-averaged (unsmoothed) curves: means over the logged
    iterations of the second half of training (iter > last logged iter / 2) of the accuracy (points where
    nothing was kept are left out) and of the fraction kept ("no threshold" keeps everything: 1)."""
    iters = curves["iter"]
    half = iters > (iters.max() / 2 if iters.size else 0)
    rows = []
    for t, name, _ in PL_TARGETS:
        for key, *_ in PL_CURVES:
            acc, kept = curves[t][key][half], curves[t][f"kept_{key}"][half]
            fa, fk = acc[np.isfinite(acc)], kept[np.isfinite(kept)]
            rows.append({"target": name, "rule": _curve_label(key, curves["rule"]),
                         "accuracy": float(fa.mean()) if fa.size else float("nan"),
                         "kept": float(fk.mean()) if fk.size else float("nan"), "n": int(fa.size)})
    return rows


def format_pl_table(curves, rows):
    """Markdown table of pseudo_label_table's rows (percentages)."""
    iters = curves["iter"]
    last = int(iters.max()) if iters.size else 0
    pct = lambda v: "–" if not np.isfinite(v) else f"{100 * v:.2f}"
    lines = [f"Pseudo-label accuracy and fraction kept, means over the second half of training "
             f"(logged iterations > {last / 2:g} of {last}), {len(curves['runs'])} run(s) averaged at equal "
             f"iterations, unsmoothed:", "",
             "| Pseudo-labels | Rule | Accuracy (%) | Kept (%) | Points |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['rule']} | {pct(r['accuracy'])} | {pct(r['kept'])} | {r['n']} |")
    return "\n".join(lines) + "\n"


def _save(fig, out_png):
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)


def plot_pseudo_labels(run_dirs, out_png, smooth=5):
    """Fig.-1-style PNG (1200×500 px) of pseudo-label accuracy over training from the runs' log.csv (seeds
    averaged at equal iterations).

    Two columns, segmentation pixels | classification images. Upper axes: accuracy of all pseudo-labels (no
    threshold), of those confidence alone keeps (max p >= τ) and of those the run's rule keeps (the dual
    threshold, eq. (7), by default; config.json's "threshold"); bold = centred moving average over `smooth`
    logged rows (1 = none), faint = the run-averaged values. Lower axes: the fraction each rule keeps.
    Points where nothing was kept are not drawn.
    Returns {"png", "curves" (pseudo_label_curves), "table" (pseudo_label_table rows), "text" (markdown)}.
    """
    curves = pseudo_label_curves(run_dirs)
    rows = pseudo_label_table(curves)
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(PL_TARGETS), figsize=(12, 5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    iters = curves["iter"]
    n = len(curves["runs"])
    smooth = min(smooth or 1, len(iters))   # the window applied (and stated): no wider than the rows logged
    few = len(iters) < 2
    if few:
        warnings.warn(f"pseudo-labels: {len(iters)} logged row(s) in log.csv: drawn as markers, "
                      f"unsmoothed (log more rows with train.py --log-every)")
    marker = dict(marker="o", ms=5) if len(iters) < 10 else {}
    what = f"{n} runs averaged" if n > 1 else os.path.basename(os.path.normpath(curves["runs"][0]))
    fig.suptitle(f"Pseudo-label accuracy during training ({what}"
                 + (f", moving average over {smooth} logged rows)" if smooth > 1 else ", unsmoothed)"))
    for col, (t, _, subtitle) in enumerate(PL_TARGETS):
        ax, ax_k = axes[0, col], axes[1, col]
        for key, _, kept_col, colour in PL_CURVES:
            label = _curve_label(key, curves["rule"])
            if not np.isfinite(curves[t][key]).any():
                label += ": not in log.csv"
            if smooth > 1:
                ax.plot(iters, curves[t][key], color=colour, alpha=0.3, lw=1)
            ax.plot(iters, moving_average(curves[t][key], smooth), color=colour, lw=2, label=label, **marker)
            if kept_col is not None:
                ax_k.plot(iters, moving_average(curves[t][f"kept_{key}"], smooth), color=colour, lw=2,
                          ls="--" if key == "conf" else "-", **marker)
        ax.set_title(subtitle)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax_k.set_ylim(0, 1)
        ax_k.set_ylabel("kept")
        ax_k.set_xlabel("iteration")
        ax_k.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)
    return {"png": out_png, "curves": curves, "table": rows, "text": format_pl_table(curves, rows)}


def load_eval_log(run_dir, key="dice_mean"):
    """(iters (n,), values (n,)) of the eval rows of RUN_DIR/log.csv (a repeated iteration keeps its last row)."""
    from tools.tables import eval_log
    rows = eval_log(run_dir)
    its = np.array(sorted(rows), dtype=np.int64)
    return its, np.array([rows[i].get(key, np.nan) for i in its], dtype=np.float64)


def seed_band(logs):
    """(iters, mean, std, n) of several runs' series [(iters (k,), values (k,))] at the iterations all of them
    logged: mean and sample std (ddof=1; 0 for one run) over the runs with a finite value there (NaN where none)."""
    common = sorted(set.intersection(*(set(its.tolist()) for its, _ in logs))) if logs else []
    vals = np.array([[v[list(its).index(i)] for i in common] for its, v in logs]).reshape(len(logs), len(common))
    cnt = np.isfinite(vals).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, np.nansum(vals, 0) / np.maximum(cnt, 1), np.nan)
        sq = np.nansum((vals - mean) ** 2, 0)
        std = np.where(cnt > 1, np.sqrt(sq / np.maximum(cnt - 1, 1)), np.where(cnt == 1, 0.0, np.nan))
    return np.array(common, dtype=np.int64), mean, std, len(logs)


def learning_curves(groups, key="dice_mean"):
    """{name: (iters, mean, std, n)} over the runs of each group, at the evaluation steps all of them logged."""
    return {name: seed_band([load_eval_log(d, key) for d in dirs]) for name, dirs in groups.items()}


def pseudo_label_groups(groups, target="pix", smooth=5):
    """Pseudo-label accuracy of all vs kept pseudo-labels (pl_acc_<target>_all / _kept) and the fraction kept,
    per group of runs (seeds): {name: {"all"|"kept"|"kept_frac": (iters, mean, std, n)}} from the train rows of
    log.csv (load_pl_log: an accuracy where nothing was kept is NaN), each run's series smoothed first
    (moving_average over `smooth` logged rows), then mean ± std over the runs at the iterations all logged."""
    out = {}
    for name, dirs in groups.items():
        logs = [load_pl_log(d)[:2] for d in dirs]
        cols = {"all": f"pl_acc_{target}_all", "kept": f"pl_acc_{target}_kept", "kept_frac": f"kept_{target}"}
        out[name] = {k: seed_band([(its, moving_average(c[col], smooth)) for its, c in logs])
                     for k, col in cols.items()}
    return out


def plot_pseudo_label_groups(groups, out_png, target="pix", smooth=5):
    """PNG (1000×600 px): per group (a colour) the accuracy of the kept pseudo-labels (solid) and of all of them
    (dashed) over training, mean ± std band over its runs; below, the fraction kept. Returns
    {"png", "curves" (pseudo_label_groups), "text" (second-half means, markdown)}."""
    curves = pseudo_label_groups(groups, target, smooth)
    plt = _pyplot()
    fig, (ax, ax_k) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    what = dict((t, title) for t, _, title in PL_TARGETS)[target]
    for k, (name, c) in enumerate(curves.items()):
        colour = f"C{k}"
        for key, ls, label in (("kept", "-", "kept"), ("all", "--", "all")):
            its, mean, std, n = c[key]
            ax.plot(its, mean, color=colour, ls=ls, lw=2, label=f"{name}: {label} (n={n})")
            ax.fill_between(its, mean - std, mean + std, color=colour, alpha=0.15)
        its, mean, std, _ = c["kept_frac"]
        ax_k.plot(its, mean, color=colour, lw=2)
        ax_k.fill_between(its, mean - std, mean + std, color=colour, alpha=0.15)
    ax.set_title(f"{what}: kept (solid) vs all (dashed), mean ± std over seeds"
                 + (f"\nmoving average over {smooth} logged rows" if smooth and smooth > 1 else ""), fontsize=10)
    ax.set_ylabel("pseudo-label accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax_k.set_ylim(0, 1)
    ax_k.set_ylabel("kept")
    ax_k.set_xlabel("training step")
    ax_k.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out_png)
    pct = lambda v: "–" if not np.isfinite(v) else f"{100 * v:.2f}"
    lines = [f"{what}: pseudo-label accuracy (%), mean over the logged steps of the second half of training, of "
             "the seed-mean curve (smoothed):", "", "| Group | kept | all | kept − all | fraction kept |",
             "|---|---|---|---|---|"]
    for name, c in curves.items():
        half = {}
        for k, (its, mean, _, _) in c.items():
            y = mean[its > its.max() / 2] if its.size else mean
            half[k] = float(y[np.isfinite(y)].mean()) if np.isfinite(y).any() else np.nan
        lines.append(f"| {name} | {pct(half['kept'])} | {pct(half['all'])} | {pct(half['kept'] - half['all'])} | "
                     f"{pct(half['kept_frac'])} |")
    return {"png": out_png, "curves": curves, "text": "\n".join(lines) + "\n"}


def plot_learning_curves(groups, out_png, key="dice_mean", title=None):
    """PNG of an evaluation metric over training steps (from log.csv's eval rows): one line per group of runs
    (mean over its seeds), with a ± sample-std band. groups: {name: [run folders]}. Returns learning_curves."""
    curves = learning_curves(groups, key)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, (its, mean, std, n) in curves.items():
        if len(its) < 2:
            warnings.warn(f"curves: {name} has {len(its)} evaluation row(s) common to its runs: drawn "
                          f"as markers only (evaluate more often with train.py --eval-every)")
        line, = ax.plot(its, 100 * mean, lw=2, marker="o", ms=3, label=f"{name} (n={n})")
        ax.fill_between(its, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel({"dice_mean": "evaluation Dice (%)", "accuracy": "evaluation accuracy (%)"}.get(key, key))
    ax.set_title(title or "mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)
    return curves


def parse_groups(p, items):
    """{NAME: [RUN, ...]} from NAME=RUN[,RUN...] items (parser p reports a malformed one) and run folders.
    Plain run folders (not NAME=...) are grouped by their method name, as tools.tables groups them."""
    groups, plain = {}, []
    for g in items:
        name, sep, dirs = g.partition("=")
        if os.path.isdir(g) or not sep:
            plain.append(g)
            continue
        if not dirs:
            p.error(f"a group is NAME=RUN[,RUN...] or a run folder, got {g!r}")
        groups.setdefault(name, []).extend(d for d in dirs.split(",") if d)
    if plain:
        from tools.tables import group_runs
        groups.update(group_runs(plain))
    return groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pseudo-labels", help="Fig. 1: pseudo-label accuracy over training (log.csv); with "
                                             "NAME=RUN[,RUN...] groups: kept vs all per group, mean ± std")
    a.add_argument("runs", nargs="+", help="run folders (averaged, Fig. 1 style), or NAME=RUN[,RUN...] groups")
    a.add_argument("--target", default="pix", choices=["pix", "img"],
                   help="groups: pixel pseudo-masks or image pseudo-labels (default pix)")
    a.add_argument("--out", default=None, help="PNG (default <first run>/pseudo_labels.png)")
    a.add_argument("--smooth", type=int, default=5, help="moving-average window in logged rows (1 = none)")
    c = sub.add_parser("curves", help="an evaluation metric over steps, groups of runs as mean ± std")
    c.add_argument("groups", nargs="+", help="NAME=RUN[,RUN...] groups, or run folders (grouped by method)")
    c.add_argument("--metric", default="dice_mean", help="log.csv eval column (dice_mean, accuracy, ...)")
    c.add_argument("--title", default=None)
    c.add_argument("--out", required=True)
    for q in (a, c):
        q.add_argument("--debug", action="store_true", help="show the Python traceback of an error (or HERMES_DEBUG=1)")
    args = p.parse_args(argv)
    if args.cmd == "pseudo-labels" and any("=" in r and not os.path.isdir(r) for r in args.runs):
        if not args.out:
            p.error("pseudo-labels with groups needs --out")
        res = plot_pseudo_label_groups(parse_groups(p, args.runs), args.out, args.target, args.smooth)
        print(res["text"])
        print(f"written: {args.out}")
        return res
    if args.cmd == "pseudo-labels":
        out = args.out or os.path.join(args.runs[0], "pseudo_labels.png")
        res = plot_pseudo_labels(args.runs, out, smooth=args.smooth)
        print(res["text"])
        print(f"written: {out}")
        return res
    res = plot_learning_curves(parse_groups(p, args.groups), args.out, key=args.metric, title=args.title)
    for name, (its, mean, std, n) in res.items():
        print(f"{name} (n={n}): " + ", ".join(f"{i}: {100 * m:.1f}±{100 * s:.1f}" for i, m, s in zip(its, mean, std)))
    print(f"written: {args.out}")
    return res


if __name__ == "__main__":
    cli.cli_main(main)
