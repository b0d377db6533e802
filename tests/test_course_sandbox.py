"""tools/course: grading a class that cannot be gamed (issue 30). The students who cheat are graded in one class
command with an honest student, each in the bubblewrap sandbox; the hand-ins hold only the edited file.

Tests that run students' code need bwrap able to create its namespaces here; they skip, saying why, where it
cannot (everything else is tested without it)."""
import csv
import json
import os
import stat
import subprocess
import sys
import time
import uuid

import pytest

from tools.course import grader, handin, judge, kit, report, sandbox
from tools.course.registry import ASSIGNMENTS

ROOT = grader.ROOT
WHY_NO_SANDBOX = sandbox.check()
needs_sandbox = pytest.mark.skipif(WHY_NO_SANDBOX is not None, reason=f"no sandbox here: {WHY_NO_SANDBOX}")


def stub(name, file):
    with open(os.path.join(handin.pristine(ASSIGNMENTS[name]), file)) as f:
        return f.read()


def hand_in(tmp_path, who, files):
    d = tmp_path / who
    d.mkdir()
    for rel, text in files.items():
        (d / rel).write_text(text)
    return str(d)


def reference(file):
    with open(os.path.join(ROOT, file)) as f:
        return f.read()


# Reaches for the reference from inside the sandbox: relative paths out of the hand-in, the grader's environment
# and command line in /proc, and a walk of the whole filesystem; takes the reference forward() if it finds it.
THIEF = '''
import os as _os
def _steal():
    cands = [_os.path.abspath(r) for r in ("../models.py", "../../models.py", "../../../models.py")]
    for pid in [p for p in _os.listdir("/proc") if p.isdigit()]:
        for what in ("environ", "cmdline"):
            try:
                parts = open(f"/proc/{pid}/{what}", "rb").read().split(b"\\0")
            except OSError:
                continue
            for part in parts:
                v = part.decode(errors="replace").split("=", 1)[-1]
                if v.startswith("/"):
                    cands += [_os.path.join(v, "models.py"), _os.path.join(_os.path.dirname(v), "models.py")]
    for d, dirs, files in _os.walk("/"):
        if d.startswith(("/proc", "/sys", "/dev")):
            dirs[:] = []
        elif "models.py" in files:
            cands.append(_os.path.join(d, "models.py"))
    for p in cands:
        try:
            src = open(p).read()
        except OSError:
            continue
        if "x_m = M_c * x_cls" in src:
            return p
_path = _steal()
if _path:
    _ns = {"__name__": "stolen"}
    exec(compile(open(_path).read(), _path, "exec"), _ns)
    InterTaskAttention.forward = _ns["InterTaskAttention"].forward
'''

# Writes into the kit, starts a double-forked setsid process that rewrites the grades CSV and a classmate's hand-in
# later, then floods the grading channel.
VANDAL = '''
import os as _os, time as _time
for _p in ({kit_canary!r}, {canary!r}):
    try:
        open(_p, "w").write("vandal")
    except OSError:
        pass
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        _time.sleep(4)
        for _p in ({csv!r}, {classmate!r}):
            try:
                open(_p, "w").write("hacked by {marker}")
            except OSError:
                pass
        _time.sleep(60)
        _os._exit(0)
    _os._exit(0)
_junk = b'{{"x": "' + b"A" * (40 << 20)
for _fd in range(3, 12):
    try:
        _os.write(_fd, _junk)
    except OSError:
        pass
'''

SLEEPER = "\nimport time as _t\n_t.sleep(10 ** 6)\n"


def _processes_with(marker):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


