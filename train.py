"""Train one joint Hermes model (segmentation + classification) from a few labeled and many unlabeled images.

    python train.py                                              # built-in demo data, CPU-sized, a few minutes
    python train.py --dataset udiat --data-root PATH --labels 40 # the paper's configuration (Section 4.1)

One step = one loss (eq. 15, `hermes.hermes_step`), one backward, then SGD steps the classification branch and
Adam the segmentation branch, both with poly decay (Section 4.1). Everything an exact resume needs is written
atomically to RUN_DIR/checkpoint.pt; `--resume` continues a killed run as if it had never stopped.
"""
import argparse
import csv
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import augment
import cli
import cps
import data
import evaluate
import hermes
import models
from models import HermesNet

# Smallest label budget of each dataset in the paper's Tables 1-2 (Section 4.1); demo: 40 of its 168 train images.
DEFAULT_LABELS = {"demo": 40, "busi": 72, "udiat": 20, "sztus": 60, "folder": 40}
EVAL_KEYS = ["dice_mean", "iou_mean", "hd95_mean", "accuracy", "auc", "area_ratio"]
LOG_COLUMNS = ["kind", "iter", *hermes.STAT_KEYS, "lr_seg", "lr_cls", "sec_per_step", *EVAL_KEYS]
D = hermes.HermesConfig()  # the defaults of every method flag below
# Arguments that may differ between a run and its resumption (they do not change the trained weights); the
# resumed part uses the values given on its command line.
RESUME_OVERRIDABLE = {"resume", "device", "data_root", "stop_after", "out", "workers", "debug", "eval_every",
                      "ckpt_every", "log_every"}
