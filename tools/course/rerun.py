"""Experiments cannot be forged: the first logged steps of every handed-in run are re-run in the sandbox, with
the project's pristine code and the run's own seed (config.json), and compared with its log.csv.

The settings of the re-run are the assignment's (the checks demand them in config.json anyway); only the seed
and log_every come from the student's config.json, as validated integers. The re-run stops as soon as its
log.csv has the row to compare (at most MAX_STEPS steps)."""
import csv
import os
import subprocess
import sys
import tempfile
import time

from . import handin, sandbox
from .grader import SANDBOX_ENV, _kill, read_small_json

MAX_STEPS = 10
TIMEOUT_S = 240
COMPARED = ("loss", "seg_l", "seg_u", "seg_c", "cls_l", "cls_u", "cls_c", "itc", "kappa", "tau")
RTOL, ATOL = 0.02, 1e-4


def runs_of(a):
    """[(run folder, the settings its config.json must have)] of an experiment assignment."""
    mod = a.module
    if hasattr(mod, "RUNS"):
        return list(mod.RUNS.values())
    return [(mod.RUN, mod.CONFIG)]


def train_args(cfg, seed, log_every):
    """train.py's arguments for the settings `cfg` (the assignment's)."""
    args = ["train.py", "--device", "cpu", "--eval-every", "30", "--seed", str(seed), "--log-every", str(log_every)]
    for k, v in sorted(cfg.items()):
        if k == "log_every":
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else f"--no-{k.replace('_', '-')}")
        else:
            args += [flag, str(v)]
    return args


def _rows(path):
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("kind") == "train"]


def _first_row(rows):
    try:
        return min(rows, key=lambda r: float(r["iter"]))
    except (KeyError, ValueError):
        return None


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def differs(mine, theirs):
    """The first compared column where two log.csv rows of the same step disagree, or None."""
    for col in COMPARED:
        a, b = _num(mine.get(col)), _num(theirs.get(col))
        if b is None:
            continue
        if a is None or not abs(a - b) <= ATOL + RTOL * abs(b):
            return f"{col} is {mine.get(col)!r}, a re-run of your config.json gives {b:.6g}"
    return None


def rerun(cfg, seed, log_every, steps, st, code=None):
    """Run train.py (pristine `code` folder) in the sandbox until its log.csv has a train row at `steps`;
    returns that row or raises RuntimeError."""
    with tempfile.TemporaryDirectory(prefix="course-rerun-") as out:
        cmd = [sys.executable, "-E", "-B"] + train_args(cfg, seed, log_every) + \
            ["--out", "/out/run"]
        if st.sandboxed:
            cmd = sandbox.command(cmd, code, None, st.limits, SANDBOX_ENV, out=out)
        else:
            cmd = [c.replace("/out/run", os.path.join(out, "run")) for c in cmd]
        err = open(os.path.join(out, "stderr.txt"), "wb")
        p = subprocess.Popen(cmd, cwd=code if not st.sandboxed else "/", stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, env=SANDBOX_ENV, start_new_session=True,
                             preexec_fn=st.limits.apply)
        log, end = os.path.join(out, "run", "log.csv"), time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < end:
                if os.path.isfile(log):
                    rows = [r for r in _rows(log) if _num(r.get("iter")) is not None]
                    hit = [r for r in rows if float(r["iter"]) >= steps]
                    if hit:
                        return _first_row(hit)
                if p.poll() is not None:
                    err.flush()
                    with open(os.path.join(out, "stderr.txt"), "rb") as f:
                        tail = f.read()[-300:].decode("utf-8", "replace").strip().splitlines()
                    raise RuntimeError(f"the re-run stopped (exit status {p.returncode}): "
                                       f"{tail[-1] if tail else ''}")
                time.sleep(0.2)
            raise RuntimeError(f"the re-run took longer than {TIMEOUT_S} s")
        finally:
            _kill(p)
            err.close()


def verify_runs(a, work, st):
    """None when every run folder in `work` agrees with a re-run of its first logged steps, else the reason.
    A missing or unreadable run is left to the checks (they say what is missing)."""
    for run, cfg in runs_of(a):
        folder = os.path.join(work, run)
        try:
            student = read_small_json(os.path.join(folder, "config.json"))
            rows = _rows(os.path.join(folder, "log.csv"))
        except (ValueError, OSError, csv.Error):
            continue
        first = _first_row(rows)
        if not isinstance(student, dict) or first is None:
            continue
        seed, log_every = student.get("seed"), student.get("log_every", cfg.get("log_every", 10))
        if not (type(seed) is int and 0 <= seed < 2**31 and type(log_every) is int and 1 <= log_every <= 1000):
            return f"{run}/config.json: seed {seed!r} / log_every {log_every!r} are not the integers train.py writes"
        steps = _num(first.get("iter"))
        if steps is None or steps != int(steps) or steps < 1:
            return f"{run}/log.csv: its first train row has no valid step"
        if steps > MAX_STEPS:
            return f"{run}/log.csv starts at step {steps:g}: hand in a run logged from its first steps " \
                   f"(--log-every {MAX_STEPS} or less)"
        try:
            theirs = rerun(cfg, seed, log_every, int(steps), st, code=handin.pristine(a))
        except RuntimeError as e:
            raise RuntimeError(f"could not re-run {run}: {e}") from None
        why = differs(first, theirs)
        if why:
            return f"{run}/log.csv does not match a re-run of its config.json (step {steps:g}): {why}"
    return None