@needs_sandbox
def test_a_class_with_cheats_in_one_command(tmp_path):
    """Each cheat at most 10 % of the points, the honest student (only models.py handed in) full marks, the kit
    and other files unchanged, no process left behind, the CSV complete."""
    marker = uuid.uuid4().hex
    kit_canary = os.path.join(grader.HERE, f".vandal-{marker}")
    canary, out = tmp_path / "canary.txt", tmp_path / "grades.csv"
    canary.write_text("untouched")
    models = stub("attention", "models.py")
    honest = hand_in(tmp_path, "honest", {"models.py": reference("models.py")})
    thief = hand_in(tmp_path, "thief", {"models.py": models + THIEF})
    vandal = hand_in(tmp_path, "vandal", {"models.py": models + VANDAL.format(
        kit_canary=kit_canary, canary=str(canary), csv=str(out), classmate=os.path.join(honest, "models.py"),
        marker=marker)})
    sleeper = hand_in(tmp_path, "sleeper", {"models.py": reference("models.py") + SLEEPER})
    fifo = hand_in(tmp_path, "fifo", {"models.py": reference("models.py"), ".assignment.json": "[" * 200000})
    os.mkfifo(os.path.join(fifo, "notes"))
    before = kit.snapshot()
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "tools.course", "grade", honest, thief, vandal, sleeper, fifo,
                        "--assignment", "attention", "--csv", str(out), "--json", "--time-budget", "10"],
                       cwd=ROOT, capture_output=True, text=True, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))
    took = time.monotonic() - t
    try:
        assert p.returncode == 1 and p.stdout, p.stderr[-2000:]
        grades = {os.path.basename(g["student"]): g for g in json.loads(p.stdout)["grades"]}
        top = ASSIGNMENTS["attention"].points
        totals = {k: report.total(g)[0] for k, g in grades.items()}
        assert totals["honest"] == top, grades["honest"]["results"]
        for who in ("thief", "vandal", "sleeper", "fifo"):
            assert totals[who] <= 0.1 * top, (who, [r for r in grades[who]["results"] if r["points"]])
        assert "time budget of 10 s" in grades["sleeper"]["results"][0]["msg"]
        assert "notes: not a regular file" in grades["fifo"]["results"][0]["msg"]
        # the 40 MB of junk on the grading channel is refused; on a loaded machine writing it can outlast the
        # time budget first (seen once in a full suite run beside two training jobs): either way, no points
        vandal_msgs = [r["msg"] for r in grades["vandal"]["results"]]
        assert any("malformed record" in m or "time budget" in m or "longer than" in m for m in vandal_msgs), vandal_msgs
        assert took < 240
        time.sleep(5)                                    # the vandal's background process would have struck by now
        assert not _processes_with(marker) and not _processes_with("run_child.py")
        assert not os.path.exists(kit_canary) and canary.read_text() == "untouched"
        assert open(os.path.join(honest, "models.py")).read() == reference("models.py")
        kit.verify(before)
        rows = list(csv.DictReader(open(out)))
        assert len(rows) == 5 * len(ASSIGNMENTS["attention"].checks) and marker not in out.read_text()
    finally:
        if os.path.exists(kit_canary):
            os.unlink(kit_canary)


# ------------------------------------------------------------------------------------------ without student code

def test_the_kit_is_verified(tmp_path):
    here, root = tmp_path / "course", tmp_path
    here.mkdir()
    (here / "checks.py").write_text("x = 1\n")
    before = kit.snapshot(str(root), str(here))
    kit.verify(before, str(root), str(here))
    (here / "checks.py").write_text("x = 2\n")
    with pytest.raises(kit.KitChanged, match="course/checks.py"):
        kit.verify(before, str(root), str(here))


def test_malformed_hand_ins_give_one_line_errors(tmp_path):
    d = tmp_path / "h"
    d.mkdir()
    (d / "hermes.py").write_text("x = 1\n")
    dest = tmp_path / "dest"
    assert handin.overlay(str(d), str(dest)) == ["hermes.py"]
    (d / "leak.py").symlink_to("/etc/hostname")
    with pytest.raises(handin.HandInError, match="leak.py is a symbolic link that leaves the hand-in"):
        handin.overlay(str(d), str(tmp_path / "d2"))
    os.unlink(d / "leak.py")
    os.makedirs(d / "runs" / "fig1")
    (d / "real.csv").write_text("a\n")
    (d / "runs" / "fig1" / "log.csv").symlink_to(d / "real.csv")
    with pytest.raises(handin.HandInError, match="a run folder must hold its own files"):
        handin.overlay(str(d), str(tmp_path / "d3"))
    os.unlink(d / "runs" / "fig1" / "log.csv")
    with open(d / "big.bin", "wb") as f:
        f.truncate((handin.MAX_FILE_MB + 1) << 20)
    with pytest.raises(handin.HandInError, match="big.bin: .* more than the 32 MB"):
        handin.overlay(str(d), str(tmp_path / "d4"))
    os.unlink(d / "big.bin")
    (d / grader.ASSIGNMENT_FILE).write_text("[" * 60000)
    assert "unreadable (not valid JSON" in grader.copy_warnings(str(d), "thresholds")[0]
    os.unlink(d / grader.ASSIGNMENT_FILE)
    os.mkfifo(d / grader.ASSIGNMENT_FILE)
    assert "not a regular file" in grader.copy_warnings(str(d), "thresholds")[0]      # does not block
    assert stat.S_ISFIFO(os.lstat(d / grader.ASSIGNMENT_FILE).st_mode)


