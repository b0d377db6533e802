"""tools/reproduce.py: plans, commands, Slurm script, tables, sweeps (a fake train.py for the bookkeeping, the real
one for a tiny 2-job demo sweep that is stopped and continued)."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from tools import reproduce

ROOTS = ["--data-root", "busi=/data/BUSI dir", "--data-root", "udiat=/data/udiat", "--data-root", "sztus=/data/sz"]


def roots_for(exp):
    return [x for i in range(0, len(ROOTS), 2) for x in ROOTS[i:i + 2]
            if ROOTS[i + 1].split("=")[0] in exp.datasets()]


def expected_values(run):
    """What train.py must parse from a run's command: its per-run options and its method's switches."""
    want = {"dataset": run.dataset, "labels": run.labels, "seed": run.seed, "task": "joint", "threshold": "dual",
            "lr": 1e-4, "contrast_level": 3, "dtcl": True, "ias": True, "itcl": True}
    want.update(dict(run.method))
    return want


@pytest.mark.parametrize("name", [n for n, e in reproduce.EXPERIMENTS.items() if not e.unsupported])
def test_dry_run_commands_parse_with_train_parser(name, tmp_path, capsys):
    exp = reproduce.EXPERIMENTS[name]
    out = str(tmp_path / "sweep")
    assert reproduce.main([name, "--dry-run", "--out", out, *roots_for(exp), "--iters", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = exp.runs()
    assert len(lines) == len(runs) == len({r.name for r in runs})
    for line, run in zip(lines, runs):
        tokens = shlex.split(line)
        assert tokens[1].endswith("train.py")
        ns = vars(train.build_parser().parse_args(tokens[2:]))
        assert ns["out"] == os.path.join(out, run.name) and ns["iters"] == 7
        assert {k: ns[k] for k in expected_values(run)} == expected_values(run), line
        if run.dataset != "demo":
            assert ns["data_root"] == dict(x.split("=") for x in ROOTS[1::2])[run.dataset]


def test_runs_match_the_papers_tables_and_share_folders():
    ex = reproduce.EXPERIMENTS
    names = {k: {r.name for r in e.runs()} for k, e in ex.items() if not e.unsupported}
    # Table 1: SupOnly, CPS, ABD, AD-MT, DiffRect, DCNet, SS-Net, Hermes × 8 columns × 3 seeds
    assert len(names["table1"]) == 8 * 8 * 3 and len(names["table3"]) == (6 + 4) * 3
    assert len(names["table2"]) == 6 * 4 * 3
    both = {"busi-216-suponly-seed0", "sztus-60-hermes-seed2"}
    assert both <= names["table2"] & names["table1"]  # one joint run gives both tables
    assert {"busi-72-abd-seed0", "udiat-20-admt-seed1", "sztus-60-ssnet-seed2", "busi-144-dcnet-seed0"} <= names["table1"]
    assert {"busi-216-pefat-seed0", "sztus-60-shrinkmatch-seed2", "busi-144-interlude-seed1",
            "sztus-120-infomatch-seed0"} <= names["table2"]
    assert "udiat-60-diffrect-seed0" in names["table1"]
    assert reproduce.TABLE1[("busi", 72)]["abd"] == (73.93, 0.44) and reproduce.TABLE1[("udiat", 40)]["admt"] == (84.51, 0.56)
    assert reproduce.TABLE2[("busi", 216)]["interlude"] == (92.31, 0.35)
    assert {"busi-72-suponly-seed0", "busi-72-hermes-seed2"} <= names["table1"] & names["table3"]
    assert "busi-72-hermes-seed1" in names["table4"] & names["fig1"]  # lr 1e-4 and the dual rule are Hermes
    assert "busi-144-hermes-seed0" in names["table5"] & names["table1"]  # Conv3 is the default
    assert "busi-72-hermes-lr2e-4-seed0" in names["table4"] and "busi-144-hermes-conv1-seed0" in names["table5"]
    assert "busi-72-ss-dtcl-seed0" in names["table3"] and "busi-72-hermes-thr-confidence-seed0" in names["fig1"]
    # a few of the paper's numbers, read again from the paper's tables
    assert reproduce.TABLE1[("udiat", 20)]["hermes"] == (83.23, 0.28)
    assert reproduce.TABLE2[("sztus", 60)]["suponly"] == (75.61, 0.39)
    assert reproduce.TABLE3[4] == (False, True, True, None, None, 74.09, 83.43)
    assert reproduce.TABLE4[9e-5] == (74.35, 82.17) and reproduce.TABLE5[2][1:] == (81.56, 69.62)


def test_bad_options_give_one_line_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    cases = [(["demo", "--dry-run", "--bogus", "1", *out], "--bogus"),
             (["demo", "--dry-run", "--iters", "x", *out], "--iters"),
             (["demo", "--dry-run", "--seed", "3", *out], "--seeds"),
             (["table4", "--dry-run", "--lr", "1e-3", *out], "table4's rows set it"),
             (["table1", "--data-root", "busi=/x", *out], "--data-root sztus=PATH"),
             (["table6", *out], "not supported"),
             (["table9", *out], "unknown experiment")]
    for argv, words in cases:
        assert reproduce.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("reproduce.py: ") and "\n" not in err and words in err, (argv, err)
    assert not os.listdir(tmp_path)


def test_format_cell_and_log_second_half(tmp_path):
    # mean 60, sample std sqrt(((-10)^2 + 0 + 10^2) / 2) = 10
    assert reproduce.format_cell([0.5, 0.6, 0.7], 3, (75.68, 0.22)) == "60.00 ± 10.00 (paper 75.68 ± 0.22)"
    assert reproduce.format_cell([0.5], 3, 71.79) == "50.00 (1 of 3 seeds) (paper 71.79)"
    assert reproduce.format_cell([], 3, None) == "—"
    with open(tmp_path / "log.csv", "w") as f:
        f.write("kind,iter,kept_pix,pl_acc_pix_kept\ntrain,1,0.9,0.1\ntrain,2,0.5,0.8\ntrain,3,0.0,0.0\n"
                "eval,4,,\ntrain,4,0.3,0.6\n")
    # second half = iter > 2: kept 0.0 and 0.3 -> 0.15; accuracy of a row that kept nothing is left out -> 0.6
    assert reproduce.log_second_half(str(tmp_path), "kept_pix") == pytest.approx(0.15)
    assert reproduce.log_second_half(str(tmp_path), "pl_acc_pix_kept") == pytest.approx(0.6)


def slurm(exp_name, tmp_path, *extra):
    exp = reproduce.EXPERIMENTS[exp_name]
    opts = reproduce.build_parser().parse_args(["--slurm", "--partition", "gpu", "--time", "01:00:00", *extra])
    runs = exp.runs()
    roots = reproduce.with_env_roots({}, exp)
    return runs, reproduce.slurm_script(exp, runs, "sweep", roots, ["--iters", "3"], opts, "test")


def fake_weights(tmp_path):
    """A TORCH_HOME/hub/checkpoints folder holding (empty) files named as the ImageNet weights."""
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for f in ("resnet18-f37072fd.pth", "resnet34-b627a593.pth"):
        (folder / f).write_bytes(b"")
    return str(folder)


def test_slurm_script_one_array_task_per_run(tmp_path, capsys, monkeypatch):
    (tmp_path / "busi").mkdir()
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["table3", "--slurm", "--jobs", "4", "--data-root", "busi", "--out", "o",
                           "--weights-dir", fake_weights(tmp_path)]) == 0
    script = capsys.readouterr().out
    assert os.path.isdir(tmp_path / "o" / "logs")                     # made before any task needs it
    assert f"--data-root {tmp_path / 'busi'} " in script                 # relative root written absolute
    assert f"test -d {tmp_path / 'busi'} ||" in script                   # ... and checked on the node
    assert f"#SBATCH --output={tmp_path / 'o' / 'logs'}/" in script
    assert f'PYTHON="${{PYTHON:-{sys.executable}}}"' in script           # the interpreter that wrote it
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --requeue" in script
    assert f"export TORCH_HOME={tmp_path / 'torch'}" in script and "resnet34-b627a593.pth ||" in script
    path = tmp_path / "t3.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    runs = reproduce.EXPERIMENTS["table3"].runs()
    assert f"#SBATCH --array=0-{len(runs) - 1}%4" in script
    tasks = re.findall(r"^  (\d+)\) NAME=(\S+); ARGS=\((.*)\) ;;$", script, re.M)
    assert [int(i) for i, _, _ in tasks] == list(range(len(runs)))
    assert [n for _, n, _ in tasks] == [r.name for r in runs]
    for (_, _, args), run in zip(tasks, runs):
        ns = vars(train.build_parser().parse_args(shlex.split(args)))
        assert {k: ns[k] for k in expected_values(run)} == expected_values(run)


def test_slurm_task_skips_resumes_and_trains(tmp_path):
    """One array task run by bash (no Slurm): a fake train.py records its arguments and writes metrics.json."""
    runs, script = slurm("demo", tmp_path)
    assert f"#SBATCH --array=0-{len(runs) - 1}\n" in script  # no --jobs: no limit on tasks at a time
    (tmp_path / "job.sh").write_text(script)
    (tmp_path / "train.py").write_text(
        "import os, sys\nout = sys.argv[sys.argv.index('--out') + 1]\nos.makedirs(out, exist_ok=True)\n"
        "open(os.path.join(out, 'args'), 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "open(os.path.join(out, 'metrics.json'), 'w').write('{}')\n")
    (tmp_path / "sweep" / "logs").mkdir(parents=True)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", PYTHON=sys.executable)

    def task():
        return subprocess.run(["bash", "job.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)

    run_dir = tmp_path / "sweep" / runs[1].name
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_text("")
    r = task()
    assert r.returncode == 0, r.stderr
    args = (run_dir / "args").read_text().split()
    assert args[-1] == "--resume" and args[args.index("--seed") + 1] == str(runs[1].seed)
    assert "finished already" in task().stdout and len((run_dir / "args").read_text().splitlines()) == 1
    env["SLURM_ARRAY_TASK_ID"] = str(len(runs))
    assert task().returncode == 1


FAKE_TRAIN = """
import json, os, sys
argv = sys.argv[1:]
out, seed = argv[argv.index("--out") + 1], int(argv[argv.index("--seed") + 1])
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
if os.environ.get("FAKE_FAIL") and out.endswith(os.environ["FAKE_FAIL"]):
    print("step 1 of seed", seed, "\\nnon-finite loss (fake)")
    sys.exit(3)