# A run made before an argument existed resumes with the behaviour it was made with.
RESUME_MISSING = {"augment": "cpu", "channels_last": False, "burn_in": 0, "method": "hermes", "cps_weight": 1.5}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # data (Section 4.1)
    a("--dataset", default="demo", choices=["demo", "busi", "udiat", "sztus", "folder"],
      help="dataset; demo is generated and needs no --data-root (default: demo)")
    a("--data-root", default=None, help="folder of the dataset as its publisher ships it (README: Datasets)")
    a("--labels", type=int, default=None,
      help="labeled images, half per class (paper: BUSI 72/144/216, UDIAT 20/40/60, SZ-TUS 60/120; "
           "default: the smallest budget of the dataset, demo 40)")
    a("--image-size", type=int, default=None, help="side S of the S×S input (paper §4.1: 224; demo: 96)")
    a("--demo-size", type=int, default=240, help="number of generated demo images (demo only)")
    a("--split", default=None, help="reuse a split.json instead of drawing one from --seed")
    a("--seed", type=int, default=0, help="seed of the split, initialisation, augmentation and sampling")
    # optimisation (Section 4.1)
    a("--batch-size", type=int, default=8, help="labeled images per step, and as many unlabeled (§4.1: 8 + 8)")
    a("--iters", type=int, default=None, help="training iterations (paper: 3000; demo: 120, CPU-sized)")
    a("--lr", type=float, default=1e-4, help="initial lr of both branches (§4.1 and Table 4: 1e-4)")
    a("--lr-seg", type=float, default=None,
      help="not in the paper: initial lr of the segmentation branch (Adam), default --lr (README: from scratch)")
    a("--lr-cls", type=float, default=None,
      help="not in the paper: initial lr of the classification branch (SGD), default --lr (README: from scratch)")
    a("--burn-in", type=int, default=D.burn_in,
      help="not in the paper: first N steps trained as SupOnly (no teacher pass, no unlabeled term), then the "
           "full objective; same total steps (Unbiased Teacher's burn-in)")
    a("--poly-power", type=float, default=0.9, help="poly decay lr·(1 - it/total)^power (§4.1: 0.9)")
    a("--momentum", type=float, default=0.9, help="SGD momentum of the cls branch (§4.1: 0.9)")
    a("--weight-decay", type=float, default=1e-4, help="SGD weight decay of the cls branch (§4.1: 1e-4)")
    # model (Section 3.1-3.2)
    a("--seg-encoder", default="resnet34", choices=["resnet34", "resnet18"],
      help="ResNet encoder of the U-Net (the paper's 'pre-trained U-Net', §4.1)")
    a("--pretrained", action=argparse.BooleanOptionalAction, default=None,
      help="ImageNet weights for both encoders (§4.1: pretrained; default on for real data, off for demo)")
    a("--contrast-level", type=int, default=3, choices=[1, 2, 3, 4],
      help="seg-encoder level of the pixel contrast (Table 5: Conv3 = layer3, best)")
    a("--cross-grad", action="store_true", help="let features crossing branches carry gradient (default: detached)")
    # method: Hermes, or the control CPS; ablation switches of Table 3 and the thresholds of Fig. 1 / Fig. 6
    a("--method", default=D.method, choices=["hermes", "cps"],
      help="hermes (the paper), or cps: cross pseudo supervision (Chen et al. 2021; Table 1's comparator) with the "
           "same networks and data, its classification branch as SupOnly's (implies --no-dtcl --no-ias --no-itcl)")
    a("--cps-weight", type=float, default=D.cps_weight, help="--method cps: λ of CPS (its paper: 1.5 on VOC)")
    a("--dtcl", action=argparse.BooleanOptionalAction, default=D.dtcl,
      help="dual-threshold contrastive learning and the unlabeled losses (Table 3; all three off = SupOnly)")
    a("--ias", action=argparse.BooleanOptionalAction, default=D.ias, help="inter-task attention and saliency (Table 3)")
    a("--itcl", action=argparse.BooleanOptionalAction, default=D.itcl, help="inter-task consistency learning (Table 3)")
    a("--task", default=D.task, choices=["joint", "seg", "cls"],
      help="train both branches, or one (Table 3's SS / SC columns)")
    a("--threshold", default=D.threshold, choices=["dual", "confidence", "none"],
      help="pseudo-label selection (eq. 7; Fig. 1 and Fig. 6 compare the three)")
    # loss weights of eq. (15), Section 4.1
    a("--lambda-seg", type=float, default=D.lambda_seg, help="λ_seg of eq. 15 (§4.1: 0.5)")
    a("--lambda-cls", type=float, default=D.lambda_cls, help="λ_cls of eq. 15 (§4.1: 1.0)")
    a("--alpha", type=float, default=D.alpha, help="α, weight of the pixel contrast (§4.1: 0.8)")
    a("--beta", type=float, default=D.beta, help="β, weight of the image contrast (§4.1: 0.2)")
    a("--gamma", type=float, default=D.gamma, help="γ, weight of the inter-task consistency (§4.1: 0.1)")
    a("--temperature", type=float, default=D.temperature, help="temperature of eq. 11-12 (§3.4: 0.07)")
    a("--eta-max", type=float, default=D.eta_max, help="η_max of eq. 16 (supp. §6: 0.75)")
    a("--eta-min", type=float, default=D.eta_min, help="η_min of eq. 16 (supp. §6: 0.25)")
    a("--n-anchors", type=int, default=D.n_anchors, help="anchors per class and step, half hard, half easy (§3.4)")
    a("--pixel-bank-size", type=int, default=D.pixel_bank_size, help="pixel memory bank entries per class (§3.4; size not given)")
    a("--image-bank-size", type=int, default=D.image_bank_size, help="image memory bank entries per class (§3.4; size not given)")
    # not in the paper: switches of the diagnosis in docs/when-does-hermes-help.md (defaults = the paper)
    a("--unlabeled-bn", default=D.unlabeled_bn, choices=["shared", "separate"],
      help="not in the paper. shared: labeled + strong unlabeled images in one BatchNorm batch and the teacher "
           "pass updating the running statistics; separate: unlabeled passes use their own batch statistics and "
           "leave the running ones (used at evaluation) to the labeled images")
    a("--unsup-seg-loss", default=D.unsup_seg_loss, choices=["dice", "ce", "dice+ce"],
      help="L^u_seg: eq. 9's Dice over kept pixels (the paper), or, not in the paper, pixel cross-entropy "
           "over kept pixels / all pixels (FixMatch's form), or their mean")
    a("--unsup-weight", type=float, default=D.unsup_weight,
      help="not in the paper: factor on L^u_seg and L^u_cls (the authors' code: 0.1)")
    a("--contrast-warmup", type=int, default=D.contrast_warmup,
      help="not in the paper: steps before the contrastive terms count (the authors' code: 10 epochs)")
    a("--gamma-ramp", type=int, default=D.gamma_ramp,
      help="not in the paper: γ·exp(-5(1 - it/R)²) until step R (the authors' code: R = 4000); 0 = constant γ")
    a("--ita-form", default="paper", choices=["paper", "residual"],
      help="inter-task attention output: eq. 5 (paper) or, not in the paper, x_cls + eq. 5 (residual)")
    # initialisation from files (offline stand-ins for --pretrained)
    a("--init", default=None, metavar="CKPT",
      help="start both branches from an earlier run's checkpoint.pt / best.pt (strict shapes)")
    a("--init-heads", action="store_true", help="with --init: also the projection heads (pixel, image, consistency)")
    a("--init-seg-encoder", default=None, metavar="FILE",
      help="torchvision-format ResNet state_dict for the U-Net encoder (e.g. the ImageNet resnet34 file)")
    a("--init-cls-encoder", default=None, metavar="FILE",
      help="torchvision-format ResNet-18 state_dict for the classification branch (fc is dropped)")
    # running
    a("--out", default=None, help="run folder (default runs/DATASET-LABELS-seedSEED); refused if non-empty "
                                  "unless --resume")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    a("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    a("--amp", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast (losses, thresholds, banks and BatchNorm statistics stay fp32). Default: on for a CPU "
           "with AMX (bf16 matrix units), off elsewhere and on CUDA; --no-amp forces fp32 (README: Speed)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None,
      help="model and image batches in channels-last memory format. Default: on with CUDA or bf16, off for "
           "fp32 on a CPU (no gain measured there; README: Speed)")
    a("--augment", default="device", choices=["device", "cpu"],
      help="device: whole batches augmented on the training device (augment.DeviceBatches); cpu: torchvision per "
           "image in --workers processes (augment.StepBatches, runs made before the flag existed)")
    a("--workers", type=int, default=None,
      help="--augment cpu: processes preparing batches ahead (default 0 on CPU, 4 on CUDA; results do not "
           "depend on it)")
    a("--eval-every", type=int, default=None, help="evaluate and checkpoint every N steps (default iters/10)")
    a("--ckpt-every", type=int, default=None, help="write checkpoint.pt every N steps (default: --eval-every)")
    a("--log-every", type=int, default=10, help="write a log.csv row every N steps")
    a("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # simulate a kill after N steps (tests)
    a("--debug", action="store_true", help=f"show the Python traceback of an error (or {cli.DEBUG_ENV}=1)")
    return p


def given_on_command_line(argv):
    """Names (dests) of the arguments the command line sets, as opposed to those left at their defaults."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resolve(args):
    """Fill the dataset-dependent defaults (the demo's CPU sizes, else the paper's §4.1) and check the arguments."""
    demo = args.dataset == "demo"
    if args.labels is None:
        args.labels = DEFAULT_LABELS[args.dataset]
    if args.image_size is None:
        args.image_size = 96 if demo else 224
    if args.iters is None:
        args.iters = 120 if demo else 3000
    if args.pretrained is None:
        args.pretrained = not demo
    if args.lr_seg is None:
        args.lr_seg = args.lr
    if args.lr_cls is None:
        args.lr_cls = args.lr
    if args.method == "cps":
        args.dtcl = args.ias = args.itcl = False
    if args.eval_every is None:
        args.eval_every = max(1, args.iters // 10)
    if args.ckpt_every is None:
        args.ckpt_every = args.eval_every
    if args.out is None:
        args.out = os.path.join("runs", f"{args.dataset}-{args.labels}-seed{args.seed}")
    if not demo and args.data_root is None:
        raise cli.DataError(f"--data-root is required for --dataset {args.dataset} (see README, Datasets)")
    if args.image_size % 32:
        raise cli.DataError(f"--image-size {args.image_size} must be divisible by 32 (the encoder downsamples "
                             f"32×), e.g. {max(32, 32 * round(args.image_size / 32))}")
    if args.iters < 1 or args.batch_size < 1:
        raise cli.DataError(f"--iters and --batch-size must be positive, got {args.iters} and {args.batch_size}")
    return args


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def to_device(batch, device):
    return tuple(b.to(device, non_blocking=True) for b in batch)


def poly_lr(base, it, total, power):
    return base * (1 - it / total) ** power  # §4.1: lr = lr_init·(1 - iter/iter_total)^0.9


def rng_state():
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path):
    """torch.save through cli.atomic_write: a kill leaves the old file intact."""
    return cli.atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def checkpoint(model, banks, opts, it, best, cfg, seconds, peer=None):
    """Everything an exact resume needs, the memory banks under their own key (and CPS's second network under
    "peer"); seconds = training wall time so far, over all resumed parts."""
    return {"model": model.state_dict(), "banks": banks.state_dict(),
            **({"peer": peer.state_dict()} if peer is not None else {}),
            **{f"opt_{k}": o.state_dict() for k, o in opts.items()},
            "iter": it, "rng": rng_state(), "best_dice": best["dice"], "best_iter": best["iter"], "config": cfg,
            "train_seconds": seconds}


def best_checkpoint(model, banks, it, best, cfg):
    """What evaluation needs (weights, memory banks, config, step), without optimizer or RNG states."""
    return {"model": model.state_dict(), "banks": banks.state_dict(), "iter": it, "config": cfg,
            "best_dice": best["dice"], "best_iter": best["iter"]}


def read_checkpoint(path):
    """A train.py checkpoint for --resume; a damaged or foreign file is a DataError naming it and the way out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unreadable
        raise cli.DataError(f"cannot read {path} ({cli.cause(e)}): it cannot be resumed; move the run "
                             f"folder aside and rerun the command without --resume") from e
    needed = {"model", "opt_seg", "opt_cls", "iter", "rng", "config"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise cli.DataError(f"{path} is not a resumable train.py checkpoint (it lacks "
                             f"{sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed)}); rerun the "
                             f"command without --resume into a new --out")
    return ckpt


def _write_csv(path, rows):
    def write(f):
        w = csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cli.atomic_write(path, write, newline="")


def load_checkpoint(ckpt, model, banks, opts, peer=None):
    """Inverse of `checkpoint` (a checkpoint from before the banks had their own key keeps them in "model")."""
    state = dict(ckpt["model"])
    bank_state = ckpt.get("banks") or {k.replace("_bank.", ".", 1): state.pop(k) for k in list(state)
                                       if k.startswith(("pixel_bank.", "image_bank."))}
    model.load_state_dict(state)
    banks.load_state_dict(bank_state)
    if peer is not None:
        peer.load_state_dict(ckpt["peer"])
    for k, o in opts.items():
        o.load_state_dict(ckpt[f"opt_{k}"])


def make_optimizers(model, cfg, peer=None):
    """§4.1: Adam for the segmentation branch (and CPS's second network), SGD (momentum, weight decay) for the
    classification branch; initial lrs --lr-seg / --lr-cls (both --lr by default)."""
    seg = model.seg_parameters() + (list(peer.parameters()) if peer is not None else [])
    # Adam: the fused kernel (one pass over all parameters; CPU, 25 M parameters: 0.03 instead of 0.10 s) where
    # torch has it; the same update up to float rounding. A loaded state (e.g. a checkpoint of the unfused
    # optimizer) keeps it fused: load_state_dict would otherwise take the saved groups' "fused" setting.
    # SGD stays per-parameter: fused SGD raises when parameters without a momentum buffer get their first
    # gradient after others (e.g. the ITA modules after --burn-in); it costs 0.03 s per step on CPU.
    fused = True if seg[0].device.type in ("cpu", "cuda") else None

    def fuse_again(opt):   # after load_state_dict: fused again, Adam's step counts where the fused kernel wants them
        for g in opt.param_groups:
            g["fused"] = fused
            for p in g["params"] if fused else ():
                st = opt.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(p.device, torch.float32)

    adam = torch.optim.Adam(seg, lr=cfg.get("lr_seg") or cfg["lr"], fused=fused)
    adam.register_load_state_dict_post_hook(fuse_again)
    return {"seg": adam,
            "cls": torch.optim.SGD(model.cls_parameters(), lr=cfg.get("lr_cls") or cfg["lr"],
                                   momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])}


def set_lr(opts, lrs):
    """lrs: {"seg": lr, "cls": lr} (or one number for both)."""
    for k, o in opts.items():
        for g in o.param_groups:
            g["lr"] = lrs[k] if isinstance(lrs, dict) else lrs


class NonFiniteLoss(RuntimeError):
    pass


class FiniteWatch:
    """Non-finite losses noticed without a host sync per step: the first bad step is kept on the device and
    read (one sync) by check(), which train() calls before it logs, evaluates or saves anything."""

    def __init__(self, device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss, it):
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss.detach()), it, self.first)

    def check(self, stats):
        first = int(self.first)
        if first >= 0:
            terms = {k: round(float(stats[k]), 4) for k in hermes.STAT_KEYS}
            raise NonFiniteLoss(f"non-finite loss at step {first} (terms at the check: {terms})")


