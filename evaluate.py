"""Evaluation of Hermes runs: per-image metrics, a checkpoint on its evaluation split, multi-run tables
(figures: tools/figures.py).

    python evaluate.py runs/demo-40-seed0                      # checkpoint.pt -> metrics_checkpoint.json
    python evaluate.py runs/demo-40-seed0 --checkpoint best    # best.pt -> metrics_best.json
    python evaluate.py runs/x/checkpoint.pt --overlays ov/     # PNG overlays + attention panels
    python evaluate.py --summary runs/busi-72-seed* runs/busi-144-seed* --out table.md   # paper Tables 1-2
    python evaluate.py --plot-pseudo-labels runs/busi-72-seed* --out fig1.png
        # = python -m tools.figures pseudo-labels
    python evaluate.py --compare runs/study/busi-72-* --baseline SupOnly    # final / best Dice, Acc; paired Δ

Metrics (paper Sec. 4.1 names Dice ± std and accuracy; the others are added here). Per image, binary masks
(H,W):
    Dice = 2|P∩G| / (|P|+|G|),  IoU = |P∩G| / |P∪G|,
    HD95 = 95th percentile of the symmetric boundary-to-boundary distances (pixels of the S×S evaluation
    grid). Both masks empty: Dice 1, IoU 1, HD95 0.  Exactly one empty: Dice 0, IoU 0, HD95 = image diagonal
    sqrt(H²+W²) (the largest distance possible in the image, so means over images stay finite).
Over images: mean and sample std (ddof=1; 0 for one image). Classification (malignant = 1 is positive):
accuracy, sensitivity, specificity, AUC (Mann-Whitney rank formula, ties averaged); a rate whose
denominator class is absent is NaN, written as null in JSON and skipped by the summary tables.

Run folder (train.py): config.json, split.json, checkpoint.pt (final), best.pt (best evaluation Dice, i.e.
selected on the evaluation split, the paper's protocol: optimistic, not a held-out test score), metrics.json.
metrics.json is train.py's record of the run: evaluate_run never rewrites it. It writes, beside the
checkpoint, metrics_<stem>.json and per_image_<stem>.csv (checkpoint.pt -> metrics_checkpoint.json, best.pt ->
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
import hermes
import models
import runner
from tools.tables import method_name

SUMMARY_KEYS = ["dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_std",
                "accuracy", "sensitivity", "specificity", "auc", "area_ratio", "n_images"]
SELECTED_ON_BEST = "evaluation split (the paper's protocol; optimistic, not a test score)"
SELECTED_ON_FINAL = "none (last iteration; the headline numbers)"


# ----------------------------------------------------------------------------------------------- metrics
def _pair(pred, gt):
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"evaluate.py: masks must be two (H,W) arrays of one shape, got {pred.shape} and "
                         f"{gt.shape}")
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


# ------------------------------------------------------------- class prior (not in the paper; --class-prior)
def logit(p):
    return math.log(p / (1 - p))


def adjust_scores(score, prior, prior_train):
    """p(malignant | x) under malignant share `prior`, from scores p(malignant | x) of a classifier trained at
    share prior_train (Bayes' rule, as in Saerens et al. 2002): the same as adding
    logit(prior) - logit(prior_train) to the malignant logit."""
    return hermes.prior_adjusted(np.asarray(score, dtype=np.float64), prior, prior_train)


def estimate_prior(score, prior_train, iters=1000, tol=1e-9, bounds=(1e-3, 1 - 1e-3)):
    """Malignant share of a set of images from a classifier's scores on them (the EM of Saerens, Latinne &
    Decaestecker 2002): from π = prior_train, repeat  q_i = adjust_scores(s_i, π, prior_train),
    π <- mean_i q_i  until π moves by less than tol; the fixed point is the share's maximum-likelihood
    estimate. Kept within `bounds` so that its log-odds stay finite."""
    s = np.asarray(score, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("estimate_prior: no scores (no unlabeled images)")
    pi = prior_train
    for _ in range(iters):
        new = min(max(float(adjust_scores(s, pi, prior_train).mean()), bounds[0]), bounds[1])
        done, pi = abs(new - pi) < tol, new
        if done:
            break
    return pi


def class_scores(model, loader, device, amp=False):
    """p(malignant | x) = softmax(cls_logits)[:, 1] of every image of `loader` (batches whose first item is
    the image (B,3,S,S)), as `evaluate_model` runs the model."""
    out = [o["cls_logits"].float().softmax(1)[:, 1].cpu().numpy() for _, o in _outputs(model, loader, device,
                                                                                       amp=amp)]
    return np.concatenate(out) if out else np.zeros(0)


def class_prior(mode, labels_l, model=None, loader_u=None, device="cpu", amp=False):
    """The malignant share the evaluation's decision assumes (--class-prior) -> {"class_prior", "prior_labeled",
    "prior_unlabeled", "prior_shift"}.

    π_l = the labeled images' share (what the classifier was trained at: 1/2 by the split). mode "labeled":
    π = π_l, no shift. mode "unlabeled": π_u = estimate_prior(scores of `model` on loader_u's images, π_l) and
    π = (n_l π_l + n_u π_u) / (n_l + n_u), the share of all training images (the labeled ones are drawn from
    them, half per class, so π_u alone would be too low); shift = logit(π) - logit(π_l), added to the
    malignant logit at evaluation."""
    labels_l = np.asarray(labels_l).astype(int)
    pi_l = float(labels_l.mean())
    if mode == "labeled":
        return {"class_prior": pi_l, "prior_labeled": pi_l, "prior_unlabeled": None, "prior_shift": 0.0}
    if mode != "unlabeled":
        raise ValueError(f"class_prior: mode must be labeled or unlabeled, got {mode!r}")
    s = class_scores(model, loader_u, device, amp)
    pi_u = estimate_prior(s, pi_l)
    pi = (labels_l.size * pi_l + s.size * pi_u) / (labels_l.size + s.size)
    return {"class_prior": pi, "prior_labeled": pi_l, "prior_unlabeled": pi_u,
            "prior_shift": logit(pi) - logit(pi_l)}


def summarize(per_image):
    """Summary dict (SUMMARY_KEYS + n_malignant) from per-image records with dice, iou, hd95, label, score,
    pred."""
    out = {}
    for k in ("dice", "iou", "hd95"):
        out[f"{k}_mean"], out[f"{k}_std"] = cli.mean_std([r[k] for r in per_image])
    gt_area = sum(r.get("gt_area", 0) for r in per_image)
    # predicted / true lesion area over all images: < 1 = under-segmentation (NaN without any lesion)
    out["area_ratio"] = sum(r.get("pred_area", 0) for r in per_image) / gt_area if gt_area else float("nan")
    y = [r["label"] for r in per_image]
    y_pred = [r["pred"] for r in per_image]
    out.update(accuracy=accuracy(y, y_pred), sensitivity=sensitivity(y, y_pred),
               specificity=specificity(y, y_pred), auc=auc(y, [r["score"] for r in per_image]),
               n_images=len(per_image), n_malignant=int(sum(y)))
    # a classifier that says one class for every image shows here: balanced accuracy 0.5, rate 0 or 1
    out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
    out["predicted_malignant"] = float(np.mean(y_pred)) if len(y_pred) else float("nan")
    return out


# ------------------------------------------------------------------------------------------ evaluation
def _outputs(model, loader, device, ias=None, amp=False):
    """(batch, model outputs) for every batch of `loader` (its first item the images), in eval mode under
    torch.no_grad() (the forward still takes the saliency gradient of eq. (6) with enable_grad inside), bf16
    autocast if amp; the model's train/eval mode is restored when the loop ends."""
    device, was_training = torch.device(device), model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(batch[0].to(device, non_blocking=True), ias=ias)
                yield batch, out
    finally:
        model.train(was_training)


def evaluate_model(model, loader, device, ias=None, amp=False, keep_masks=False, shift=0.0):
    """Evaluate `model` on every image of `loader` (batches (image (B,3,S,S), mask (B,S,S), label (B,))).

    Segmentation = argmax of seg_logits, malignancy score = softmax(cls_logits)[:, 1], class = argmax; shift
    is added to the malignant logit first (class_prior: the decision at another class prior; AUC unchanged).
    Runs in eval mode under torch.no_grad() (the forward still takes the saliency gradient of eq. (6) with
    enable_grad inside); the model's train/eval mode is restored afterwards. amp: bf16 autocast.
    ias: passed to model.forward (None = the model's own setting).

    Returns (summary, per_image): summary with SUMMARY_KEYS (+ n_malignant); per_image a list, in loader
    order, of {"index", "label", "pred", "score", "dice", "iou", "hd95"} (+ "pred_mask" (S,S) bool if
    keep_masks). """
    per_image = []
    for (_, y, z), out in _outputs(model, loader, device, ias, amp):
        pred = out["seg_logits"].float().argmax(1).cpu().numpy().astype(bool)          # (B,S,S)
        logits = out["cls_logits"].float()
        if shift:
            logits = logits + logits.new_tensor([0.0, shift])
        prob = logits.softmax(1).cpu().numpy()                                            # (B,2)
        gt = y.numpy().astype(bool)
        for b in range(len(gt)):
            rec = {"index": len(per_image), "label": int(z[b]), "pred": int(prob[b].argmax()),
                   "score": float(prob[b, 1]), "dice": dice(pred[b], gt[b]), "iou": iou(pred[b], gt[b]),
                   "hd95": hd95(pred[b], gt[b]), "pred_area": int(pred[b].sum()), "gt_area": int(gt[b].sum())}
            if keep_masks:
                rec["pred_mask"] = pred[b]
            per_image.append(rec)
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
    checkpoint holds the weights) with ckpt["model"] loaded strictly, memory banks and wrapper prefixes
    removed."""
    params = inspect.signature(models.HermesNet.__init__).parameters
    kwargs = {k: config[k] for k in params if k in config and k not in ("self", "pretrained")}
    model = models.HermesNet(pretrained=False, **kwargs)
    models.load_init(model, ckpt["model"], heads=True, what="the checkpoint's weights")
    return model


def evaluate_run(run_dir_or_ckpt, data_root=None, which="final", overlays=None, device="cpu", batch_size=8,
                 n_panels=4, amp=False, prior_mode=None):
    """Evaluate a run's checkpoint on its split's evaluation images; write metrics json + per-image csv.

    run_dir_or_ckpt: a run folder (with which = "final" | "best") or a checkpoint file; split.json (and
    config.json when the checkpoint has no "config") must lie beside the checkpoint.
    data_root: overrides the config's data_root (the run may come from another machine).
    overlays: folder for the PNGs (write_overlays), or None.
    prior_mode: the class prior of the decision (class_prior: "labeled" | "unlabeled"); None = the run's own
    (config "class_prior"). Another than the run's own writes metrics_<stem>_prior-<mode>.json / .csv.
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
        raise cli.DataError(f"evaluate.py: {split_path} is a split of {split['dataset']!r}, the checkpoint "
                            "was "
                             f"trained on {config['dataset']!r}")

    device = runner.pick_device(device)
    ds = data.load_dataset(config["dataset"], data_root or config.get("data_root"),
                           image_size=config["image_size"], seed=config["seed"],
                           demo_size=config.get("demo_size"),
                           unlabeled_dirs=config.get("unlabeled_dir"))
    idx_l, idx_u, idx_eval = data.split_indices(ds, split)
    loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_eval, train=False), batch_size=batch_size,
                                         shuffle=False)
    model = load_model(ckpt, config).to(device)
    own = config.get("class_prior", "labeled")
    if prior_mode is not None and prior_mode != own:
        metrics_path, csv_path = (f"{base}_prior-{prior_mode}{ext}"
                                  for base, ext in map(os.path.splitext, (metrics_path, csv_path)))
    amp = amp and device.type == "cuda"
    loader_u = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_u, train=False), batch_size=batch_size,
                                           shuffle=False)
    prior = class_prior(prior_mode or own, ds.labels[idx_l], model, loader_u, device, amp)
    summary, per_image = evaluate_model(model, loader, device, amp=amp, keep_masks=overlays is not None,
                                        shift=prior["prior_shift"])
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
    it, total = ckpt.get("iter"), config.get("iters")
    finished = it is None or total is None or it >= total
    result = {**summary, **prior, "checkpoint": os.path.basename(ckpt_path), "iter": it, "iters": total,
              "finished": finished, "stopped_at": None if finished else f"step {it} of {total}",
              "selected_on": SELECTED_ON_BEST if is_best else SELECTED_ON_FINAL if finished
              else f"none (the last checkpoint of an unfinished run, step {it} of {total})",
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
             f"HD95 (px)        {m.get('hd95_mean', float('nan')):.2f} ± "
             f"{m.get('hd95_std', float('nan')):.2f}",
             f"Accuracy (%)     {pct('accuracy')}",
             f"Sensitivity (%)  {pct('sensitivity')}",
             f"Specificity (%)  {pct('specificity')}",
             f"AUC (%)          {pct('auc')}"]
    if m.get("prior_unlabeled") is not None:
        lines.append(f"decided at       {m['class_prior']:.3f} malignant (estimated from the unlabeled images; "
                     f"the labeled set: {m['prior_labeled']:.3f})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    for opt, table in (("--summary", "summary"), ("--compare", "compare")):   # tables of several runs
        if opt in argv:
            from tools import tables
            return tables.main([table] + [a for a in argv if a != opt])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="a run folder or checkpoint file; with --plot-pseudo-labels, run "
                                               "folders")
    p.add_argument("--summary", action="store_true", help="tabulate several runs (paper Tables 1-2; "
                                                            "python -m tools.tables summary)")
    p.add_argument("--compare", action="store_true",
                   help="groups of runs (NAME=RUN[,RUN...], or run folders grouped by method name) with "
                        "--baseline GROUP: final and best Dice and accuracy and the paired Δ (python -m "
                        "tools.tables compare)")
    p.add_argument("--plot-pseudo-labels", action="store_true",
                   help="plot pseudo-label accuracy over training from the runs' log.csv (paper Fig. 1 "
                        "style; = python -m tools.figures pseudo-labels)")
    p.add_argument("--smooth", type=int, default=5,
                   help="--plot-pseudo-labels: moving-average window in logged rows (1 = none)")
    p.add_argument("--out", default=None, help="--plot-pseudo-labels: the PNG (default <first "
                                               "run>/pseudo_labels.png)")
    p.add_argument("--data-root", default=None, help="dataset folder, if not the one in the run's config")
    p.add_argument("--checkpoint", default="final", choices=["final", "best"],
                   help="for a run folder: checkpoint.pt (final, the headline) or best.pt (selected on the "
                        "evaluation split)")
    p.add_argument("--overlays", default=None, help="folder for overlay PNGs and attention panels")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on CPU)")
    p.add_argument("--class-prior", default=None, choices=["labeled", "unlabeled"],
                   help="the malignant share the benign/malignant decision assumes (train.py --class-prior); "
                        "default: the run's own")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (or HERMES_DEBUG=1)")
    args = p.parse_args(argv)
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
                     device=args.device, batch_size=args.batch_size, amp=args.amp, prior_mode=args.class_prior)
    print(f"{m['checkpoint']} (iter {m['iter']}, {m['method']}, {m['dataset']} {m['labels']} labels, "
          f"seed {m['seed']}); selected on: {m['selected_on']}")
    if m["stopped_at"]:
        run_dir = os.path.dirname(os.path.abspath(m["metrics_file"]))
        print(f"UNFINISHED RUN: stopped at {m['stopped_at']}: these are not the run's final numbers "
              f"(continue it with python train.py --out {run_dir} --resume)")
    print(format_metrics(m))
    print(f"written: {m['metrics_file']}" + (f", overlays in {args.overlays}" if args.overlays else ""))
    return m


if __name__ == "__main__":
    cli.cli_main(main)
