"""Evaluation of Hermes runs: per-image metrics, a checkpoint on its evaluation split, multi-run tables
(figures: tools/figures.py).

    python evaluate.py runs/demo-40-seed0                      # checkpoint.pt -> metrics_checkpoint.json
    python evaluate.py runs/demo-40-seed0 --checkpoint best    # best.pt -> metrics_best.json
    python evaluate.py runs/x/checkpoint.pt --overlays ov/     # PNG overlays + attention panels
    python evaluate.py --summary runs/busi-72-seed* runs/busi-144-seed* --out table.md   # paper Tables 1-2
    python evaluate.py --plot-pseudo-labels runs/busi-72-seed* --out fig1.png  # = python -m tools.figures pseudo-labels
    python evaluate.py --compare runs/study/busi-72-* --baseline SupOnly    # final / best Dice, Acc; paired Δ

Metrics (paper Sec. 4.1 names Dice ± std and accuracy; the others are added here). Per image, binary masks (H,W):
    Dice = 2|P∩G| / (|P|+|G|),  IoU = |P∩G| / |P∪G|,
    HD95 = 95th percentile of the symmetric boundary-to-boundary distances (pixels of the S×S evaluation grid).
    Both masks empty: Dice 1, IoU 1, HD95 0.  Exactly one empty: Dice 0, IoU 0, HD95 = image diagonal
    sqrt(H²+W²) (the largest distance possible in the image, so means over images stay finite).
Over images: mean and sample std (ddof=1; 0 for one image). Classification (malignant = 1 is positive):
accuracy, sensitivity, specificity, AUC (Mann-Whitney rank formula, ties averaged); a rate whose
denominator class is absent is NaN, written as null in JSON and skipped by the summary tables.

Run folder (train.py): config.json, split.json, checkpoint.pt (final), best.pt (best evaluation Dice, i.e.
selected on the evaluation split, the paper's protocol: optimistic, not a held-out test score), metrics.json.
metrics.json is train.py's record of the run: evaluate_run never rewrites it. It writes, beside the checkpoint,
metrics_<stem>.json and per_image_<stem>.csv (checkpoint.pt -> metrics_checkpoint.json, best.pt ->
metrics_best.json).
"""
import argparse
import csv
import inspect
import json
import math
import os
import sys

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.stats import rankdata

import augment
import cli
import data
import models

SUMMARY_KEYS = ["dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_std",
                "accuracy", "sensitivity", "specificity", "auc", "area_ratio", "n_images"]
SELECTED_ON_BEST = "evaluation split (the paper's protocol; optimistic, not a test score)"
SELECTED_ON_FINAL = "none (last iteration; the headline numbers)"


# ----------------------------------------------------------------------------------------------- metrics
def _pair(pred, gt):
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"evaluate.py: masks must be two (H,W) arrays of one shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def dice(pred, gt):
    """Dice 2|P∩G|/(|P|+|G|) of two binary (H,W) masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(pred, gt).sum() / s)


def iou(pred, gt):
    """IoU (Jaccard) |P∩G|/|P∪G| of two binary (H,W) masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _surface(m):
    # Pixels of m with a 4-neighbour outside m (the image border counts as outside).
    return m & ~binary_erosion(m, structure=generate_binary_structure(2, 1), border_value=0)


def hd95(pred, gt):
    """95th percentile Hausdorff distance in pixels between the boundaries of two binary (H,W) masks.

    Distances from every boundary pixel of P to the nearest boundary pixel of G and from G to P are pooled
    (symmetric, as MedPy's hd95) and np.percentile(., 95) (linear interpolation) is taken.
    Both empty -> 0.0; exactly one empty -> the image diagonal sqrt(H²+W²).
    """
    pred, gt = _pair(pred, gt)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return float(math.hypot(*pred.shape))
    s_p, s_g = _surface(pred), _surface(gt)
    d_pg = distance_transform_edt(~s_g)[s_p]  # distance of each P-boundary pixel to the G boundary
    d_gp = distance_transform_edt(~s_p)[s_g]
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


