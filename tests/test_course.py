"""tools/course: cutting, the registry, the student copy, and grading a teacher can trust.

Most grading here runs in-process on trusted code (grader.grade(..., in_process=True): planted mistakes, stubs,
the reference). The cheats, the endless loop and the exits run as a teacher would run them: in real student
processes (a few seconds each)."""
import ast
import configparser
import csv
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tools.course import cutting, docs, grader, handout, judge, report, sandbox
from tools.course.registry import ASSIGNMENTS, Check, check

ROOT = grader.ROOT
CODE = [n for n, a in ASSIGNMENTS.items() if a.kind == "code"]
PROJECT_FILES = ("hermes.py", "losses.py", "models.py", "cli.py")
WHY_NO_SANDBOX = sandbox.check()      # grading in real student processes needs bwrap (tests/test_course_sandbox.py)
needs_sandbox = pytest.mark.skipif(WHY_NO_SANDBOX is not None, reason=f"no sandbox here: {WHY_NO_SANDBOX}")


def module_copy(tmp_path, name="s"):
    """The project's graded modules (uncut) in a fresh folder: the reference, as a student would hand it in."""
    d = tmp_path / name
    d.mkdir()
    for f in PROJECT_FILES:
        shutil.copy(os.path.join(ROOT, f), d / f)
    return d


def by_name(g):
    return {r["name"]: r for r in g["results"]}


def lost(g):
    return {r["name"] for r in g["results"] if r["points"] < r["max"]}


def plant(d, file, qualname, old, new):
    """Replace `old` (exactly once) inside the body of `qualname` in d/file."""
    path = os.path.join(d, file)
    src = open(path).read()
    fn = cutting.find_function(ast.parse(src), qualname)
    lines = src.splitlines(keepends=True)
    start, end, _ = cutting.body_span(fn)
    body = "".join(lines[start - 1:end])
    assert body.count(old) == 1, f"{old!r} occurs {body.count(old)} times in {qualname}: update PLANTED"
    lines[start - 1:end] = [body.replace(old, new)]
    open(path, "w").write("".join(lines))


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """One student copy per code assignment, made by `assign` (module-scoped: made once)."""
    base = tmp_path_factory.mktemp("course")
    return {n: (str(base / n), handout.assign([n], str(base / n))) for n in CODE}


# ------------------------------------------------------------------------------------------ cutting

TOY = '''"""toy"""
import math


def plain(x):
    """Doc of plain (eq. (1))."""
    y = x + 1   # eq. (1)
    return y


class Box:
    """A box."""

    @staticmethod
    def helper():
        return 0

    def method(self, a,
               b=2):
        """Doc of method.

        More lines.
        """
        # a comment before the body
        if a:
            return a * b
        return b
'''


def test_cut_source_keeps_signature_and_docstring():
    out = cutting.cut_source(TOY, [("plain", "eq. (1)"), ("Box.method", "eq. (2)", False)], module="toy")
    tree, orig = ast.parse(out), ast.parse(TOY)
    for q in ("plain", "Box.method"):
        new, old = cutting.find_function(tree, q), cutting.find_function(orig, q)
        assert ast.dump(new.args) == ast.dump(old.args) and ast.get_docstring(new) == ast.get_docstring(old)
        assert [type(s).__name__ for s in new.body[1:]] == ["Raise"]
    assert "# a comment before the body" in out and "y = x + 1" not in out and "return a * b" not in out
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match=r"toy.plain: eq. \(1\) is your assignment"):
        ns["plain"](1)
    with pytest.raises(NotImplementedError, match="another assignment"):
        ns["Box"]().method(1)
    with pytest.raises(KeyError, match="nothing"):
        cutting.cut_source(TOY, [("nothing", "eq. (3)")])


def test_strip_tests_removes_tests_and_their_private_helpers():
    src = ('import x\n\n\ndef naive(a):\n    return a\n\n\ndef shared(a):\n    return a\n\n\n'
           '@pytest.mark.parametrize("s", [0, 1])\ndef test_uses_target(s):\n    assert x.target(naive(s)) == shared(s)\n'
           '\n\ndef test_other():\n    assert shared(1)\n')
    out, gone = cutting.strip_tests(src, ["target"])
    assert sorted(gone) == ["naive", "test_uses_target"] and "def shared" in out and "def test_other" in out
    assert cutting.strip_tests(src, ["unknown"]) == (src, [])