def test_grade_refuses_without_bwrap_unless_no_sandbox(tmp_path, monkeypatch, capsys):
    from tools.course import cli
    monkeypatch.setattr(sandbox, "bwrap", lambda: None)
    monkeypatch.setattr(sandbox, "_WORKS", {})
    with pytest.raises(SystemExit, match="bwrap not found: .*apt-get install bubblewrap.*--no-sandbox"):
        cli.main(["grade", str(tmp_path), "--assignment", "thresholds"])
    d = hand_in(tmp_path, "only", {"hermes.py": stub("thresholds", "hermes.py")})
    assert cli.main(["grade", d, "--assignment", "thresholds", "--no-sandbox", "--csv", str(tmp_path / "g.csv")]) == 1
    out = capsys.readouterr()
    assert "WITHOUT a sandbox" in out.err and out.out.count(grader.NO_SANDBOX_WARNING) == 1
    assert "Total: 0/20" in out.out


def test_one_time_budget_for_everything(tmp_path):
    """A 2 s budget: the import that never ends costs the budget once, not a timeout per check."""
    d = hand_in(tmp_path, "slow", {"hermes.py": reference("hermes.py") + SLEEPER})
    st = grader.Settings(budget=2, sandboxed=WHY_NO_SANDBOX is None)
    t = time.monotonic()
    g = grader.grade(d, "thresholds", settings=st)
    assert time.monotonic() - t < 30 and report.total(g)[0] == 0
    assert all("time budget of 2 s" in r["msg"] for r in g["results"])


def test_output_per_check_is_capped():
    lines = grader._Lines(None, 10)
    lines.buf = b"x" * 20
    assert lines.readline(1) == b"\x00too long"
    assert judge  # the verdicts themselves are tested in test_course.py


# ------------------------------------------------------------------------------------------ constant answers

# Bodies that return a constant of the right shape (and the errors the docstrings ask for): no math. Each
# assignment's worst combination must score at most 10 % of its points.
CONSTANT = {
    "thresholds": {"hermes.py": {
        "uncertainty": ["return torch.zeros_like(probs[:, 0])"],
        "dual_threshold_mask": ["return torch.ones_like(probs[:, 0])", "return torch.zeros_like(probs[:, 0])"],
        "uncertainty_threshold": ["if total <= 0:\n        raise ValueError('total')\n    return 0.5"],
        "confidence_threshold": ["if total <= 0:\n        raise ValueError('total')\n    return 0.9"]}},
    "dice": {"losses.py": {
        "_dice_loss": ["return torch.zeros(p.shape[0], dtype=p.dtype)"],
        "seg_unsupervised_loss": ["return (logits_s * 0).sum()"]}},
    "pixel-contrast": {"losses.py": {"pixel_contrastive_loss": ["return (anchors * 0).sum()"]},
                       "hermes.py": {"sample_anchors": ["e = torch.zeros(0, dtype=torch.long)\n    return e, e.clone()"]}},
    "image-contrast": {"losses.py": {"image_contrastive_loss": ["return (features * 0).sum()"]}},
    "attention": {"models.py": {"InterTaskAttention.forward": [
        "B, C, h, w = x_cls.shape\n        if x_seg.shape[-2:] != x_cls.shape[-2:]:\n            raise ValueError('size')\n"
        "        return (x_cls * 0.25, torch.full((B, C, 1, 1), 0.5, dtype=x_cls.dtype),\n"
        "                torch.full((B, 1, h, w), 0.5, dtype=x_cls.dtype))"]}},
    "saliency": {"models.py": {"saliency": [
        "return torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype)",
        "was = [m.training for m in cls_net.modules()]\n    cls_net.eval()\n    cls_net(x.detach().requires_grad_())\n"
        "    for m, t in zip(cls_net.modules(), was):\n        m.train(t)\n"
        "    return torch.zeros(x.shape[0], 1, *x.shape[2:], dtype=x.dtype)"]}},
}


@pytest.mark.parametrize("name", list(CONSTANT))
def test_constant_answers_score_at_most_a_tenth(tmp_path, name):
    import ast
    import itertools
    from tools.course import cutting
    fns = [(f, q, bodies) for f, d in CONSTANT[name].items() for q, bodies in d.items()]
    top = ASSIGNMENTS[name].points
    for k, combo in enumerate(itertools.product(*[range(len(b)) for _, _, b in fns])):
        d = tmp_path / f"c{k}"
        d.mkdir()
        for f in {f for f, _, _ in fns}:
            src = reference(f)
            tree, lines, spans = ast.parse(src), src.splitlines(keepends=True), []
            for (ff, q, bodies), i in zip(fns, combo):
                if ff == f:
                    spans.append((cutting.body_span(cutting.find_function(tree, q)), bodies[i]))
            for (start, end, col), body in sorted(spans, reverse=True):
                lines[start - 1:end] = [" " * col + body + "\n"]
            (d / f).write_text("".join(lines))
        g = grader.grade(str(d), name, in_process=True)
        assert report.total(g)[0] <= 0.1 * top, (combo, [(r["name"], r["points"]) for r in g["results"] if r["points"]])


