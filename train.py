"""Train one joint Hermes model (segmentation + classification) from a few labeled and many unlabeled images.

    python train.py  # built-in demo data, CPU-sized, a few minutes
    python train.py --dataset udiat --data-root PATH --labels 40 # the paper's configuration (Section 4.1)

One step = one loss (eq. (15), `hermes.hermes_step`), one backward, then SGD steps the classification branch
and Adam the segmentation branch, both with poly decay (Section 4.1). Everything an exact resume needs is
written atomically to RUN_DIR/checkpoint.pt; `--resume` continues a killed run as if it had never stopped.
Every option is declared once, in config.py.
"""
import argparse
import importlib
import os
import sys

import cli
import config

if __name__ == "__main__":   # --help and a mistyped option answer before torch is imported (1 s, not 9)
    config.build_parser(__doc__).parse_args(sys.argv[1:])

import time  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import augment  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import hermes  # noqa: E402
import models  # noqa: E402
import runner  # noqa: E402
from models import HermesNet  # noqa: E402
from runner import EVAL_KEYS, FiniteWatch, NonFiniteLoss, save_atomic  # noqa: E402

DEFAULT_LABELS, DATASETS = config.DEFAULT_LABELS, config.DATASETS


def build_parser():
    return config.build_parser(__doc__)


