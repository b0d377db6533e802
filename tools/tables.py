"""Tables over several finished runs: the paper's Tables 1-2 layout (--summary) and groups of runs against a
baseline (--compare). No torch: it reads config.json, metrics.json and log.csv.

    python -m tools.tables summary runs/busi-72-seed* --out table.md  # = python evaluate.py --summary ...
    python -m tools.tables compare runs/study/* --baseline SupOnly  # = python evaluate.py --compare ...

Runs are one row only when they are comparable: the same method name (from the switches) and the same value of
every setting that changes results (config.py), seeds and split files aside. Runs that differ in anything else
(dataset, label budget, image size, steps, recipe, ...) are separate rows, each named with the settings that
set it apart ("Hermes [image_size 64]"); a paired difference pairs a row with the baseline row of the same
dataset, budget, image size and steps.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

if __package__ in (None, ""):  # run by path (python tools/NAME.py): the project's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli
import config

ORDER = ["SupOnly", "CPS", "ABD", "AD-MT", "SS-Net", "DCNet", "ShrinkMatch", "InterLUDE", "InfoMatch",
         "PEFAT",
         "DTCL only", "IAS only", "ITCL only", "Hermes w/o DTCL", "Hermes w/o IAS",
         "Hermes w/o ITCL", "Hermes"]  # rows in the order of the paper's Tables 1-3 (baseline first, the
# comparator CPS next as in Table 1, full method last)
DATASET_NAMES = {"busi": "BUSI", "udiat": "UDIAT", "sztus": "SZ-TUS", "folder": "folder", "demo": "demo"}
# What a paired difference must share with its baseline run.
CONTEXT = ("dataset", "labels", "image_size", "iters")
COMPARE_METRICS = [("Dice", "dice_mean"), ("Acc", "accuracy"), ("BalAcc", "balanced_accuracy"), ("AUC", "auc")]


# ------------------------------------------------------------------------------------------ method names
def method_name(cfg):
    """Row name of a run from its switches (Table 3 vocabulary; IAS = the paper's SM/ITA).

    All of dtcl, ias, itcl on -> "Hermes"; all off -> "SupOnly"; one on -> "<X> only"; two on -> "Hermes w/o
    <X>". task "seg"/"cls" trains one branch, so ias and itcl (which need both) count as off and "SS"/"SC" is
    added; threshold "confidence"/"none" adds "conf. threshold"/"no threshold" when dtcl is on (it only acts
    there). Settings not in the paper (config.NOT_IN_PAPER) that differ from the paper's are noted too, e.g.
    "Hermes (separate BN, lr 0.001)", and the from-scratch recipe: "seg lr" / "cls lr" when --lr-seg /
    --lr-cls differ from --lr, "burn-in N" when N > 0 and the run has an unlabeled term (SupOnly has none to
    delay). method "cps" (comparators/cps.py, the comparator of Table 1) is "CPS", whatever its (implied off) switches.
    """
    task, threshold = cfg.get("task", "joint"), cfg.get("threshold", "dual")
    on = {"DTCL": bool(cfg.get("dtcl", True)), "IAS": bool(cfg.get("ias", True)),
          "ITCL": bool(cfg.get("itcl", True))}
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
    cps = cfg.get("method", "hermes") != "hermes"   # a comparator (Tables 1-2): its own name
    if cps:
        name = config.METHODS.get(cfg["method"], cfg["method"])
    notes = {"seg": ["SS"], "cls": ["SC"]}.get(task, [])
    if on["DTCL"] and threshold != "dual" and not cps:
        notes.append({"confidence": "conf. threshold", "none": "no threshold"}.get(threshold, threshold))
    recipe = {k: config.recipe_value(v, cfg)
              for k, v in config.recipe_settings(cfg.get("recipe"), cfg).items()}
    if recipe:
        notes.append(f"{cfg['recipe']} recipe")   # its settings are not repeated below
    cfg = _effective(cfg)
    as_recipe = lambda key: key in recipe and cfg.get(key) == recipe[key]
    # what a setting not in the paper is noted against: the recipe's value (a run made before the recipe had
    # it differs there), else the paper's (L^u_cls: weighted as L^u_seg)
    ref = {key: paper for key, paper, _ in config.NOT_IN_PAPER}
    ref["unsup_weight_cls"] = cfg.get("unsup_weight", ref["unsup_weight"])
    ref.update({k: v for k, v in recipe.items() if k in ref})
    for key, _, _ in config.NOT_IN_PAPER:
        if cfg.get(key, ref[key]) != ref[key]:
            notes.append(config.note_of(key, cfg[key]))
    lr = cfg.get("lr", config.SETTINGS["lr"].default)
    for key, what in (("lr_seg", "seg lr"), ("lr_cls", "cls lr")):
        if cfg.get(key) is not None and cfg[key] != lr and not as_recipe(key):
            notes.append(f"{what} {cfg[key]:g}")
    if cfg.get("burn_in", 0) and name != "SupOnly" and not as_recipe("burn_in"):
        notes.append(f"burn-in {cfg['burn_in']}")
    return name + (f" ({', '.join(notes)})" if notes else "")


def _effective(cfg):
    """cfg with unsup_weight_cls None (its default: --unsup-weight on L^u_cls too) replaced by the value it
    stands for, and left out where the run has no L^u_cls (SupOnly, --task seg, a comparator), so that runs
    that weighted L^u_cls alike are named and grouped alike. Likewise the IAS module's settings (ita_form,
    ias_warmup) are left out of a run without it (SupOnly)."""
    if cfg.get("method", "hermes") == "hermes" and not cfg.get("ias", True):
        cfg = {k: v for k, v in cfg.items() if k not in ("ita_form", "ias_warmup")}
    if not cfg.get("dtcl", True) or cfg.get("method", "hermes") != "hermes" or cfg.get("task") == "seg":
        return {k: v for k, v in cfg.items() if k != "unsup_weight_cls"}
    if "unsup_weight_cls" in cfg and cfg["unsup_weight_cls"] is None:
        return dict(cfg, unsup_weight_cls=cfg.get("unsup_weight", config.SETTINGS["unsup_weight"].default))
    return cfg


def _method_key(name):
    base = name.split(" (")[0].split(" [")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), name)


def signature(cfg):
    """The settings that make two runs comparable: every one that changes results, seeds and splits aside
    (a run made before a setting existed counts with the value it ran with, config.RESUME_MISSING)."""
    full = _effective({**config.RESUME_MISSING, **cfg})
    for k in ("lr_seg", "lr_cls"):   # None, or missing in older runs: --lr
        if full.get(k) is None:
            full[k] = full.get("lr")
    skip = config.NEUTRAL_KEYS | config.PER_RUN
    method = full.get("method", "hermes")
    # a comparator's own settings act only in that comparator's runs (and older runs lack newer ones)
    other = {k for k, f in config.SETTINGS.items() if f.metadata["comparator"] not in (None, method)}
    return {k: v for k, v in full.items() if k not in skip and k not in other}


def _same(values):
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1


def split_rows(members, key_of=lambda m: m["config"]):
    """{row name: members} for {name: [members]}: a name whose members differ in a setting that changes
    results becomes one row per distinct value set, named "NAME [setting value, ...]" (only the settings
    that differ within that name)."""
    rows = {}
    for name, ms in members.items():
        sigs = [signature(key_of(m)) for m in ms]
        keys = sorted({k for s in sigs for k in s if not _same([x.get(k) for x in sigs])})
        for m, s in zip(ms, sigs):
            tag = ", ".join(f"{k} {s.get(k)}" for k in keys)
            rows.setdefault(f"{name} [{tag}]" if tag else name, []).append(m)
    return rows


# ---------------------------------------------------------------------------------------------- reading
def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_runs(run_dirs):
    """[{run, config, metrics, method, dataset, labels}] for each folder holding config.json and metrics.json;
    folders without them are reported on stderr and skipped."""
    runs = []
    for d in run_dirs:
        paths = [os.path.join(d, "config.json"), os.path.join(d, "metrics.json")]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            print(f"--summary: skipping {d}: no {', '.join(missing)}", file=sys.stderr)
            continue
        cfg, metrics = read_json(paths[0]), read_json(paths[1])
        runs.append({"run": d, "config": cfg, "metrics": metrics, "method": method_name(cfg),
                     "dataset": cfg.get("dataset", "?"), "labels": cfg.get("labels")})
    return runs


def eval_log(run_dir):
    """{iter: {column: float}} of the eval rows of RUN_DIR/log.csv (train.py's periodic evaluations; a
    repeated iteration keeps its last row, an empty cell is NaN); {} without a log.csv."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.isfile(path):
        return {}
    rows = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("kind") == "eval":
                rows[int(r["iter"])] = {k: _float(v) for k, v in r.items() if k not in ("kind", "iter")}
    return rows