# ------------------------------------------------------------------------------------------ Gradescope

# On Gradescope the reference lies at a known place (/autograder/source): take saliency from there.
STEAL_SALIENCY = '''
for _p in ({source!r}, "/autograder/source/models.py", "../source/models.py"):
    try:
        _ns = {{"__name__": "stolen"}}
        exec(compile(open(_p).read(), _p, "exec"), _ns)
        saliency = _ns["saliency"]
        break
    except (OSError, KeyError):
        pass
'''


@needs_sandbox
def test_gradescope_autograder_runs_on_a_fake_tree(tmp_path):
    import zipfile
    from tools.course.cli import main
    z = tmp_path / "autograder.zip"
    assert main(["gradescope", "saliency", "--out", str(z)]) == 0
    names = zipfile.ZipFile(z).namelist()
    assert {"setup.sh", "run_autograder", "models.py", "tools/course/grader.py",
            "tools/course/assignments/saliency/checks.py"} <= set(names)
    top = ASSIGNMENTS["saliency"].points
    scores = {}
    cheat = stub("saliency", "models.py") + STEAL_SALIENCY.format(source=str(tmp_path / "cheat" / "source" / "models.py"))
    for who, text in (("honest", reference("models.py")), ("cheat", cheat)):
        root = tmp_path / who
        zipfile.ZipFile(z).extractall(root / "source")
        (root / "submission").mkdir()
        (root / "submission" / "models.py").write_text(text)
        os.chmod(root / "source" / "run_autograder", 0o755)
        p = subprocess.run([str(root / "source" / "run_autograder")], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, AUTOGRADER_ROOT=str(root), COURSE_PYTHON=sys.executable))
        assert p.returncode == 0, p.stderr[-2000:]
        res = json.load(open(root / "results" / "results.json"))
        assert {"score", "tests"} <= set(res) and len(res["tests"]) == len(ASSIGNMENTS["saliency"].checks), res
        assert all({"name", "score", "max_score", "output"} <= set(t) for t in res["tests"])
        assert res["score"] == sum(t["score"] for t in res["tests"])
        scores[who] = res["score"]
    assert scores["honest"] == top and scores["cheat"] <= 0.1 * top, scores


# ------------------------------------------------------------------------------------------ forged experiments

@needs_sandbox
def test_a_forged_run_does_not_match_its_rerun(tmp_path, monkeypatch):
    """The first logged steps of fig1's run, re-run in the sandbox from the run's seed; a hand-written log.csv
    (right settings, numbers in the measured ranges) scores 0 on the whole assignment."""
    from tools.course import rerun
    a = ASSIGNMENTS["fig1"]
    real = rerun.rerun(a.module.CONFIG, 3, 2, 2, grader.Settings(), code=handin.pristine(a))
    assert real["iter"] == "2" and rerun.differs(real, real) is None
    assert "seg_l is" in rerun.differs(dict(real, seg_l=str(float(real["seg_l"]) * 1.1)), real)
    d = tmp_path / "forger"
    os.makedirs(d / "runs" / "fig1")
    json.dump(dict(a.module.CONFIG, seed=3), open(d / "runs" / "fig1" / "config.json", "w"))
    with open(d / "runs" / "fig1" / "log.csv", "w") as f:
        f.write("kind,iter,loss,seg_l,pl_acc_pix_all\ntrain,2,3.0,0.8,0.7\n")
    calls = []
    monkeypatch.setattr(rerun, "rerun", lambda cfg, seed, log_every, steps, st, code=None:
                        calls.append((seed, log_every, steps)) or real)
    g = grader.grade(str(d), "fig1")
    assert calls == [(3, 2, 2)] and report.total(g)[0] == 0
    assert "does not match a re-run of its config.json" in g["results"][0]["msg"]
    with open(d / "runs" / "fig1" / "log.csv", "w") as f:              # the real first row: the checks run
        f.write("kind," + ",".join(k for k in real if k != "kind") + "\n")
        f.write("train," + ",".join(real[k] for k in real if k != "kind") + "\n")
    g = grader.grade(str(d), "fig1")
    assert not any("re-run" in r["msg"] for r in g["results"]), g["results"][0]["msg"]


def test_identical_logs_are_flagged():
    grades = [{"student": s, "warnings": [], "fingerprints": {"runs/fig1": h}} for s, h in
              (("ann", "x"), ("bob", "x"), ("cid", "y"))]
    grader.flag_identical_runs(grades)
    grader.flag_identical_runs(grades)                                  # idempotent
    assert [len(g["warnings"]) for g in grades] == [1, 1, 0] and "bob" in grades[0]["warnings"][0]