def _labels(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true).astype(int).ravel(), np.asarray(y_pred).astype(int).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"evaluate.py: {y_true.size} labels but {y_pred.size} predictions")
    return y_true, y_pred


def accuracy(y_true, y_pred):
    """Fraction of correct class predictions; NaN for no images."""
    y_true, y_pred = _labels(y_true, y_pred)
    return float((y_true == y_pred).mean()) if y_true.size else float("nan")


def sensitivity(y_true, y_pred):
    """Recall of the malignant class (1): TP / (TP + FN); NaN when no image is malignant."""
    y_true, y_pred = _labels(y_true, y_pred)
    pos = y_true == 1
    return float((y_pred[pos] == 1).mean()) if pos.any() else float("nan")


def specificity(y_true, y_pred):
    """Recall of the benign class (0): TN / (TN + FP); NaN when no image is benign."""
    y_true, y_pred = _labels(y_true, y_pred)
    neg = y_true == 0
    return float((y_pred[neg] == 0).mean()) if neg.any() else float("nan")


def auc(y_true, score):
    """Area under the ROC curve of `score` (higher = malignant), by the Mann-Whitney rank formula:
    AUC = (Σ rank(positives) − n₊(n₊+1)/2) / (n₊ n₋), ranks of tied scores averaged (a tie counts ½).
    NaN when one class is absent."""
    y_true, score = np.asarray(y_true).astype(int).ravel(), np.asarray(score, dtype=np.float64).ravel()
    if y_true.shape != score.shape:
        raise ValueError(f"evaluate.py: {y_true.size} labels but {score.size} scores")
    n_pos, n_neg = int((y_true == 1).sum()), int((y_true == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score)  # average ranks for ties
    return float((r[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _mean_std(values):
    """Mean and sample std (ddof=1; 0.0 for a single value) of the finite values; NaN, NaN when none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(per_image):
    """Summary dict (SUMMARY_KEYS + n_malignant) from per-image records with dice, iou, hd95, label, score, pred."""
    out = {}
    for k in ("dice", "iou", "hd95"):
        out[f"{k}_mean"], out[f"{k}_std"] = _mean_std([r[k] for r in per_image])
    gt_area = sum(r.get("gt_area", 0) for r in per_image)
    # predicted / true lesion area over all images: < 1 = under-segmentation (NaN without any lesion)
    out["area_ratio"] = sum(r.get("pred_area", 0) for r in per_image) / gt_area if gt_area else float("nan")
    y = [r["label"] for r in per_image]
    y_pred = [r["pred"] for r in per_image]
    out.update(accuracy=accuracy(y, y_pred), sensitivity=sensitivity(y, y_pred),
               specificity=specificity(y, y_pred), auc=auc(y, [r["score"] for r in per_image]),
               n_images=len(per_image), n_malignant=int(sum(y)))
    return out


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_model(model, loader, device, ias=None, amp=False, keep_masks=False):
    """Evaluate `model` on every image of `loader` (batches (image (B,3,S,S), mask (B,S,S), label (B,))).

    Segmentation = argmax of seg_logits, malignancy score = softmax(cls_logits)[:, 1], class = argmax.
    Runs in eval mode under torch.no_grad() (the forward still takes the saliency gradient of eq. 6 with
    enable_grad inside); the model's train/eval mode is restored afterwards. amp: bf16 autocast.
    ias: passed to model.forward (None = the model's own setting).

    Returns (summary, per_image): summary with SUMMARY_KEYS (+ n_malignant); per_image a list, in loader order,
    of {"index", "label", "pred", "score", "dice", "iou", "hd95"} (+ "pred_mask" (S,S) bool if keep_masks).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    per_image = []
    try:
        with torch.no_grad():
            for batch in loader:
                x, y, z = batch[0].to(device, non_blocking=True), batch[1], batch[2]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(x, ias=ias)
                pred = out["seg_logits"].float().argmax(1).cpu().numpy().astype(bool)  # (B,S,S)
                prob = out["cls_logits"].float().softmax(1).cpu().numpy()                 # (B,2)
                gt = y.numpy().astype(bool)
                for b in range(len(x)):
                    rec = {"index": len(per_image), "label": int(z[b]), "pred": int(prob[b].argmax()),
                           "score": float(prob[b, 1]), "dice": dice(pred[b], gt[b]), "iou": iou(pred[b], gt[b]),
                           "hd95": hd95(pred[b], gt[b]), "pred_area": int(pred[b].sum()),
                           "gt_area": int(gt[b].sum())}
                    if keep_masks:
                        rec["pred_mask"] = pred[b]
                    per_image.append(rec)
    finally:
        model.train(was_training)
    if not per_image:
        raise ValueError("evaluate.py: the evaluation loader yielded no images")
    return summarize(per_image), per_image


def resolve_checkpoint(path, which="final"):
    """(checkpoint file, metrics json, per-image csv) for a run folder (+ which) or a checkpoint file.

    Folder: which="final" -> checkpoint.pt, "best" -> best.pt. File: used as given (`which` is ignored).
    Outputs lie beside the checkpoint: metrics_<stem>.json / per_image_<stem>.csv (metrics_checkpoint.json,
    metrics_best.json, ...); metrics.json is train.py's record of the run and is never rewritten here.
    """
    if os.path.isdir(path):
        if which not in ("final", "best"):
            raise cli.DataError(f"evaluate.py: --checkpoint must be final or best, got {which!r}")
        ckpt = os.path.join(path, "checkpoint.pt" if which == "final" else "best.pt")
    else:
        ckpt = path
    if not os.path.isfile(ckpt):
        raise cli.MissingFileError(f"evaluate.py: no checkpoint {ckpt} (a run folder holds checkpoint.pt and "
                                    f"best.pt)")
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    folder = os.path.dirname(os.path.abspath(ckpt))
    return ckpt, os.path.join(folder, f"metrics_{stem}.json"), os.path.join(folder, f"per_image_{stem}.csv")


def load_model(ckpt, config):
    """A fresh HermesNet built from `config` (keys matching HermesNet.__init__; never pretrained, the
    checkpoint holds the weights) with ckpt["model"] loaded strictly, memory banks and wrapper prefixes removed."""
    params = inspect.signature(models.HermesNet.__init__).parameters
    kwargs = {k: config[k] for k in params if k in config and k not in ("self", "pretrained")}
    model = models.HermesNet(pretrained=False, **kwargs)
    models.load_init(model, ckpt["model"], heads=True, what="the checkpoint's weights")
    return model


def evaluate_run(run_dir_or_ckpt, data_root=None, which="final", overlays=None, device="cpu", batch_size=8,
                 n_panels=4, amp=False):
    """Evaluate a run's checkpoint on its split's evaluation images; write metrics json + per-image csv.

    run_dir_or_ckpt: a run folder (with which = "final" | "best") or a checkpoint file; split.json (and
    config.json when the checkpoint has no "config") must lie beside the checkpoint.
    data_root: overrides the config's data_root (the run may come from another machine).
    overlays: folder for the PNGs (write_overlays), or None.
    Returns the dict written to the metrics file (SUMMARY_KEYS, checkpoint, iter, selected_on, method, ...).
    """
    ckpt_path, metrics_path, csv_path = resolve_checkpoint(run_dir_or_ckpt, which)
    folder = os.path.dirname(os.path.abspath(ckpt_path))
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file, or weights_only refusing an arbitrary pickle: say which file
        raise cli.DataError(f"evaluate.py: cannot read {ckpt_path} ({cli.cause(e)}); a damaged checkpoint.pt "
                             f"can be replaced by --checkpoint best, or the run retrained") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise cli.DataError(f"evaluate.py: {ckpt_path} is not a train.py checkpoint (no 'model' key)")
    config = ckpt.get("config")
    if config is None:
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg_path):
            raise cli.MissingFileError(f"evaluate.py: {ckpt_path} holds no config and there is no {cfg_path}")
        with open(cfg_path) as f:
            config = json.load(f)
    split_path = os.path.join(folder, "split.json")
    if not os.path.isfile(split_path):
        raise cli.MissingFileError(f"evaluate.py: no {split_path} beside the checkpoint (train.py writes it)")
    split = data.load_split(split_path)
    if split.get("dataset", config["dataset"]) != config["dataset"]:
        raise cli.DataError(f"evaluate.py: {split_path} is a split of {split['dataset']!r}, the checkpoint was "
                             f"trained on {config['dataset']!r}")

    device = models.pick_device(device)
    ds = data.load_dataset(config["dataset"], data_root or config.get("data_root"),
                           image_size=config["image_size"], seed=config["seed"], demo_size=config.get("demo_size"),
                           unlabeled_dirs=config.get("unlabeled_dir"))
    _, _, idx_eval = data.split_indices(ds, split)
    loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_eval, train=False), batch_size=batch_size,
                                         shuffle=False)
    model = load_model(ckpt, config).to(device)
    summary, per_image = evaluate_model(model, loader, device, amp=amp and device.type == "cuda",
                                        keep_masks=overlays is not None)
    names = [ds.names[i] for i in idx_eval]

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["name", "label", "pred", "score", "dice", "iou", "hd95"])
        for n, r in zip(names, per_image):
            w.writerow([n, r["label"], r["pred"], f"{r['score']:.6f}", f"{r['dice']:.6f}", f"{r['iou']:.6f}",
                        f"{r['hd95']:.4f}"])
    cli.atomic_write(csv_path, write_csv, newline="")
    if overlays is not None:
        images = ds.images[idx_eval]
        gts = ds.masks[idx_eval].astype(bool)
        preds = np.stack([r["pred_mask"] for r in per_image])
        xs = torch.stack([loader.dataset[i][0] for i in range(min(n_panels, len(idx_eval)))])
        from tools import figures  # the drawing tools, imported only when overlays are asked for
        figures.write_overlays(overlays, images, gts, preds, names, model=model, x_panels=xs, device=device)

    is_best = os.path.basename(ckpt_path) == "best.pt"
    result = {**summary, "checkpoint": os.path.basename(ckpt_path), "iter": ckpt.get("iter"),
              "selected_on": SELECTED_ON_BEST if is_best else SELECTED_ON_FINAL,
              "method": method_name(config), "dataset": config["dataset"], "labels": config.get("labels"),
              "seed": config.get("seed"), "per_image_file": os.path.basename(csv_path)}
    cli.write_json_atomic(result, metrics_path)
    result["metrics_file"] = metrics_path
    return result


def format_metrics(m):
    """Human-readable lines of a summary / metrics dict (Dice and IoU in %, HD95 in pixels)."""
    def pct(k):
        v = m.get(k)
        return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"
    lines = [f"images           {m.get('n_images')} ({m.get('n_malignant', '?')} malignant)",
             f"Dice (%)         {pct('dice_mean')} ± {pct('dice_std')}   (mean ± std over images)",
             f"IoU (%)          {pct('iou_mean')} ± {pct('iou_std')}",
             f"HD95 (px)        {m.get('hd95_mean', float('nan')):.2f} ± {m.get('hd95_std', float('nan')):.2f}",
             f"Accuracy (%)     {pct('accuracy')}",
             f"Sensitivity (%)  {pct('sensitivity')}",
             f"Specificity (%)  {pct('specificity')}",
             f"AUC (%)          {pct('auc')}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- multi-run table
ORDER = ["SupOnly", "CPS", "DTCL only", "IAS only", "ITCL only", "Hermes w/o DTCL", "Hermes w/o IAS",
         "Hermes w/o ITCL", "Hermes"]  # rows in the order of the paper's Tables 1-3 (baseline first, the
# comparator CPS next as in Table 1, full method last)
DATASET_NAMES = {"busi": "BUSI", "udiat": "UDIAT", "sztus": "SZ-TUS", "folder": "folder", "demo": "demo"}
# Config keys that do not change what a run computes; other differences inside one table cell are reported.
NEUTRAL_KEYS = {"seed", "git_commit", "data_root", "out", "resume", "device", "stop_after", "split", "eval_every",
                "ckpt_every", "log_every"}


# Settings that change a run but are not a Table 3 switch: (config key, the paper's value, note in the name).
NOT_IN_PAPER = [("unlabeled_bn", "shared", lambda v: f"{v} BN"),
                ("unsup_seg_loss", "dice", lambda v: f"L^u_seg {v}"),
                ("unsup_weight", 1.0, lambda v: f"unlabeled ×{v:g}"),
                ("contrast_warmup", 0, lambda v: f"contrast warm-up {v}"),
                ("gamma_ramp", 0, lambda v: f"γ ramp {v}"),
                ("ita_form", "paper", lambda v: f"{v} ITA"),
                ("lr", 1e-4, lambda v: f"lr {v:g}"),
                ("cps_weight", 1.5, lambda v: f"λ_cps {v:g}"),
                ("init", None, lambda v: f"init {os.path.basename(os.path.dirname(os.path.abspath(v)))}")]


def method_name(config):
    """Row name of a run from its switches (Table 3 vocabulary; IAS = the paper's SM/ITA).

    All of dtcl, ias, itcl on -> "Hermes"; all off -> "SupOnly"; one on -> "<X> only"; two on -> "Hermes w/o <X>".
    task "seg"/"cls" trains one branch, so ias and itcl (which need both) count as off and "SS"/"SC" is added;
    threshold "confidence"/"none" adds "conf. threshold"/"no threshold" when dtcl is on (it only acts there).
    Settings of NOT_IN_PAPER that differ from the paper's are noted too, e.g. "Hermes (separate BN, lr 0.001)",
    and the from-scratch recipe (not in the paper): "seg lr" / "cls lr" when --lr-seg / --lr-cls differ from
    --lr, "burn-in N" when N > 0 and the run has an unlabeled term (a SupOnly run has none to delay).
    method "cps" (cps.py, the comparator of Table 1) is "CPS", whatever its (implied off) switches.
    E.g. "Hermes", "SupOnly (SS)", "DTCL only (SC)", "Hermes w/o ITCL", "Hermes (conf. threshold)", "CPS",
    "Hermes (seg lr 0.001, cls lr 0.01, burn-in 500)".
    """
    task, threshold = config.get("task", "joint"), config.get("threshold", "dual")
    on = {"DTCL": bool(config.get("dtcl", True)), "IAS": bool(config.get("ias", True)),
          "ITCL": bool(config.get("itcl", True))}
    if task != "joint":
        on["IAS"] = on["ITCL"] = False
    kept = [k for k, v in on.items() if v]
    if len(kept) == 3:
        name = "Hermes"
    elif not kept:
        name = "SupOnly"
    elif len(kept) == 1:
        name = f"{kept[0]} only"
    else:
        name = "Hermes w/o " + next(k for k, v in on.items() if not v)
    cps = config.get("method", "hermes") == "cps"
    if cps:
        name = "CPS"
    notes = {"seg": ["SS"], "cls": ["SC"]}.get(task, [])
    if on["DTCL"] and threshold != "dual" and not cps:
        notes.append({"confidence": "conf. threshold", "none": "no threshold"}.get(threshold, threshold))
    for key, paper, note in NOT_IN_PAPER:
        if config.get(key, paper) != paper:
            notes.append(note(config[key]))
    lr = config.get("lr", 1e-4)
    for key, what in (("lr_seg", "seg lr"), ("lr_cls", "cls lr")):
        if config.get(key) is not None and config[key] != lr:
            notes.append(f"{what} {config[key]:g}")
    if config.get("burn_in", 0) and name != "SupOnly":
        notes.append(f"burn-in {config['burn_in']}")
    return name + (f" ({', '.join(notes)})" if notes else "")


def _method_key(name):
    base = name.split(" (")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def load_runs(run_dirs):
    """[{run, config, metrics, method, dataset, labels}] for each folder holding config.json and metrics.json;
    folders without them are reported on stderr and skipped."""
    runs = []
    for d in run_dirs:
        paths = [os.path.join(d, "config.json"), os.path.join(d, "metrics.json")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            print(f"evaluate.py --summary: skipping {d}: no {', '.join(missing)}", file=sys.stderr)
            continue
        with open(paths[0]) as f:
            config = json.load(f)
        with open(paths[1]) as f:
            metrics = json.load(f)
        runs.append({"run": d, "config": config, "metrics": metrics, "method": method_name(config),
                     "dataset": config.get("dataset", "?"), "labels": config.get("labels")})
    return runs


def _cell(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    m, s = _mean_std(v)
    return f"{100 * m:.2f} ± {100 * s:.2f} (n={len(v)})"


def summary_markdown(run_dirs):
    """Markdown tables shaped like the paper's Tables 1-2 from the runs' config.json + metrics.json.

    Rows = methods (method_name), columns = dataset × label budget (budgets descending, as in the paper),
    cells = mean ± std over the runs (seeds) of the final checkpoint's per-run mean Dice / accuracy, in %,
    sample std (ddof=1; 0 for one run), n = runs in the cell. Dice skips task="cls" runs and accuracy
    task="seg" runs (their other head is untrained). Cells mixing runs whose configs differ in keys other
    than NEUTRAL_KEYS get a footnote naming those keys.
    """
    runs = load_runs(run_dirs)
    if not runs:
        return "No runs with config.json and metrics.json.\n"
    ds_order = list(DATASET_NAMES)
    cols = sorted({(r["dataset"], r["labels"]) for r in runs},
                  key=lambda c: (ds_order.index(c[0]) if c[0] in ds_order else len(ds_order), c[0],
                                 -(c[1] or 0)))
    methods = sorted({r["method"] for r in runs}, key=_method_key)
    header = "| Method | " + " | ".join(f"{DATASET_NAMES.get(d, d)} {n} labels" for d, n in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    text = []
    for title, key, skip_task in (("Dice (%)", "dice_mean", "cls"), ("Accuracy (%)", "accuracy", "seg")):
        text += [f"### {title}: final checkpoint, mean ± std over runs (seeds; sample std, 0 for one run)", "",
                 header, rule]
        for meth in methods:
            cells = []
            for c in cols:
                vals = [r["metrics"].get(key) for r in runs if r["method"] == meth
                        and (r["dataset"], r["labels"]) == c and r["config"].get("task", "joint") != skip_task]
                cells.append(_cell(vals))
            text.append(f"| {meth} | " + " | ".join(cells) + " |")
        text.append("")
    notes = []
    for meth in methods:
        for c in cols:
            cfgs = [r["config"] for r in runs if r["method"] == meth and (r["dataset"], r["labels"]) == c]
            keys = sorted({k for cf in cfgs for k in cf if k not in NEUTRAL_KEYS
                           and len({json.dumps(x.get(k), sort_keys=True) for x in cfgs}) > 1})
            if keys:
                col = f"{DATASET_NAMES.get(c[0], c[0])} {c[1]} labels"
                notes.append(f"- {meth}, {col}: runs differ in {', '.join(keys)}")
    if notes:
        text += ["Cells mixing configurations:", *notes, ""]
    text.append("Runs: " + ", ".join(r["run"] for r in runs))
    return "\n".join(text) + "\n"


# ------------------------------------------------------------------------- groups of runs vs a baseline
COMPARE_METRICS = [("Dice", "dice_mean"), ("Acc", "accuracy")]


def eval_log(run_dir):
    """{iter: {column: float}} of the eval rows of RUN_DIR/log.csv (train.py's periodic evaluations; a repeated
    iteration keeps its last row, an empty cell is NaN); {} without a log.csv."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.isfile(path):
        return {}
    rows = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("kind") == "eval":
                rows[int(r["iter"])] = {k: _float(v) for k, v in r.items() if k not in ("kind", "iter")}
    return rows


def _float(v):
    try:
        return float(v) if v not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def run_scores(run_dir):
    """Seed, final and best-of-evaluation scores of one run folder: {"seed", "final_<key>", "best_<key>",
    "last_eval"} for the keys of COMPARE_METRICS. final = metrics.json (the final checkpoint; None while the run
    is unfinished); best = the largest value of that column over log.csv's evaluations (each metric its own
    best; selected on the evaluation split, so optimistic), None without evaluations."""
    cfg_path, m_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.json")
    cfg, metrics = ({} if not os.path.isfile(q) else json.load(open(q, encoding="utf-8")) for q in (cfg_path, m_path))
    log = eval_log(run_dir)
    out = {"run": run_dir, "seed": cfg.get("seed"), "last_eval": max(log) if log else None}
    for _, key in COMPARE_METRICS:
        v = metrics.get(key)
        out[f"final_{key}"] = float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None
        vals = [r.get(key, float("nan")) for r in log.values()]
        vals = [v for v in vals if np.isfinite(v)]
        out[f"best_{key}"] = max(vals) if vals else None
    return out


def group_runs(paths):
    """{group: [run folders]} from NAME=RUN[,RUN...] items (a group named by the caller, in the order given) and
    plain run folders (grouped by method_name of their config.json, after them in ORDER: SupOnly, CPS, ...)."""
    groups, named = {}, {}
    for p in paths:
        name, sep, dirs = p.partition("=")
        if sep and not os.path.isdir(p):
            dirs = [d for d in dirs.split(",") if d]
            missing = [d for d in dirs if not os.path.isdir(d)]
            if missing or not dirs:
                raise cli.DataError(f"evaluate.py --compare: group {name!r}: "
                                    + (f"no run folder {', '.join(missing)}" if missing else "no run folders given"))
            groups.setdefault(name, []).extend(dirs)
        else:
            cfg_path = os.path.join(p, "config.json")
            if not os.path.isfile(cfg_path):
                print(f"evaluate.py --compare: skipping {p}: no config.json", file=sys.stderr)
                continue
            with open(cfg_path) as f:
                named.setdefault(method_name(json.load(f)), []).append(p)
    return {**groups, **{k: named[k] for k in sorted(named, key=_method_key)}}


def compare_groups(groups, baseline=None):
    """Per group: mean ± sample std over its runs (seeds) of the final and best-of-evaluation Dice and accuracy,
    and, when `baseline` names a group, the paired difference to it: Δ = run − baseline run of the same seed,
    mean ± sample std over the seeds both groups have (n pairs).

    groups {name: [run folders]}. Returns [{"group", "runs", "n", "<kind>_<key>": (mean, std, n) or None,
    "delta_<kind>_<key>": (mean, std, n) or None}] for kind final | best; fractions, not %."""
    scores = {g: [run_scores(d) for d in dirs] for g, dirs in groups.items()}
    if baseline is not None and baseline not in scores:
        raise cli.DataError(f"evaluate.py --compare: no group {baseline!r} for --baseline; groups: "
                            f"{', '.join(scores)}")
    rows = []
    for g, runs in scores.items():
        row = {"group": g, "runs": [r["run"] for r in runs], "n": len(runs)}
        for kind in ("final", "best"):
            for _, key in COMPARE_METRICS:
                col = f"{kind}_{key}"
                vals = [r[col] for r in runs if r[col] is not None]
                row[col] = (*_mean_std(vals), len(vals)) if vals else None
                row["delta_" + col] = None
                if baseline is not None and g != baseline:
                    base = {r["seed"]: r[col] for r in scores[baseline] if r[col] is not None}
                    d = [r[col] - base[r["seed"]] for r in runs if r[col] is not None and r["seed"] in base]
                    row["delta_" + col] = (*_mean_std(d), len(d)) if d else None
        rows.append(row)
    return rows


def _pm(cell, signed=False):
    if cell is None:
        return "–"
    m, s, n = cell
    return f"{100 * m:{'+' if signed else ''}.2f} ± {100 * s:.2f} (n={n})"


def compare_markdown(groups, baseline=None, deltas_only=False):
    """Markdown of compare_groups: the values table (unless deltas_only) and, with a baseline, the paired-Δ
    table, in percentage points."""
    rows = compare_groups(groups, baseline)
    cols = [(kind, title, key) for title, key in COMPARE_METRICS for kind in ("final", "best")]
    head = " | ".join(f"{title} {kind}" for kind, title, _ in cols)
    lines = []
    if not deltas_only:
        lines += ["Final checkpoint (metrics.json) and best of the evaluations (log.csv; each metric its own best, "
                  "selected on the evaluation split) in %, mean ± sample std over the runs (seeds):", "",
                  f"| Group | runs | {head} |", "|---|---|" + "---|" * len(cols)]
        lines += [f"| {r['group']} | {r['n']} | " + " | ".join(_pm(r[f'{k}_{key}']) for k, _, key in cols) + " |"
                  for r in rows]
        lines.append("")
    if baseline is not None:
        lines += [f"Paired difference to {baseline} (same seed), percentage points, mean ± sample std over the "
                  "seeds both have:", "", f"| Group | {head} |", "|---|" + "---|" * len(cols)]
        lines += [f"| {r['group']} | " + " | ".join(_pm(r[f'delta_{k}_{key}'], True) for k, _, key in cols) + " |"
                  for r in rows if r["group"] != baseline]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="a run folder or checkpoint file; with --summary or "
                                               "--plot-pseudo-labels, run folders")
    p.add_argument("--summary", action="store_true", help="tabulate several runs (paper Tables 1-2)")
    p.add_argument("--compare", action="store_true",
                   help="groups of runs (NAME=RUN[,RUN...], or run folders grouped by method name): final and "
                        "best-of-evaluation Dice and accuracy, mean ± std over seeds, and with --baseline the "
                        "paired Δ to that group")
    p.add_argument("--baseline", default=None, metavar="GROUP", help="--compare: the group the Δ is taken to "
                                                                       "(e.g. SupOnly)")
    p.add_argument("--plot-pseudo-labels", action="store_true",
                   help="plot pseudo-label accuracy over training from the runs' log.csv (paper Fig. 1 style; "
                        "several runs are averaged) and print the second-half means")
    p.add_argument("--smooth", type=int, default=5,
                   help="--plot-pseudo-labels: moving-average window in logged rows (1 = none)")
    p.add_argument("--out", default=None, help="--summary: also write the markdown to this file; "
                                               "--plot-pseudo-labels: the PNG (default "
                                               "<first run>/pseudo_labels.png)")
    p.add_argument("--data-root", default=None, help="dataset folder, if not the one in the run's config")
    p.add_argument("--checkpoint", default="final", choices=["final", "best"],
                   help="for a run folder: checkpoint.pt (final, the headline) or best.pt (selected on the "
                        "evaluation split)")
    p.add_argument("--overlays", default=None, help="folder for overlay PNGs and attention panels")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on CPU)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (or HERMES_DEBUG=1)")
    args = p.parse_args(argv)
    if args.compare:
        md = compare_markdown(group_runs(args.paths), args.baseline)
        print(md)
        if args.out:
            cli.atomic_write(args.out, lambda f: f.write(md))
        return md
    if args.summary:
        md = summary_markdown(args.paths)
        print(md)
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
        return md
    if args.plot_pseudo_labels:
        out = args.out or os.path.join(args.paths[0], "pseudo_labels.png")
        from tools import figures
        res = figures.plot_pseudo_labels(args.paths, out, smooth=args.smooth)
        print(res["text"])
        print(f"written: {out}")
        return res
    if len(args.paths) != 1:
        p.error("give one run folder or checkpoint (or --summary for several runs)")
    m = evaluate_run(args.paths[0], data_root=args.data_root, which=args.checkpoint, overlays=args.overlays,
                     device=args.device, batch_size=args.batch_size, amp=args.amp)
    print(f"{m['checkpoint']} (iter {m['iter']}, {m['method']}, {m['dataset']} {m['labels']} labels, "
          f"seed {m['seed']}); selected on: {m['selected_on']}")
    print(format_metrics(m))
    print(f"written: {m['metrics_file']}" + (f", overlays in {args.overlays}" if args.overlays else ""))
    return m


if __name__ == "__main__":
    cli.cli_main(main)
