"""Train one joint Hermes model (segmentation + classification) from a few labeled and many unlabeled images.

    python train.py                                              # built-in demo data, CPU-sized, a few minutes
    python train.py --dataset udiat --data-root PATH --labels 40 # the paper's configuration (Section 4.1)

One step = one loss (eq. 15, `hermes.hermes_step`), one backward, then SGD steps the classification branch and
Adam the segmentation branch, both with poly decay (Section 4.1). Everything an exact resume needs is written
atomically to RUN_DIR/checkpoint.pt; `--resume` continues a killed run as if it had never stopped.
"""
import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

import augment
import cli
import cps
import data
import evaluate
import hermes
import models
import runner
from models import HermesNet
from runner import (EVAL_KEYS, LOG_COLUMNS, RESUME_MISSING, RESUME_OVERRIDABLE, CsvLog, FiniteWatch,  # noqa: F401
                    NonFiniteLoss, keep_freed_memory, load_checkpoint, read_checkpoint, save_atomic)

# Smallest label budget of each dataset in the paper's Tables 1-2 (Section 4.1); demo: 40 of its 168 train images.
DEFAULT_LABELS = {"demo": 40, "busi": 72, "udiat": 20, "sztus": 60, "folder": 40}
DATASETS = list(DEFAULT_LABELS)
D = hermes.HermesConfig()  # the defaults of every method flag below


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # data (Section 4.1)
    a("--dataset", default="demo", metavar="{" + ",".join(DATASETS) + "}",
      help="dataset; demo is generated and needs no --data-root; folder is your own images (default: demo)")
    a("--data-root", default=None, help="folder of the dataset as its publisher ships it (README: Datasets)")
    a("--labels", type=data.parse_labels, default=None,
      help="labeled images, half per class (paper: BUSI 72/144/216, UDIAT 20/40/60, SZ-TUS 60/120; "
           "default: the smallest budget of the dataset, demo 40); 'all': every annotated training image, with "
           "the real unlabeled images as the unlabeled set (docs/your-own-data.md)")
    a("--unlabeled-dir", action="append", default=None, metavar="DIR",
      help="add every image under DIR (recursively, no labels or masks) to the unlabeled pool; repeatable")
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
    a("--ckpt-minutes", type=float, default=10,
      help="also write checkpoint.pt every N minutes of wall time (default 10; 0 = only --ckpt-every)")
    a("--log-every", type=int, default=10, help="write a log.csv row every N steps")
    a("--progress-seconds", type=float, default=60,
      help="when the output is no terminal (nohup, Slurm): a progress line (step, loss, s/step, ETA) every N "
           "seconds (default 60)")
    a("--keep-optimizer", action="store_true",
      help="keep the resumable checkpoint.pt (optimizer and RNG states) at the end; default: a lean final one")
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
    if args.dataset not in DATASETS:   # checked here, not by argparse's choices: one line, not its usage block
        hint = f" (did you mean {args.dataset.lower()}?)" if args.dataset.lower() in DATASETS else ""
        raise cli.DataError(f"--dataset {args.dataset}: unknown dataset{hint}; the datasets are "
                             f"{', '.join(DATASETS)} (your own images: --dataset folder, README: Datasets)")
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


def to_device(batch, device):
    return tuple(b.to(device, non_blocking=True) for b in batch)


def poly_lr(base, it, total, power):
    return base * (1 - it / total) ** power  # §4.1: lr = lr_init·(1 - iter/iter_total)^0.9


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


def resolve_device(cfg):
    """-> (device, amp, eval_amp). --amp and --channels-last are resolved once and saved in the config: a resumed
    run keeps the precision and memory format it was trained in."""
    device = models.pick_device(cfg["device"])
    if cfg["amp"] is None:
        cfg["amp"] = models.native_bf16(device)
    amp = bool(cfg["amp"])
    if cfg["channels_last"] is None:
        cfg["channels_last"] = amp or device.type == "cuda"
    return device, amp, amp and device.type == "cuda"   # CPU evaluation stays fp32: a small share of the time


def build_networks(cfg, hcfg, device):
    """-> (HermesNet, its memory banks, CPS's second segmentation network or None), on `device`."""
    fmt = torch.channels_last if cfg["channels_last"] else torch.preserve_format
    model = build_model(cfg).to(device, memory_format=fmt)
    banks = hermes.make_banks(model, hcfg)
    peer = (cps.PeerSegNet(cfg["seg_encoder"], cfg["pretrained"]).to(device, memory_format=fmt)
            if cfg["method"] == "cps" else None)
    return model, banks, peer


