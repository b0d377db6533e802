"""Shared by the experiment assignments (fig1, ablation) on both sides: their visible tests, in a student's copy,
import it as tests/assignment_runs.py (meta.toml [files] writes it there), and the grader reads answers.txt with
it (experiments.py). Standard library only and no import of the course kit: a student's copy has no tools/course/."""
import json
import os

# config.json values every experiment run must have (train.py's resolved arguments); the seed is free.
# recipe "paper": the demo starts from random weights, where train.py's default is the from-scratch recipe.
EXP_CONFIG = {"dataset": "demo", "iters": 60, "image_size": 64, "seg_encoder": "resnet18", "labels": 40,
              "batch_size": 8, "demo_size": 240, "pretrained": False, "task": "joint", "recipe": "paper"}


def parse_answers(path):
    """answers.txt: `key = value` lines, `#` starts a comment. -> {key: str}"""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


def assert_runs_have_settings(root, runs):
    """Every run folder of {run: settings} under `root` has a config.json with these settings."""
    for run, want in runs.items():
        path = os.path.join(root, run, "config.json")
        assert os.path.isfile(path), f"{path} is missing: run the training command of ASSIGNMENT.md"
        with open(path) as f:
            cfg = json.load(f)
        wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
        assert not wrong, f"{run}: settings differ from the assignment's: {wrong}"


def assert_answers_filled_in(root, keys):
    """root/answers.txt has a value for every key."""
    answers = parse_answers(os.path.join(root, "answers.txt"))
    missing = [k for k in keys if not answers.get(k)]
    assert not missing, f"answers.txt: no value for {missing}"
