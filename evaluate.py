"""Evaluation of Hermes runs: per-image metrics, a checkpoint on its evaluation split, overlays, multi-run tables.

    python evaluate.py runs/demo-40-seed0                      # final checkpoint -> runs/demo-40-seed0/metrics.json
    python evaluate.py runs/demo-40-seed0 --checkpoint best    # best.pt -> metrics_best.json
    python evaluate.py runs/x/checkpoint.pt --overlays ov/     # PNG overlays + attention panels
    python evaluate.py --summary runs/busi-72-seed* runs/busi-144-seed* --out table.md   # paper Tables 1-2
    python evaluate.py --plot-pseudo-labels runs/busi-72-seed* --out fig1.png   # paper Fig. 1 from log.csv

Metrics (paper Sec. 4.1 names Dice ± std and accuracy; SPEC §5 adds the rest). Per image, binary masks (H,W):
    Dice = 2|P∩G| / (|P|+|G|),  IoU = |P∩G| / |P∪G|,
    HD95 = 95th percentile of the symmetric boundary-to-boundary distances (pixels of the S×S evaluation grid).
    Both masks empty: Dice 1, IoU 1, HD95 0.  Exactly one empty: Dice 0, IoU 0, HD95 = image diagonal
    sqrt(H²+W²) (the largest distance possible in the image, so means over images stay finite).
Over images: mean and sample std (ddof=1; 0 for one image). Classification (malignant = 1 is positive):
accuracy, sensitivity, specificity, AUC (Mann-Whitney rank formula, ties averaged); a rate whose
denominator class is absent is NaN, written as null in JSON and skipped by the summary tables.

Run folder (train.py): config.json, split.json, checkpoint.pt (final), best.pt (best evaluation Dice, i.e.
selected on the evaluation split, the paper's protocol: optimistic, not a held-out test score), metrics.json.
evaluate_run writes, beside the checkpoint, metrics.json for checkpoint.pt (keys it does not compute, such as
train.py's "best" block, are kept) and metrics_<stem>.json for any other file (best.pt -> metrics_best.json),
plus per_image[_<stem>].csv.
"""
import argparse
import csv
import inspect
import json
import math
import os
import re
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.stats import rankdata

SUMMARY_KEYS = ["dice_mean", "dice_std", "iou_mean", "iou_std", "hd95_mean", "hd95_std",
                "accuracy", "sensitivity", "specificity", "auc", "n_images"]
SELECTED_ON_BEST = "evaluation split (the paper's protocol; optimistic, not a test score)"
SELECTED_ON_FINAL = "none (last iteration; the headline numbers)"
# Colours of the paper's Fig. 4 / 12-14: red ground truth, green prediction, yellow overlap.
RED, GREEN, YELLOW = (255, 0, 0), (0, 255, 0), (255, 255, 0)


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
                           "hd95": hd95(pred[b], gt[b])}
                    if keep_masks:
                        rec["pred_mask"] = pred[b]
                    per_image.append(rec)
    finally:
        model.train(was_training)
    if not per_image:
        raise ValueError("evaluate.py: the evaluation loader yielded no images")
    return summarize(per_image), per_image


def pick_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU -> a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        import data
        raise data.DataError("--device cuda asked for, but torch sees no CUDA device: use --device cpu (or auto)")
    return torch.device(name)


def resolve_checkpoint(path, which="final"):
    """(checkpoint file, metrics json, per-image csv) for a run folder (+ which) or a checkpoint file.

    Folder: which="final" -> checkpoint.pt, "best" -> best.pt. File: used as given (`which` is ignored).
    Outputs lie beside the checkpoint: metrics_<stem>.json / per_image_<stem>.csv (metrics_checkpoint.json,
    metrics_best.json, ...); metrics.json is train.py's record of the run and is never rewritten here.
    """
    import data
    if os.path.isdir(path):
        if which not in ("final", "best"):
            raise data.DataError(f"evaluate.py: --checkpoint must be final or best, got {which!r}")
        ckpt = os.path.join(path, "checkpoint.pt" if which == "final" else "best.pt")
    else:
        ckpt = path
    if not os.path.isfile(ckpt):
        raise data.MissingFileError(f"evaluate.py: no checkpoint {ckpt} (a run folder holds checkpoint.pt and "
                                    f"best.pt)")
    stem = os.path.splitext(os.path.basename(ckpt))[0]
    folder = os.path.dirname(os.path.abspath(ckpt))
    return ckpt, os.path.join(folder, f"metrics_{stem}.json"), os.path.join(folder, f"per_image_{stem}.csv")


