"""Reproduce the paper's tables with one command: plan the train.py runs, run the missing ones, write the table.

    python -m tools.reproduce list                                    # the experiments and their runs
    python -m tools.reproduce demo                                    # CPU minutes: demo data, SupOnly vs Hermes
    python -m tools.reproduce table3 --dry-run --data-root busi=PATH  # the train.py commands, one per line
    python -m tools.reproduce table1 --jobs 2 --data-root busi=P1 --data-root udiat=P2 --data-root sztus=P3 \
        --device cuda
    python -m tools.reproduce table1 --slurm --partition gpu > t1.sbatch  # a Slurm job array, one task per run
    python -m tools.reproduce table1 --collect                        # the table from the finished run folders
    python -m tools.reproduce study --device cuda --data-root busi=PATH  # issue 18's GPU study (see its options)

A run is one `python train.py ...` subprocess writing DIR/<dataset>-<labels>-<method>-seed<seed>/ (default DIR
runs/reproduce); its output goes to DIR/logs/<run>.log. Identical runs share one folder across experiments (Table 3's
SupOnly row is Table 1's BUSI 72-label SupOnly). A folder holding metrics.json is finished and skipped; one holding
checkpoint.pt is resumed (`--resume`); one with neither (killed before its first checkpoint) is moved aside to
<run>.incomplete-<time> and started again, so rerunning the same command continues a killed sweep.
Options reproduce.py does not know are passed on to every train.py command (`--iters 250 --image-size 96`,
`--device cuda --amp`, `--no-pretrained`); they are checked with train.py's own parser first.

DIR/EXP.md holds the table in the paper's layout: mean ± sample std over seeds of the final checkpoints'
metrics.json, in %, with the paper's number beside each cell.
"""
import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass

if __package__ in (None, ""):  # run by path (python tools/NAME.py): the project's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli
import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py is there
TRAIN = os.path.join(ROOT, "train.py")
DEFAULT_OUT = os.path.join("runs", "reproduce")
PAPER_SEEDS = (0, 1, 2)  # README, Training: "--seed 0/1/2 for the seeds of a table"
DATASET_TITLES = {"demo": "demo", "busi": "BUSI", "udiat": "UDIAT", "sztus": "SZ-TUS"}
# train.py options reproduce.py sets for each run: never passed on from the command line.
PER_RUN = {"dataset", "labels", "seed", "out", "resume", "data_root", "split"}
# config.json keys that may differ between a run folder and a new sweep over it (they do not change the final
# metrics; config.py); any other difference stops the sweep before it starts.
NEUTRAL = config.NEUTRAL_KEYS
TAIL_LINES = 15  # lines of a failed run's log shown in the report

# -------------------------------------------------------------------------------------------- methods
# A method is the train.py options that make a row, as {dest: value} with only non-default values, so that one
# configuration always gets the same name (and run folder) whichever table asks for it.
SWITCHES = ("dtcl", "ias", "itcl")  # Table 3: DTCL, SM/ITA, ITCL
SUPONLY = {"dtcl": False, "ias": False, "itcl": False}  # README, Ablations: row 1
HERMES = {}
CPS = {"method": "cps"}  # comparators/cps.py: Table 1's comparator (the switches are added by method(); CPS_SWITCHES)
PAPER_LR = config.SETTINGS["lr"].default                          # §4.1 and Table 4's best
PAPER_CONTRAST_LEVEL = config.SETTINGS["contrast_level"].default  # Table 5's best (Conv3)
# Settings not in the paper that a row may add (the from-scratch recipe and the stabilisers of
# docs/when-does-hermes-help.md): dest -> (train.py's default, type, tag in run names), from config.py.
RECIPE_OPTIONS = config.RECIPE_OPTIONS
OPTION_ORDER = ("method", "task", "dtcl", "ias", "itcl", "threshold", "lr", "contrast_level", *RECIPE_OPTIONS)
CPS_SWITCHES = {"dtcl": False, "ias": False, "itcl": False}  # train.py --method cps implies them; written out
# so that the command matches the run's config.json (config_mismatch)


def method(**kw):
    """A method as a hashable tuple of (dest, value), defaults dropped."""
    defaults = {k: config.SETTINGS[k].default for k in OPTION_ORDER}
    unknown = set(kw) - set(defaults)
    if unknown:
        raise ValueError(f"reproduce.method: no such option {sorted(unknown)}")
    return tuple((k, kw[k]) for k in OPTION_ORDER if k in kw and kw[k] != defaults[k])


def _num(x):
    """2e-4 -> '2e-4', 1.5e-4 -> '1.5e-4' (short and exact in run names and commands)."""
    mant, exp = f"{x:e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def method_slug(m):
    """'hermes', 'suponly', the switches left on ('dtcl', 'ias-itcl', ...), 'ss-'/'sc-' for one task, then
    '-thr-confidence', '-lr2e-4', '-conv1' for the other options; 'cps', 'abd', ... for a --method comparator; the recipe as
    '-lrseg1e-3-lrcls1e-2-burnin500' (RECIPE_OPTIONS' tags), so another recipe gets other run folders."""
    d = dict(m)
    on = [s for s in SWITCHES if d.get(s, True)]
    name = "hermes" if len(on) == len(SWITCHES) else "suponly" if not on else "-".join(on)
    if d.get("method") in config.METHODS:   # a comparator (comparators/): its --method name
        name = d["method"]
    name = {"seg": "ss-", "cls": "sc-"}.get(d.get("task"), "") + name
    if "threshold" in d:
        name += f"-thr-{d['threshold']}"
    if "lr" in d:
        name += f"-lr{_num(d['lr'])}"
    if "contrast_level" in d:
        name += f"-conv{d['contrast_level']}"
    for k, (_, _, tag) in RECIPE_OPTIONS.items():
        if k in d:
            name += f"-{tag}{_num(d[k]) if isinstance(d[k], float) else d[k]}"
    return name


def method_options(m):
    """train.py options of a method, e.g. ['--task', 'seg', '--no-dtcl', '--lr', '2e-4']."""
    out = []
    for k, v in m:
        opt = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(opt if v else "--no-" + k.replace("_", "-"))
        else:
            out += [opt, _num(v) if isinstance(v, float) else str(v)]
    return out


@dataclass(frozen=True)
class Run:
    dataset: str
    labels: int
    method: tuple
    seed: int

    @property
    def name(self):
        return f"{self.dataset}-{self.labels}-{method_slug(self.method)}-seed{self.seed}"


# ------------------------------------------------------------------------------------ the paper's numbers
# Table 1 (Dice %, mean ± std): one row per method (slug), columns in the paper's order.
_T1_COLS = (("busi", 216), ("busi", 144), ("busi", 72), ("udiat", 60), ("udiat", 40), ("udiat", 20),
            ("sztus", 120), ("sztus", 60))