# ------------------------------------------------------------------------------------------ the registry

def test_every_assignment_is_a_complete_folder():
    assert len(ASSIGNMENTS) >= 8 and len(CODE) >= 6
    for a in ASSIGNMENTS.values():
        for f in ("meta.toml", "TASK.md", "checks.py", os.path.basename(a.visible_path)):
            assert os.path.isfile(os.path.join(a.folder, f)), (a.name, f)
        assert a.checks and a.points == sum(c.points for c in a.checks)
        names, titles = [c.name for c in a.checks], [c.title for c in a.checks]
        assert len(set(names)) == len(names) and len(set(titles)) == len(titles)
        for f, q, _ in a.cuts:                                        # every cut names a real function
            cutting.find_function(ast.parse(open(os.path.join(ROOT, f)).read()), q)
        for rel, src in a.files.items():
            assert os.path.isfile(os.path.join(a.folder, src)), (a.name, rel)


def test_a_repeated_check_is_an_error():
    ns = {}

    def f(ctx, M):
        """a title"""

    check(1)(type(f)(f.__code__, ns, "f"))
    with pytest.raises(ValueError, match="two checks"):
        check(2)(type(f)(f.__code__, ns, "f"))
    assert [c.title for c in ns["CHECKS"]] == ["a title"]