os.makedirs(out, exist_ok=True)
iters = int(argv[len(argv) - 1 - argv[::-1].index("--iters") + 1])
json.dump({"seed": seed, "iters": iters}, open(os.path.join(out, "config.json"), "w"))
m = {"dice_mean": 0.5 + seed / 10, "iou_mean": 0.4, "accuracy": 0.6, "auc": 0.7}
json.dump(m, open(os.path.join(out, "metrics.json"), "w"))
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setattr(reproduce, "python_and_train", lambda: [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    def read_calls():
        return [json.loads(l) for l in calls.read_text().splitlines()] if calls.exists() else []
    return read_calls


def test_sweep_skips_resumes_restarts_and_reports_failures(tmp_path, fake_train, monkeypatch, capsys):
    out = tmp_path / "sweep"
    runs = reproduce.EXPERIMENTS["demo"].runs()  # SupOnly and Hermes × seeds 0, 1
    done, resumed, stale = (out / runs[i].name for i in range(3))
    for d in (done, resumed, stale):
        d.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"dice_mean": 0.9, "accuracy": 0.8}))
    (resumed / "checkpoint.pt").write_text("")
    (stale / "config.json").write_text('{"iters": 999}')  # killed before its first checkpoint: restarted anyway
    monkeypatch.setenv("FAKE_FAIL", runs[3].name)
    assert reproduce.main(["demo", "--jobs", "2", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    calls = {c[c.index("--out") + 1]: c for c in fake_train()}
    assert str(done) not in calls and len(calls) == 3
    assert calls[str(resumed)][-1] == "--resume" and "--resume" not in calls[str(stale)]
    assert [p for p in os.listdir(out) if p.startswith(stale.name + ".incomplete-")]  # nothing lost
    assert f"FAILED {runs[3].name} (exit status 3)" in captured.err and "non-finite loss (fake)" in captured.err
    table = (out / "demo.md").read_text()
    # SupOnly = seeds 0 (the folder made above: 90) and 1 (fake: 60) -> 75.00 ± 21.21; Hermes seed 1 failed
    assert "| SupOnly | 75.00 ± 21.21 |" in table and "| Hermes | 50.00 (1 of 2 seeds) |" in table
    assert f"Not finished (1): {runs[3].name}" in table
    # the same sweep again runs only the failed run; other settings are refused before anything runs
    monkeypatch.delenv("FAKE_FAIL")
    assert reproduce.main(["demo", "--out", str(out)]) == 0
    assert len(fake_train()) == 4
    assert reproduce.main(["demo", "--out", str(out), "--iters", "61"]) == 2
    assert "config.json has iters=60, this sweep asks 61" in capsys.readouterr().err
    assert len(fake_train()) == 4


TINY = ["--demo-size", "80", "--iters", "2", "--image-size", "32", "--eval-every", "2", "--batch-size", "2", "--seg-encoder", "resnet18",
        "--n-anchors", "16", "--pixel-bank-size", "64", "--image-bank-size", "8", "--log-every", "1"]


def test_real_two_job_sweep_stopped_and_continued(tmp_path, capsys):
    """The demo experiment (seed 0: SupOnly and Hermes) with train.py itself, 2 at a time: stopped after step 1
    (train.py's hidden --stop-after, as a kill after a checkpoint), then the same sweep continues both runs."""
    out = str(tmp_path / "sweep")
    argv = ["demo", "--seeds", "0", "--jobs", "2", "--out", out, *TINY]
    assert reproduce.main(argv + ["--stop-after", "1"]) == 1
    runs = reproduce.EXPERIMENTS["demo"].runs((0,))
    for r in runs:
        assert reproduce.run_state(os.path.join(out, r.name)) == "resume"
    assert "| SupOnly | — | — | — | — |" in open(os.path.join(out, "demo.md")).read()
    capsys.readouterr()

    assert reproduce.main(argv) == 0
    table = capsys.readouterr().out
    for r, title in zip(runs, ["SupOnly", "Hermes"]):
        assert "resumed" in open(os.path.join(out, "logs", f"{r.name}.log")).read()
        m = json.load(open(os.path.join(out, r.name, "metrics.json")))
        assert m["iter"] == 2
        cells = " | ".join(f"{100 * m[k]:.2f}" for k in ("dice_mean", "iou_mean", "accuracy", "auc"))
        assert f"| {title} | {cells} |" in table
    assert reproduce.main(["demo", "--seeds", "0", "--out", out, "--collect"]) == 0
    assert capsys.readouterr().out.split("- Made by")[0] == table.split("- Made by")[0]


def test_slurm_inputs_are_checked_before_the_script_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["table3", "--slurm", "--data-root", "busi=/nonexistent", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "busi=/nonexistent: no such folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "busi").mkdir()
    empty = tmp_path / "empty" / "hub" / "checkpoints"
    empty.mkdir(parents=True)
    assert reproduce.main(["table3", "--slurm", "--data-root", "busi", "--out", "o", "--weights-dir", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet34-b627a593.pth and resnet18-f37072fd.pth" in err and str(empty) in err and "\n" not in err
    assert reproduce.main(["table3", "--slurm", "--data-root", "busi", "--out", "o", "--weights-dir", str(empty),
                           "--no-pretrained"]) == 0                               # no weights needed


def slurm_task(script, task, tmp_path, **env):
    """One array task of a --slurm script run by bash as Slurm would (SLURM_* set by hand, a fake scontrol
    recording its calls), from the repository root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path / "scontrol.calls"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(task),
           "SLURM_JOB_ID": f"7{task}", "SLURM_ARRAY_JOB_ID": "7", "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(["bash", str(script)], cwd=reproduce.ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def write_slurm(tmp_path, capsys, name, *options):
    out = tmp_path / name
    assert reproduce.main(["demo", "--slurm", "--out", str(out), *options]) == 0
    script = tmp_path / f"{name}.sh"
    script.write_text(capsys.readouterr().out)
    return out, script


def test_slurm_script_runs_two_tasks_under_a_fake_scheduler(tmp_path, capsys):
    out, script = write_slurm(tmp_path, capsys, "sweep", *TINY)
    runs = reproduce.EXPERIMENTS["demo"].runs()
    tasks = {task: slurm_task(script, task, tmp_path) for task in (0, 2)}     # side by side, as an array runs
    for task, p in tasks.items():
        assert p.wait(timeout=900) == 0, p.stdout.read()
        m = json.load(open(out / runs[task].name / "metrics.json"))
        assert m["iter"] == 2
    again = {task: slurm_task(script, task, tmp_path) for task in tasks}
    for task, p in again.items():
        assert "finished already" in p.communicate(timeout=300)[0], task
    assert not (tmp_path / "scontrol.calls").exists()


def test_slurm_time_limit_warning_saves_and_requeues(tmp_path, capsys):
    """Slurm's --signal warning (SIGUSR1 to the batch shell): train.py finishes its step, saves, and the task
    requeues itself; the requeued task resumes from that step."""
    long = [x if x != "2" else "200" for x in TINY[:4]] + TINY[4:]            # --iters 200: still running
    out, script = write_slurm(tmp_path, capsys, "sweep", *long, "--progress-seconds", "0", "--eval-every", "1000")
    run = reproduce.EXPERIMENTS["demo"].runs()[2]
    p = slurm_task(script, 2, tmp_path)
    log = out / "logs" / f"{run.name}.log"
    deadline = time.time() + 900
    while not (log.exists() and "step 2/200" in log.read_text()):
        assert time.time() < deadline and p.poll() is None, log.read_text() if log.exists() else "no log"
        time.sleep(0.5)
    p.send_signal(signal.SIGUSR1)
    stdout = p.communicate(timeout=900)[0]
    assert p.returncode == 0 and "requeueing" in stdout, stdout
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "7_2"]
    text = log.read_text()
    assert "stopped by SIGUSR1 at step " in text and "--resume" in text
    step = int(text.split("stopped by SIGUSR1 at step ")[1].split("/")[0])
    ckpt = torch.load(out / run.name / "checkpoint.pt", weights_only=True)
    assert ckpt["iter"] == step and "opt_seg" in ckpt


def test_collect_names_each_comparator_row(tmp_path, capsys):
    """table1 / table2 --collect: a finished comparator run lands in its own row, the others show the paper's
    number beside a dash."""
    out = tmp_path / "runs"
    for name, method, metrics in (("busi-72-abd-seed0", "abd", {"dice_mean": 0.7012, "accuracy": 0.8}),
                                  ("busi-216-pefat-seed1", "pefat", {"dice_mean": 0.5, "accuracy": 0.6543})):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text(json.dumps({"method": method, "dataset": name.split("-")[0]}))
        (out / name / "metrics.json").write_text(json.dumps(metrics))
    assert reproduce.main(["table1", "--out", str(out), "--collect"]) == 0
    t1 = (out / "table1.md").read_text()
    abd_row = next(line for line in t1.splitlines() if line.startswith("| ABD (`--method abd`)"))
    assert abd_row.split("|")[4].strip().startswith("70.12 (1 of 3 seeds)")
    assert "| DiffRect (`--method diffrect`) | — (paper 85.54 ± 0.41)" in t1
    assert reproduce.main(["table2", "--out", str(out), "--collect"]) == 0
    pefat_row = next(line for line in (out / "table2.md").read_text().splitlines() if line.startswith("| PEFAT"))
    assert pefat_row.split("|")[2].strip().startswith("65.43 (1 of 3 seeds)")
