"""Visible checks of the 'ablation' assignment: python -m pytest tests/test_assignment_ablation.py

They check that the runs exist with the assignment's settings and that answers.txt has every value. The grader
also checks your numbers against your own log.csv / metrics.json and against the ranges in ASSIGNMENT.md."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {'runs/row1-suponly': {'dataset': 'demo',
                             'iters': 60,
                             'image_size': 64,
                             'seg_encoder': 'resnet18',
                             'labels': 40,
                             'batch_size': 8,
                             'demo_size': 240,
                             'pretrained': False,
                             'task': 'joint',
                             'dtcl': False,
                             'ias': False,
                             'itcl': False},
       'runs/row2-dtcl': {'dataset': 'demo',
                          'iters': 60,
                          'image_size': 64,
                          'seg_encoder': 'resnet18',
                          'labels': 40,
                          'batch_size': 8,
                          'demo_size': 240,
                          'pretrained': False,
                          'task': 'joint',
                          'dtcl': True,
                          'ias': False,
                          'itcl': False,
                          'threshold': 'dual'}}
KEYS = ('row1_dice', 'row1_acc', 'row2_dice', 'row2_acc', 'row1_zero_terms', 'row2_zero_terms', 'step_time_ratio')


def read_answers():
    out = {}
    with open(os.path.join(ROOT, "answers.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


def test_runs_exist_with_the_assignment_settings():
    for run, want in RUNS.items():
        path = os.path.join(ROOT, run, "config.json")
        assert os.path.isfile(path), f"{path} is missing: run the training command of ASSIGNMENT.md"
        with open(path) as f:
            cfg = json.load(f)
        wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
        assert not wrong, f"{run}: settings differ from the assignment's: {wrong}"


def test_every_answer_is_filled_in():
    answers = read_answers()
    missing = [k for k in KEYS if not answers.get(k)]
    assert not missing, f"answers.txt: no value for {missing}"
