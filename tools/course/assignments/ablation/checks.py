"""Graded checks of 'ablation' (an experiment: no student code runs; these read the student's run folders and
answers.txt, in the grader's process). A check passes unless it raises Fail."""
import json
import os

from tools.course.experiments import (EXP_CONFIG, TERMS, answer_number, answer_terms, answers, check_config,
                                      check_finished, check_ranges, read_log)
from tools.course.observe import Fail
from tools.course.registry import check

RUNS = {"row1": ("runs/row1-suponly", dict(EXP_CONFIG, dtcl=False, ias=False, itcl=False)),
        "row2": ("runs/row2-dtcl", dict(EXP_CONFIG, dtcl=True, ias=False, itcl=False, threshold="dual"))}
KEYS = ("row1_dice", "row1_acc", "row2_dice", "row2_acc", "row1_zero_terms", "row2_zero_terms", "step_time_ratio")
# Ranges measured with the committed code (COURSE.md, "The experiments"), widened by a margin.
RANGES = {"row1_dice": (0.30, 0.90), "row1_acc": (0.45, 0.70), "row2_dice": (0.25, 0.80), "row2_acc": (0.45, 0.70),
          "step_time_ratio": (1.0, 3.0)}
FRACTIONS = {"row1_dice", "row1_acc", "row2_dice", "row2_acc"}
QUESTIONS = (
    'Why are exactly these terms 0 in row 1? Which switch removes each one?',
    'In row 2, `itc` is 0 (why?). Is `cls_u` 0 too? If so, which threshold blocks every unlabeled image, and what would have to change for it to pass?',
    'Your two runs differ by some Dice points. ASSIGNMENT.md gives the spread over seeds measured with the same commands. Is your difference evidence that DTCL helps or hurts here? What would you run to find out?',
    "The paper's Table 3 reports +1.29 Dice and +1.15 accuracy points for DTCL (row 2 vs row 1, BUSI, 72 labels). Name two differences between your setting and the paper's that could explain a different result.",
    'Where does the extra time per step of row 2 go? Think of what a DTCL step computes that a SupOnly step does not (a teacher pass, twice the images in the student pass, the contrastive losses).',
)


def _metrics(ctx, row):
    run = os.path.join(ctx.dir, RUNS[row][0])
    check_config(run, RUNS[row][1])
    path = os.path.join(run, "metrics.json")
    if not os.path.isfile(path):
        raise Fail(f"{RUNS[row][0]}/metrics.json is missing: the run did not finish")
    with open(path) as f:
        return json.load(f)


def _zero_terms(ctx, row):
    rows = read_log(os.path.join(ctx.dir, RUNS[row][0]))
    return {t for t in TERMS if all(r.get(t, 0.0) == 0.0 for r in rows)}


@check(1)
def runs_finished_same_seed(ctx, M):
    """both runs finished with the same seed"""
    seeds = []
    for run, cfg in RUNS.values():
        check_finished(os.path.join(ctx.dir, run), cfg["iters"])
        seeds.append(check_config(os.path.join(ctx.dir, run), cfg).get("seed"))
    if len(set(seeds)) != 1:
        raise Fail(f"the two rows used different seeds {seeds}: compare like with like")


@check(2)
def metrics_agree(ctx, M):
    """Dice and accuracy agree with the runs' metrics.json"""
    ans = answers(ctx)
    for row in RUNS:
        m = _metrics(ctx, row)
        for key, col in (("dice", "dice_mean"), ("acc", "accuracy")):
            got = answer_number(ans, f"{row}_{key}", FRACTIONS)
            if not abs(got - m[col]) <= 0.005:
                raise Fail(f"{row}_{key} = {got:.4f}, but {RUNS[row][0]}/metrics.json has {col} {m[col]:.4f}")


@check(1)
def row1_zero_terms(ctx, M):
    """row1_zero_terms: the terms that are 0 in row 1's log"""
    got, want = answer_terms(answers(ctx), "row1_zero_terms"), _zero_terms(ctx, "row1")
    if got != want:
        raise Fail(f"row1_zero_terms = {' '.join(sorted(got))}: check {RUNS['row1'][0]}/log.csv again")


@check(1)
def row2_zero_terms(ctx, M):
    """row2_zero_terms: the terms that are 0 in row 2's log"""
    got, want = answer_terms(answers(ctx), "row2_zero_terms"), _zero_terms(ctx, "row2")
    if got != want:
        raise Fail(f"row2_zero_terms = {' '.join(sorted(got)) or 'none'}: check {RUNS['row2'][0]}/log.csv again")


@check(1)
def step_time_ratio(ctx, M):
    """step_time_ratio agrees with the logs' sec_per_step"""
    t = [sum(r["sec_per_step"] for r in rows) / len(rows)
         for rows in (read_log(os.path.join(ctx.dir, RUNS[row][0])) for row in ("row1", "row2"))]
    got = answer_number(answers(ctx), "step_time_ratio")
    if not abs(got - t[1] / t[0]) <= 0.05 * t[1] / t[0]:
        raise Fail(f"step_time_ratio = {got:.3f}, but the logs give {t[1] / t[0]:.3f}")


@check(2)
def in_measured_ranges(ctx, M):
    """your numbers lie in the ranges measured with the committed code"""
    check_ranges(ctx, RANGES, FRACTIONS)
