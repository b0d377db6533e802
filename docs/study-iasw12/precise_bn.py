"""Precise BatchNorm statistics recomputed on training images (labeled, or labeled + unlabeled; without or with
the weak augmentation) before evaluating a run's final checkpoint, at both class priors; prints one line per run.

    python docs/study-iasw12/precise_bn.py runs/s27/uc0-s0
"""
import json, os, sys
import numpy as np, torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data, augment, evaluate

def recompute_bn(model, loader, device="cpu"):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats(); m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in loader:
            model(batch[0].to(device))
    for m, mo in zip(bns, saved):
        m.momentum = mo
    model.eval()

def run(path, reps=1):
    ckpt = torch.load(os.path.join(path, "checkpoint.pt"), map_location="cpu", weights_only=True)
    cfg = json.load(open(os.path.join(path, "config.json")))
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"])
    idx_l, idx_u, idx_e = data.split_indices(ds, data.load_split(os.path.join(path, "split.json")))
    L = lambda idx, train=False, bs=8: torch.utils.data.DataLoader(augment.LabeledSet(ds, idx, train=train), batch_size=bs, shuffle=False)
    out = {}
    for variant in ("orig", "bn_l", "bn_lu", "bn_l_aug", "bn_lu_aug"):
        torch.manual_seed(0)
        model = evaluate.load_model(ckpt, cfg)
        if variant != "orig":
            idx = idx_l if "lu" not in variant else np.concatenate([idx_l, idx_u])
            aug = variant.endswith("aug")
            recompute_bn(model, L(idx, train=aug, bs=8 if not aug else 8))
        model.eval()
        for mode in ("labeled", "unlabeled"):
            pr = evaluate.class_prior(mode, ds.labels[idx_l], model, L(idx_u))
            s, _ = evaluate.evaluate_model(model, L(idx_e), "cpu", shift=pr["prior_shift"])
            out[f"{variant}/{mode}"] = {k: s[k] for k in ("dice_mean", "accuracy", "balanced_accuracy", "auc", "predicted_malignant")} | {"pi": pr["class_prior"]}
    return out

if __name__ == "__main__":
    for p in sys.argv[1:]:
        o = run(p)
        print(p, " | ".join(f"{k} D{v['dice_mean']*100:.1f} A{v['accuracy']*100:.1f} U{v['auc']*100:.1f}" for k, v in o.items()), flush=True)
