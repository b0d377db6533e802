"""Visible checks of the 'ablation' assignment: python -m pytest tests/test_assignment_ablation.py

They check that the runs exist with the assignment's settings and that answers.txt has every value. The grader
also checks your numbers against your own log.csv / metrics.json and against the ranges in ASSIGNMENT.md."""
import os

from assignment_runs import EXP_CONFIG, assert_answers_filled_in, assert_runs_have_settings  # tests/ next to this

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"runs/row1-suponly": dict(EXP_CONFIG, dtcl=False, ias=False, itcl=False),
        "runs/row2-dtcl": dict(EXP_CONFIG, dtcl=True, ias=False, itcl=False, threshold="dual")}
KEYS = ('row1_dice', 'row1_acc', 'row2_dice', 'row2_acc', 'row1_zero_terms', 'row2_zero_terms', 'step_time_ratio')


def test_runs_exist_with_the_assignment_settings():
    assert_runs_have_settings(ROOT, RUNS)


def test_every_answer_is_filled_in():
    assert_answers_filled_in(ROOT, KEYS)
