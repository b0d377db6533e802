"""Which term of eq. (15) steers the update: the gradient each weighted term sends to each part of the model.

    python -m tools.diagnose runs/RUN                # from the run's checkpoint, at its step, on its batches
    python -m tools.diagnose runs/RUN --random-init  # the same config and batches, from random initialisation

For each summand of eq. (15) at the step (λ_seg L^l_seg, λ_seg μ L^u_seg, λ_seg α L^seg_c, λ_cls L^l_cls,
λ_cls μ L^u_cls, λ_cls β L^cls_c, γ L^u_itc: `losses.weighted_terms` with `hermes.eq15_coefficients`, the
coefficients training uses) the L2 norm of its gradient on each part of HermesNet, averaged over --batches
training batches drawn as train.py draws them (augment.DeviceBatches).
The optimizers see the sum: a term whose gradient is several times the supervised one steers the update
(Adam, the segmentation optimizer, normalises the sum, not each term). Used in docs/when-does-hermes-help.md.
"""
import argparse
import copy
import json
import os
import sys

import torch

if __package__ in (None, ""):  # run by path (python tools/NAME.py): the project's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import augment
import cli
import data
import hermes
import runner
import train

# the parts of HermesNet a gradient is measured on (models.HermesNet.SEG_PARTS + CLS_PARTS)
GROUPS = {"seg encoder": ("seg_encoder",), "seg decoder": ("seg_decoder",), "cls network": ("cls_net",),
          "heads + ITA": ("pixel_head", "itc_seg_head", "ita", "image_head", "itc_cls_head")}


def term_gradient_norms(model, banks, batch_l, batch_u, it, total, cfg, groups=GROUPS):
    """{term: {group: ||∂ term / ∂ θ_group||_2}} for one Hermes step; a term without a graph has norm 0.

    One forward (hermes_step with keep_terms) and one backward per term (retain_graph); `banks` is pushed to
    as in training, so pass a copy to keep the original. No parameter's .grad is touched."""
    _, stats = hermes.hermes_step(model, banks, batch_l, batch_u, it, total, cfg, keep_terms=True)
    params = {g: [p for n in names for p in getattr(model, n).parameters()] for g, names in groups.items()}
    flat = [p for ps in params.values() for p in ps]
    out = {}
    for k, term in stats["terms"].items():
        if not (torch.is_tensor(term) and term.requires_grad):
            out[k] = dict.fromkeys(groups, 0.0)
            continue
        grads = torch.autograd.grad(term, flat, retain_graph=True, allow_unused=True)
        sq, i = {}, 0
        for g, ps in params.items():
            sq[g] = sum(float(x.float().pow(2).sum()) for x in grads[i:i + len(ps)] if x is not None)
            i += len(ps)
        out[k] = {g: v ** 0.5 for g, v in sq.items()}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Gradient norm of each weighted term of eq. (15) on each part of "
                                            "the model, from a run's checkpoint (or random init).")
    p.add_argument("run", help="a train.py run folder (config.json, split.json, checkpoint.pt)")
    p.add_argument("--random-init", action="store_true", help="random weights (and empty banks) instead of "
                                                              "the checkpoint's, at step 0")
    p.add_argument("--batches", type=int, default=4, help="training batches averaged over (default 4)")
    p.add_argument("--out", default=None, help="also write the table as JSON here")
    p.add_argument("--debug", action="store_true", help=f"show the Python traceback of an error (or {cli.DEBUG_ENV}=1)")
    args = p.parse_args(argv)
    files = {f: os.path.join(args.run, f) for f in ("config.json", "split.json", "checkpoint.pt")}
    for f, path in files.items():
        if not os.path.isfile(path) and not (f == "checkpoint.pt" and args.random_init):
            raise cli.MissingFileError(f"{path} not found: give a train.py run folder")
    with open(files["config.json"]) as f:
        cfg = {**vars(train.build_parser().parse_args([])), **json.load(f)}   # older runs lack newer keys
    torch.manual_seed(cfg["seed"])
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"],
                           demo_size=cfg.get("demo_size"), unlabeled_dirs=cfg.get("unlabeled_dir"))
    idx_l, idx_u, _ = data.split_indices(ds, data.load_split(files["split.json"], ds))
    model = train.build_model({**cfg, "init": None, "init_seg_encoder": None, "init_cls_encoder": None,
                               "pretrained": False})
    hcfg = hermes.config_from(cfg)
    banks, it = hermes.make_banks(model, hcfg), 0
    if not args.random_init:
        ckpt = runner.read_checkpoint(files["checkpoint.pt"], resumable=False)   # a finished run's is lean
        runner.load_checkpoint(ckpt, model, banks)
        it = int(ckpt["iter"])
    model.train()
    batches = augment.DeviceBatches(ds, idx_l, idx_u, cfg["batch_size"], cfg["seed"])
    rows = [term_gradient_norms(model, copy.deepcopy(banks), *batches(it + i), min(it + i, cfg["iters"] - 1),
                                cfg["iters"], hcfg) for i in range(args.batches)]
    mean = {k: {g: sum(r[k][g] for r in rows) / len(rows) for g in GROUPS} for k in hermes.PARTS}
    where = "random init" if args.random_init else f"checkpoint at step {it}"
    print(f"{args.run} ({where}), gradient L2 norm of each weighted term of eq. (15), mean of {len(rows)} batches")
    print("| term | " + " | ".join(GROUPS) + " |\n|---|" + "---|" * len(GROUPS))
    for k in hermes.PARTS:
        print(f"| {k} | " + " | ".join(f"{mean[k][g]:.3f}" for g in GROUPS) + " |")
    if args.out:
        cli.write_json_atomic({"run": args.run, "step": it, "random_init": args.random_init, "norms": mean}, args.out)
    return mean


if __name__ == "__main__":
    cli.cli_main(main)