def train_step(model, banks, opts, batch_l, batch_u, it, total, hcfg, amp=False, peer=None):
    """One iteration as train.py and tools/bench.py run it: hermes_step (eq. 15; or cps_step with a peer
    network), one backward, both optimizers."""
    device_type = batch_l[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        if peer is not None:
            loss, stats = cps.cps_step(model, peer, batch_l, batch_u, it, total, hcfg)
        else:
            loss, stats = hermes.hermes_step(model, banks, batch_l, batch_u, it, total, hcfg)
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    loss.backward()            # one backward of eq. (15) ...
    for o in opts.values():    # ... then each branch's optimizer (§4.1)
        o.step()
    return loss, stats


def keep_freed_memory():
    """CPU: let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    glibc serves every block above 32 MiB (its largest mmap threshold) with a fresh mmap, released on free, so
    each step's large activations are page-faulted and zero-filled anew: at 224 px, batch 8 + 8, a Hermes step
    takes ~860k minor page faults, SupOnly ~160k (its batch is half as large, fewer blocks cross 32 MiB). With
    mmap off and no trimming they are reused from the heap. Linux with glibc only; returns whether it applied."""
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                                           # <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def step_batches(cfg, ds, idx_l, idx_u, device, start, total):
    """batches(it) -> (batch_l, batch_u) of step it on `device`: augmented there (--augment device), or per
    image by torchvision in --workers processes (--augment cpu); either way a pure function of (seed, it)."""
    if cfg["augment"] == "device":
        return augment.DeviceBatches(ds, idx_l, idx_u, cfg["batch_size"], cfg["seed"], device)
    steps = augment.StepBatches(augment.LabeledSet(ds, idx_l, train=True), augment.UnlabeledSet(ds, idx_u),
                             cfg["batch_size"], cfg["seed"])
    workers = cfg["workers"] if cfg["workers"] is not None else (0 if device.type == "cpu" else 4)
    loader = iter(augment.step_loader(steps, start, total, workers))
    return lambda it: tuple(to_device(b, device) for b in next(loader))


def build_model(cfg):
    """HermesNet from the run's config, started from --init / --init-*-encoder files when given."""
    model = HermesNet(seg_encoder=cfg["seg_encoder"], pretrained=cfg["pretrained"], ias=cfg["ias"],
                      cross_grad=cfg["cross_grad"], contrast_level=cfg["contrast_level"], ita_form=cfg["ita_form"])
    for path, load in ((cfg.get("init"), lambda st: models.load_init(model, st.get("model", st), cfg["init_heads"],
                                                                     what=f"--init {cfg['init']}")),
                       (cfg.get("init_seg_encoder"), lambda st: models.load_resnet_init(
                           model, st, "seg", what=f"--init-seg-encoder {cfg['init_seg_encoder']}")),
                       (cfg.get("init_cls_encoder"), lambda st: models.load_resnet_init(
                           model, st, "cls", what=f"--init-cls-encoder {cfg['init_cls_encoder']}"))):
        if path:
            if not os.path.isfile(path):
                raise cli.MissingFileError(f"initialisation file not found: {path}")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise cli.DataError(f"cannot read {path} as a torch state_dict or train.py checkpoint: "
                                     f"{cli.cause(e)}") from e
            try:
                n = len(load(state))
            except ValueError as e:
                raise cli.DataError(cli.one_line(e)) from e
            print(f"initialised {n} tensors from {path}")
    return model


class CsvLog:
    """log.csv with one row per logged step and one per evaluation, appended as training goes.

    A new run writes the header; a resumed run appends after the rows already there, except that rows past the
    checkpoint (written before a kill) are dropped first, in one atomic rewrite."""

    def __init__(self, path, resume_iter=None):
        self.path = path
        if resume_iter is None or not os.path.exists(path):
            _write_csv(path, [])
            return
        with open(path, newline="") as f:
            text = f.read()
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        keep = [r for r in rows if (r.get("iter") or "").isdigit() and int(r["iter"]) <= resume_iter]
        if len(keep) < len(rows) or reader.fieldnames != LOG_COLUMNS or not text.endswith("\n"):
            _write_csv(path, keep)

    def write(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_COLUMNS).writerow({k: _fmt(row.get(k, "")) for k in LOG_COLUMNS})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _flag(k):
    return "--" + k.replace("_", "-")


def open_run(args, given):
    """Check --out and, with --resume, read its checkpoint; writes nothing. -> (config dict, checkpoint or None).

    given: the arguments set on the command line; with --resume, one that differs from the run's own
    setting is an error naming both (the run's config is what the checkpoint was trained with)."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise cli.DataError(f"--out {out} is a file, not a folder: name a folder for the run")
    ckpt_path = os.path.join(out, "checkpoint.pt")
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise cli.DataError(f"--resume: there is no {ckpt_path} to continue from (nothing was changed); "
                                 f"start the run without --resume, into a new or empty --out")
        ckpt = read_checkpoint(ckpt_path)
        cfg = {**RESUME_MISSING, **ckpt["config"]}
        cfg.setdefault("lr_seg", cfg["lr"])   # runs made before --lr-seg / --lr-cls existed
        cfg.setdefault("lr_cls", cfg["lr"])
        new = vars(args)
        changed = [k for k in sorted(given) if k not in RESUME_OVERRIDABLE and k in cfg and new[k] != cfg[k]]
        if changed:
            both = "; ".join(f"{_flag(k)} {cfg[k]} (the run) vs {new[k]} (given)" for k in changed)
            raise cli.DataError(f"--resume: {out} was trained with other settings: {both}. Drop them to "
                                 f"continue the run, or train into a new --out")
        cfg.update(resume=True, device=new["device"], stop_after=new["stop_after"], workers=new["workers"])
        cfg.update({k: new[k] for k in ("data_root", "eval_every", "ckpt_every", "log_every") if k in given})
        return cfg, ckpt
    if os.path.isdir(out) and os.listdir(out):
        raise cli.DataError(f"run folder {out} exists and is not empty: pass --resume to continue it, "
                             f"or another --out")
    cfg = dict(vars(args))
    cfg["git_commit"] = git_commit()
    return cfg, None


def run_split(cfg, ds, given):
    """The run's split, checked against the dataset and the config; writes nothing.

    Resume: the run folder's split.json, which must be a split of the config's dataset, budget (and seed,
    when the run drew it). New run: --split FILE (its budget becomes the config's; a different --labels on the
    command line is an error), or a split drawn from --labels and --seed."""
    if cfg["resume"]:
        where = os.path.join(cfg["out"], "split.json")
        split = data.load_split(where, ds)
        said = {"dataset": split.get("dataset"), "labels": len(split["train_labeled"])}
        want = {"dataset": cfg["dataset"], "labels": cfg["labels"]}
        if not cfg["split"]:
            said["seed"], want["seed"] = split.get("seed"), cfg["seed"]
        bad = [k for k in said if said[k] != want[k]]
        if bad:
            raise cli.DataError(f"{where} is a split of {', '.join(f'{k} {said[k]}' for k in bad)} but the run "
                                 f"was trained with {', '.join(f'{k} {want[k]}' for k in bad)} (checkpoint.pt): "
                                 f"put the run's own split.json back, or train into a new --out")
        return split
    if cfg["split"]:
        split = data.load_split(cfg["split"], ds)
        n = len(split["train_labeled"])
        if "labels" in given and n != cfg["labels"]:
            raise cli.DataError(f"--split {cfg['split']} has {n} labeled images but --labels says "
                                 f"{cfg['labels']}: drop --labels, or draw the split with --labels alone")
        cfg["labels"] = n
        return split
    return data.make_split(ds, cfg["labels"], cfg["seed"])


def train(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = resolve(build_parser().parse_args(argv))
    given = given_on_command_line(argv)
    cfg, ckpt = open_run(args, given)
    out = cfg["out"] = args.out
    device = models.pick_device(cfg["device"])
    if cfg["amp"] is None:   # resolved once and saved: a resumed run keeps the precision it was trained in
        cfg["amp"] = models.native_bf16(device)
    amp = bool(cfg["amp"])
    if cfg["channels_last"] is None:
        cfg["channels_last"] = amp or device.type == "cuda"
    eval_amp = amp and device.type == "cuda"   # CPU evaluation stays fp32: it is a small share of the time
    if device.type == "cpu":
        keep_freed_memory()

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])

    t0 = time.perf_counter()
    seconds_before = float(ckpt.get("train_seconds", 0.0)) if ckpt is not None else 0.0
    elapsed = lambda: seconds_before + time.perf_counter() - t0  # training wall time over all resumed parts
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"],
                           demo_size=cfg["demo_size"])
    load_s = time.perf_counter() - t0
    split = run_split(cfg, ds, given)
    idx_l, idx_u, idx_eval = data.split_indices(ds, split)
    print(f"{cfg['dataset']}: {len(ds.labels)} images loaded in {load_s:.1f}s; "
          f"{len(idx_l)} labeled, {len(idx_u)} unlabeled, {len(idx_eval)} evaluation")

    # Its own generator: an evaluation must not draw from the global RNG that anchor sampling uses, or
    # --eval-every would change the training.
    eval_loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_eval, train=False),
                                              batch_size=cfg["batch_size"], shuffle=False,
                                              generator=torch.Generator())

    hcfg = hermes.config_from(cfg)
    model = build_model(cfg).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    banks = hermes.make_banks(model, hcfg)
    peer = cps.PeerSegNet(cfg["seg_encoder"], cfg["pretrained"]).to(device) if cfg["method"] == "cps" else None
    if peer is not None and cfg["channels_last"]:
        peer = peer.to(memory_format=torch.channels_last)
    opts = make_optimizers(model, cfg, peer)
    total = cfg["iters"]
    start, best = 0, {"dice": -1.0, "iter": -1}
    if ckpt is not None:
        load_checkpoint(ckpt, model, banks, opts, peer)
        start, best = ckpt["iter"], {"dice": ckpt["best_dice"], "iter": ckpt["best_iter"]}
        set_rng_state(ckpt["rng"])
    # Everything is loaded and checked: only now is the run folder created or changed.
    os.makedirs(out, exist_ok=True)
    if ckpt is not None:
        stale = cli.remove_stale_temporaries(out)
        if stale:
            print(f"removed {len(stale)} temporary files of an interrupted write: "
                  f"{', '.join(os.path.basename(p) for p in stale)}", file=sys.stderr)
        print(f"resumed {out} at step {start}/{total}")
    else:
        cli.write_json_atomic(cfg, os.path.join(out, "config.json"))
        data.save_split(split, os.path.join(out, "split.json"))
    log = CsvLog(os.path.join(out, "log.csv"), resume_iter=start if ckpt is not None else None)
    ckpt_path, best_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, "best.pt")

    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc="hermes", dynamic_ncols=True,
               disable=None)
    step_seconds, n_since_log = 0.0, 0  # training time only: evaluation and checkpoints excluded
    final_metrics = None  # the evaluation at the last step, reused for metrics.json
    batches = step_batches(cfg, ds, idx_l, idx_u, device, start, total)
    watch = FiniteWatch(device)
    for it in bar:
        t_it = time.perf_counter()
        lr_it = {k: poly_lr(cfg[f"lr_{k}"], it, total, cfg["poly_power"]) for k in ("seg", "cls")}
        set_lr(opts, lr_it)
        batch_l, batch_u = augment.memory_format(batches(it), cfg["channels_last"])
        loss, stats = train_step(model, banks, opts, batch_l, batch_u, it, total, hcfg, amp, peer)
        watch.update(loss, it)
        done, n_since_log = it + 1, n_since_log + 1
        step_seconds += time.perf_counter() - t_it

        if (done % cfg["log_every"] == 0 or done % cfg["eval_every"] == 0 or done % cfg["ckpt_every"] == 0
                or done == total or done == cfg.get("stop_after")):
            try:    # before anything is logged or saved; one host sync, not one per step
                watch.check(stats)
            except NonFiniteLoss as e:
                raise SystemExit(f"{e}. The last good checkpoint ({ckpt_path}) is kept; lower --lr or check the "
                                 f"data.")
        if done % cfg["log_every"] == 0 or done == total:
            row = {k: float(stats[k]) for k in hermes.STAT_KEYS}
            row.update(kind="train", iter=done, lr_seg=lr_it["seg"], lr_cls=lr_it["cls"], sec_per_step=step_seconds / n_since_log)
            step_seconds, n_since_log = 0.0, 0
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", kept_pix=f"{row.get('kept_pix', 0):.2f}",
                            kept_img=f"{row.get('kept_img', 0):.2f}", pl_acc=f"{row.get('pl_acc_pix_kept', 0):.3f}")
        if done % cfg["eval_every"] == 0 or done == total:
            metrics, _ = evaluate.evaluate_model(model, eval_loader, device, amp=eval_amp)
            log.write({"kind": "eval", "iter": done, **{k: metrics[k] for k in EVAL_KEYS}})
            tqdm.write(f"step {done}: eval Dice {metrics['dice_mean']:.4f}  Acc {metrics['accuracy']:.4f}")
            final_metrics = metrics if done == total else None
            if metrics["dice_mean"] > best["dice"]:
                best = {"dice": metrics["dice_mean"], "iter": done}
                save_atomic(best_checkpoint(model, banks, done, best, cfg), best_path)
        if done % cfg["ckpt_every"] == 0 or done == total:
            save_atomic(checkpoint(model, banks, opts, done, best, cfg, elapsed(), peer), ckpt_path)
        if cfg.get("stop_after") is not None and done >= cfg["stop_after"]:
            save_atomic(checkpoint(model, banks, opts, done, best, cfg, elapsed(), peer), ckpt_path)
            print(f"stopped after step {done} (--stop-after); continue with --resume --out {out}")
            return None
    bar.close()

    metrics = final_metrics if final_metrics is not None else evaluate.evaluate_model(model, eval_loader, device,
                                                                                      amp=eval_amp)[0]
    result = {"checkpoint": "checkpoint.pt (final)", "iter": total, **metrics,
              "best": {"checkpoint": "best.pt", "iter": best["iter"], "dice_mean": best["dice"],
                       "selected_on": evaluate.SELECTED_ON_BEST},
              "dataset": cfg["dataset"], "labels": cfg["labels"], "seed": cfg["seed"],
              "train_seconds": round(elapsed(), 1)}
    cli.write_json_atomic(result, os.path.join(out, "metrics.json"))
    print(f"\nrun folder: {out}  (config.json, split.json, log.csv, checkpoint.pt, best.pt, metrics.json)")
    print(f"final checkpoint on the evaluation split ({metrics['n_images']} images): "
          f"Dice {metrics['dice_mean']:.4f} ± {metrics['dice_std']:.4f}  IoU {metrics['iou_mean']:.4f}  "
          f"HD95 {metrics['hd95_mean']:.2f} px  Acc {metrics['accuracy']:.4f}  AUC {metrics['auc']:.4f}")
    print(f"best evaluation Dice {best['dice']:.4f} at step {best['iter']} (best.pt, selected on the evaluation split)")
    return result


if __name__ == "__main__":
    cli.cli_main(train)
