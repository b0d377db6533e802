"""The run machinery of train.py, apart from the method: the run folder, resume rules, log.csv, checkpoints,
RNG state, the non-finite watch, signals, progress lines and malloc tuning. Nothing here changes what is
trained.

Run folder (--out): config.json, split.json, log.csv, checkpoint.pt, best.pt, metrics.json (README: Training).
- checkpoint.pt: everything an exact resume needs (weights, memory banks, optimizer and RNG states), written
  atomically every --ckpt-every steps, every --ckpt-minutes of wall time, and when a signal stops the run. At
  the end it is replaced by a lean final checkpoint (no optimizer or RNG state) unless --keep-optimizer.
- metrics.json marks a finished run: --resume of one says so and changes nothing.
- A folder holding a run stopped before its first checkpoint (config.json, no checkpoint.pt) is moved aside to
  OUT.incomplete-<time> by a fresh start into it (as tools/reproduce.py does), never deleted.
"""
import csv
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import cli
import config
import data
import hermes

# balanced accuracy and the share of images called malignant show a one-class classifier at every evaluation;
# class_prior: the malignant share the decision assumed (--class-prior)
EVAL_KEYS = ["dice_mean", "iou_mean", "hd95_mean", "accuracy", "auc", "area_ratio", "balanced_accuracy",
             "predicted_malignant", "class_prior"]
LOG_COLUMNS = ["kind", "iter", *hermes.STAT_KEYS, "lr_seg", "lr_cls", "sec_per_step", *EVAL_KEYS]
# The resume rules are the settings' own (config.py: each field's `resume` and `missing`).
RESUME_OVERRIDABLE, RESUME_MISSING, RESUME_FROM_COMMAND = (config.RESUME_OVERRIDABLE, config.RESUME_MISSING,
                                                            config.RESUME_FROM_COMMAND)
RESUMABLE_KEYS = {"model", "opt_seg", "opt_cls", "iter", "rng", "config"}


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def continue_command(out):
    """The exact command that continues the run in `out`: this interpreter (`python` when that is the one on
    PATH) and train.py as it was started."""
    py = sys.executable or "python"
    on_path = shutil.which("python")
    if on_path and os.path.realpath(on_path) == os.path.realpath(py):
        py = "python"
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("train.py") else "train.py"
    return shlex.join([py, script, "--out", out, "--resume"])


def signal_name(signum):
    return signal.Signals(signum).name


# ---------------------------------------------------------------------------------------------- device
def pick_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU -> a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise cli.DataError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    return torch.device(name)