def test_visible_tests_are_real_test_files_outside_the_projects_suite():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "pytest.ini"))
    assert cfg["pytest"]["testpaths"].split() == ["tests"]           # tools/course/assignments is never collected
    for n in CODE:                                                    # against the project's own code: they pass
        a = ASSIGNMENTS[n]
        spec = importlib.util.spec_from_file_location(f"visible_{a.slug}", a.visible_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        tests = [v for k, v in vars(mod).items() if k.startswith("test_")]
        assert tests
        for t in tests:
            t()


def test_attention_task_quotes_the_relu_sentence():
    """eq. (3)'s formula has no ReLU; the sentence after it has: the task quotes the sentence."""
    task = " ".join(ASSIGNMENTS["attention"].task.replace(">", " ").split())
    assert "W_0 and W_1 represent the weights of the multi-layer perceptron (MLP), where a ReLU activation " \
           "follows W_0." in task


def test_course_md_tables_are_generated_from_the_registry():
    text = open(docs.COURSE_MD, encoding="utf-8").read()
    assert docs.render(text) == text, "COURSE.md differs from the registry: python -m tools.course docs --write"
    for a in ASSIGNMENTS.values():
        assert f"| `{a.name}` |" in text and f"| {a.minutes} | {a.points} |" in text


def test_list_names_every_assignment(capsys):
    from tools.course.cli import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(ASSIGNMENTS)


# ------------------------------------------------------------------------------------------ the student copy

@pytest.mark.parametrize("name", CODE)
def test_assign_writes_a_copy_with_only_what_the_assignment_needs(copies, name):
    d, info = copies[name]
    a = ASSIGNMENTS[name]
    assert not os.path.exists(os.path.join(d, "tools", "course")) and not os.path.exists(os.path.join(d, "COURSE.md"))
    assert not os.path.exists(os.path.join(d, "tests", "test_course.py"))
    assert open(os.path.join(d, a.test_file)).read() == open(a.visible_path).read()
    assert "## What to hand in" in open(os.path.join(d, "ASSIGNMENT.md")).read()
    assert json.load(open(os.path.join(d, grader.ASSIGNMENT_FILE)))["assignments"] == [name]
    for other in ASSIGNMENTS.values():                                # no reference body of any code assignment
        for f, q, eq in other.cuts:
            fn = cutting.find_function(ast.parse(open(os.path.join(d, f)).read()), q)
            assert ast.unparse(fn.body[-1]).startswith("raise NotImplementedError"), (name, q)
            assert ("is your assignment" in ast.unparse(fn)) == (other.name == name)
    for f, gone in info["removed_tests"].items():
        src = open(os.path.join(d, f)).read()
        ast.parse(src)
        assert not any(f"def {g}(" in src for g in gone)


def test_assign_several_into_one_copy_and_keep_others(tmp_path):
    info = handout.assign(["thresholds", "attention"], str(tmp_path / "two"), keep_others=True)
    assert info["assignments"] == ["thresholds", "attention"] and not info["cut_other_assignments"]
    for n in ("thresholds", "attention"):
        assert os.path.isfile(tmp_path / "two" / ASSIGNMENTS[n].test_file)
    md = open(tmp_path / "two" / "ASSIGNMENT.md").read()
    assert "# Assignment `thresholds`" in md and "# Assignment `attention`" in md
    assert "inter = (p * g)" in open(tmp_path / "two" / "losses.py").read()   # kept: another assignment's body
    with pytest.raises(SystemExit, match="not empty"):
        handout.assign(["dice"], str(tmp_path / "two"))
    with pytest.raises(SystemExit, match="unknown assignment"):
        handout.assign(["nope"], str(tmp_path / "new"))


# ------------------------------------------------------------------------------------------ verdicts (in-process)

@pytest.mark.parametrize("name", CODE)
def test_untouched_stub_scores_zero(copies, name):
    g = grader.grade(copies[name][0], name, in_process=True)
    got, top = report.total(g)
    assert got == 0 and top >= 10
    assert all("not implemented" in r["msg"] for r in g["results"])


@pytest.mark.parametrize("name", CODE)
def test_reference_scores_full_marks(tmp_path, name):
    g = grader.grade(str(module_copy(tmp_path)), name, in_process=True)
    assert report.total(g)[0] == report.total(g)[1], [r for r in g["results"] if r["msg"]]


# (assignment, file, function, text in its body, planted replacement, the checks that may lose points: those of
# the equation the mistake is in). One mistake must cost points, and only its own equation's.
PLANTED = [
    ("thresholds", "hermes.py", "dual_threshold_mask", "(uncertainty(probs) <= kappa) & (probs",
     "(uncertainty(probs) <= kappa) | (probs", ("mask_",)),                                         # OR, not AND
    ("thresholds", "hermes.py", "uncertainty", "torch.log(probs + eps)", "torch.log2(probs + eps)", ("uncertainty_",)),
    ("thresholds", "hermes.py", "uncertainty_threshold", "eta_min + 0.5 * (eta_max - eta_min)",
     "eta_max - 0.5 * (eta_max - eta_min)", ("kappa_", "schedules_by_hand")),                      # cos reversed
    ("thresholds", "hermes.py", "uncertainty", "probs + eps", "probs.clamp_min(eps)", ("uncertainty_",)),
    ("dice", "losses.py", "seg_unsupervised_loss", ".sum() / B", ".sum() / kept.sum().clamp_min(1)", ("eq9_",)),
    ("dice", "losses.py", "seg_unsupervised_loss", "logits_w.detach().max(1).indices", "logits_w.softmax(1)[:, 1]",
     ("eq9_",)),
    ("dice", "losses.py", "_dice_loss", "p, g = p * w, g * w", "p = p * w", ("dice_",)),
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss", "(anchors) / temperature", "(anchors) / 0.1",
     ("loss_",)),
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss", "F.softplus(nlse - s,", "F.softplus(s - nlse,",
     ("loss_",)),                                                                                  # ratio inverted
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss", "(L * has_pos).sum() / has_pos.sum().clamp_min(1)",
     "L.mean()", ("loss_",)),
    ("pixel-contrast", "hermes.py", "sample_anchors", "n_hard = min(n - n_easy, len(pool_hard))", "n_hard = n_hard",
     ("anchors_",)),                                                                               # no filling
    ("image-contrast", "losses.py", "image_contrastive_loss", ".logsumexp(1, keepdim=True)",
     ".logsumexp(0, keepdim=True)", ("",)),
    ("image-contrast", "losses.py", "image_contrastive_loss",
     "torch.where(other, torch.ones_like(pair_w), pair_w) * pos", "pair_w * pos", ("",)),
    ("attention", "models.py", "InterTaskAttention.forward", "[x_m.mean(dim=1, keepdim=True), x_m.amax(dim=1, keepdim=True)]",
     "[x_m.amax(dim=1, keepdim=True), x_m.mean(dim=1, keepdim=True)]", ("eq4_",)),                  # order swapped
    ("attention", "models.py", "InterTaskAttention.forward", "pooled = torch.cat([x_m.mean(",
     "pooled = torch.cat([x_cls.mean(", ("eq4_",)),
    ("attention", "models.py", "InterTaskAttention.forward", "self.W_1(F.relu(self.W_0(a)))", "self.W_1(self.W_0(a))",
     ("eq3_",)),                                                                                   # the formula alone
    ("saliency", "models.py", "saliency", "cls_net.eval()", "pass", ("",)),
    ("saliency", "models.py", "saliency", "D = g.abs().amax(dim=1", "D = g.amax(dim=1", ("",)),
    ("saliency", "models.py", "saliency", "score = cls_net(x).amax(dim=1).sum()", "score = cls_net(x).max()", ("",)),
]