def load_model(ckpt, config):
    """A fresh HermesNet built from `config` (keys matching HermesNet.__init__; never pretrained, the
    checkpoint holds the weights) with ckpt["model"] loaded strictly, memory banks and wrapper prefixes removed."""
    from models import HermesNet
    params = inspect.signature(HermesNet.__init__).parameters
    kwargs = {k: config[k] for k in params if k in config and k not in ("self", "pretrained")}
    model = HermesNet(pretrained=False, **kwargs)
    state = {}
    for k, v in ckpt["model"].items():
        k = re.sub(r"^(_orig_mod\.|module\.)+", "", k)
        if not k.startswith(("pixel_bank.", "image_bank.")):  # training-time memory banks (hermes.MemoryBank)
            state[k] = v
    model.load_state_dict(state, strict=True)
    return model


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None  # NaN/inf -> null: strict JSON
    return v


def write_json_atomic(obj, path):
    """JSON (NaN -> null) through data.write_atomic (temporary file, fsync, rename): never half a file."""
    import data
    data.write_json_atomic(_jsonable(obj), path, indent=2, allow_nan=False)


def evaluate_run(run_dir_or_ckpt, data_root=None, which="final", overlays=None, device="cpu", batch_size=8,
                 n_panels=4, amp=False):
    """Evaluate a run's checkpoint on its split's evaluation images; write metrics json + per-image csv.

    run_dir_or_ckpt: a run folder (with which = "final" | "best") or a checkpoint file; split.json (and
    config.json when the checkpoint has no "config") must lie beside the checkpoint.
    data_root: overrides the config's data_root (the run may come from another machine).
    overlays: folder for the PNGs (write_overlays), or None.
    Returns the dict written to the metrics file (SUMMARY_KEYS, checkpoint, iter, selected_on, method, ...).
    """
    import data
    ckpt_path, metrics_path, csv_path = resolve_checkpoint(run_dir_or_ckpt, which)
    folder = os.path.dirname(os.path.abspath(ckpt_path))
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file, or weights_only refusing an arbitrary pickle: say which file
        raise data.DataError(f"evaluate.py: cannot read {ckpt_path} ({data._one_line(e)}); a damaged checkpoint.pt "
                             f"can be replaced by --checkpoint best, or the run retrained") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise data.DataError(f"evaluate.py: {ckpt_path} is not a train.py checkpoint (no 'model' key)")
    config = ckpt.get("config")
    if config is None:
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg_path):
            raise data.MissingFileError(f"evaluate.py: {ckpt_path} holds no config and there is no {cfg_path}")
        with open(cfg_path) as f:
            config = json.load(f)
    split_path = os.path.join(folder, "split.json")
    if not os.path.isfile(split_path):
        raise data.MissingFileError(f"evaluate.py: no {split_path} beside the checkpoint (train.py writes it)")
    split = data.load_split(split_path)
    if split.get("dataset", config["dataset"]) != config["dataset"]:
        raise data.DataError(f"evaluate.py: {split_path} is a split of {split['dataset']!r}, the checkpoint was "
                             f"trained on {config['dataset']!r}")

    device = pick_device(device)
    ds = data.load_dataset(config["dataset"], data_root or config.get("data_root"),
                           image_size=config["image_size"], seed=config["seed"], demo_size=config.get("demo_size"))
    _, _, idx_eval = data.split_indices(ds, split)
    loader = torch.utils.data.DataLoader(data.LabeledSet(ds, idx_eval, train=False), batch_size=batch_size,
                                         shuffle=False)
    model = load_model(ckpt, config).to(device)
    summary, per_image = evaluate_model(model, loader, device, amp=amp and device.type == "cuda",
                                        keep_masks=overlays is not None)
    names = [ds.names[i] for i in idx_eval]

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "label", "pred", "score", "dice", "iou", "hd95"])
            for n, r in zip(names, per_image):
                w.writerow([n, r["label"], r["pred"], f"{r['score']:.6f}", f"{r['dice']:.6f}", f"{r['iou']:.6f}",
                            f"{r['hd95']:.4f}"])
    data.write_atomic(csv_path, write_csv)
    if overlays is not None:
        images = ds.images[idx_eval]
        gts = ds.masks[idx_eval].astype(bool)
        preds = np.stack([r["pred_mask"] for r in per_image])
        xs = torch.stack([loader.dataset[i][0] for i in range(min(n_panels, len(idx_eval)))])
        write_overlays(overlays, images, gts, preds, names, model=model, x_panels=xs, device=device)

    is_best = os.path.basename(ckpt_path) == "best.pt"
    result = {**summary, "checkpoint": os.path.basename(ckpt_path), "iter": ckpt.get("iter"),
              "selected_on": SELECTED_ON_BEST if is_best else SELECTED_ON_FINAL,
              "method": method_name(config), "dataset": config["dataset"], "labels": config.get("labels"),
              "seed": config.get("seed"), "per_image_file": os.path.basename(csv_path)}
    write_json_atomic(result, metrics_path)
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
    pred, gt = _pair(pred, gt)
    out = _grey(image)
    if out.shape[:2] != pred.shape:
        raise ValueError(f"evaluate.py: image {out.shape[:2]} and mask {pred.shape} differ in size")
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
    """Saliency (eq. 6), M_s (eq. 4), M_c (eq. 3) and the M_c-weighted energy for a batch x (B,3,S,S).

    The energy E = mean_c |M_c,c · x_cls,c| (the channel mean of |x_m|, eq. 5) is read by forward hooks on
    the model's InterTaskAttention modules; it is shown because M_c (B,C,1,1) has no spatial extent itself.
    Returns one dict per image: "saliency" (S,S) or None, "M_s" [(h,w)]*L, "M_c" [(C,)]*L, "energy" [(h,w)]*L.
    """
    from models import InterTaskAttention
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

    row 1: image | overlay (red GT, green prediction, yellow overlap) | saliency (eq. 6) | M_c bars (3 levels)
    row 2: M_s of the ITA after layer1, layer2, layer3 (eq. 4, upsampled bilinear) | colour scale
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
        tiles.append((_blend_heat(grey, _resize(maps["saliency"], tile)), "saliency (eq. 6)"))
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