def native_bf16(device):
    """Whether bf16 autocast is the default on `device`: only a CPU with AMX tiles, where bf16 convolutions
    run on the matrix units. On this project's AVX512-BF16 CPU without AMX, bf16 measured slower than fp32
    (docs/speed.md), so such CPUs, older ones and CUDA (where --amp opts in) default to fp32."""
    device = torch.device(device)
    if device.type != "cpu":
        return False
    return bool(getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", lambda: False)())



# ------------------------------------------------------------------------------------------- run lock
class RunLock:
    """One writer per run folder: OUT.lock beside the folder (so moving an unfinished folder aside keeps it)
    holds the owner's PID, host and start time from before anything is written until the run ends. A second
    train.py into the same --out, new or --resume, stops with one line naming the owner while it lives; a lock
    whose owner is gone (same host, no such process) is taken over, and said so."""

    def __init__(self, out):
        self.out, self.path = out, os.path.normpath(os.path.abspath(out)) + ".lock"
        self.held = self.made_parent = False

    def _owner(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner):
        if owner.get("host") != socket.gethostname():
            return True   # cannot be checked from here: taken as alive
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    def acquire(self):
        out = self.out
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        parent = os.path.dirname(self.path)
        self.made_parent = not os.path.isdir(parent)   # removed again at release if the run wrote nothing there
        os.makedirs(parent, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner):
                    raise cli.DataError(
                        f"run folder {out} is being written by another train.py (PID {owner.get('pid')} on "
                        f"{owner.get('host')}, since {owner.get('started')}; lock {self.path}): wait for it "
                        f"to end, or train into another --out")
                print(f"took over the lock of {out}: its owner (PID {owner and owner.get('pid')}) is no "
                      f"longer running", file=sys.stderr)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise cli.DataError(f"cannot take the lock {self.path} of run folder {out}: another process keeps "
                            "taking it")

    def release(self):
        if self.held and (self._owner() or {}).get("pid") == os.getpid():
            os.remove(self.path)
            if self.made_parent:
                try:
                    os.rmdir(os.path.dirname(self.path))   # only if empty: a run refused on bad input leaves no runs/
                except OSError:
                    pass
        self.held = False


# ------------------------------------------------------------------------------------------- run folder
def open_run(args, given):
    """Check --out and, with --resume, read its checkpoint; writes nothing. -> (config dict, checkpoint or
    None).

    cfg["finished"] holds metrics.json's record when --resume names a finished run (nothing is to be done);
    cfg["move_aside"] is set when a fresh start goes into a folder a run left before its first checkpoint.
    given: the arguments set on the command line; with --resume, one that differs from the run's own
    setting is an error naming both (the run's config is what the checkpoint was trained with)."""
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise cli.DataError(f"--out {out} is a file, not a folder: name a folder for the run")
    ckpt_path = os.path.join(out, "checkpoint.pt")
    metrics_path = os.path.join(out, "metrics.json")
    if args.resume:
        if os.path.isfile(metrics_path):
            m = read_metrics(metrics_path)
            print(f"{out} is finished (step {m.get('iter')}, metrics.json): nothing to resume, nothing "
                  f"changed; evaluate it with python evaluate.py {out}, or train longer into a new --out")
            return {"finished": m, "out": out}, None
        if not os.path.isfile(ckpt_path):
            if os.path.isfile(os.path.join(out, "config.json")):
                raise cli.DataError(f"--resume: {out} holds a run stopped before its first checkpoint (no "
                                     f"{ckpt_path}; nothing was changed): rerun the command without "
                                     "--resume; it starts afresh and moves these files to "
                                     f"{out}.incomplete-<time>")
            raise cli.DataError(f"--resume: there is no {ckpt_path} to continue from (nothing was changed); "
                                 f"start the run without --resume, into a new or empty --out")
        ckpt = read_checkpoint(ckpt_path)
        cfg = {**RESUME_MISSING, **ckpt["config"]}
        cfg.setdefault("lr_seg", cfg["lr"])   # runs made before --lr-seg / --lr-cls existed
        cfg.setdefault("lr_cls", cfg["lr"])
        new = vars(args)
        changed = [k for k in sorted(given) if k not in RESUME_OVERRIDABLE and k in cfg and new[k] != cfg[k]]
        if changed:
            both = "; ".join(f"{config.flag(k)} {cfg[k]} (the run) vs {new[k]} (given)" for k in changed)
            raise cli.DataError(f"--resume: {out} was trained with other settings: {both}. Drop them to "
                                 f"continue the run, or train into a new --out")
        cfg.update({k: new[k] for k in RESUME_OVERRIDABLE if k in given})
        cfg.update(resume=True, **{k: new.get(k) for k in RESUME_FROM_COMMAND})
        return cfg, ckpt
    cfg = dict(vars(args))
    if os.path.isdir(out) and os.listdir(out):
        if os.path.isfile(metrics_path):
            raise cli.DataError(f"run folder {out} holds a finished run (metrics.json): evaluate it with "
                                 f"python evaluate.py {out}, or train into another --out")
        if os.path.isfile(ckpt_path):
            raise cli.DataError(f"run folder {out} holds an unfinished run: pass --resume to continue it, "
                                 f"or another --out")
        if not os.path.isfile(os.path.join(out, "config.json")):
            raise cli.DataError(f"run folder {out} exists and is not empty (and holds no train.py run): "
                                 f"name another --out")
        cfg["move_aside"] = True   # a run stopped before its first checkpoint: its files are kept aside
    cfg["git_commit"] = git_commit()
    return cfg, None


def read_metrics(path):
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise cli.DataError(f"cannot read {path} ({cli.cause(e)}): move it aside to resume the run") from e


def prepare_folder(cfg, split, resumed):
    """Create or update the run folder once everything is loaded and checked; returns the folder."""
    out = cfg["out"]
    if cfg.pop("move_aside", False):
        aside = f"{os.path.normpath(out)}.incomplete-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        os.replace(out, aside)
        print(f"{out} held a run stopped before its first checkpoint: moved it to {aside}; starting afresh")
    os.makedirs(out, exist_ok=True)
    if resumed:
        stale = cli.remove_stale_temporaries(out)
        if stale:
            print(f"removed {len(stale)} temporary files of an interrupted write: "
                  f"{', '.join(os.path.basename(p) for p in stale)}", file=sys.stderr)
    else:
        cli.write_json_atomic(cfg, os.path.join(out, "config.json"))
        data.save_split(split, os.path.join(out, "split.json"))
    return out


def run_split(cfg, ds, given):
    """The run's split, checked against the dataset and the config; writes nothing.

    Resume: the run folder's split.json, which must be a split of the config's dataset, budget (and seed,
    when the run drew it). New run: --split FILE (its budget becomes the config's; a different --labels on the
    command line is an error), or a split drawn from --labels and --seed."""
    if cfg["resume"]:
        where = os.path.join(cfg["out"], "split.json")
        split = data.load_split(where, ds)
        n_l = len(split["train_labeled"]) if cfg["labels"] != data.LABELS_ALL else split.get("labels")
        said = {"dataset": split.get("dataset"), "labels": n_l}
        want = {"dataset": cfg["dataset"], "labels": cfg["labels"]}
        if not cfg["split"]:
            said["seed"], want["seed"] = split.get("seed"), cfg["seed"]
        bad = [k for k in said if said[k] != want[k]]
        if bad:
            raise cli.DataError(f"{where} is a split of {', '.join(f'{k} {said[k]}' for k in bad)} but the "
                                "run "
                                 f"was trained with {', '.join(f'{k} {want[k]}' for k in bad)} "
                                 "(checkpoint.pt): put the run's own split.json back, or train into a new "
                                 "--out")
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


# ---------------------------------------------------------------------------------------------- log.csv
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


def _write_csv(path, rows):
    def write(f):
        w = csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    cli.atomic_write(path, write, newline="")


# ------------------------------------------------------------------------------------------- checkpoints
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
    return {**lean_checkpoint(model, banks, it, best, cfg, peer),
            **{f"opt_{k}": o.state_dict() for k, o in opts.items()},
            "rng": rng_state(), "train_seconds": seconds}


def lean_checkpoint(model, banks, it, best, cfg, peer=None, **extra):
    """What evaluation, --init and tools need (weights, memory banks, CPS's peer, config, step), without
    optimizer or RNG states: best.pt, and the final checkpoint.pt of a finished run (extra: its metrics)."""
    return {"model": model.state_dict(), "banks": banks.state_dict(),
            **({"peer": peer.state_dict()} if peer is not None else {}),
            "iter": it, "config": cfg, "best_dice": best["dice"], "best_iter": best["iter"], **extra}


def best_checkpoint(model, banks, it, best, cfg):
    """best.pt: the weights and banks at the best evaluation (no optimizer or RNG states)."""
    return lean_checkpoint(model, banks, it, best, cfg)


def read_checkpoint(path, resumable=True):
    """A train.py checkpoint (for --resume: with optimizer and RNG states); a damaged or foreign file is a
    DataError naming it and the way out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unreadable
        raise cli.DataError(f"cannot read {path} ({cli.cause(e)}): it cannot be resumed; move the run "
                             f"folder aside and rerun the command without --resume") from e
    needed = RESUMABLE_KEYS if resumable else {"model", "iter", "config"}
    if isinstance(ckpt, dict) and ckpt.get("final") and resumable:
        raise cli.DataError(f"{path} is the lean final checkpoint of a finished run (no optimizer state): it "
                             f"cannot be resumed; evaluate it, start a new run from it with --init, or train "
                             f"into a new --out")
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        lacks = ", ".join(sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed))
        raise cli.DataError(f"{path} is not a {'resumable ' if resumable else ''}train.py checkpoint (it "
                            "lacks "
                             f"{lacks}); rerun the command without --resume into a new --out")
    return ckpt


def load_checkpoint(ckpt, model, banks, opts=None, peer=None):
    """Inverse of `checkpoint` (a checkpoint from before the banks had their own key keeps them in "model");
    a lean checkpoint loads without optimizer states."""
    state = dict(ckpt["model"])
    bank_state = ckpt.get("banks") or {k.replace("_bank.", ".", 1): state.pop(k) for k in list(state)
                                       if k.startswith(("pixel_bank.", "image_bank."))}
    model.load_state_dict(state)
    banks.load_state_dict(bank_state)
    if peer is not None:
        peer.load_state_dict(ckpt["peer"])
    for k, o in (opts or {}).items():
        if f"opt_{k}" in ckpt:
            o.load_state_dict(ckpt[f"opt_{k}"])


# ----------------------------------------------------------------------------------- non-finite losses
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


# ---------------------------------------------------------------------------------------------- signals
class Abort(KeyboardInterrupt):
    """A second signal: stop at once (what was saved stays saved)."""


class StopSignals:
    """SIGINT, SIGTERM (Slurm's preemption) and SIGUSR1 (the Slurm script's 'time is nearly up') ask the run
    to stop after the current step: `requested` is set and train() checkpoints and exits. A second signal
    aborts at once (Abort, a KeyboardInterrupt) without waiting for the step; the last checkpoint stays as it
    was."""
    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1")) if s)

    def __init__(self, ckpt_path):
        self.requested, self.ckpt_path, self.previous = None, ckpt_path, {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        return False

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise Abort(f"second signal ({signal.Signals(signum).name}): stopped at once; the last "
                        f"checkpoint {self.ckpt_path} is kept as it was")
        self.requested = signum
        print(f"train.py: {signal.Signals(signum).name} received: finishing the current step and saving a "
              f"checkpoint (a second signal stops at once)", file=sys.stderr, flush=True)

    @property
    def exit_code(self):
        return 128 + int(self.requested)


# ----------------------------------------------------------------------------------- progress and time
def duration(seconds):
    """12.3 -> '12 s', 4000 -> '1 h 07 min', 100000 -> '27.8 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 36000:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """The console side of a run: after the first few measured steps one line with the expected time (and a
    quicker setting when it is long), measured again once --burn-in ends (its SupOnly steps are cheaper than
    the full ones), then, when the output is no terminal (nohup, Slurm), a line at least every
    --progress-seconds: step, loss, s/step, ETA. Reads the loss (one host sync) only when it prints."""
    MEASURE = 3          # steps of this part timed before the estimate (the first, a warm-up, is left out)
    LONG = 3600          # above this, the estimate suggests a quicker setting

    def __init__(self, start, total, device, every_s, lines, burn_in=0):
        self.start, self.total, self.device, self.every_s, self.lines = start, total, device, every_s, lines
        self.burn_in = burn_in if start < burn_in < total else None
        self.phase = start    # the step the current measurement starts from
        self.t_measure, self.announced, self.evaluations_said, self.sps = None, False, False, None
        self.eval_seconds, self.n_evals_left = None, None
        self.t_line = time.perf_counter()
        self.since_line = []   # seconds of the steps since the last line

    def step(self, done, seconds, loss):
        self.since_line.append(seconds)
        part = done - self.phase
        if part == 1:
            self.t_measure = []
        elif self.t_measure is not None and not self.announced:
            self.t_measure.append(seconds)
            if part >= self.MEASURE and self.total - self.phase > self.MEASURE:
                self._announce(done, sum(self.t_measure) / len(self.t_measure))
        if done == self.burn_in:   # the full objective starts: time its steps anew
            self.phase, self.t_measure, self.announced = done, None, False
        if self.lines and self.every_s is not None and time.perf_counter() - self.t_line >= self.every_s:
            sps = sum(self.since_line) / len(self.since_line)
            print(f"step {done}/{self.total}  loss {float(loss.detach()):.4f}  {sps:.3g} s/step  "
                  f"ETA {duration(sps * (self.total - done))}", flush=True)
            self.t_line, self.since_line = time.perf_counter(), []

    def _announce(self, done, sps):
        self.announced, self.sps = True, sps
        if self.burn_in is not None and done < self.burn_in:
            self._say(f"{self.burn_in - done:,} more steps at ~{sps:.3g} s/step on {self.device.type} (burn-in): "
                      f"~{duration(sps * (self.burn_in - done))}; the {self.total - self.burn_in:,} full steps "
                      f"after step {self.burn_in} are timed when they start")
            self.sps = None   # not the rate of the steps that follow
            return
        left = sps * (self.total - done)
        evals = (f" + ~{duration(self.eval_seconds * self.n_evals_left)} for {self.n_evals_left} evaluations"
                 if self.eval_seconds is not None else ", evaluations timed at the first")
        self.evaluations_said = self.eval_seconds is not None   # said here: no second line for them
        hint = ("; for a quick look try --image-size 96 --iters 250" if left > self.LONG else "")
        self._say(f"{self.total - done:,} more steps at ~{sps:.3g} s/step on {self.device.type}: "
                  f"~{duration(left)} of steps{evals}{hint}")

    def evaluated(self, done, seconds, n_left):
        """After the first evaluation of this part: the expected time with the n_left evaluations still to
        come (each as long as this one)."""
        self.eval_seconds, self.n_evals_left = seconds, n_left
        if self.evaluations_said or self.sps is None:
            return
        self.evaluations_said = True
        left = self.sps * (self.total - done) + seconds * n_left
        self._say(f"an evaluation took {seconds:.1f} s; with the {n_left} still to come, ~{duration(left)} "
                  "left")

    def _say(self, line):
        if self.lines:
            print(line, flush=True)
        else:
            tqdm.write(line)   # above the bar on a terminal


class CheckpointClock:
    """True every `minutes` of wall time (None or 0: never): checkpoints whatever --eval-every is. Saving
    reads the state and draws nothing, so the trained weights do not depend on when it fires."""

    def __init__(self, minutes):
        self.every = minutes * 60 if minutes else None
        self.last = time.monotonic()

    def due(self):
        return self.every is not None and time.monotonic() - self.last >= self.every

    def reset(self):
        self.last = time.monotonic()


# ------------------------------------------------------------------------------------------------ malloc
def keep_freed_memory():
    """CPU: let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    glibc serves every block above 32 MiB (its largest mmap threshold) with a fresh mmap, released on free, so
    each step's large activations are page-faulted and zero-filled anew: at 224 px, batch 8 + 8, a Hermes step
    takes ~860k minor page faults, SupOnly ~160k (its batch is half as large, fewer blocks cross 32 MiB). With
    mmap off and no trimming they are reused from the heap. Linux with glibc only; returns whether it
    applied."""
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                                           # <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
