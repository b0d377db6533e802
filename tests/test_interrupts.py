"""Runs that never strand their user (issue 21): signals, a folder without checkpoint, finished runs, checkpoints
by wall time, progress lines. Real processes, real signals and real folders; the parent waits for a line of the
child's output, never for a fixed time, so a slow machine only makes the tests slower."""
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest
import torch

import runner
import train
from test_cli import snapshot
from test_train import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = TINY + ["--iters", "200", "--eval-every", "1000", "--ckpt-minutes", "0", "--progress-seconds", "0"]
WAIT = 600   # seconds a child may take to reach a line (2 shared cores)


class Child:
    """train.py in a subprocess; stdout and stderr read line by line on threads."""

    def __init__(self, *args):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines, self.out, self.err = queue.Queue(), [], []
        for stream, keep in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, keep), daemon=True).start()

    def _read(self, stream, keep):
        for line in stream:
            keep.append(line)
            self.lines.put(line)

    def wait_for(self, text):
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                self.p.kill()
                raise AssertionError(f"no line with {text!r}; got {self.out + self.err}")
            if text in line:
                return line

    def finish(self):
        rc = self.p.wait(timeout=WAIT)
        for t in threading.enumerate():
            if t is not threading.current_thread() and t.daemon:
                t.join(timeout=5)
        return rc, "".join(self.out), "".join(self.err)


def ckpt_iter(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["iter"]


def test_signals_save_the_step_and_name_the_command(tmp_path):
    """SIGINT to one run, SIGTERM to another (side by side: each child pays a torch import)."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    outs = [str(tmp_path / f"run-{signal.Signals(sig).name}") for sig in sigs]
    children = [Child(*LONG, "--out", out) for out in outs]
    for child, sig in zip(children, sigs):
        child.wait_for("more steps at ~")          # the expected-time line, after 3 measured steps
        child.p.send_signal(sig)
    for child, sig, out in zip(children, sigs, outs):
        rc, stdout, stderr = child.finish()
        assert rc == 128 + sig, (rc, stdout, stderr)
        last = stdout.strip().splitlines()[-1]
        assert f"stopped by {signal.Signals(sig).name} at step " in last and "--resume" in last and out in last
        step = int(last.split(" at step ")[1].split("/")[0])
        assert step >= 3 and ckpt_iter(out) == step
        assert "step 1/200  loss " in stdout and "s/step  ETA " in stdout       # progress lines: not a terminal
        assert "more steps at ~" in stdout and "on cpu" in stdout
        assert not [f for f in os.listdir(out) if ".tmp" in f]
    # the printed command continues the run (here stopped again one step later by the hidden --stop-after)
    command = last.split("continue with: ")[1].split()
    assert command[-3:] == ["--out", out, "--resume"]
    assert train.train(["--out", out, "--resume", "--stop-after", str(step + 1)]) is None
    assert ckpt_iter(out) == step + 1


def test_second_signal_aborts_at_once_and_the_folder_is_no_trap(tmp_path):
    """SIGINT then SIGTERM at once: the second stops the step itself; the folder has no checkpoint (none was due
    yet). --resume says to start without it; a fresh start moves the partial files aside and runs."""
    out = str(tmp_path / "run")
    child = Child(*LONG, "--out", out)
    child.wait_for("step 1/200")
    child.p.send_signal(signal.SIGINT)
    child.p.send_signal(signal.SIGTERM)
    rc, stdout, stderr = child.finish()
    assert rc == 130, (rc, stdout, stderr)
    assert "second signal" in stderr and "Traceback" not in stderr
    assert not os.path.exists(os.path.join(out, "checkpoint.pt")) and os.path.isfile(os.path.join(out, "config.json"))
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    before = snapshot(out)
    with pytest.raises(train.cli.DataError, match="without --resume"):
        train.train(["--out", out, "--resume"])
    assert snapshot(out) == before                                        # a refused command changes nothing
    result = train.train(TINY + ["--iters", "2", "--out", out])           # a fresh start into it proceeds
    assert result["iter"] == 2
    aside = [f for f in os.listdir(tmp_path) if f.startswith("run.incomplete-")]
    assert len(aside) == 1 and snapshot(str(tmp_path / aside[0])) == before


def test_killed_before_any_checkpoint_then_started_again(tmp_path, capsys):
    """SIGKILL (no handler runs): the same command again starts afresh, the partial files kept aside."""
    out = str(tmp_path / "run")
    child = Child(*LONG, "--out", out)
    child.wait_for("step 2/200")
    child.p.kill()
    child.finish()
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))
    before = snapshot(out)
    assert train.train(TINY + ["--iters", "2", "--out", out])["iter"] == 2     # in this process: no second import
    assert "moved it to" in capsys.readouterr().out and os.path.isfile(os.path.join(out, "metrics.json"))
    aside = [f for f in os.listdir(tmp_path) if f.startswith("run.incomplete-")]
    assert len(aside) == 1 and snapshot(str(tmp_path / aside[0])) == before


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    out = str(tmp_path / "run")
    first = train.train(TINY + ["--iters", "1", "--out", out])
    before = snapshot(out)
    again = train.train(["--out", out, "--resume"])
    assert snapshot(out) == before and again["train_seconds"] == first["train_seconds"]
    assert "is finished" in capsys.readouterr().out
    with pytest.raises(train.cli.DataError, match="finished run"):       # a fresh start into it is refused
        train.train(TINY + ["--iters", "1", "--out", out])
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    with pytest.raises(train.cli.DataError, match="lean final checkpoint"):
        runner.read_checkpoint(os.path.join(out, "checkpoint.pt"))
    assert ckpt["final"] and "model" in ckpt and "opt_seg" not in ckpt


def test_checkpoints_by_wall_time_do_not_change_the_weights(tmp_path, monkeypatch):
    saved = []
    save = runner.save_atomic

    def spy(obj, path):
        if os.path.basename(path) == "checkpoint.pt":
            saved.append((obj["iter"], "opt_seg" in obj))
        return save(obj, path)

    weights = []
    for minutes in ("1e-9", "0"):
        saved.clear()
        monkeypatch.setattr(train, "save_atomic", spy)
        out = str(tmp_path / f"m{minutes}")
        train.train(TINY + ["--iters", "3", "--eval-every", "100", "--ckpt-every", "100", "--ckpt-minutes", minutes,
                            "--out", out])
        weights.append(torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"])
        if minutes != "0":
            assert saved == [(1, True), (2, True), (3, False)]   # every step, then the lean final one
        else:
            assert saved == [(3, False)]
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0, msg=k)