_T1_ROWS = {
    "suponly": ((83.62, 0.21), (79.28, 0.84), (71.84, 0.45), (85.78, 0.39), (83.28, 0.47), (78.74, 0.63),
                (77.24, 0.59), (73.42, 0.41)),
    "cps": ((84.84, 0.35), (80.21, 0.48), (72.21, 0.61), (86.22, 0.46), (84.03, 0.48), (79.52, 0.38),
            (77.84, 0.55), (74.26, 0.54)),
    "abd": ((85.91, 0.25), (82.77, 0.56), (73.93, 0.44), (87.21, 0.28), (85.57, 0.35), (81.73, 0.43),
            (78.92, 0.48), (76.08, 0.43)),
    "admt": ((85.02, 0.49), (81.27, 0.61), (72.64, 0.32), (86.75, 0.67), (84.51, 0.56), (80.54, 0.55),
             (78.48, 0.49), (75.21, 0.49)),
    "diffrect": ((85.54, 0.41), (82.41, 0.53), (73.48, 0.59), (86.97, 0.81), (85.12, 0.41), (81.21, 0.44),
                 (78.67, 0.53), (74.84, 0.51)),
    "dcnet": ((85.11, 0.63), (81.88, 0.64), (73.03, 0.41), (87.52, 0.53), (84.77, 0.47), (80.92, 0.39),
              (78.06, 0.55), (74.47, 0.52)),
    "ssnet": ((85.27, 0.52), (82.21, 0.47), (73.25, 0.71), (86.42, 0.62), (84.95, 0.56), (81.03, 0.48),
              (78.29, 0.51), (75.13, 0.47)),
    "hermes": ((87.48, 0.47), (84.41, 0.51), (75.68, 0.22), (88.73, 0.48), (87.15, 0.32), (83.23, 0.28),
               (80.23, 0.46), (77.33, 0.37)),
}
TABLE1 = {col: {m: row[j] for m, row in _T1_ROWS.items()} for j, col in enumerate(_T1_COLS)}
# Table 2 (accuracy %, mean ± std); the paper reports no UDIAT accuracy and no BUSI 72-label column here
# (Table 3 has BUSI 72: 81.17 / 84.77).
_T2_COLS = (("busi", 216), ("busi", 144), ("sztus", 120), ("sztus", 60))
_T2_ROWS = {
    "suponly": ((91.06, 0.48), (87.51, 0.52), (78.96, 0.31), (75.61, 0.39)),
    "pefat": ((91.38, 0.46), (87.82, 0.45), (79.67, 0.42), (76.27, 0.53)),
    "infomatch": ((91.67, 0.54), (87.96, 0.41), (80.15, 0.46), (77.97, 0.47)),
    "interlude": ((92.31, 0.35), (88.21, 0.32), (81.69, 0.36), (79.32, 0.37)),
    "shrinkmatch": ((91.89, 0.36), (88.02, 0.38), (80.89, 0.47), (78.48, 0.44)),
    "hermes": ((94.51, 0.32), (90.20, 0.31), (83.65, 0.28), (81.24, 0.29)),
}
TABLE2 = {col: {m: row[j] for m, row in _T2_ROWS.items()} for j, col in enumerate(_T2_COLS)}
# Table 3 (BUSI, 72 labels): index -> (DTCL, SM/ITA, ITCL, SS Dice, SC Acc, joint Dice, joint Acc); "-" = None.
TABLE3 = {
    1: (False, False, False, 71.79, 81.08, 71.84, 81.17),
    2: (True, False, False, 73.09, 82.27, 73.13, 82.32),
    3: (False, True, False, None, None, 72.95, 82.39),
    4: (False, True, True, None, None, 74.09, 83.43),
    5: (True, True, False, None, None, 74.24, 83.54),
    6: (True, True, True, None, None, 75.68, 84.77),
}
# Table 4 (BUSI, 72 labels): lr -> (Dice, Acc). Its 1e-4 accuracy (83.19) differs from Table 3 row 6 (84.77)
# for the same configuration; both are the paper's.
TABLE4 = {8e-5: (73.91, 81.86), 9e-5: (74.35, 82.17), 1e-4: (75.68, 83.19), 2e-4: (73.93, 82.76),
          3e-4: (73.22, 82.50)}
# Table 5 (supplement, BUSI, 144 labels): contrast level (Conv1..Conv4 = layer1..layer4) -> (resolution at
# 224 px, Dice, IoU). Its Conv3 Dice (83.37) differs from Table 1's Hermes BUSI 144 (84.41).
TABLE5 = {1: ("56 × 56", 81.26, 69.22), 2: ("28 × 28", 81.56, 69.62), 3: ("14 × 14", 83.37, 72.54),
          4: ("7 × 7", 80.72, 68.06)}
# Table 6 (supplement, BUSI, 144 labels): saliency fusion at Conv_up1..up4 -> (resolution, Dice, IoU).
TABLE6 = {"up1": ("14 × 14", 82.28, 70.04), "up2": ("28 × 28", 81.46, 69.25), "up3": ("56 × 56", 83.14, 71.56),
          "up4": ("112 × 112", 82.53, 70.61)}
ENCODER_STRIDE = {1: 4, 2: 8, 3: 16, 4: 32}  # models.SegEncoder: layer1 /4 ... layer4 /32


# ------------------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Cell:
    """One table cell: a metric of (dataset, labels, method) averaged over seeds, beside the paper's number.
    metric: a metrics.json key (fraction, shown in %) or 'log:<column>' = log.csv train rows of the second half
    of training, averaged per run."""
    dataset: str
    labels: int
    method: tuple
    metric: str
    paper: object = None  # (mean, std), a number or None


@dataclass
class Table:
    header: list
    rows: list  # lists of str | Cell
    notes: tuple = ()


@dataclass
class Experiment:
    name: str
    title: str
    seeds: tuple
    table: object = None       # function(image_size or None) -> Table
    base: tuple = ()           # (option, value) of every run; a passed-on option replaces the base one
    varies: frozenset = frozenset()  # train.py dests the rows set: not accepted as passed-on options
    unsupported: str = None
    report: object = None      # function(exp, out_dir, seeds) -> markdown appended to the table (and figures)
    gpu_jobs: bool = False     # with --device cuda, --jobs defaults to all runs at once (one GPU shared)
    default_out: str = DEFAULT_OUT

    def runs(self, seeds=None):
        keys = []
        for row in self.table(None).rows:
            for c in row:
                if isinstance(c, Cell) and (c.dataset, c.labels, c.method) not in keys:
                    keys.append((c.dataset, c.labels, c.method))
        return [Run(d, n, m, s) for d, n, m in keys for s in (self.seeds if seeds is None else seeds)]

    def datasets(self):
        return sorted({r.dataset for r in self.runs()} - {"demo"})


def _comparator_rows(slugs, table, metric):
    """[title, Cell ...] rows of Table 1 or 2: SupOnly, the comparators in the paper's order, Hermes."""
    rows = []
    for slug in slugs:
        if slug == "suponly":
            title, m = "SupOnly", method(**SUPONLY)
        elif slug == "hermes":
            title, m = "Hermes", method(**HERMES)
        else:
            title, m = f"{config.METHODS[slug]} (`--method {slug}`)", method(method=slug, **CPS_SWITCHES)
        rows.append([title] + [Cell(d, n, m, metric, table[(d, n)][slug]) for d, n in table])
    return rows


def _table1(_):
    header = ["Method"] + [f"{DATASET_TITLES[d]} {n} labels" for d, n in TABLE1]
    return Table(header, _comparator_rows(_T1_ROWS, TABLE1, "dice_mean"), (
        "Dice of the final checkpoint on the evaluation split (Table 1). The comparators (comparators/, "
        "README: Comparators) train their segmentation U-Net(s) by their own method and the classification "
        "branch as SupOnly's; CPS is the paper's row CPS[4]; DiffRect's rectifier is scaled down (comparators/diffrect.py).",))


def _table2(_):
    header = ["Method"] + [f"{DATASET_TITLES[d]} {n} labels" for d, n in TABLE2]
    return Table(header, _comparator_rows(_T2_ROWS, TABLE2, "accuracy"), (
        "Accuracy of the final checkpoint on the evaluation split (Table 2). SupOnly and Hermes are table1's runs "
        "(one joint run gives both tables); the comparators train their classifier by their own method and the "
        "segmentation branch as SupOnly's.",))


def _table3(_):
    header = ["Index", "DTCL", "SM/ITA", "ITCL", "SS Dice", "SC Acc", "Joint Dice", "Joint Acc"]
    rows = []
    for i, (dtcl, ias, itcl, ss, sc, dice, acc) in TABLE3.items():
        joint = method(dtcl=dtcl, ias=ias, itcl=itcl)
        # README, Ablations: SS / SC = --task seg / cls with --no-ias --no-itcl (and --no-dtcl for row 1)
        ss_m, sc_m = (method(task=t, dtcl=dtcl, ias=False, itcl=False) for t in ("seg", "cls"))
        rows.append([str(i)] + ["✓" if on else "" for on in (dtcl, ias, itcl)] + [
            Cell("busi", 72, ss_m, "dice_mean", ss) if ss is not None else "-",
            Cell("busi", 72, sc_m, "accuracy", sc) if sc is not None else "-",
            Cell("busi", 72, joint, "dice_mean", dice), Cell("busi", 72, joint, "accuracy", acc)])
    return Table(header, rows, ("Ablation of Table 3 (BUSI, 72 labels); flags per row as in the README's "
                                "Ablations table. SS / SC: one branch trained alone.",))