def build_model(cfg):
    """HermesNet from the run's config, started from --init / --init-*-encoder files when given."""
    try:
        model = HermesNet(seg_encoder=cfg["seg_encoder"], pretrained=cfg["pretrained"], ias=cfg["ias"],
                          cross_grad=cfg["cross_grad"], contrast_level=cfg["contrast_level"],
                          ita_form=cfg["ita_form"])
    except models.WeightsUnavailable as e:   # name both branches' files at once, not one per try
        raise models.WeightsUnavailable(models.missing_weights_message([cfg["seg_encoder"], "resnet18"],
                                                                       e.cause)) from e
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


def train(argv=None):
    # ---------------------------------------------------------------------------------------------- setup
    argv = sys.argv[1:] if argv is None else list(argv)
    args = resolve(build_parser().parse_args(argv))
    given = given_on_command_line(argv)
    cfg, ckpt = runner.open_run(args, given)
    out = cfg["out"] = args.out
    if "finished" in cfg:   # --resume of a finished run: said, nothing changed
        return cfg["finished"]
    device, amp, eval_amp = resolve_device(cfg)
    if device.type == "cpu":
        keep_freed_memory()
    runner.seed_all(cfg["seed"])

    t0 = time.perf_counter()
    seconds_before = float(ckpt.get("train_seconds", 0.0)) if ckpt is not None else 0.0
    elapsed = lambda: seconds_before + time.perf_counter() - t0  # training wall time over all resumed parts
    ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"], seed=cfg["seed"],
                           demo_size=cfg["demo_size"], unlabeled_dirs=cfg.get("unlabeled_dir"))
    load_s = time.perf_counter() - t0
    split = runner.run_split(cfg, ds, given)
    idx_l, idx_u, idx_eval = data.split_indices(ds, split)
    print(f"{cfg['dataset']}: {len(ds.labels)} images loaded in {load_s:.1f}s; "
          f"{len(idx_l)} labeled, {len(idx_u)} unlabeled, {len(idx_eval)} evaluation")
    if not ds.annotated.all():
        print(data.describe_unlabeled(ds, split, idx_u))

    # Its own generator: an evaluation must not draw from the global RNG that anchor sampling uses, or
    # --eval-every would change the training.
    eval_loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_eval, train=False),
                                              batch_size=cfg["batch_size"], shuffle=False,
                                              generator=torch.Generator())

    hcfg = hermes.config_from(cfg)
    model, banks, peer = build_networks(cfg, hcfg, device)
    opts = make_optimizers(model, cfg, peer)
    total = cfg["iters"]
    start, best = 0, {"dice": -1.0, "iter": -1}
    if ckpt is not None:
        load_checkpoint(ckpt, model, banks, opts, peer)
        start, best = ckpt["iter"], {"dice": ckpt["best_dice"], "iter": ckpt["best_iter"]}
        runner.set_rng_state(ckpt["rng"])
    # Everything is loaded and checked: only now is the run folder created or changed.
    runner.prepare_folder(cfg, split, resumed=ckpt is not None)
    if ckpt is not None:
        print(f"resumed {out} at step {start}/{total}")
    log = CsvLog(os.path.join(out, "log.csv"), resume_iter=start if ckpt is not None else None)
    ckpt_path, best_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, "best.pt")

    def check_finite():   # before anything is logged or saved; one host sync, not one per step
        try:
            watch.check(stats)
        except NonFiniteLoss as e:
            raise SystemExit(f"{e}. The last good checkpoint ({ckpt_path}) is kept; lower --lr or check the data.")

    # ----------------------------------------------------------------------------------------------- loop
    model.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc="hermes", dynamic_ncols=True,
               disable=None)
    progress = runner.Progress(start, total, device, cfg.get("progress_seconds"), lines=bar.disable)
    clock = runner.CheckpointClock(cfg.get("ckpt_minutes"))
    step_seconds, n_since_log = 0.0, 0  # training time only: evaluation and checkpoints excluded
    final_metrics = None  # the evaluation at the last step, reused for metrics.json
    batches = step_batches(cfg, ds, idx_l, idx_u, device, start, total)
    watch = FiniteWatch(device)
    with runner.StopSignals(ckpt_path) as signals:
        for it in bar:
            t_it = time.perf_counter()
            lr_it = {k: poly_lr(cfg[f"lr_{k}"], it, total, cfg["poly_power"]) for k in ("seg", "cls")}
            set_lr(opts, lr_it)
            batch_l, batch_u = augment.memory_format(batches(it), cfg["channels_last"])
            loss, stats = train_step(model, banks, opts, batch_l, batch_u, it, total, hcfg, amp, peer)
            watch.update(loss, it)
            done, n_since_log = it + 1, n_since_log + 1
            step_seconds += time.perf_counter() - t_it
            progress.step(done, time.perf_counter() - t_it, loss)

            log_now = done % cfg["log_every"] == 0 or done == total
            eval_now = done % cfg["eval_every"] == 0 or done == total
            stop = signals.requested is not None and done < total           # SIGINT, SIGTERM: save and stop
            stop_after = cfg.get("stop_after") is not None and done >= cfg["stop_after"]
            save_now = (stop_after or (done < total and (done % cfg["ckpt_every"] == 0 or clock.due() or stop))
                        or (done == total and cfg.get("keep_optimizer")))   # else the lean final one below
            if log_now or eval_now or save_now:
                check_finite()
            if log_now:
                row = {k: v for k in hermes.STAT_KEYS if (v := float(stats[k])) == v}  # NaN (no ground truth): blank
                row.update(kind="train", iter=done, lr_seg=lr_it["seg"], lr_cls=lr_it["cls"],
                           sec_per_step=step_seconds / n_since_log)
                step_seconds, n_since_log = 0.0, 0
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", kept_pix=f"{row.get('kept_pix', 0):.2f}",
                                kept_img=f"{row.get('kept_img', 0):.2f}", pl_acc=f"{row.get('pl_acc_pix_kept', 0):.3f}")
            if eval_now:
                metrics, _ = evaluate.evaluate_model(model, eval_loader, device, amp=eval_amp)
                log.write({"kind": "eval", "iter": done, **{k: metrics[k] for k in EVAL_KEYS}})
                tqdm.write(f"step {done}: eval Dice {metrics['dice_mean']:.4f}  Acc {metrics['accuracy']:.4f}")
                final_metrics = metrics if done == total else None
                if metrics["dice_mean"] > best["dice"]:
                    best = {"dice": metrics["dice_mean"], "iter": done}
                    save_atomic(runner.best_checkpoint(model, banks, done, best, cfg), best_path)
            if save_now:
                save_atomic(runner.checkpoint(model, banks, opts, done, best, cfg, elapsed(), peer), ckpt_path)
                clock.reset()
            if stop:
                bar.close()
                print(f"train.py: stopped by {runner.signal_name(signals.requested)} at step {done}/{total}; "
                      f"checkpoint {ckpt_path}; continue with: {runner.continue_command(out)}", flush=True)
                sys.exit(signals.exit_code)
            if stop_after:
                print(f"stopped after step {done} (--stop-after); continue with --resume --out {out}")
                return None
        bar.close()

        # ------------------------------------------------------------------------------------------- finish
        metrics = final_metrics if final_metrics is not None else evaluate.evaluate_model(
            model, eval_loader, device, amp=eval_amp)[0]
        result = {"checkpoint": "checkpoint.pt (final)", "iter": total, **metrics,
                  "best": {"checkpoint": "best.pt", "iter": best["iter"], "dice_mean": best["dice"],
                           "selected_on": evaluate.SELECTED_ON_BEST},
                  "dataset": cfg["dataset"], "labels": cfg["labels"], "seed": cfg["seed"],
                  "train_seconds": round(elapsed(), 1)}
        cli.write_json_atomic(result, os.path.join(out, "metrics.json"))   # from now on the run is finished
        if not cfg.get("keep_optimizer"):   # a finished run is not resumed: its optimizer state is dead weight
            save_atomic(runner.lean_checkpoint(model, banks, total, best, cfg, peer, final=True,
                                               train_seconds=elapsed(), metrics=metrics), ckpt_path)
    print(f"\nrun folder: {out}  (config.json, split.json, log.csv, checkpoint.pt, best.pt, metrics.json)")
    print(f"final checkpoint on the evaluation split ({metrics['n_images']} images): "
          f"Dice {metrics['dice_mean']:.4f} ± {metrics['dice_std']:.4f}  IoU {metrics['iou_mean']:.4f}  "
          f"HD95 {metrics['hd95_mean']:.2f} px  Acc {metrics['accuracy']:.4f}  AUC {metrics['auc']:.4f}")
    print(f"best evaluation Dice {best['dice']:.4f} at step {best['iter']} (best.pt, selected on the evaluation split)")
    return result


if __name__ == "__main__":
    cli.cli_main(train)