# ------------------------------------------------------------------------------------- multi-run table
ORDER = ["SupOnly", "DTCL only", "IAS only", "ITCL only", "Hermes w/o DTCL", "Hermes w/o IAS", "Hermes w/o ITCL",
         "Hermes"]  # rows in the order of the paper's Tables 1-3 (baseline first, full method last)
DATASET_NAMES = {"busi": "BUSI", "udiat": "UDIAT", "sztus": "SZ-TUS", "folder": "folder", "demo": "demo"}
# Config keys that do not change what a run computes; other differences inside one table cell are reported.
NEUTRAL_KEYS = {"seed", "git_commit", "data_root", "out", "resume", "device", "stop_after", "split", "eval_every",
                "ckpt_every", "log_every"}


def method_name(config):
    """Row name of a run from its switches (Table 3 vocabulary; IAS = the paper's SM/ITA).

    All of dtcl, ias, itcl on -> "Hermes"; all off -> "SupOnly"; one on -> "<X> only"; two on -> "Hermes w/o <X>".
    task "seg"/"cls" trains one branch, so ias and itcl (which need both) count as off and "SS"/"SC" is added;
    threshold "confidence"/"none" adds "conf. threshold"/"no threshold" when dtcl is on (it only acts there).
    E.g. "Hermes", "SupOnly (SS)", "DTCL only (SC)", "Hermes w/o ITCL", "Hermes (conf. threshold)".
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
    notes = {"seg": ["SS"], "cls": ["SC"]}.get(task, [])
    if on["DTCL"] and threshold != "dual":
        notes.append({"confidence": "conf. threshold", "none": "no threshold"}.get(threshold, threshold))
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


# ------------------------------------------------------------------------------ pseudo-label plot (Fig. 1)
PL_TARGETS = [("pix", "pixels", "Segmentation pseudo-masks (pixels)"),
              ("img", "images", "Classification pseudo-labels (images)")]
RULE_LABELS = {"dual": "dual threshold (τ, κ)", "confidence": "confidence (τ)", "none": "no threshold"}
# Curves per target: (curve key, accuracy column, kept-fraction column or None = all kept, colour).
PL_CURVES = [("all", "pl_acc_{t}_all", None, (31, 119, 180)),
             ("conf", "pl_acc_{t}_conf", "kept_{t}_conf", (255, 127, 14)),
             ("kept", "pl_acc_{t}_kept", "kept_{t}", (44, 160, 44))]


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
            print(f"evaluate.py --plot-pseudo-labels: skipping {d}: no log.csv", file=sys.stderr)
            continue
        logs.append((d, *load_pl_log(d)))
    if not logs:
        raise FileNotFoundError("evaluate.py --plot-pseudo-labels: no run folder with a log.csv")
    iters = np.array(sorted({int(i) for _, its, _, _ in logs for i in its}), dtype=np.int64)
    rules = sorted({rule for *_, rule in logs})
    if len(rules) > 1:
        print(f"evaluate.py --plot-pseudo-labels: runs use different threshold rules ({', '.join(rules)}); "
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


def _font(px):
    """PIL's default font at px pixels (Pillow >= 10.1 with FreeType); the fixed bitmap font otherwise."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, AttributeError, ImportError, OSError):
        font = ImageFont.load_default()
        font.hermes_scale = max(1, round(px / 11))  # _text enlarges the ~11 px bitmap glyphs by this
        return font