def _table4(_):
    header = ["LR"] + [_num(lr) for lr in TABLE4]
    rows = [[metric_title] + [Cell("busi", 72, method(lr=lr), key, TABLE4[lr][j]) for lr in TABLE4]
            for j, (metric_title, key) in enumerate((("Dice(%)", "dice_mean"), ("Acc(%)", "accuracy")))]
    return Table(header, rows, ("Learning rate of both branches (Table 4; BUSI, 72 labels, Hermes). The paper's "
                                "1e-4 column is Table 3's row 6 but gives Acc 83.19 against Table 3's 84.77.",))


def _table5(image_size):
    header = ["Feature", "Resolution", "Dice(%)", "IoU(%)"]
    rows = []
    for level, (res, dice, iou) in TABLE5.items():
        m = method(contrast_level=level)
        here = f"{image_size // ENCODER_STRIDE[level]} × {image_size // ENCODER_STRIDE[level]}" if image_size else "?"
        rows.append([f"Conv{level} (`--contrast-level {level}`)", f"{here} (paper {res})",
                     Cell("busi", 144, m, "dice_mean", dice), Cell("busi", 144, m, "iou_mean", iou)])
    return Table(header, rows, ("Seg-encoder level of the pixel contrast, eq. (11) (supplement Table 5; BUSI, "
                                "144 labels, Hermes). The paper's Conv3 row is Table 1's Hermes BUSI 144 but gives "
                                "Dice 83.37 against Table 1's 84.41.",))


FIG1_RULES = (("dual (eq. (7))", "dual"), ("confidence only", "confidence"), ("none", "none"))


def _fig1(_):
    header = ["Pseudo-label rule", "Dice(%)", "Acc(%)", "kept pixels (%)", "kept-pixel PL acc (%)",
              "kept images (%)", "kept-image PL acc (%)"]
    rows = []
    for title, rule in FIG1_RULES:
        m = method(threshold=rule)
        rows.append([f"{title} (`--threshold {rule}`)"] + [
            Cell("busi", 72, m, k) for k in ("dice_mean", "accuracy", "log:kept_pix", "log:pl_acc_pix_kept",
                                             "log:kept_img", "log:pl_acc_img_kept")])
    return Table(header, rows, (
        "Fig. 1 of the paper plots pseudo-label accuracy on CIFAR-10 and gives no numbers; here the three rules "
        "(eq. (7) and Fig. 1 / Fig. 6) on BUSI, 72 labels. PL acc = accuracy of the kept pseudo-labels against the "
        "unlabeled ground truth held aside (log.csv), mean over the train rows of the second half of training.",
        "The curves: `python -m tools.figures pseudo-labels {out}/busi-72-hermes-seed* --out fig1.png`."))


DEMO_LABELS = 40  # train.py's demo default (40 of the 168 train images)


def _demo(_):
    header = ["Method", "Dice(%)", "IoU(%)", "Acc(%)", "AUC(%)"]
    rows = [[title] + [Cell("demo", DEMO_LABELS, m, k) for k in ("dice_mean", "iou_mean", "accuracy", "auc")]
            for title, m in (("SupOnly", method(**SUPONLY)), ("Hermes", method(**HERMES)))]
    return Table(header, rows, ("Synthetic demo data (no paper numbers): a CPU-sized check of the whole "
                                "pipeline, not a result.",))


EXPERIMENTS = {e.name: e for e in [
    Experiment("table1", "Table 1: Dice, BUSI / UDIAT / SZ-TUS × label budgets, SupOnly vs the segmentation "
               "comparators vs Hermes",
               PAPER_SEEDS, _table1, varies=frozenset(SWITCHES + ("method",))),
    Experiment("table2", "Table 2: accuracy, BUSI / SZ-TUS × label budgets, SupOnly vs the classification "
               "comparators vs Hermes", PAPER_SEEDS, _table2, varies=frozenset(SWITCHES + ("method",))),
    Experiment("table3", "Table 3: ablation rows (DTCL, SM/ITA, ITCL; SS / SC), BUSI 72 labels", PAPER_SEEDS,
               _table3, varies=frozenset(SWITCHES + ("task",))),
    Experiment("table4", "Table 4: learning rate 8e-5 ... 3e-4, BUSI 72 labels, Hermes", PAPER_SEEDS, _table4,
               varies=frozenset({"lr"})),
    Experiment("table5", "Table 5 (supplement): pixel-contrast level Conv1 ... Conv4, BUSI 144 labels, Hermes",
               PAPER_SEEDS, _table5, varies=frozenset({"contrast_level"})),
    Experiment("table6", "Table 6 (supplement): saliency fusion at Conv_up1 ... up4, BUSI 144 labels",
               PAPER_SEEDS, unsupported=(
                   "table6 is not supported: models.py fuses the saliency map at up3 only (Table 6's best) and "
                   "train.py has no option to move it; the paper's numbers: " + ", ".join(
                       f"{k} {r}: Dice {d} IoU {i}" for k, (r, d, i) in TABLE6.items()))),
    Experiment("fig1", "Fig. 1: pseudo-label rule dual / confidence / none, BUSI 72 labels, Hermes", PAPER_SEEDS,
               _fig1, varies=frozenset({"threshold"})),
    Experiment("demo", "demo: SupOnly vs Hermes on the built-in demo data, 2 seeds, 64 px and 60 steps (CPU minutes)",
               (0, 1), _demo, base=(("--image-size", "64"), ("--iters", "60"), ("--eval-every", "30")),
               varies=frozenset(SWITCHES)),
]}


# ------------------------------------------------------------------------------------ the study (issue 18)
# The from-scratch recipe of the study's "+ recipe" rows (not in the paper), as train.py options; the one place
# to change the default (--recipe replaces it for one command). Each value goes into the run folders' names.
# The from-scratch recipe (not in the paper): the lrs chosen on SupOnly (BUSI-72, 64 px, 400 steps, 3 seeds: +4.6 ±
# 2.9 Dice, +5.0 ± 4.4 accuracy over the paper's 1e-4; docs/gain-study.md); the burn-in, which SupOnly cannot
# screen, a sixth of the paper's 3,000 steps.
STUDY_RECIPE = "--lr-seg 1e-3 --lr-cls 1e-2 --burn-in 500"
# group key -> (row title, method options, with the recipe); a fair baseline gets the same tuning.
STUDY_GROUPS = {"suponly": ("SupOnly", SUPONLY, False), "cps": ("CPS", {**CPS, **CPS_SWITCHES}, False),
                "hermes": ("Hermes", HERMES, False), "suponly-recipe": ("SupOnly + recipe", SUPONLY, True),
                "cps-recipe": ("CPS + recipe", {**CPS, **CPS_SWITCHES}, True),
                "hermes-recipe": ("Hermes + recipe", HERMES, True)}
STUDY_BASE = (("--image-size", "224"), ("--iters", "3000"), ("--eval-every", "250"), ("--no-pretrained", None),
              ("--recipe", "paper"))   # the paper's settings; the '+ recipe' rows add STUDY_RECIPE's options
