"""Visible checks of the 'fig1' assignment: python -m pytest tests/test_assignment_fig1.py

They check that the runs exist with the assignment's settings and that answers.txt has every value. The grader
also checks your numbers against your own log.csv / metrics.json and against the ranges in ASSIGNMENT.md."""
import os

from assignment_runs import EXP_CONFIG, assert_answers_filled_in, assert_runs_have_settings  # tests/ next to this

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"runs/fig1": dict(EXP_CONFIG, log_every=2, threshold="dual", dtcl=True, ias=True, itcl=True)}
KEYS = ('pix_acc_all',
       'pix_acc_conf',
       'pix_kept_conf',
       'pix_acc_dual',
       'pix_kept_dual',
       'img_kept_conf',
       'kappa_binds_from')


def test_runs_exist_with_the_assignment_settings():
    assert_runs_have_settings(ROOT, RUNS)


def test_every_answer_is_filled_in():
    assert_answers_filled_in(ROOT, KEYS)