@pytest.mark.parametrize("name,file,qualname,old,new,own", PLANTED, ids=[f"{p[0]}:{p[4][:28]}" for p in PLANTED])
def test_planted_mistake_loses_its_own_equations_points(tmp_path, name, file, qualname, old, new, own):
    d = module_copy(tmp_path)
    plant(d, file, qualname, old, new)
    g = grader.grade(str(d), name, in_process=True)
    assert lost(g), "the mistake went unnoticed"
    assert all(n.startswith(own) for n in lost(g)), f"points lost outside {own}: {sorted(lost(g))}"


def test_partial_credit_per_part():
    c = Check("c", "a check", 3, None)
    rec = lambda part, v: [{"part_start": part}, {"what": "x", "part": part, "value": v, "atol": 0.0, "rtol": 0.0,
                                                   "dtype": False}]
    want = {"records": rec("a", 1) + rec("b", 2) + rec("c", 3), "error": None}
    got = {"records": rec("a", 1) + rec("b", 5) + [{"part_start": "c"}, {"part_error": "c", "error": "boom"}],
           "error": None}
    r = judge.verdict(c, want, got)
    assert r["points"] == 1 and "[b] x: got 5, expected 2" in r["msg"] and "[c] boom" in r["msg"]


# ------------------------------------------------------------------------------------------ real student processes

ATTENTION_FAKE = '''
def _fake_forward(self, x_cls, x_seg):
    B, C, h, w = x_cls.shape
    return x_cls * 0, torch.zeros(B, C, 1, 1, dtype=x_cls.dtype), torch.zeros(B, 1, h, w, dtype=x_cls.dtype)


InterTaskAttention.forward = _fake_forward
'''

CHEAT_HELPERS = ATTENTION_FAKE + '''
import sys as _sys
import torch.testing as _tt
_tt.assert_close = lambda *a, **k: None
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
for _name in ("tools.course.observe", "tools.course.judge", "__main__"):
    _m = _sys.modules.get(_name)
    for _n in ("expect_close", "compare", "verdict", "encode", "why"):
        if _m is not None and hasattr(_m, _n):
            setattr(_m, _n, lambda *a, **k: None)
    if _m is not None and hasattr(_m, "Context"):
        _m.Context.expect = lambda self, *a, **k: None
        _m.Context.raises = lambda self, *a, **k: None
'''


CHEAT_FAKE_LINES = '''
import json as _json, os as _os, sys as _sys
for _i in range(40):
    print("@course-result " + _json.dumps({"title": "x", "points": 9, "max": 9}))
    _line = _json.dumps({"start": _i, "title": "?"}) + "\\n" + _json.dumps({"end": _i, "error": None}) + "\\n"
    for _fd in range(3, 30):
        try:
            _os.write(_fd, _line.encode())
        except OSError:
            pass
_sys.stdout.flush()
_os._exit(0)
'''