# Sizing, from the H100 figures of docs/speed.md and docs/results.md (224 px, batch 8 + 8, fp32, one process):
# (s/step of the training step alone, tools.bench; s/step end to end, train.py with evaluation every 250 steps).
# SupOnly: 0.040 and 131 s / 2,000 steps; Hermes: 0.078 and 232 s / 2,000 steps. CPS is not measured: two
# U-Nets over the 16 images against Hermes w/o SM/ITA's one U-Net over 16 + a teacher over 8 (0.062) -> ~0.09.
H100_STEP = {"suponly": (0.040, 131 / 2000), "hermes": (0.078, 232 / 2000), "cps": (0.090, 0.134)}
STUDY_WALL_GOAL = 9 * 60
STUDY_OUT = os.path.join("runs", "study")  # its own: its runs differ from the tables' (224 px, no pretraining)
STUDY_HELP = f"""study: SupOnly, CPS and Hermes with the paper's settings and with the from-scratch recipe (issue 18),
BUSI 72 labels, 224 px, 3,000 steps, evaluation every 250 steps, no pretrained weights, seeds 0 1 2: 18 runs.
    python -m tools.reproduce study --device cuda --data-root busi=PATH --out runs/study
    --recipe "OPTIONS"  the '+ recipe' groups' train.py options, default "{STUDY_RECIPE}";
                        of --{', --'.join(RECIPE_OPTIONS).replace('_', '-')}
    --groups GROUP...   default all: {' '.join(STUDY_GROUPS)}
With --device cuda all runs start at once (--jobs = number of runs; GPU memory ~3 GiB a run: 18 runs ~55 GiB,
within an 80 GB H100) and share the GPU; it writes DIR/study.md
(final and best-of-evaluation Dice and accuracy, mean ± std over seeds, paired Δ to SupOnly), study_dice.png,
study_accuracy.png (learning curves) and study_pseudo_labels.png (kept vs all pseudo-label accuracy).
Sizing (H100 figures of docs/speed.md, docs/results.md; 224 px): one run alone takes 0.066 s/step (SupOnly),
0.116 (Hermes), ~0.13 (CPS, estimated) end to end, of which the training step itself is 0.040, 0.078, ~0.09.
18 runs × 3,000 steps: one after another 3 × 2 × 3,000 × (0.066 + 0.116 + 0.134) = 5,690 s = 95 min; side by
side, processes take turns on the GPU (no MPS), so --jobs 18 recovers the idle time between a run's steps but
not the steps themselves: at least 3 × 2 × 3,000 × (0.040 + 0.078 + 0.090) = 3,740 s = 62 min (a burn-in step
costs a SupOnly step: 60 min with --burn-in 500). The full study does not fit {STUDY_WALL_GOAL // 60} minutes. What fits (GPU steps
+ ~1 min start-up): one seed, --seeds 0 --iters 1250 (all six groups, ~7.9 min of steps), or --seeds 0 --groups
suponly cps hermes hermes-recipe --iters 1500 (~6.8 min). The command prints its estimate (also with --dry-run);
`python -m tools.bench --device cuda --concurrent 2 4 8` measures the side-by-side gain, and the H100 figures
are of an older version (per-image CPU augmentation), so treat them as a guide. Stopped early (device time
over), rerun the same command to continue, or --collect for the table of the finished runs and the curves up to
the last evaluation of every run."""


def parse_recipe(text):
    """'--lr-seg 1e-3 --burn-in 500' -> {"lr_seg": 0.001, "burn_in": 500}: train.py options of RECIPE_OPTIONS,
    each with a value; UsageError for anything else."""
    tokens, out = shlex.split(text or ""), {}
    for i in range(0, len(tokens), 2):
        opt, value = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else None
        dest = opt[2:].replace("-", "_") if opt.startswith("--") else None
        if dest not in RECIPE_OPTIONS or value is None:
            raise UsageError(f"--recipe {text!r}: expected OPTION VALUE pairs of "
                             f"--{', --'.join(k.replace('_', '-') for k in RECIPE_OPTIONS)}, got {opt!r}")
        try:
            out[dest] = RECIPE_OPTIONS[dest][1](value)
        except ValueError:
            raise UsageError(f"--recipe: {opt} {value!r} is not a {RECIPE_OPTIONS[dest][1].__name__}") from None
    return out


def study_experiment(recipe_text=STUDY_RECIPE, groups=None):
    """The study as an Experiment for one recipe and a choice of STUDY_GROUPS (default all)."""
    recipe, keys = parse_recipe(recipe_text), list(groups or STUDY_GROUPS)
    bad = [k for k in keys if k not in STUDY_GROUPS]
    if bad:
        raise UsageError(f"--groups {bad[0]}: one of {', '.join(STUDY_GROUPS)}")
    if recipe and len({method_slug(method(**STUDY_GROUPS[k][1], **(recipe if STUDY_GROUPS[k][2] else {})))
                        for k in keys}) < len(keys):
        raise UsageError("--recipe: two groups would be the same runs")
    if not recipe and any(STUDY_GROUPS[k][2] for k in keys):
        raise UsageError("--recipe is empty: the '+ recipe' groups would be the paper-default runs; "
                         "choose --groups without them")
    cols = (("Dice final (%)", "dice_mean"), ("Dice best (%)", "best:dice_mean"), ("Acc final (%)", "accuracy"),
            ("Acc best (%)", "best:accuracy"))

    def table(_):
        rows = []
        for k in keys:
            title, opts, with_recipe = STUDY_GROUPS[k]
            m = method(**opts, **(recipe if with_recipe else {}))
            rows.append([title] + [Cell("busi", 72, m, key) for _, key in cols])
        return Table(["Group"] + [c for c, _ in cols], rows, (
            f"Recipe (not in the paper; the '+ recipe' rows): `{shlex.join(method_options(method(**recipe)))}`.",
            "final = the last step's checkpoint (metrics.json); best = the largest value over the evaluations of "
            "log.csv (each metric its own; selected on the evaluation split, so optimistic).",
            "CPS: cross pseudo supervision (Chen et al. 2021; comparators/cps.py), Table 1's comparator. No paper numbers: "
            "the paper fine-tunes ImageNet weights; these runs start from random weights."))

    return Experiment("study", "study (issue 18): SupOnly, CPS, Hermes, paper settings and a from-scratch recipe, "
                      "BUSI 72 labels, 224 px, 3,000 steps, GPU", PAPER_SEEDS, table, base=STUDY_BASE,
                      varies=frozenset(SWITCHES + ("method", "lr") + tuple(RECIPE_OPTIONS)), report=_study_report,
                      gpu_jobs=True, default_out=STUDY_OUT)


def _study_groups(exp, out_dir, seeds):
    """{row title: [run folders with a log.csv]} of the study's table rows (unfinished runs included)."""
    groups = {}
    for row in exp.table(None).rows:
        dirs = [os.path.join(out_dir, Run(c.dataset, c.labels, c.method, s).name) for c in row[1:2] for s in seeds]
        groups[row[0]] = [d for d in dirs if os.path.isfile(os.path.join(d, "log.csv"))]
    return {g: d for g, d in groups.items() if d}


def _study_report(exp, out_dir, seeds):
    """Paired Δ to SupOnly (and to SupOnly + recipe) and the figures, as markdown lines; DIR/study_*.png."""
    from tools import figures, tables
    groups = _study_groups(exp, out_dir, seeds)
    if not groups:
        return ["No run has a log.csv yet: no Δ table and no curves."]
    lines = []
    for base, members in (("SupOnly", list(groups)), ("SupOnly + recipe", [g for g in groups if "recipe" in g])):
        if base in groups and len(members) > 1:
            lines += [tables.compare_markdown({g: groups[g] for g in members}, base, deltas_only=True)]
    try:
        for key, what, title in (("dice_mean", "dice", "Dice"), ("accuracy", "accuracy", "accuracy")):
            figures.plot_learning_curves(groups, os.path.join(out_dir, f"study_{what}.png"), key=key,
                                         title=f"BUSI 72 labels: evaluation {title}, mean ± std over seeds")
        semi = {g: d for g, d in groups.items() if not g.startswith("SupOnly")}
        if semi:
            res = figures.plot_pseudo_label_groups(semi, os.path.join(out_dir, "study_pseudo_labels.png"))
            lines.append(res["text"])
        lines.append("Figures: study_dice.png, study_accuracy.png (learning curves, runs' evaluations up to the "
                     "last step all runs of a group logged), study_pseudo_labels.png (pseudo-label accuracy of "
                     "kept vs all pixels; CPS keeps all), beside this file.")
    except (SystemExit, ImportError, ValueError) as e:  # matplotlib missing, or nothing to draw yet
        lines.append(f"No figures: {e}")
    return lines