def _text_width(font, s):
    if not _has_greek(font):
        s = s.replace("τ", "tau").replace("κ", "kappa")
    return (font.getbbox(s)[2] - font.getbbox(s)[0]) * getattr(font, "hermes_scale", 1)


def _has_greek(font):
    """Whether font draws τ and κ (PIL's default fonts do not: they would come out as boxes)."""
    def mask(s):
        m = font.getmask(s)
        return m.size, bytes(m)
    try:
        missing = mask("\U0010FFFF")
        return mask("τ") != missing and mask("κ") != missing
    except Exception:
        return False


def _text(img, xy, s, font, fill=(0, 0, 0), anchor="la", angle=0):
    """Draw s at xy (anchor: l/m/r + a/m/b as in PIL) on img, rotated by angle degrees (90: reads bottom-up).
    Greek letters fall back to names if the font cannot draw them (the bitmap font)."""
    if not _has_greek(font):
        s = s.replace("τ", "tau").replace("κ", "kappa")
    l, t, r, b = font.getbbox(s)
    tile = Image.new("RGBA", (max(r - l, 1) + 2, max(b - t, 1) + 2), (255, 255, 255, 0))
    ImageDraw.Draw(tile).text((1 - l, 1 - t), s, font=font, fill=fill)
    scale = getattr(font, "hermes_scale", 1)
    if scale > 1:
        tile = tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
    if angle:
        tile = tile.rotate(angle, expand=True)
    w, h = tile.size
    x = xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
    y = xy[1] - {"a": 0, "m": h / 2, "b": h}[anchor[1]]
    img.paste(tile, (int(round(x)), int(round(y))), tile)


def _nice_step(span, n):
    raw = max(span, 1e-12) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _ticks(lo, hi, n):
    step = _nice_step(hi - lo, n)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int(math.floor((hi - first) / step + 1e-9)) + 1)], step


def _fmt_tick(v, step):
    digits = max(0, -int(math.floor(math.log10(step) + 1e-9))) if step < 1 else 0
    return f"{v:.{digits}f}"


def _polyline(draw, pts, fill, width, dash=None):
    """A line through the finite points (x, y), skipping NaN ones (a single point becomes a dot);
    dash = (on, off) lengths for a dashed line."""
    pts = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
    if len(pts) == 1:
        x, y = pts[0]
        draw.ellipse([x - width, y - width, x + width, y + width], fill=fill)
    elif pts and dash is None:
        draw.line(pts, fill=fill, width=width, joint="curve")
    elif pts:  # dashed: walk along the polyline, alternating on/off lengths
        on, off = dash
        pos = 0.0
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            length, a = math.hypot(x1 - x0, y1 - y0), 0.0
            while a < length:
                phase = pos % (on + off)
                step = min((on - phase) if phase < on else (on + off - phase), length - a)
                if phase < on:
                    f0, f1 = a / length, (a + step) / length
                    draw.line([(x0 + f0 * (x1 - x0), y0 + f0 * (y1 - y0)),
                               (x0 + f1 * (x1 - x0), y0 + f1 * (y1 - y0))], fill=fill, width=width)
                a += step
                pos += step