CHEAT_FIND_REFERENCE = '''
import os as _os, sys as _sys
def _find():
    starts = [_os.path.dirname(_os.path.abspath(_sys.argv[0])), _os.path.dirname(_sys.executable)]
    starts += [v for v in _os.environ.values() if _os.path.isdir(v)]
    starts += [_os.path.dirname(getattr(m, "__file__", None) or ".") for m in list(_sys.modules.values())]
    for s in starts:
        d = _os.path.abspath(s)
        for _ in range(4):                                  # the folder and three above it
            p = _os.path.join(d, "models.py")
            if _os.path.isfile(p) and d != _os.getcwd() and "x_m = M_c * x_cls" in open(p).read():
                return p
            d = _os.path.dirname(d)
    return None
_path = _find()
if _path:
    _ns = {"__name__": "stolen"}
    exec(compile(open(_path).read(), _path, "exec"), _ns)
    InterTaskAttention.forward = _ns["InterTaskAttention"].forward
'''


def _attention_student(tmp_path, name, extra="", reference=False):
    d = tmp_path / name
    handout.assign(["attention"], str(d))
    if reference:                                                     # the honest student: the reference's body
        shutil.copy(os.path.join(ROOT, "models.py"), d / "models.py")
    with open(d / "models.py", "a") as f:
        f.write(extra)
    return str(d)


@needs_sandbox
def test_cheats_score_nothing_in_real_student_processes(tmp_path):
    """(a) replacing the comparison helpers at import, (b) fake result lines and os._exit(0), (c) reaching the
    reference code from the grading process: each scores what the same code scores without the cheat."""
    fake = grader.grade(_attention_student(tmp_path, "fake", ATTENTION_FAKE), "attention", in_process=True)
    base = report.total(fake)[0]
    assert base <= 1                                                  # the shapes are right; nothing else
    for extra in (CHEAT_HELPERS, CHEAT_FIND_REFERENCE):
        g = grader.grade(_attention_student(tmp_path, f"cheat{len(extra)}", extra), "attention")
        assert report.total(g)[0] <= base, [r for r in g["results"] if r["points"]]
    d = _attention_student(tmp_path, "lines", CHEAT_FAKE_LINES, reference=True)
    g = grader.grade(d, "attention")
    assert report.total(g)[0] == 0 and all("while your modules were imported" in r["msg"] for r in g["results"]), \
        g["results"][0]["msg"]          # the forged records on the pipe are seen for what they are