def estimate(runs, exp, passed):
    """One line: the study's expected time on one H100 from H100_STEP (see STUDY_HELP)."""
    def opt(name, default):
        for i, t in enumerate(passed):
            if t.startswith(name + "="):
                return t.split("=", 1)[1]
            if t == name and i + 1 < len(passed):
                return passed[i + 1]
        return dict(exp.base).get(name, default)
    iters, size = int(opt("--iters", 3000)), int(opt("--image-size", 224))
    scale = (size / 224) ** 2  # crude below 224 px: small images leave the GPU idler
    alone = busy = 0.0
    for r in runs:
        d = dict(r.method)
        kind = "cps" if d.get("method") == "cps" else "suponly" if method_slug(r.method).startswith("suponly") \
            else "hermes"
        burn = min(iters, d.get("burn_in", 0)) if kind != "suponly" else 0
        for k, n in ((kind, iters - burn), ("suponly", burn)):
            busy += n * H100_STEP[k][0] * scale
            alone += n * H100_STEP[k][1] * scale
    fits = "fits" if busy + 60 <= STUDY_WALL_GOAL else "does NOT fit"
    return (f"estimate on one H100 ({len(runs)} runs, {iters} steps, {size} px): {alone / 60:.1f} min one after "
            f"another; side by side at least {busy / 60:.1f} min of GPU steps + ~1 min start-up: {fits} "
            f"{STUDY_WALL_GOAL // 60} min (python -m tools.reproduce study --help)")


EXPERIMENTS["study"] = study_experiment()


# ------------------------------------------------------------------------------------------- reading runs
def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def log_second_half(run_dir, column):
    """Mean of a log.csv column over the train rows of the second half of training (NaN, empty and, for an
    accuracy, rows that kept nothing are left out); None when there is none."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("kind") == "train"]
    if not rows:
        return None
    last = max(int(r["iter"]) for r in rows)
    kept_col = None  # pl_acc_<t>_kept -> kept_<t>, pl_acc_<t>_conf -> kept_<t>_conf (train.py's log.csv)
    if column.startswith("pl_acc_"):
        _, _, t, rule = column.split("_")
        kept_col = {"kept": f"kept_{t}", "conf": f"kept_{t}_conf"}.get(rule)
    vals = []
    for r in rows:
        try:
            v = float(r.get(column) or "nan")
            kept = float(r.get(kept_col) or "nan") if kept_col else 1.0
        except ValueError:
            continue
        if int(r["iter"]) > last / 2 and v == v and kept > 0:
            vals.append(v)
    return sum(vals) / len(vals) if vals else None


def metric_value(run_dir, metric):
    if metric.startswith("log:"):
        return log_second_half(run_dir, metric[4:])
    if metric.startswith("best:"):  # the best of the run's evaluations (log.csv)
        from tools import tables
        return tables.run_scores(run_dir)[f"best_{metric[5:]}"]
    m = read_json(os.path.join(run_dir, "metrics.json"))
    v = None if m is None else m.get(metric)
    return float(v) if isinstance(v, (int, float)) and v == v else None


def format_cell(values, n_expected, paper):
    """'75.12 ± 0.40 (paper 75.68 ± 0.22)': values are fractions, shown in %; sample std (n - 1) over seeds."""
    if not values:
        here = "—"
    else:
        pct = [100 * v for v in values]
        here = f"{statistics.mean(pct):.2f}"
        if len(pct) > 1:
            here += f" ± {statistics.stdev(pct):.2f}"
        if len(pct) < n_expected:
            here += f" ({len(pct)} of {n_expected} seeds)"
    if isinstance(paper, tuple):
        here += f" (paper {paper[0]:.2f} ± {paper[1]:.2f})"
    elif paper is not None:
        here += f" (paper {paper:.2f})"
    return here


def settings_line(run_dirs, exp):
    """The runs' train.py settings that differ from train.py's defaults (config.json; per-run options and the
    ones the rows vary left out), e.g. 'image_size 224, iters 3000, pretrained true; git 1a2b3c4d'."""
    configs = [c for c in (read_json(os.path.join(d, "config.json")) for d in run_dirs) if c]
    if not configs:
        return "no finished run yet"
    defaults = vars(_train_parser().parse_args([]))
    skip = PER_RUN | NEUTRAL | exp.varies | {"git_commit"}
    parts = []
    for k in sorted({k for c in configs for k in c} - skip):
        vals = sorted({json.dumps(c.get(k)) for c in configs})
        if len(vals) > 1 or k not in defaults or json.dumps(defaults[k]) != vals[0]:
            parts.append(f"{k} {'/'.join(vals)}" + (" (MIXED)" if len(vals) > 1 else ""))
    commits = sorted({str(c.get("git_commit", "?"))[:8] for c in configs})
    return ", ".join(parts) + f"; git {', '.join(commits)}"


def table_markdown(exp, out_dir, seeds, command):
    """The experiment's table from the run folders under out_dir, as markdown."""
    runs = exp.runs(seeds)
    done = [r for r in runs if os.path.isfile(os.path.join(out_dir, r.name, "metrics.json"))]
    dirs = [os.path.join(out_dir, r.name) for r in done]
    sizes = {c.get("image_size") for c in (read_json(os.path.join(d, "config.json")) for d in dirs) if c}
    table = exp.table(sizes.pop() if len(sizes) == 1 else None)
    lines = [f"# {exp.title}", "",
             f"Final checkpoints on the evaluation split, in %: mean ± sample std over the seeds "
             f"({', '.join(map(str, seeds))}), the paper's number beside each cell. {len(done)} of {len(runs)} runs "
             f"finished, in {out_dir}.",
             "", f"Settings of the runs other than train.py's defaults (config.json): {settings_line(dirs, exp)}. "
             "The paper: 224 px, 3000 steps, batch 8 + 8, ImageNet-pretrained encoders.", "",
             "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    for row in table.rows:
        cells = []
        for c in row:
            if isinstance(c, Cell):
                finished = [os.path.join(out_dir, r.name) for r in done
                            if (r.dataset, r.labels, r.method) == (c.dataset, c.labels, c.method)]
                vals = [metric_value(d, c.metric) for d in finished]
                cells.append(format_cell([v for v in vals if v is not None], len(seeds), c.paper))
            else:
                cells.append(c)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}".replace("{out}", out_dir) for n in table.notes]
    missing = [r.name for r in runs if r not in done]
    if missing:
        lines.append(f"- Not finished ({len(missing)}): {', '.join(missing)}.")
    lines += [f"- Made by `{command}`.", ""]
    return "\n".join(lines)


def write_table(exp, out_dir, seeds, command):
    text = table_markdown(exp, out_dir, seeds, command)
    if exp.report is not None:
        text += "\n" + "\n".join(exp.report(exp, out_dir, seeds)) + "\n"
    path = cli.atomic_write(os.path.join(out_dir, f"{exp.name}.md"), lambda f: f.write(text))
    return path, text


# ----------------------------------------------------------------------------------------- commands
class EnvRoot(str):
    """A data root not given on the command line: written as "$BUSI_ROOT" for the shell to expand."""


def parse_roots(items, exp):
    """['busi=PATH', ...] -> {dataset: PATH}; a bare PATH is allowed when the experiment reads one dataset."""
    roots = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if sep and name in DATASET_TITLES:
            roots[name] = path
        elif len(exp.datasets()) == 1:
            roots[exp.datasets()[0]] = item
        else:
            raise UsageError(f"--data-root {item}: write DATASET=PATH, DATASET one of "
                             f"{', '.join(exp.datasets() or ['(none: this experiment needs no data)'])}")
    extra = set(roots) - set(exp.datasets())
    if extra:
        raise UsageError(f"--data-root {sorted(extra)[0]}=...: {exp.name} does not read that dataset "
                         f"(it reads: {', '.join(exp.datasets()) or 'the generated demo data'})")
    return roots


def with_env_roots(roots, exp):
    return {d: roots.get(d, EnvRoot(f"{d.upper()}_ROOT")) for d in exp.datasets()}


def train_args(run, exp, out_dir, roots, passed):
    """train.py options of one run: per-run, experiment base (unless passed on), passed-on, method, --out."""
    given = {t.split("=")[0] for t in passed if t.startswith("--")}
    base = [x for opt, value in exp.base if opt not in given for x in ((opt,) if value is None else (opt, value))]
    args = ["--dataset", run.dataset]
    if run.dataset != "demo":
        args += ["--data-root", roots[run.dataset]]
    args += ["--labels", str(run.labels), "--seed", str(run.seed), *base, *passed,
             *method_options(run.method), "--out", os.path.join(out_dir, run.name)]
    return args


def shell_join(tokens):
    return " ".join(f'"${t}"' if isinstance(t, EnvRoot) else shlex.quote(t) for t in tokens)