def given_on_command_line(argv):
    """Names (dests) of the arguments the command line sets, as opposed to those left at their defaults."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


def resolve(args, given=(), say=print):
    """Fill the dataset-dependent defaults (the demo's CPU sizes, else the paper's §4.1) and check the
    arguments. given: the options set on the command line; --data-root without --dataset names the dataset by
    its layout."""
    if args.data_root is not None and "dataset" not in given and not args.resume:
        args.dataset = data.detect_dataset(args.data_root)
        say(f"--data-root {args.data_root}: the {args.dataset} layout (pass --dataset to choose another)")
    # checked here, not by argparse's choices: one line, not its usage block
    if args.dataset not in DATASETS:
        hint = f" (did you mean {args.dataset.lower()}?)" if args.dataset.lower() in DATASETS else ""
        raise cli.DataError(f"--dataset {args.dataset}: unknown dataset{hint}; the datasets are "
                            f"{', '.join(DATASETS)} (your own images: --dataset folder, README: Datasets)")
    demo = args.dataset == "demo"
    if args.labels is None:
        args.labels = DEFAULT_LABELS[args.dataset]
    if args.image_size is None:
        args.image_size = config.image_size_for(args.dataset)
    if args.iters is None:
        args.iters = config.DEMO_ITERS if demo else config.PAPER_ITERS
    if args.pretrained is None:
        args.pretrained = not demo
    if not args.resume:
        say(config.resolve_recipe(args, given))
    if args.lr_seg is None:
        args.lr_seg = args.lr
    if args.lr_cls is None:
        args.lr_cls = args.lr
    if args.method != "hermes":   # comparators train the other branch as SupOnly's
        args.dtcl = args.ias = args.itcl = False
    if not args.dtcl:             # no teacher pass (SupOnly, comparators): nothing for --teacher to choose
        args.teacher = "self"
    if args.eval_every is None:
        args.eval_every = max(1, args.iters // 10)
    if args.ckpt_every is None:
        args.ckpt_every = args.eval_every
    if args.out is None:
        args.out = os.path.join("runs", f"{args.dataset}-{args.labels}-seed{args.seed}")
    if not demo and args.data_root is None:
        raise cli.DataError(f"--data-root is required for --dataset {args.dataset} (see README, Datasets)")
    if args.image_size % 32:
        raise cli.DataError(f"--image-size {args.image_size} must be divisible by 32 (the encoder "
                            f"downsamples 32×), e.g. {max(32, 32 * round(args.image_size / 32))}")
    if args.iters < 1 or args.batch_size < 1:
        raise cli.DataError(f"--iters and --batch-size must be positive, got {args.iters} and "
                            f"{args.batch_size}")
    return args


def to_device(batch, device):
    return tuple(b.to(device, non_blocking=True) for b in batch)


def poly_lr(base, it, total, power):
    return base * (1 - it / total) ** power  # §4.1: lr = lr_init·(1 - iter/iter_total)^0.9


def make_optimizers(model, cfg, peer=None):
    """§4.1: Adam for the segmentation branch (and CPS's second network), SGD (momentum, weight decay) for the
    classification branch; initial lrs --lr-seg / --lr-cls (both --lr by default)."""
    # a comparator's extra networks (CPS's second U-Net, DCNet's second decoder, heads) train with the branch
    # it serves: segmentation by Adam, classification (a CLS_METHODS head) by SGD; EMA teachers are frozen
    trained = [p for p in peer.parameters() if p.requires_grad] if peer is not None else []
    cls_extra = cfg.get("method") in config.CLS_METHODS
    seg = model.seg_parameters() + ([] if cls_extra else trained)
    # Adam: the fused kernel (one pass over all parameters; CPU, 25 M parameters: 0.03 instead of 0.10 s)
    # where torch has it; the same update up to float rounding. A loaded state (e.g. a checkpoint of the
    # unfused optimizer) keeps it fused: load_state_dict would otherwise take the saved groups' "fused"
    # setting. SGD stays per-parameter: fused SGD raises when parameters without a momentum buffer get their
    # first gradient after others (e.g. the ITA modules after --burn-in); it costs 0.03 s per step on CPU.
    fused = True if seg[0].device.type in ("cpu", "cuda") else None

    # after load_state_dict: fused again, Adam's step counts where the fused kernel wants them
    def fuse_again(opt):
        for g in opt.param_groups:
            g["fused"] = fused
            for p in g["params"] if fused else ():
                st = opt.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(p.device, torch.float32)

    adam = torch.optim.Adam(seg, lr=cfg.get("lr_seg") or cfg["lr"], fused=fused)
    adam.register_load_state_dict_post_hook(fuse_again)
    return {"seg": adam,
            "cls": torch.optim.SGD(model.cls_parameters() + (trained if cls_extra else []),
                                   lr=cfg.get("lr_cls") or cfg["lr"],
                                   momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])}


def set_lr(opts, lrs):
    """lrs: {"seg": lr, "cls": lr} (or one number for both)."""
    for k, o in opts.items():
        for g in o.param_groups:
            g["lr"] = lrs[k] if isinstance(lrs, dict) else lrs


def train_step(model, banks, opts, batch_l, batch_u, it, total, hcfg, amp=False, peer=None):
    """One iteration as train.py and tools/bench.py run it: hermes_step (eq. (15); or cps_step with a peer
    network), one backward, both optimizers."""
    device_type = batch_l[0].device.type
    plugin = plugin_of(hcfg.method)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        if plugin is None:
            # --teacher ema: its moving average makes the pseudo-labels (the call is the paper's one without)
            with_teacher = {} if peer is None else {"teacher": peer}
            loss, stats = hermes.hermes_step(model, banks, batch_l, batch_u, it, total, hcfg, **with_teacher)
        else:   # a comparator (comparators/cps.py, comparators/): its own step, the same contract
            loss, stats = plugin.step(model, peer, batch_l, batch_u, it, total, hcfg)
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    loss.backward()            # one backward of eq. (15) ...
    for o in opts.values():    # ... then each branch's optimizer (§4.1)
        o.step()
    if plugin is not None and hasattr(plugin, "after_step"):   # e.g. AD-MT's EMA teachers
        plugin.after_step(model, peer, it, total, hcfg)
    elif plugin is None and peer is not None:                  # Hermes with --teacher ema
        hermes.update_ema_teacher(peer, model, it, hcfg.teacher_decay)
    return loss, stats


def plugin_of(method):
    """The module of a comparator (`step`, `build_extra`, optional `after_step`), None for Hermes."""
    return None if method == "hermes" else importlib.import_module(f"comparators.{method}")


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
    """-> (device, amp, eval_amp). --amp and --channels-last are resolved once and saved in the config: a
    resumed run keeps the precision and memory format it was trained in."""
    device = runner.pick_device(cfg["device"])
    if cfg["amp"] is None:
        cfg["amp"] = runner.native_bf16(device)
    amp = bool(cfg["amp"])
    if cfg["channels_last"] is None:
        cfg["channels_last"] = amp or device.type == "cuda"
    return device, amp, amp and device.type == "cuda"   # CPU evaluation stays fp32: a small share of the time


def build_networks(cfg, hcfg, device):
    """-> (HermesNet, its memory banks, a comparator's extra networks or Hermes' EMA teacher or None), on
    `device`."""
    fmt = torch.channels_last if cfg["channels_last"] else torch.preserve_format
    model = build_model(cfg).to(device, memory_format=fmt)
    banks = hermes.make_banks(model, hcfg)
    plugin = plugin_of(cfg["method"])
    if plugin is not None:
        peer = plugin.build_extra(model, cfg)                 # a comparator's extra networks
    else:
        peer = hermes.make_ema_teacher(model) if cfg.get("teacher", "self") == "ema" else None
    if peer is not None:
        peer = peer.to(device, memory_format=fmt)
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
    for path, load in ((cfg.get("init"),
                        lambda st: models.load_init(model, st.get("model", st), cfg["init_heads"],
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


class Run:
    """What one training run holds between its steps: the run folder, data, networks, optimizers, log."""

    def __init__(self, cfg, ckpt, given):
        self.cfg, self.out = cfg, cfg["out"]
        self.device, self.amp, self.eval_amp = resolve_device(cfg)
        if self.device.type == "cpu":
            runner.keep_freed_memory()
        runner.seed_all(cfg["seed"])
        t0 = time.perf_counter()
        seconds_before = float(ckpt.get("train_seconds", 0.0)) if ckpt is not None else 0.0
        self.elapsed = lambda: seconds_before + time.perf_counter() - t0  # wall time over all resumed parts
        ds = data.load_dataset(cfg["dataset"], cfg["data_root"], image_size=cfg["image_size"],
                               seed=cfg["seed"],
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
        self.eval_loader = torch.utils.data.DataLoader(augment.LabeledSet(ds, idx_eval, train=False),
                                                       batch_size=cfg["batch_size"], shuffle=False,
                                                       generator=torch.Generator())
        # --class-prior unlabeled: the scores on the unlabeled images, in order (its own generator, as above)
        self.labels_l = ds.labels[idx_l]
        self.prior_loader = torch.utils.data.DataLoader(
            augment.LabeledSet(ds, idx_u, train=False), batch_size=cfg["batch_size"], shuffle=False,
            generator=torch.Generator()) if cfg.get("class_prior") == "unlabeled" else None
        self.hcfg = hermes.config_from(cfg)
        self.model, self.banks, self.peer = build_networks(cfg, self.hcfg, self.device)
        self.opts = make_optimizers(self.model, cfg, self.peer)
        self.total, self.start, self.best = cfg["iters"], 0, {"dice": -1.0, "iter": -1}
        if ckpt is not None:
            runner.load_checkpoint(ckpt, self.model, self.banks, self.opts, self.peer)
            self.start, self.best = ckpt["iter"], {"dice": ckpt["best_dice"], "iter": ckpt["best_iter"]}
            runner.set_rng_state(ckpt["rng"])
        # Everything is loaded and checked: only now is the run folder created or changed.
        runner.prepare_folder(cfg, split, resumed=ckpt is not None)
        if ckpt is not None:
            print(f"resumed {self.out} at step {self.start}/{self.total}")
        self.log = runner.CsvLog(os.path.join(self.out, "log.csv"),
                                 resume_iter=self.start if ckpt is not None else None)
        self.ckpt_path, self.best_path = os.path.join(self.out, "checkpoint.pt"), os.path.join(self.out,
                                                                                               "best.pt")
        self.batches = step_batches(cfg, ds, idx_l, idx_u, self.device, self.start, self.total)
        self.watch, self.final_metrics = FiniteWatch(self.device), None
        # training time only: evaluation and checkpoints excluded
        self.step_seconds, self.n_since_log = 0.0, 0

    def step(self, it):
        """One training step at iteration `it` -> (loss, stats, {"seg": lr, "cls": lr})."""
        cfg, t_it = self.cfg, time.perf_counter()
        lr_it = {k: poly_lr(cfg[f"lr_{k}"], it, self.total, cfg["poly_power"]) for k in ("seg", "cls")}
        set_lr(self.opts, lr_it)
        batch_l, batch_u = augment.memory_format(self.batches(it), cfg["channels_last"])
        loss, stats = train_step(self.model, self.banks, self.opts, batch_l, batch_u, it, self.total,
                                 self.hcfg,
                                 self.amp, self.peer)
        self.watch.update(loss, it)
        self.n_since_log += 1
        self.step_seconds += time.perf_counter() - t_it
        return loss, stats, lr_it

    def check_finite(self, stats):   # before anything is logged or saved; one host sync, not one per step
        try:
            self.watch.check(stats)
        except NonFiniteLoss as e:
            raise SystemExit(f"{e}. The last good checkpoint ({self.ckpt_path}) is kept; lower --lr or check "
                             f"the data.")

    def log_train(self, done, stats, lr_it, bar):
        row = {k: v for k in hermes.STAT_KEYS if (v := float(stats[k])) == v}  # NaN (no ground truth): blank
        row.update(kind="train", iter=done, lr_seg=lr_it["seg"], lr_cls=lr_it["cls"],
                   sec_per_step=self.step_seconds / self.n_since_log)
        self.step_seconds, self.n_since_log = 0.0, 0
        self.log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", kept_pix=f"{row.get('kept_pix', 0):.2f}",
                        kept_img=f"{row.get('kept_img', 0):.2f}",
                        pl_acc=f"{row.get('pl_acc_pix_kept', 0):.3f}")

    def _evaluate(self):
        """Evaluation metrics at the run's class prior (--class-prior; its estimate and shift included)."""
        prior = evaluate.class_prior(self.cfg.get("class_prior", "labeled"), self.labels_l, self.model,
                                     self.prior_loader, self.device, self.eval_amp)
        metrics, _ = evaluate.evaluate_model(self.model, self.eval_loader, self.device, amp=self.eval_amp,
                                             shift=prior["prior_shift"])
        return {**metrics, **prior}

    def evaluate(self, done):
        metrics = self._evaluate()
        self.log.write({"kind": "eval", "iter": done, **{k: metrics[k] for k in EVAL_KEYS}})
        tqdm.write(f"step {done}: eval Dice {metrics['dice_mean']:.4f}  Acc {metrics['accuracy']:.4f}  "
                   f"balanced {metrics['balanced_accuracy']:.4f}  AUC {metrics['auc']:.4f}  predicted "
                   f"malignant {metrics['predicted_malignant']:.0%}"
                   + (f" (decided at {metrics['class_prior']:.0%} malignant, the unlabeled images' estimate)"
                      if metrics["prior_unlabeled"] is not None else ""))
        self.final_metrics = metrics if done == self.total else None
        if metrics["dice_mean"] > self.best["dice"]:
            self.best = {"dice": metrics["dice_mean"], "iter": done}
            save_atomic(runner.best_checkpoint(self.model, self.banks, done, self.best, self.cfg),
                        self.best_path)

    def save(self, done):
        save_atomic(runner.checkpoint(self.model, self.banks, self.opts, done, self.best, self.cfg,
                                      self.elapsed(),
                                      self.peer), self.ckpt_path)

    def finish(self):
        """Evaluate the final step (unless just done), write metrics.json and the lean final checkpoint."""
        cfg, total, best = self.cfg, self.total, self.best
        metrics = self.final_metrics if self.final_metrics is not None else self._evaluate()
        result = {"checkpoint": "checkpoint.pt (final)", "iter": total, **metrics,
                  "best": {"checkpoint": "best.pt", "iter": best["iter"], "dice_mean": best["dice"],
                           "selected_on": evaluate.SELECTED_ON_BEST},
                  "dataset": cfg["dataset"], "labels": cfg["labels"], "seed": cfg["seed"],
                  "train_seconds": round(self.elapsed(), 1)}
        # from now on the run is finished
        cli.write_json_atomic(result, os.path.join(self.out, "metrics.json"))
        # a finished run is not resumed: its optimizer state is dead weight
        if not cfg.get("keep_optimizer"):
            save_atomic(runner.lean_checkpoint(self.model, self.banks, total, best, cfg, self.peer,
                                               final=True,
                                               train_seconds=self.elapsed(), metrics=metrics), self.ckpt_path)
        return result


def train(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    given = given_on_command_line(argv)
    said = []   # what resolve found (dataset, recipe): printed once the run folder is ours
    args = resolve(build_parser().parse_args(argv), given, say=said.append)
    lock = runner.RunLock(args.out).acquire()   # one writer per run folder, before anything is read
    for line in said:
        print(line)
    try:
        return _train(args, given)
    finally:
        lock.release()


def _train(args, given):
    cfg, ckpt = runner.open_run(args, given)
    cfg["out"] = args.out
    if "finished" in cfg:   # --resume of a finished run: said, nothing changed
        return cfg["finished"]
    run = Run(cfg, ckpt, given)
    total, out = run.total, run.out
    run.model.train()
    bar = tqdm(range(run.start, total), initial=run.start, total=total, desc="hermes", dynamic_ncols=True,
               disable=None)
    progress = runner.Progress(run.start, total, run.device, cfg.get("progress_seconds"), lines=bar.disable,
                               burn_in=cfg.get("burn_in", 0))
    clock = runner.CheckpointClock(cfg.get("ckpt_minutes"))
    with runner.StopSignals(run.ckpt_path) as signals:
        for it in bar:
            t_it = time.perf_counter()
            loss, stats, lr_it = run.step(it)
            done = it + 1
            progress.step(done, time.perf_counter() - t_it, loss)
            log_now = done % cfg["log_every"] == 0 or done == total
            eval_now = done % cfg["eval_every"] == 0 or done == total
            stop = signals.requested is not None and done < total           # SIGINT, SIGTERM: save and stop
            stop_after = cfg.get("stop_after") is not None and done >= cfg["stop_after"]
            save_now = (stop_after or (done < total and (done % cfg["ckpt_every"] == 0 or clock.due()
                                                         or stop))
                        or (done == total and cfg.get("keep_optimizer")))   # else the lean final one below
            if log_now or eval_now or save_now:
                run.check_finite(stats)
            if log_now:
                run.log_train(done, stats, lr_it, bar)
            if eval_now:
                t_eval, ev = time.perf_counter(), cfg["eval_every"]
                run.evaluate(done)
                progress.evaluated(done, time.perf_counter() - t_eval,
                                   total // ev - done // ev + (total % ev > 0))
            if save_now:
                run.save(done)
                clock.reset()
            if stop:
                bar.close()
                print(f"train.py: stopped by {runner.signal_name(signals.requested)} at step {done}/{total}; "
                      f"checkpoint {run.ckpt_path}; continue with: {runner.continue_command(out)}",
                      flush=True)
                sys.exit(signals.exit_code)
            if stop_after:
                print(f"stopped after step {done} (--stop-after); continue with --resume --out {out}")
                return None
        bar.close()
        result = run.finish()
    m, best = result, run.best
    print(f"\nrun folder: {out}  (config.json, split.json, log.csv, checkpoint.pt, best.pt, metrics.json)")
    print(f"final checkpoint on the evaluation split ({m['n_images']} images): "
          f"Dice {m['dice_mean']:.4f} ± {m['dice_std']:.4f}  IoU {m['iou_mean']:.4f}  "
          f"HD95 {m['hd95_mean']:.2f} px  Acc {m['accuracy']:.4f} (sens {m['sensitivity']:.4f}, spec "
          f"{m['specificity']:.4f})  AUC {m['auc']:.4f}")
    if m.get("prior_unlabeled") is not None:
        print(f"benign/malignant decided at {m['class_prior']:.1%} malignant, the unlabeled images' estimate (the "
              f"labeled set: {m['prior_labeled']:.0%}; --class-prior labeled decides at that)")
    print(f"best evaluation Dice {best['dice']:.4f} at step {best['iter']} (best.pt, selected on the "
          f"evaluation split)")
    return result


if __name__ == "__main__":
    cli.cli_main(train)