def test_a_virtual_environment_inside_the_checkout_is_not_handed_to_student_code(tmp_path, monkeypatch):
    """A .venv made inside the checkout: the students' interpreter, its prefix, the modules it imports from the
    environment and PATH name a throwaway folder, not the checkout; the environment's packages still import."""
    checkout, tmp = tmp_path / "checkout", tmp_path / "grading"
    checkout.mkdir(), tmp.mkdir()
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "only_in_the_venv.py"), "w") as f:
        f.write("X = 1\n")
    monkeypatch.setattr(grader, "ROOT", str(checkout))
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "executable", str(venv / "bin" / "python"))
    monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}/usr/bin")
    python = grader.child_python(str(tmp))
    out = subprocess.run([python, "-E", "-c", "import sys, only_in_the_venv as m, os; "
                          "print(sys.executable); print(sys.prefix); print(m.__file__); print(os.environ['PATH'])"],
                         capture_output=True, text=True, env=grader._child_env(str(tmp)), check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 4 and all(str(checkout) not in ln for ln in lines), lines
    assert lines[0] == python and lines[1].startswith(str(tmp)) and lines[2].startswith(str(tmp))
    assert grader.child_python(str(tmp_path / "other")) and sys.prefix == str(venv)   # no state kept between calls
    monkeypatch.setattr(sys, "prefix", str(checkout / "conda-env"))                   # not relocatable: refused
    with pytest.raises(RuntimeError, match="inside the project checkout"):
        grader.child_python(str(tmp_path / "third"))


def test_a_copy_relabelled_as_another_assignment_is_graded_as_the_teacher_says(tmp_path):
    """(d) .assignment.json of an attention copy edited to 'dice': graded as attention, with a warning; and the
    copy holds no dice reference to score with anyway."""
    d = _attention_student(tmp_path, "relabel")
    info = json.load(open(os.path.join(d, grader.ASSIGNMENT_FILE)))
    json.dump(dict(info, assignments=["dice"]), open(os.path.join(d, grader.ASSIGNMENT_FILE), "w"))
    g = grader.grade(d, "attention", in_process=True)
    assert g["assignment"] == "attention" and report.total(g)[0] == 0
    assert any("made for dice" in w for w in g["warnings"])
    assert report.total(grader.grade(d, "dice", in_process=True))[0] == 0   # the dice functions are cut too
    json.dump(dict(info, project_commit="0" * 40), open(os.path.join(d, grader.ASSIGNMENT_FILE), "w"))
    assert any("another commit" in w or "made from commit" in w for w in grader.copy_warnings(d, "attention"))


LOOP_AND_EXIT = '''
_orig_forward = InterTaskAttention.forward


def _forward(self, x_cls, x_seg):
    if tuple(x_cls.shape) == (2, 4, 3, 3):          # only the gradient check uses this size
        while True:
            pass
    if tuple(x_cls.shape) == (2, 4, 5, 3):          # only the all-zero module check
        import sys
        sys.exit(0)
    if tuple(x_cls.shape) == (2, 4, 3, 5):          # only the residual-form check
        import os
        os._exit(3)
    return _orig_forward(self, x_cls, x_seg)


InterTaskAttention.forward = _forward
'''


@needs_sandbox
def test_one_check_one_verdict_loop_exit_and_crash(tmp_path):
    d = _attention_student(tmp_path, "loop", LOOP_AND_EXIT, reference=True)
    g = grader.grade(d, "attention", check_timeout=4)
    r = by_name(g)
    assert lost(g) == {"gradients_reach_everything", "zero_module", "eq5_residual_form"}, [x["msg"] for x in r.values()]
    assert "time limit of 4 s exceeded" in r["gradients_reach_everything"]["msg"]
    assert "sys.exit(0)" in r["zero_module"]["msg"]
    assert "exited during this check (exit status 3)" in r["eq5_residual_form"]["msg"]
    assert r["rejects_sizes"]["points"] == 1                          # the checks after the loop still ran


# ------------------------------------------------------------------------------------------ a class at once

@needs_sandbox
def test_grade_a_class_in_one_command_with_csv_and_json(tmp_path):
    honest = _attention_student(tmp_path, "honest", reference=True)
    wrong = _attention_student(tmp_path, "wrong", reference=True)
    plant(wrong, "models.py", "InterTaskAttention.forward", "self.W_1(F.relu(self.W_0(a)))", "self.W_1(self.W_0(a))")
    out = tmp_path / "grades.csv"
    p = subprocess.run([sys.executable, "-m", "tools.course", "grade", honest, wrong, "--assignment", "attention",
                        "--csv", str(out), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1, p.stderr
    res = json.loads(p.stdout)
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[:5] == ["student", "assignment", "check", "points", "max"]
    assert len(rows) == 2 * len(ASSIGNMENTS["attention"].checks)
    tot = {s: sum(float(r["points"]) for r in rows if r["student"] == s) for s in (honest, wrong)}
    assert tot[honest] == ASSIGNMENTS["attention"].points and tot[wrong] < tot[honest], tot
    assert all(r["check"].startswith("eq. (3)") for r in rows if float(r["points"]) < float(r["max"])), rows
    s = res["summary"]["attention"]
    assert s["students"] == 2 and s["full_marks"] == 1 and s["checks"][0]["check"].startswith("eq. (3)")
    with pytest.raises(SystemExit, match="--assignment"):
        from tools.course.cli import main
        main(["grade", honest])


# ------------------------------------------------------------------------------------------ experiments (files only)

def fake_run(run, config, seed=0, rows=30, **cols):
    """A finished run folder: config.json, metrics.json and a log.csv whose train rows hold `cols` constantly."""
    os.makedirs(run)
    json.dump(dict(config, seed=seed, out=run), open(os.path.join(run, "config.json"), "w"))
    json.dump({"dice_mean": cols.pop("dice", 0.5), "accuracy": cols.pop("acc", 0.6)},
              open(os.path.join(run, "metrics.json"), "w"))
    every = config["iters"] // rows
    with open(os.path.join(run, "log.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, ["kind", "iter"] + sorted(cols))
        w.writeheader()
        for i in range(1, rows + 1):
            w.writerow({"kind": "train", "iter": i * every, **cols})
        w.writerow({"kind": "eval", "iter": config["iters"]})


def mid(ranges, key):
    lo, hi = ranges[key]
    return round((lo + hi) / 2, 4)


def write_answers(d, values):
    with open(os.path.join(d, "answers.txt"), "w") as f:
        f.write("".join(f"{k} = {v}\n" for k, v in values.items()))


NO_RERUN = grader.Settings(rerun=False)     # fake run folders: the re-run is tested on its own


def score(d, name):
    return report.total(grader.grade(str(d), name, settings=NO_RERUN))


def test_experiment_copies_and_their_visible_settings(tmp_path, monkeypatch):
    for name in ("fig1", "ablation"):
        a = ASSIGNMENTS[name]
        info = handout.assign([name], str(tmp_path / name))
        assert not info["cut"] and not info["cut_other_assignments"]   # an experiment trains: nothing is cut
        for rel in a.files:
            assert os.path.isfile(tmp_path / name / rel)
        md = open(tmp_path / name / "ASSIGNMENT.md").read()
        assert "| answer | expected range |" in md and "## Questions (answers.md)" in md
        # the visible tests as the student runs them: from the copy's tests/, with the helper written next to them
        monkeypatch.syspath_prepend(str(tmp_path / name / "tests"))
        monkeypatch.delitem(sys.modules, "assignment_runs", raising=False)
        spec = importlib.util.spec_from_file_location(f"visible_{a.slug}", tmp_path / name / a.test_file)
        vis = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(vis)
        runs = getattr(a.module, "RUNS", None) or {a.module.RUN: (a.module.RUN, a.module.CONFIG)}
        assert vis.RUNS == {run: cfg for run, cfg in runs.values()} and tuple(vis.KEYS) == a.module.KEYS


def test_fig1_grading(tmp_path):
    d = str(tmp_path / "fig1")
    handout.assign(["fig1"], d)
    mod = ASSIGNMENTS["fig1"].module
    got, top = score(d, "fig1")
    assert got == 0                                                   # nothing run, template answers
    R = mod.RANGES
    fake_run(os.path.join(d, mod.RUN), mod.CONFIG,
             pl_acc_pix_all=mid(R, "pix_acc_all"), pl_acc_pix_conf=mid(R, "pix_acc_conf"),
             kept_pix_conf=mid(R, "pix_kept_conf"), pl_acc_pix_kept=mid(R, "pix_acc_dual"),
             kept_pix=mid(R, "pix_kept_dual"), kept_img_conf=mid(R, "img_kept_conf"))
    from tools.course.experiments import first_binding_step
    right = {k: mid(R, k) for k in R}
    right["kappa_binds_from"] = first_binding_step(60)
    write_answers(d, right)
    assert score(d, "fig1") == (top, top)
    write_answers(d, dict(right, pix_acc_conf=f"{100 * right['pix_acc_conf']}%"))   # percent is fine
    assert score(d, "fig1") == (top, top)
    write_answers(d, dict(right, pix_acc_dual=right["pix_acc_dual"] + 0.01, kappa_binds_from=30))
    assert score(d, "fig1") == (top - 3, top)                         # disagrees with the log (1), wrong step (2)


def test_ablation_grading(tmp_path):
    d = str(tmp_path / "ablation")
    handout.assign(["ablation"], d)
    mod = ASSIGNMENTS["ablation"].module
    got, top = score(d, "ablation")
    assert got == 0
    R = mod.RANGES
    zeros = dict(seg_u=0.0, seg_c=0.0, cls_u=0.0, cls_c=0.0, itc=0.0)
    (run1, cfg1), (run2, cfg2) = mod.RUNS["row1"], mod.RUNS["row2"]
    fake_run(os.path.join(d, run1), cfg1, dice=mid(R, "row1_dice"), acc=mid(R, "row1_acc"), sec_per_step=1.0, **zeros)
    fake_run(os.path.join(d, run2), cfg2, dice=mid(R, "row2_dice"), acc=mid(R, "row2_acc"),
             sec_per_step=mid(R, "step_time_ratio"), **dict(zeros, seg_u=0.3, seg_c=5.0, cls_c=2.0))
    right = {k: mid(R, k) for k in ("row1_dice", "row1_acc", "row2_dice", "row2_acc", "step_time_ratio")}
    right.update(row1_zero_terms="seg_u seg_c cls_u cls_c itc", row2_zero_terms="cls_u, itc")
    write_answers(d, right)
    assert score(d, "ablation") == (top, top)
    write_answers(d, dict(right, row2_zero_terms="itc", row1_acc=right["row1_acc"] + 0.01))
    assert score(d, "ablation") == (top - 3, top)                     # wrong zero terms (1), disagrees with metrics (2)
    cfg = json.load(open(os.path.join(d, run2, "config.json")))
    json.dump(dict(cfg, unsup_weight=0.1), open(os.path.join(d, run2, "config.json"), "w"))  # not the paper's
    g = grader.grade(d, "ablation", settings=NO_RERUN)
    assert report.total(g)[0] < top - 3 and any("unsup_weight is 0.1" in r["msg"] for r in g["results"])


def test_grade_from_a_roster(tmp_path, capsys):
    from tools.course.cli import main
    d = str(tmp_path / "ann")
    handout.assign(["fig1"], d)
    roster = tmp_path / "roster.csv"
    roster.write_text(f"student,assignment\n{d},fig1\n{d},ablation\n")
    cwd = os.getcwd()
    assert main(["grade", "--roster", str(roster), "--json", "--csv", str(tmp_path / "g.csv"), "--no-rerun"]) == 1
    assert os.getcwd() == cwd
    out = json.loads(capsys.readouterr().out)
    assert [g["assignment"] for g in out["grades"]] == ["fig1", "ablation"]
    assert any("made for fig1, graded as ablation" in w for w in out["grades"][1]["warnings"])
    assert set(out["summary"]) == {"fig1", "ablation"}
    assert len(list(csv.DictReader(open(tmp_path / "g.csv")))) == sum(len(ASSIGNMENTS[n].checks) for n in ("fig1", "ablation"))


def test_the_task_commands_give_the_settings_the_grader_checks():
    """Each training command of the experiment assignments' TASK.md, resolved by train.py as the student's run
    is, has every setting check_config demands (the from-scratch default recipe once failed them all)."""
    import shlex
    import train
    from tools.course import experiments
    for name in ("fig1", "ablation"):
        with open(os.path.join(ROOT, "tools", "course", "assignments", name, "TASK.md")) as f:
            cmds = [line.split("#")[0].strip() for line in f if line.strip().startswith("python train.py")]
        assert cmds, name
        for cmd in cmds:
            argv = shlex.split(cmd)[2:]
            args = train.resolve(train.build_parser().parse_args(argv), train.given_on_command_line(argv),
                                 say=lambda _: None)
            want = dict(experiments.EXP_CONFIG, **experiments.PAPER_SWITCHES)
            got = {k: getattr(args, k) for k in want}
            assert got == want, (cmd, {k: (got[k], v) for k, v in want.items() if got[k] != v})


def test_a_virtual_environment_in_the_checkout_is_not_copied(tmp_path):
    """project_files: a venv made inside the checkout (untracked, not ignored) stays out of every student copy
    (a fresh-clone run with .venv/ inside copied 5.5 GB per pristine copy and filled the disk)."""
    from tools.course import handout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "train.py").write_text("x = 1\n")
    for venv in (".venv", "envs/py311"):
        (tmp_path / venv / "lib").mkdir(parents=True)
        (tmp_path / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
        (tmp_path / venv / "lib" / "site.py").write_text("y = 2\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "site.py").write_text("z = 3\n")
    assert handout.project_files(str(tmp_path)) == ["notes/site.py", "train.py"]