def python_and_train():
    """The interpreter running this file (as `python` when that is the one on PATH) and train.py's path
    (relative when run from the repository)."""
    py = sys.executable
    on_path = shutil.which("python")
    if on_path and os.path.realpath(on_path) == os.path.realpath(py):
        py = "python"
    train = "train.py" if os.path.realpath(os.getcwd()) == os.path.realpath(ROOT) else TRAIN
    return [py, train]


class UsageError(Exception):
    pass


def _raise_usage(msg):
    raise UsageError(msg)


def _train_parser():
    """train.py's own parser, raising UsageError instead of printing usage and exiting."""
    import train  # imported only where train.py's options are needed (it imports torch)
    p = train.build_parser()
    p.error = _raise_usage
    return p


def check_passed_options(passed, exp):
    """Parse the passed-on options with train.py's own parser; one-line UsageError when one is unknown, has a
    bad value, or is set per run / per row by this experiment."""
    p = _train_parser()
    for action in p._actions:  # no defaults: the namespace then holds only the options given
        action.default = argparse.SUPPRESS
    try:
        given = vars(p.parse_args(list(passed)))
    except UsageError as e:
        msg = str(e)
        if msg.startswith("unrecognized arguments"):
            raise UsageError(f"{msg}: not an option of reproduce.py or train.py "
                             f"(see python -m tools.reproduce -h and python train.py --help)") from None
        raise UsageError(f"train.py option: {msg}") from None
    clash = sorted(set(given) & (PER_RUN | exp.varies))
    if clash:
        what = f"{exp.name}'s rows set it" if clash[0] in exp.varies else "reproduce.py sets it for each run"
        hint = {"seed": "; use --seeds", "out": "", "data_root": "; use --data-root DATASET=PATH"}.get(clash[0], "")
        raise UsageError(f"--{clash[0].replace('_', '-')} cannot be passed on to {exp.name}'s runs: {what}{hint}")
    return given


def config_mismatch(run_dir, args):
    """Differences between a run folder's config.json and the options of the command that would continue it
    (keys the command sets, other than NEUTRAL ones): [(key, folder's value, command's value)]."""
    cfg = read_json(os.path.join(run_dir, "config.json"))
    if cfg is None:
        return []
    tokens = [str(a) for a in args]
    import train   # the command's settings as train.py resolves them (recipe included), quietly
    with contextlib.redirect_stdout(io.StringIO()):
        ns = train.resolve(_train_parser().parse_args(tokens), train.given_on_command_line(tokens))
    return [(k, cfg[k], v) for k, v in vars(ns).items()
            if v is not None and k not in NEUTRAL and k in cfg and cfg[k] != v]


def run_state(run_dir):
    """'done' (metrics.json), 'resume' (checkpoint.pt), 'stale' (something else: killed before its first
    checkpoint) or 'new'."""
    if os.path.isfile(os.path.join(run_dir, "metrics.json")):
        return "done"
    if os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
        return "resume"
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        return "stale"
    return "new"


# ----------------------------------------------------------------------------------------------- Slurm
REQUEUE_SIGNAL, REQUEUE_SECONDS = "USR1", 300   # #SBATCH --signal: train.py saves and the task requeues itself


def slurm_script(exp, runs, out_dir, roots, passed, opts, command, weights=None):
    """An sbatch job-array script: task i trains runs[i] (skipped when finished, resumed from its checkpoint).

    Data roots as given (main makes them absolute and checks them), checked again on the node; the interpreter
    opts.python (main: this one); Slurm's warning REQUEUE_SECONDS before the time limit makes train.py save a
    checkpoint and the task requeue itself. weights: (TORCH_HOME, [files]) the tasks need (--pretrained)."""
    logs = os.path.join(out_dir, "logs")
    n = len(runs)
    py = getattr(opts, "python", None) or "python"
    head = [
        "#!/bin/bash",
        f"# Hermes, {exp.title}: {n} runs as a Slurm job array, one task per run.",
        f"# Made by: {command}",
        f"# Submit from the repository root:  sbatch THIS_FILE   (the log folder {logs} exists already)",
        "# A task whose run folder holds metrics.json exits at once; one with checkpoint.pt resumes, so",
        "# resubmitting this file continues a sweep. The Python is the one that wrote this file; PYTHON=/path",
        f"# overrides it. {REQUEUE_SECONDS // 60} min before the time limit Slurm sends SIG{REQUEUE_SIGNAL}: train.py "
        "finishes its step,",
        "# saves a checkpoint and the task requeues itself (preemption's SIGTERM: saved, and requeued by Slurm's",
        "# own policy; scancel's SIGTERM: saved, not requeued). The table, once the tasks have finished:",
        f"#   python -m tools.reproduce {exp.name} --collect --out {shlex.quote(out_dir)}",
        f"#SBATCH --job-name=hermes-{exp.name}",
        f"#SBATCH --array=0-{n - 1}" + (f"%{opts.jobs}" if opts.jobs else ""),
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
        f"#SBATCH --time={opts.time}",
        f"#SBATCH --output={logs}/slurm-{exp.name}-%A_%a.out",
        f"#SBATCH --signal=B:{REQUEUE_SIGNAL}@{REQUEUE_SECONDS}",
        "#SBATCH --requeue",
    ]
    if opts.gpus_per_task:
        head.append(f"#SBATCH --gpus-per-task={opts.gpus_per_task}")
    for flag in ("partition", "account", "mem"):
        if getattr(opts, flag):
            head.append(f"#SBATCH --{flag}={getattr(opts, flag)}")
    body = ["set -euo pipefail", f'PYTHON="${{PYTHON:-{py}}}"',
            'test -f train.py || { echo "submit from the Hermes repository root (no train.py in $PWD)" >&2; exit 1; }']
    for d, r in roots.items():
        if isinstance(r, EnvRoot):
            body.append(f': "${{{r}:?export {r}=/path/to/the {DATASET_TITLES[d]} folder before sbatch}}"')
        where = f'"${r}"' if isinstance(r, EnvRoot) else shlex.quote(r)
        body.append(f'test -d {where} || {{ echo "{DATASET_TITLES[d]} data root {where} not found on $(hostname)" '
                    f'>&2; exit 1; }}')
    if weights:
        home, files = weights
        body.append(f"export TORCH_HOME={shlex.quote(home)}   # the ImageNet files of --pretrained, checked below")
        for f in files:
            path = shlex.quote(os.path.join(home, "hub", "checkpoints", f))
            body.append(f'test -f {path} || {{ echo "ImageNet weights {path} not found on $(hostname)" >&2; exit 1; }}')
    body.append('case "${SLURM_ARRAY_TASK_ID:?run this file with sbatch}" in')
    for i, run in enumerate(runs):
        args = train_args(run, exp, out_dir, roots, passed)[:-2]  # --out comes from NAME below
        body += [f"  {i}) NAME={shlex.quote(run.name)}; ARGS=({shell_join(args)}) ;;"]
    body += [f'  *) echo "task $SLURM_ARRAY_TASK_ID: this array has tasks 0-{n - 1}" >&2; exit 1 ;;', "esac",
             f"OUT={shlex.quote(out_dir)}/$NAME",
             f"mkdir -p {shlex.quote(logs)}",
             f"LOG={shlex.quote(logs)}/$NAME.log",
             "# one task per run folder at a time, also across arrays (table1 and table3 share runs)",
             'if command -v flock >/dev/null; then',
             '  exec 9>>"$LOG.lock"; flock -n 9 || { echo "$NAME: another task is running it"; exit 0; }',
             "fi",
             'if [ -f "$OUT/metrics.json" ]; then echo "$NAME: finished already ($OUT/metrics.json)"; exit 0; fi',
             "RESUME=()",
             'if [ -f "$OUT/checkpoint.pt" ]; then RESUME=(--resume)',
             'elif [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then',
             '  mv "$OUT" "$OUT.incomplete-$(date +%Y%m%d-%H%M%S)"; echo "$NAME: moved an unfinished folder aside"',
             "fi",
             'echo "$NAME: task $SLURM_ARRAY_TASK_ID on $(hostname), log $LOG"',
             'echo "=== $(date -Is) task $SLURM_ARRAY_TASK_ID on $(hostname)" >>"$LOG"',
             "# train.py runs in the background so that this shell can pass Slurm's warning on to it; SIGTERM",
             "# is not passed on: Slurm sends it to train.py itself, and a second signal would stop it at once",
             '"$PYTHON" train.py "${ARGS[@]}" --out "$OUT" ${RESUME[@]+"${RESUME[@]}"} >>"$LOG" 2>&1 &',
             "CHILD=$!",
             f'WARNED=""; trap \'WARNED=1; kill -{REQUEUE_SIGNAL} "$CHILD" 2>/dev/null || true\' {REQUEUE_SIGNAL}',
             "trap ':' TERM",
             'RC=0; while :; do wait "$CHILD" && RC=0 || RC=$?; kill -0 "$CHILD" 2>/dev/null || break; done',
             'if [ -n "$WARNED" ] && [ -f "$OUT/checkpoint.pt" ] && [ ! -f "$OUT/metrics.json" ]; then',
             '  echo "$NAME: time limit near: checkpoint saved, requeueing" | tee -a "$LOG"',
             '  scontrol requeue "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_$SLURM_ARRAY_TASK_ID" || scontrol requeue "$SLURM_JOB_ID"',
             "  exit 0",
             "fi",
             'exit "$RC"']
    return "\n".join(head + [""] + body) + "\n"


