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


def ita_gain(model, x):
    """What inter-task attention (eqs. (3)–(5)) does to the classification features at each ResNet stage it
    follows: [{"stage", "M_c", "M_s" (means), "gain": ||x_out|| / ||x_cls|| (per image, then mean)}], in eval
    mode, for images x (B,3,S,S). The paper's form multiplies x_cls by M_c M_s (each in (0, 1)), so a gain
    near 0 means the classifier sees almost nothing of its own features."""
    seen = []

    def hook(module, inputs, output):
        x_cls, (x_out, m_c, m_s) = inputs[0], output
        gain = x_out.flatten(1).norm(dim=1) / x_cls.flatten(1).norm(dim=1).clamp_min(1e-12)   # (B,)
        seen.append({"M_c": float(m_c.mean()), "M_s": float(m_s.mean()), "gain": float(gain.mean())})

    handles = [m.register_forward_hook(hook) for m in model.ita]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x, ias=True)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [{"stage": i + 1, **r} for i, r in enumerate(seen)]


def main(argv=None):
    p = argparse.ArgumentParser(description="Gradient norm of each weighted term of eq. (15) on each part of "
                                            "the model, from a run's checkpoint (or random init).")
    p.add_argument("run", help="a train.py run folder (config.json, split.json, checkpoint.pt)")
    p.add_argument("--random-init", action="store_true", help="random weights (and empty banks) instead of "
                                                              "the checkpoint's, at step 0")
    p.add_argument("--batches", type=int, default=4, help="training batches averaged over (default 4)")
    p.add_argument("--out", default=None, help="also write the table as JSON here")
    p.add_argument("--ita", action="store_true", help="instead: what inter-task attention does to the "
                                                      "classification features (ita_gain) on labeled batches")
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
    if args.ita:
        stages = [ita_gain(model, batches(it + i)[0][0]) for i in range(args.batches)]
        mean = [{"stage": r["stage"], **{k: sum(s[j][k] for s in stages) / len(stages) for k in ("M_c", "M_s", "gain")}}
                for j, r in enumerate(stages[0])]
        print(f"{args.run} (step {it}, ita_form {cfg.get('ita_form', 'paper')}): inter-task attention on the "
              f"classification features, mean of {len(stages)} labeled batches")
        print("| after ResNet stage | mean M_c | mean M_s | ‖x_out‖ / ‖x_cls‖ |\n|---|---|---|---|")
        for r in mean:
            print(f"| layer{r['stage']} | {r['M_c']:.3f} | {r['M_s']:.3f} | {r['gain']:.3f} |")
        if args.out:
            cli.write_json_atomic({"run": args.run, "step": it, "ita": mean}, args.out)
        return mean
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