def _lighter(c, f=0.35):
    return tuple(int(round(255 - f * (255 - v))) for v in c)


def plot_pseudo_labels(run_dirs, out_png, smooth=5, size=(1200, 500)):
    """Fig.-1-style PNG of pseudo-label accuracy over training from the runs' log.csv (seeds averaged).

    Two panels, segmentation pixels | classification images. Upper plot: accuracy of all pseudo-labels (no
    threshold), of those confidence alone keeps (max p >= τ) and of those the run's rule keeps (the dual
    threshold, eq. 7, by default; config.json's "threshold"), x = iteration; bold = centred moving average over
    `smooth` logged rows (1 = none), faint = the run-averaged values. Lower strip: the fraction kept by the
    confidence and the run's rule. Points where nothing was kept are not drawn.
    Returns {"png", "curves" (pseudo_label_curves), "table" (pseudo_label_table rows), "text" (markdown)}.
    """
    curves = pseudo_label_curves(run_dirs)
    rows = pseudo_label_table(curves)
    text = format_pl_table(curves, rows)
    ss = 2  # drawn at twice the size and downsampled: smooth lines and text
    W, H = size
    img = Image.new("RGB", (W * ss, H * ss), "white")
    draw = ImageDraw.Draw(img)
    f_title, f_sub, f_lab, f_tick = (_font(px * ss) for px in (19, 16, 14, 12))
    iters = curves["iter"].astype(np.float64)
    x_hi = float(iters.max()) if iters.size else 1.0
    x_ticks, x_step = _ticks(0.0, max(x_hi, 1.0), 6)
    x_hi = max(x_hi, 1.0)
    labels = [_curve_label(k, curves["rule"]) for k, *_ in PL_CURVES]

    n = len(curves["runs"])
    what = f"{n} runs averaged at equal iterations" if n > 1 else os.path.basename(os.path.normpath(curves["runs"][0]))
    title = (f"Pseudo-label accuracy during training ({what}"
             + (f", moving average over {smooth} logged rows)" if smooth and smooth > 1 else ")"))
    _text(img, (W * ss / 2, 8 * ss), title, f_title, anchor="ma")

    top, acc_bot, strip_top, strip_bot = 62, 292, 312, 392
    pw = W / len(PL_TARGETS)
    for p, (t, _, subtitle) in enumerate(PL_TARGETS):
        x0, x1 = p * pw + 78, (p + 1) * pw - 22
        sx = lambda v: ss * (x0 + (x1 - x0) * v / x_hi)
        finite = np.concatenate([curves[t][k][np.isfinite(curves[t][k])] for k, *_ in PL_CURVES])
        vmin = float(finite.min()) if finite.size else 0.0
        vmin = min(vmin, 0.98)
        y_step = _nice_step(1.0 - vmin, 5)
        y_lo = max(0.0, math.floor(vmin / y_step + 1e-9) * y_step)
        if vmin - y_lo < 0.05 * y_step and y_lo > 0:  # keep the lowest point off the frame
            y_lo = max(0.0, y_lo - y_step)
        y_hi = 1.0
        y_ticks, y_step = _ticks(y_lo, y_hi, 5)

        def band(lo, hi, ytop, ybot, v):
            return ss * (ybot - (ybot - ytop) * (v - lo) / (hi - lo))

        sy = lambda v: band(y_lo, y_hi, top + 4, acc_bot, v)
        sk = lambda v: band(0.0, 1.0, strip_top + 3, strip_bot - 3, v)
        _text(img, (ss * (x0 + x1) / 2, ss * (top - 22)), subtitle, f_sub, anchor="ma")
        for ytop, ybot, ticks, to_y, step, name in ((top, acc_bot, y_ticks, sy, y_step, "accuracy"),
                                                     (strip_top, strip_bot, [0.0, 0.5, 1.0], sk, 0.5, "kept")):
            for v in ticks:  # horizontal grid + y tick labels
                y = to_y(v)
                draw.line([(ss * x0, y), (ss * x1, y)], fill=(225, 225, 225), width=ss)
                draw.line([(ss * x0 - 5 * ss, y), (ss * x0, y)], fill=(0, 0, 0), width=ss)
                _text(img, (ss * x0 - 7 * ss, y), _fmt_tick(v, step), f_tick, anchor="rm")
            for v in x_ticks:
                draw.line([(sx(v), ss * ytop), (sx(v), ss * ybot)], fill=(225, 225, 225), width=ss)
            draw.rectangle([ss * x0, ss * ytop, ss * x1, ss * ybot], outline=(0, 0, 0), width=ss)
            _text(img, (ss * (x0 - 44), ss * (ytop + ybot) / 2), name, f_lab, anchor="rm", angle=90)
        for v in x_ticks:
            draw.line([(sx(v), ss * strip_bot), (sx(v), ss * (strip_bot + 5))], fill=(0, 0, 0), width=ss)
            _text(img, (sx(v), ss * (strip_bot + 7)), _fmt_tick(v, x_step), f_tick, anchor="ma")
        _text(img, (ss * (x0 + x1) / 2, ss * (strip_bot + 24)), "iteration", f_lab, anchor="ma")

        def clip_pts(ys, to_y):
            return [(sx(x), to_y(y) if np.isfinite(y) else float("nan")) for x, y in zip(iters, ys)]

        for key, _, kept_col, colour in PL_CURVES:  # faint raw values first, then the smoothed curves
            if smooth and smooth > 1:
                _polyline(draw, clip_pts(curves[t][key], sy), _lighter(colour), ss)
        for key, _, kept_col, colour in PL_CURVES:
            _polyline(draw, clip_pts(moving_average(curves[t][key], smooth), sy), colour, 2 * ss + 1)
            if kept_col is not None:
                _polyline(draw, clip_pts(moving_average(curves[t][f"kept_{key}"], smooth), sk), colour,
                          2 * ss, dash=(7 * ss, 4 * ss) if key == "conf" else None)

    # legend: one row of curve keys, one line saying what the strips and line styles are
    ly = H - 44
    items = [(lab if any(np.isfinite(curves[t][k]).any() for t, *_ in PL_TARGETS) else f"{lab}: not in log.csv",
              c) for lab, (k, *_, c) in zip(labels, PL_CURVES)]
    widths = [34 + _text_width(f_lab, lab) / ss + 28 for lab, _ in items]
    x = (W - sum(widths)) / 2
    for (lab, c), w in zip(items, widths):
        draw.line([(ss * x, ss * ly), (ss * (x + 26), ss * ly)], fill=c, width=3 * ss)
        _text(img, (ss * (x + 34), ss * ly), lab, f_lab, anchor="lm")
        x += w
    note = ("upper plots: accuracy of the pseudo-labels each rule keeps"
            + (" (bold: smoothed, faint: raw)" if smooth and smooth > 1 else "")
            + ";  lower strips: fraction kept (dashed: confidence, solid: "
            + ("dual" if curves["rule"] == "dual" else "run's rule") + ")")
    _text(img, (W * ss / 2, ss * (ly + 20)), note, f_tick, fill=(70, 70, 70), anchor="ma")

    img = img.resize((W, H), Image.LANCZOS)
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    img.save(out_png)
    return {"png": out_png, "curves": curves, "table": rows, "text": text}


# ------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="a run folder or checkpoint file; with --summary or "
                                               "--plot-pseudo-labels, run folders")
    p.add_argument("--summary", action="store_true", help="tabulate several runs (paper Tables 1-2)")
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
    if args.summary:
        md = summary_markdown(args.paths)
        print(md)
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
        return md
    if args.plot_pseudo_labels:
        out = args.out or os.path.join(args.paths[0], "pseudo_labels.png")
        res = plot_pseudo_labels(args.paths, out, smooth=args.smooth)
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
    import data
    data.cli_main(main)