def check_slurm_inputs(exp, runs, out_dir, roots, passed, opts):
    """What the --slurm script needs, checked here before anything is submitted: the data roots (made absolute:
    the script runs elsewhere), the ImageNet files of --pretrained runs in the hub cache the nodes will read
    (TORCH_HOME, or --weights-dir), and the log folder (created). -> (roots, out_dir, weights or None)."""
    for d, r in roots.items():
        if not isinstance(r, EnvRoot):
            if not os.path.isdir(r):
                raise UsageError(f"--data-root {d}={r}: no such folder (from {os.getcwd()})")
            roots[d] = os.path.abspath(r)
    out_dir = os.path.abspath(out_dir)
    ns = [vars(_train_parser().parse_args([str(a) for a in train_args(r, exp, out_dir, roots, passed)]))
          for r in runs]
    pretrained = [a for a, run in zip(ns, runs) if a["pretrained"] or (a["pretrained"] is None and run.dataset != "demo")]
    weights = None
    if pretrained:
        import models  # torch and torchvision: only for --slurm with --pretrained runs
        files = list(models.imagenet_files([a["seg_encoder"] for a in pretrained] + ["resnet18"]))
        folder = os.path.abspath(opts.weights_dir) if opts.weights_dir else models.weights_dir()
        if os.path.basename(folder) != "checkpoints" or os.path.basename(os.path.dirname(folder)) != "hub":
            raise UsageError(f"--weights-dir {opts.weights_dir}: torch reads ImageNet files from "
                             f"TORCH_HOME/hub/checkpoints: give such a folder, e.g. {folder}/hub/checkpoints")
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            urls = models.imagenet_files([a["seg_encoder"] for a in pretrained] + ["resnet18"])
            raise UsageError(f"the runs train with --pretrained and compute nodes are usually offline: put "
                             f"{' and '.join(missing)} ({', '.join(urls[f] for f in missing)}) in {folder} "
                             f"before submitting (or name another such folder with --weights-dir, or pass "
                             f"--no-pretrained)")
        weights = (os.path.dirname(os.path.dirname(folder)), files)
    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    return roots, out_dir, weights