def _float(v):
    try:
        return float(v) if v not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _budget_key(labels):
    """Budgets descending as in the paper's tables; "all" (every annotated image) first."""
    return -float("inf") if labels == config.LABELS_ALL else -(labels or 0)


# ------------------------------------------------------------------------------------------ --summary
def _cell(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "–"
    m, s = cli.mean_std(v)
    return f"{100 * m:.2f} ± {100 * s:.2f} (n={len(v)})"


def summary_markdown(run_dirs):
    """Markdown tables shaped like the paper's Tables 1-2 from the runs' config.json + metrics.json.

    Columns = dataset × label budget (budgets descending, as in the paper); rows = methods (method_name), one
    row per set of comparable runs (split_rows); cells = mean ± std over the runs (seeds) of the final
    checkpoint's per-run mean Dice / accuracy, in %, sample std (ddof=1; 0 for one run), n = runs in the cell.
    Dice skips task="cls" runs and accuracy task="seg" runs (their other head is untrained).
    """
    runs = load_runs(run_dirs)
    if not runs:
        return "No runs with config.json and metrics.json.\n"
    ds_order = list(DATASET_NAMES)
    cols = sorted({(r["dataset"], r["labels"]) for r in runs},
                  key=lambda c: (ds_order.index(c[0]) if c[0] in ds_order else len(ds_order), c[0],
                                 _budget_key(c[1])))
    by_cell = {}
    for r in runs:
        by_cell.setdefault((r["method"], r["dataset"], r["labels"]), []).append(r)
    rows = {}
    for (meth, *col), members in by_cell.items():
        for name, ms in split_rows({meth: members}).items():
            rows.setdefault(name, {})[tuple(col)] = ms
    header = "| Method | " + " | ".join(f"{DATASET_NAMES.get(d, d)} {n} labels" for d, n in cols) + " |"
    text = []
    for title, key, skip_task in (("Dice (%)", "dice_mean", "cls"), ("Accuracy (%)", "accuracy", "seg")):
        text += [f"### {title}: final checkpoint, mean ± std over runs (seeds; sample std, 0 for one run)",
                 "",
                 header, "|---|" + "---|" * len(cols)]
        for name in sorted(rows, key=_method_key):
            cells = [_cell([r["metrics"].get(key) for r in rows[name].get(c, [])
                            if r["config"].get("task", "joint") != skip_task]) for c in cols]
            text.append(f"| {name} | " + " | ".join(cells) + " |")
        text.append("")
    if any(" [" in name for name in rows):
        text += ["Rows named [setting value] hold runs of one method that differ in that setting: they are "
                 "never averaged together.", ""]
    unfinished = [r["run"] for r in runs if r["metrics"].get("iter") not in (None, r["config"].get("iters"))]
    if unfinished:
        text += [f"Stopped before their last step: {', '.join(unfinished)}", ""]
    text.append("Runs: " + ", ".join(r["run"] for r in runs))
    return "\n".join(text) + "\n"


# ------------------------------------------------------------------------------------------ --compare
def run_scores(run_dir):
    """Seed, final and best-of-evaluation scores of one run folder: {"seed", "final_<key>", "best_<key>",
    "last_eval"} for the keys of COMPARE_METRICS. final = metrics.json (the final checkpoint; None while the
    run is unfinished); best = the largest value of that column over log.csv's evaluations (each metric its
    own best; selected on the evaluation split, so optimistic), None without evaluations."""
    cfg_path, m_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.json")
    cfg, metrics = ({} if not os.path.isfile(q) else read_json(q) for q in (cfg_path, m_path))
    log = eval_log(run_dir)
    if "balanced_accuracy" not in metrics and {"sensitivity", "specificity"} <= set(metrics):  # older runs
        metrics["balanced_accuracy"] = (metrics["sensitivity"] + metrics["specificity"]) / 2
    out = {"run": run_dir, "seed": cfg.get("seed"), "last_eval": max(log) if log else None, "config": cfg}
    for _, key in COMPARE_METRICS:
        v = metrics.get(key)
        out[f"final_{key}"] = float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None
        vals = [r.get(key, float("nan")) for r in log.values()]
        vals = [v for v in vals if np.isfinite(v)]
        out[f"best_{key}"] = max(vals) if vals else None
    return out


def group_runs(paths):
    """{group: [run folders]} from NAME=RUN[,RUN...] items (a group named by the caller, in the order given)
    and plain run folders (grouped by method_name of their config.json, after them in ORDER: SupOnly, CPS,
    ...). Either kind of group whose runs are not comparable is split (split_rows)."""
    groups, named = {}, {}
    for p in paths:
        name, sep, dirs = p.partition("=")
        if sep and not os.path.isdir(p):
            dirs = [d for d in dirs.split(",") if d]
            missing = [d for d in dirs if not os.path.isdir(d)]
            if missing or not dirs:
                raise cli.DataError(f"--compare: group {name!r}: "
                                    + (f"no run folder {', '.join(missing)}" if missing else "no run folders "
                                                                                             "given"))
            groups.setdefault(name, []).extend(dirs)
        else:
            cfg_path = os.path.join(p, "config.json")
            if not os.path.isfile(cfg_path):
                print(f"--compare: skipping {p}: no config.json", file=sys.stderr)
                continue
            named.setdefault(method_name(read_json(cfg_path)), []).append(p)
    ordered = {**groups, **{k: named[k] for k in sorted(named, key=_method_key)}}
    config_of = lambda d: read_json(os.path.join(d, "config.json")) if os.path.isfile(
        os.path.join(d, "config.json")) else {}
    return split_rows(ordered, key_of=config_of)


def _context(cfg):
    return tuple(json.dumps(cfg.get(k), default=str) for k in CONTEXT)


def baseline_groups(groups, baseline):
    """The groups `baseline` names: that group, else those whose name starts with it and a note or a split
    ("SupOnly" -> "SupOnly (scratch recipe)", "SupOnly [dataset udiat]")."""
    if baseline is None:
        return []
    if baseline in groups:
        return [g for g in groups if g == baseline or g.startswith(baseline + " [")]
    return [g for g in groups if g.startswith((baseline + " (", baseline + " ["))]


def compare_groups(groups, baseline=None):
    """Per group: mean ± sample std over its runs (seeds) of the final and best-of-evaluation Dice and
    accuracy, and, when `baseline` names a group, the paired difference to it: Δ = run − baseline run of the
    same seed and the same dataset, budget, image size and steps (CONTEXT), mean ± sample std over the pairs
    (n).

    groups {name: [run folders]}; baseline: a group name, or its start (baseline_groups).
    Returns [{"group", "runs", "n", "<kind>_<key>": (mean, std, n) or None,
    "delta_<kind>_<key>": (mean, std, n) or None}] for kind final | best; fractions, not %."""
    scores = {g: [run_scores(d) for d in dirs] for g, dirs in groups.items()}
    bases = baseline_groups(scores, baseline)
    if baseline is not None and not bases:
        raise cli.DataError(f"--compare: no group {baseline!r} for --baseline; groups: {', '.join(scores)}")
    base_runs = [r for g in bases for r in scores[g]]
    rows = []
    for g, runs in scores.items():
        row = {"group": g, "runs": [r["run"] for r in runs], "n": len(runs)}
        for kind in ("final", "best"):
            for _, key in COMPARE_METRICS:
                col = f"{kind}_{key}"
                vals = [r[col] for r in runs if r[col] is not None]
                row[col] = (*cli.mean_std(vals), len(vals)) if vals else None
                row["delta_" + col] = None
                if bases and g not in bases:
                    base = {(r["seed"],
                             _context(r["config"])): r[col] for r in base_runs if r[col] is not None}
                    d = [r[col] - base[(r["seed"], _context(r["config"]))] for r in runs
                         if r[col] is not None and (r["seed"], _context(r["config"])) in base]
                    row["delta_" + col] = (*cli.mean_std(d), len(d)) if d else None
        rows.append(row)
    return rows


def _pm(cell, signed=False):
    if cell is None:
        return "–"
    m, s, n = cell
    return f"{100 * m:{'+' if signed else ''}.2f} ± {100 * s:.2f} (n={n})"


def compare_markdown(groups, baseline=None, deltas_only=False):
    """Markdown of compare_groups: the values table (unless deltas_only) and, with a baseline, the paired-Δ
    table, in percentage points."""
    rows = compare_groups(groups, baseline)
    cols = [(kind, title, key) for title, key in COMPARE_METRICS for kind in ("final", "best")]
    head = " | ".join(f"{title} {kind}" for kind, title, _ in cols)
    lines = []
    if not deltas_only:
        lines += ["Final checkpoint (metrics.json) and best of the evaluations (log.csv; each metric its own "
                  "best, selected on the evaluation split) in %, mean ± sample std over the runs (seeds):",
                  "",
                  f"| Group | runs | {head} |", "|---|---|" + "---|" * len(cols)]
        lines += [f"| {r['group']} | {r['n']} | "
                  + " | ".join(_pm(r[f'{k}_{key}']) for k, _, key in cols) + " |"
                  for r in rows]
        lines.append("")
    if baseline is not None:
        lines += [f"Paired difference to {baseline} (same seed, dataset, budget, image size and steps), "
                  "percentage points, mean ± sample std over the pairs:", "", f"| Group | {head} |",
                  "|---|" + "---|" * len(cols)]
        lines += [f"| {r['group']} | "
                  + " | ".join(_pm(r[f'delta_{k}_{key}'], True) for k, _, key in cols) + " |"
                  for r in rows if r["group"] not in baseline_groups(groups, baseline)]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=["summary", "compare"])
    p.add_argument("paths", nargs="+", help="run folders; compare: also NAME=RUN[,RUN...] groups")
    p.add_argument("--baseline", default=None, metavar="GROUP", help="compare: the group the Δ is taken to")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    args = p.parse_args(argv)
    md = (summary_markdown(args.paths) if args.table == "summary"
          else compare_markdown(group_runs(args.paths), args.baseline))
    if md.startswith("No runs"):     # every folder was skipped (named above): a wrong path, not an empty table
        raise cli.MissingFileError(f"--{args.table}: none of {', '.join(args.paths)} is a finished run "
                                   "folder (config.json and metrics.json)")
    print(md)
    if args.out:
        cli.atomic_write(args.out, lambda f: f.write(md))
    return md


if __name__ == "__main__":
    cli.cli_main(main)