# ------------------------------------------------------------------------------------------- local runs
class Sweep:
    """Runs train.py commands as subprocesses (from a thread pool's threads), each with its log; stops them all on
    Ctrl-C / SIGTERM (their checkpoints are written atomically, so the next sweep resumes them)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs = set()
        self.stopping = False

    def run(self, name, cmd, log_path, env):
        with open(log_path, "a") as log:
            log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} {shell_join(cmd)}\n")
            log.flush()
            with self.lock:
                if self.stopping:
                    return None
                # its own session: a Ctrl-C at the terminal reaches this sweep only, which then sends each run
                # one SIGTERM (two signals would make train.py stop at once instead of saving its step)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
            return rc

    def stop(self):
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for p in procs:   # train.py finishes its step and saves a checkpoint: up to a step's time
            p.terminate()
        try:
            for p in procs:
                p.wait()
        except KeyboardInterrupt:   # a second Ctrl-C: a second signal, the runs stop at once
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


class RunLock:
    """DIR/logs/<run>.lock while a run is launched by a sweep of this machine, so that two sweeps sharing a run
    folder (table1 and table3 both hold busi-72-suponly) do not train it twice; a lock whose process is gone is
    taken over."""

    def __init__(self, path):
        self.path = path

    def acquire(self):
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    host, pid = open(self.path).read().split()
                    if host == socket.gethostname():
                        os.kill(int(pid), 0)
                    return f"pid {pid} on {host}"
                except (OSError, ValueError):  # that process is gone (or the file is unreadable): take it over
                    os.remove(self.path)
                    continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return None
        return "another sweep"

    def release(self):
        try:
            os.remove(self.path)
        except OSError:
            pass


def tail(path, n=TAIL_LINES):
    try:
        with open(path, errors="replace") as f:
            lines = [l.rstrip() for l in f.read().splitlines() if l.strip()]
        return lines[-n:]
    except OSError:
        return ["(no log)"]


def run_local(exp, runs, out_dir, roots, passed, jobs, command):
    from tqdm import tqdm

    def say(msg):  # a line above the progress bar; stdout is kept for the table
        tqdm.write(msg, file=sys.stderr)

    logs = os.path.join(out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    py_train = python_and_train()
    todo, mismatches = [], []
    for run in runs:
        run_dir = os.path.join(out_dir, run.name)
        args = train_args(run, exp, out_dir, roots, passed)
        state = run_state(run_dir)
        if state in ("done", "resume"):  # a stale folder is moved aside and started again: no settings to keep
            for k, theirs, ours in config_mismatch(run_dir, args):
                mismatches.append(f"{run_dir}: config.json has {k}={theirs!r}, this sweep asks {ours!r}")
        if state != "done":
            todo.append((run, args))
    if mismatches:
        raise UsageError(f"{len(mismatches)} run folder(s) were made with other settings; use another --out or the "
                         f"same options. First: {mismatches[0]}")
    n_done = len(runs) - len(todo)
    print(f"{exp.name}: {len(runs)} runs, {n_done} finished, {len(todo)} to run, {jobs} at a time; logs in {logs}",
          file=sys.stderr)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # N processes share the CPU cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    sweep = Sweep()
    failed, stopped, busy = [], [], []
    bar = tqdm(total=len(runs), initial=n_done, unit="run", desc=exp.name, dynamic_ncols=True)

    def one(run, args):
        run_dir = os.path.join(out_dir, run.name)
        lock = RunLock(os.path.join(logs, f"{run.name}.lock"))
        holder = lock.acquire()
        if holder:
            return run, "busy", holder
        try:
            state = run_state(run_dir)
            if state == "done":
                return run, "done", None
            if state == "stale":
                aside = f"{run_dir}.incomplete-{datetime.datetime.now():%Y%m%d-%H%M%S}"
                os.replace(run_dir, aside)
                say(f"{run.name}: no checkpoint yet, moved the unfinished folder to {aside}; starting again")
            cmd = py_train + args + (["--resume"] if state == "resume" else [])
            rc = sweep.run(run.name, cmd, os.path.join(logs, f"{run.name}.log"), env)
        finally:
            lock.release()
        if rc is None:
            return run, "stopped", None
        if rc != 0:
            return run, "failed", rc
        return run, ("done" if run_state(run_dir) == "done" else "stopped"), None

    from concurrent.futures import ThreadPoolExecutor, as_completed
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(one, run, args) for run, args in todo]
        for fut in as_completed(futures):
            run, status, info = fut.result()
            if status == "done":
                m = read_json(os.path.join(out_dir, run.name, "metrics.json")) or {}
                say(f"{run.name}: Dice {100 * m.get('dice_mean', float('nan')):.2f}  "
                           f"Acc {100 * m.get('accuracy', float('nan')):.2f}  ({m.get('train_seconds', '?')} s)")
                bar.update(1)
            elif status == "failed":
                failed.append((run, info))
                say(f"{run.name}: FAILED (exit status {info}), log {os.path.join(logs, run.name + '.log')}")
            elif status == "busy":
                busy.append((run, info))
                say(f"{run.name}: left alone, another sweep is running it ({info})")
            else:
                stopped.append(run)
                say(f"{run.name}: stopped before its last step (no metrics.json)")
    except KeyboardInterrupt:
        sweep.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        print(f"\n{exp.name}: interrupted; the runs in progress saved their current step and stopped. Rerun the "
              "same command to continue (finished runs are kept, interrupted ones resume from their checkpoint).", file=sys.stderr)
        return 130
    pool.shutdown(wait=True)
    bar.close()
    path, text = write_table(exp, out_dir, tuple(sorted({r.seed for r in runs})), command)
    print(text)
    print(f"table: {path}", file=sys.stderr)
    for run, rc in failed:
        log = os.path.join(logs, f"{run.name}.log")
        print(f"\nFAILED {run.name} (exit status {rc}); last lines of {log}:", file=sys.stderr)
        print("\n".join("    " + l for l in tail(log)), file=sys.stderr)
    if stopped or busy:
        print(f"{len(stopped) + len(busy)} run(s) not finished "
              f"({', '.join(r.name for r in stopped + [b[0] for b in busy])}): rerun the same command to continue.",
              file=sys.stderr)
    return 1 if failed or stopped or busy else 0


# ------------------------------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(
        prog="reproduce.py", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m tools.reproduce {list|EXPERIMENT} [options] [train.py options]",
        description=__doc__,
        epilog="Several runs on one GPU: --jobs N starts N train.py processes that share the device (memory "
               "and compute); on a CPU each gets cores/N threads (OMP_NUM_THREADS) unless you set it.")
    a = p.add_argument
    a("--out", default=None, metavar="DIR",
      help=f"folder of the run folders and tables (default {DEFAULT_OUT}; study: {STUDY_OUT})")
    a("--data-root", action="append", metavar="DATASET=PATH",
      help="dataset folder, repeat per dataset (busi=..., udiat=..., sztus=...); a bare PATH when the "
           "experiment reads one dataset")
    a("--seeds", type=int, nargs="+", default=None, help="seeds of each row (default 0 1 2; demo 0 1)")
    a("--jobs", type=int, default=None, metavar="N",
      help="runs at a time on this machine (default 1); with --slurm, tasks at a time (%%N)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the train.py commands it would run and stop")
    mode.add_argument("--slurm", action="store_true", help="print an sbatch job-array script (one task per run)")
    mode.add_argument("--collect", action="store_true", help="write the table from the finished run folders")
    st = p.add_argument_group("the study experiment", STUDY_HELP)
    st.add_argument("--recipe", default=None, metavar="OPTIONS",
                    help=f"study: train.py options of the '+ recipe' groups (default \"{STUDY_RECIPE}\")")
    st.add_argument("--groups", nargs="+", default=None, metavar="GROUP",
                    help=f"study: the groups to run (default all: {' '.join(STUDY_GROUPS)})")
    s = p.add_argument_group("Slurm (with --slurm)")
    s.add_argument("--partition", default=None)
    s.add_argument("--account", default=None)
    s.add_argument("--gpus-per-task", type=int, default=1, help="default 1; 0 for a CPU partition")
    s.add_argument("--cpus-per-task", type=int, default=8, help="default 8 (train.py --workers is 4 on CUDA)")
    s.add_argument("--mem", default=None, help="e.g. 32G")
    s.add_argument("--time", default="04:00:00", help="per task (default 04:00:00)")
    s.add_argument("--python", default=sys.executable, metavar="PATH",
                   help=f"interpreter of the tasks (default: this one, {sys.executable}; PYTHON=... at sbatch "
                        f"time overrides it)")
    s.add_argument("--weights-dir", default=None, metavar="DIR",
                   help="with --pretrained runs: the TORCH_HOME/hub/checkpoints folder holding the ImageNet files "
                        "the nodes read (default: this machine's torch hub cache); checked before the script is "
                        "written")
    return p


def list_experiments():
    lines = []
    for e in EXPERIMENTS.values():
        if e.unsupported:
            lines.append(f"{e.name:7s} unsupported: {e.unsupported}")
            continue
        roots = " ".join(f"{d}=PATH" for d in e.datasets())
        lines.append(f"{e.name:7s} {e.title}; {len(e.runs())} runs (seeds {', '.join(map(str, e.seeds))})"
                     + (f"; --data-root {roots}" if roots else ""))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        p.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "list":
        print(list_experiments())
        return 0
    try:
        if name not in EXPERIMENTS:
            raise UsageError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)} "
                             "(python -m tools.reproduce list)")
        exp = EXPERIMENTS[name]
        if exp.unsupported:
            raise UsageError(exp.unsupported)
        opts, passed = p.parse_known_args(rest)
        if name == "study":
            exp = study_experiment(STUDY_RECIPE if opts.recipe is None else opts.recipe, opts.groups)
        elif opts.recipe is not None or opts.groups:
            raise UsageError(f"--recipe and --groups belong to the study experiment, not {name}")
        if opts.jobs is not None and opts.jobs < 1:
            raise UsageError(f"--jobs {opts.jobs}: must be at least 1")
        seeds = tuple(opts.seeds) if opts.seeds else exp.seeds
        runs = exp.runs(seeds)
        out_dir = opts.out or exp.default_out
        command = shlex.join(["python", "-m", "tools.reproduce", *argv])
        roots = parse_roots(opts.data_root, exp)
        if opts.collect:
            if passed:
                raise UsageError(f"--collect reads finished runs and takes no train.py options ({passed[0]})")
            path, text = write_table(exp, out_dir, seeds, command)
            print(text)
            print(f"table: {path}", file=sys.stderr)
            return 0
        check_passed_options(passed, exp)
        if opts.dry_run or opts.slurm:
            roots = with_env_roots(roots, exp)
            env = [r for r in roots.values() if isinstance(r, EnvRoot)]
            if env:
                print(f"# no --data-root DATASET=PATH for {', '.join(env)}: the commands read "
                      + " ".join(f"${r}" for r in env) + " from the environment", file=sys.stderr)
        if opts.slurm:
            roots, out_dir, weights = check_slurm_inputs(exp, runs, out_dir, roots, passed, opts)
            print(slurm_script(exp, runs, out_dir, roots, passed, opts, command, weights), end="")
            return 0
        if opts.dry_run:
            py_train = python_and_train()
            states = {}
            for run in runs:
                state = run_state(os.path.join(out_dir, run.name))
                states[state] = states.get(state, 0) + 1
                if state != "done":
                    print(shell_join(py_train + train_args(run, exp, out_dir, roots, passed)
                                     + (["--resume"] if state == "resume" else [])))
            print(f"# {exp.name}: {len(runs)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(states.items())),
                  file=sys.stderr)
            if exp.gpu_jobs:
                print(f"# {estimate(runs, exp, passed)}", file=sys.stderr)
            return 0
        missing = [d for d in exp.datasets() if d not in roots]
        if missing:
            raise UsageError(f"{exp.name} reads {', '.join(missing)}: add "
                             + " ".join(f"--data-root {d}=PATH" for d in missing) + " (README: Datasets)")
    except UsageError as e:
        print(f"reproduce.py: {e}", file=sys.stderr)
        return 2
    jobs = opts.jobs or 1
    if exp.gpu_jobs:
        on_cuda = any(a in ("--device=cuda", "cuda") and (a != "cuda" or passed[i - 1] == "--device")
                      for i, a in enumerate(passed))
        jobs = opts.jobs or (len(runs) if on_cuda else 1)
        print(f"{exp.name}: {estimate(runs, exp, passed)}; --jobs {jobs}", file=sys.stderr)
    try:
        return run_local(exp, runs, out_dir, roots, passed, jobs, command)
    except UsageError as e:
        print(f"reproduce.py: {e}", file=sys.stderr)
        return 2


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # same clean stop as Ctrl-C: the runs in progress are stopped and resumable


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... --dry-run | head`
        sys.stderr.close()
        sys.exit(0)
