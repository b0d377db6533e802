"""course.py: cutting by syntax tree, the student copy, and grading (stub 0, reference full marks, planted
mistakes lose marks; experiments against synthetic run folders). Grading runs in-process here (the CLI runs
the same checks in a subprocess; one CLI call is tested)."""
import ast
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

import course

ROOT = course.ROOT
CODE = [n for n, a in course.ASSIGNMENTS.items() if a.kind == "code"]
MODULE_FILES = ("hermes.py", "losses.py", "models.py")


def score(name, d):
    res = list(course.run_checks(name, d))
    return sum(r["points"] for r in res), sum(r["max"] for r in res), res


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """One student copy per assignment (module-scoped: made once)."""
    base = tmp_path_factory.mktemp("course")
    return {n: (str(base / n), course.assign(n, str(base / n))) for n in course.ASSIGNMENTS}


def module_copy(tmp_path, name):
    """The project's three modules (uncut) in a fresh folder: enough for in-process grading."""
    d = tmp_path / name
    d.mkdir()
    for f in MODULE_FILES:
        shutil.copy(os.path.join(ROOT, f), d / f)
    return d


# ------------------------------------------------------------------------------------------ cutting

TOY = '''"""toy"""
import math


def plain(x):
    """Doc of plain (eq. 1)."""
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
    out = course.cut_source(TOY, [("plain", "eq. (1)"), ("Box.method", "eq. (2)")], module="toy")
    tree, orig = ast.parse(out), ast.parse(TOY)
    for q in ("plain", "Box.method"):
        new, old = course.find_function(tree, q), course.find_function(orig, q)
        assert ast.dump(new.args) == ast.dump(old.args)
        assert ast.get_docstring(new) == ast.get_docstring(old)
        assert [type(s).__name__ for s in new.body[1:]] == ["Raise"]
    assert "# a comment before the body" in out                       # lines before the first statement stay
    assert "y = x + 1" not in out and "return a * b" not in out
    assert ast.dump(course.find_function(tree, "Box.helper")) == ast.dump(course.find_function(orig, "Box.helper"))
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match=r"toy.plain: eq. \(1\)"):
        ns["plain"](1)
    with pytest.raises(NotImplementedError, match=r"toy.Box.method: eq. \(2\)"):
        ns["Box"]().method(1)
    with pytest.raises(KeyError, match="nothing"):
        course.cut_source(TOY, [("nothing", "eq. (3)")])
    with pytest.raises(KeyError, match="class"):
        course.cut_source(TOY, [("Box", "eq. (3)")])


def test_strip_tests_removes_tests_and_their_private_helpers():
    src = '''import x


def naive(a):
    return a


def shared(a):
    return a


@pytest.mark.parametrize("s", [0, 1])
def test_uses_target(s):
    assert x.target(naive(s)) == shared(s)


def test_other(fixture_a):
    assert shared(1)


@pytest.fixture
def fixture_a():
    return 1
'''
    out, gone = course.strip_tests(src, ["target"])
    assert sorted(gone) == ["naive", "test_uses_target"]
    assert "parametrize" not in out and "def shared" in out and "def fixture_a" in out and "def test_other" in out
    ast.parse(out)
    assert course.strip_tests(src, ["unknown"]) == (src, [])


# ------------------------------------------------------------------------------------------ the student copy

def test_list_names_every_assignment(capsys):
    assert course.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(course.ASSIGNMENTS) >= 8
    for line, a in zip(out, course.ASSIGNMENTS.values()):
        assert line.startswith(a.name) and a.minutes in line and a.section in line


@pytest.mark.parametrize("name", CODE)
def test_assign_writes_a_student_copy(copies, name):
    d, info = copies[name]
    a = course.ASSIGNMENTS[name]
    for f in course.project_files():
        assert os.path.isfile(os.path.join(d, f)), f
    for f in course.TEACHER_FILES:
        assert not os.path.exists(os.path.join(d, f)), f"{f} (hidden checks) was copied"
    assert not os.path.exists(os.path.join(d, "runs"))
    assert json.load(open(os.path.join(d, course.ASSIGNMENT_FILE)))["assignment"] == name
    assert "## What to hand in" in open(os.path.join(d, "ASSIGNMENT.md")).read()
    assert open(os.path.join(d, a.test_file)).read() == a.visible
    for f, q, eq in a.cuts:
        new, old = (ast.parse(open(p).read()) for p in (os.path.join(d, f), os.path.join(ROOT, f)))
        fn_new, fn_old = course.find_function(new, q), course.find_function(old, q)
        assert ast.get_docstring(fn_new) == ast.get_docstring(fn_old) and ast.dump(fn_new.args) == ast.dump(fn_old.args)
        assert ast.unparse(fn_new.body[-1]).startswith("raise NotImplementedError") and eq in ast.unparse(fn_new)
        cut_here = {c.split(".")[0] for g, c, _ in a.cuts if g == f}
        others = lambda t: [ast.dump(n) for n in t.body if getattr(n, "name", None) not in cut_here]
        assert others(new) == others(old)                             # nothing else in the file changed
    for f, gone in info["removed_tests"].items():                     # stripped test files still parse
        src = open(os.path.join(d, f)).read()
        ast.parse(src)
        assert not any(f"def {g}(" in src for g in gone)


def test_pixel_contrast_copy_hides_the_naive_twins(copies):
    d, info = copies["pixel-contrast"]
    src = open(os.path.join(d, "tests/test_losses.py")).read()
    assert "def naive_pixel_loss" not in src and "def test_pixel_contrastive_loss_vs_loop" not in src
    assert "def naive_image_loss" in src                              # other assignments' tests stay
    assert "def naive_pools" not in open(os.path.join(d, "tests/test_hermes.py")).read()


def test_assign_refuses_a_non_empty_folder_and_unknown_names(tmp_path):
    (tmp_path / "x").write_text("work")
    with pytest.raises(SystemExit, match="not empty"):
        course.assign("dice", str(tmp_path))
    with pytest.raises(SystemExit, match="unknown assignment"):
        course.assign("nope", str(tmp_path / "new"))


# ------------------------------------------------------------------------------------------ grading code

@pytest.mark.parametrize("name", CODE)
def test_untouched_stub_scores_zero(copies, name):
    got, top, res = score(name, copies[name][0])
    assert got == 0 and top >= 10
    assert all("not implemented" in r["msg"] for r in res)
    assert any(r["visible"] for r in res) and any(not r["visible"] for r in res)


@pytest.mark.parametrize("name", CODE)
def test_reference_scores_full_marks(tmp_path, name):
    got, top, res = score(name, module_copy(tmp_path, name))
    assert got == top, [r for r in res if r["points"] < r["max"]]


# (assignment, file, function, text in its body, planted replacement): typical mistakes
PLANTED = [
    ("thresholds", "hermes.py", "dual_threshold_mask",
     "(uncertainty(probs) <= kappa) & (probs", "(uncertainty(probs) <= kappa) | (probs"),             # OR, not AND
    ("thresholds", "hermes.py", "uncertainty", "torch.log(probs + eps)", "torch.log2(probs + eps)"),
    ("thresholds", "hermes.py", "uncertainty_threshold",
     "eta_min + 0.5 * (eta_max - eta_min)", "eta_max - 0.5 * (eta_max - eta_min)"),                # cos reversed
    ("thresholds", "hermes.py", "uncertainty", "probs + eps", "probs.clamp_min(eps)"),
    ("dice", "losses.py", "seg_unsupervised_loss", ".sum() / B", ".sum() / kept.sum().clamp_min(1)"),
    ("dice", "losses.py", "seg_unsupervised_loss", "logits_w.detach().max(1).indices", "logits_w.softmax(1)[:, 1]"),
    ("dice", "losses.py", "_dice_loss", "p, g = p * w, g * w", "p = p * w"),
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss", "(anchors) / temperature", "(anchors) / 0.1"),
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss", "F.softplus(nlse - s,",
     "F.softplus(s - nlse,"),                                                                      # ratio inverted
    ("pixel-contrast", "losses.py", "pixel_contrastive_loss",
     "(L * has_pos).sum() / has_pos.sum().clamp_min(1)", "L.mean()"),
    ("pixel-contrast", "hermes.py", "sample_anchor_slots", "n_h = torch.minimum(n - n_e, a_h)", "n_h = n_h"),  # no filling
    ("image-contrast", "losses.py", "image_contrastive_loss", ".logsumexp(1, keepdim=True)",
     ".logsumexp(0, keepdim=True)"),                                                               # wrong dim
    ("image-contrast", "losses.py", "image_contrastive_loss",
     "torch.where(other, torch.ones_like(pair_w), pair_w) * pos", "pair_w * pos"),
    ("attention", "models.py", "InterTaskAttention.forward",
     "[x_m.mean(dim=1, keepdim=True), x_m.amax(dim=1, keepdim=True)]",
     "[x_m.amax(dim=1, keepdim=True), x_m.mean(dim=1, keepdim=True)]"),                              # order swapped
    ("attention", "models.py", "InterTaskAttention.forward", "pooled = torch.cat([x_m.mean(",
     "pooled = torch.cat([x_cls.mean("),
    ("saliency", "models.py", "saliency", "cls_net.eval()", "pass"),
    ("saliency", "models.py", "saliency", "D = g.abs().amax(dim=1", "D = g.amax(dim=1"),
    ("saliency", "models.py", "saliency", "score = cls_net(x).amax(dim=1).sum()", "score = cls_net(x).max()"),
]


def plant(d, file, qualname, old, new):
    """Replace `old` (exactly once) inside the body of `qualname` in d/file."""
    path = os.path.join(d, file)
    src = open(path).read()
    fn = course.find_function(ast.parse(src), qualname)
    lines = src.splitlines(keepends=True)
    start, end, _ = course.body_span(fn)
    body = "".join(lines[start - 1:end])
    assert body.count(old) == 1, f"{old!r} occurs {body.count(old)} times in {qualname}: update PLANTED"
    lines[start - 1:end] = [body.replace(old, new)]
    open(path, "w").write("".join(lines))


@pytest.mark.parametrize("name,file,qualname,old,new", PLANTED, ids=[f"{p[0]}:{p[4][:28]}" for p in PLANTED])
def test_planted_mistake_loses_marks(tmp_path, name, file, qualname, old, new):
    d = module_copy(tmp_path, name)
    plant(d, file, qualname, old, new)
    got, top, res = score(name, d)
    assert got < top
    assert any(r["points"] < r["max"] for r in res if not r["visible"])  # a hidden case sees it


def test_broken_module_scores_zero_with_a_reason(tmp_path):
    d = module_copy(tmp_path, "dice")
    with open(d / "losses.py", "a") as f:
        f.write("\ndef broken(:\n")
    got, _, res = score("dice", d)
    assert got == 0 and "could not import" in res[0]["msg"]


def test_grade_cli_in_a_subprocess(copies, tmp_path):
    d = copies["attention"][0]
    shutil.copy(os.path.join(ROOT, "models.py"), os.path.join(d, "models.py"))   # the reference: full marks
    p = subprocess.run([sys.executable, os.path.join(ROOT, "course.py"), "grade", d], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0 and "(full marks)" in p.stdout and "hidden" in p.stdout, p.stdout + p.stderr
    # an unfinished experiment (no torch in its grading process): exit status 1, a score per check
    p = subprocess.run([sys.executable, os.path.join(ROOT, "course.py"), "grade", copies["fig1"][0]],
                       capture_output=True, text=True, timeout=600)
    top = sum(c.points for c in course.all_checks(course.ASSIGNMENTS["fig1"]))
    assert p.returncode == 1 and f"Total: 0/{top}" in p.stdout, p.stdout + p.stderr
    # a grading process that does not finish in time: every check it did not report scores 0, with the reason
    name, res = course.grade_subprocess(copies["fig1"][0], timeout=0.001)
    assert name == "fig1" and len(res) == len(course.all_checks(course.ASSIGNMENTS["fig1"]))
    assert all(r["points"] == 0 and "stopped after 0.001 s" in r["msg"] for r in res)
    with pytest.raises(SystemExit, match="assign NAME"):
        course.main(["grade", str(tmp_path)])


# ------------------------------------------------------------------------------------------ experiments

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


def test_fig1_grading(copies):
    d = copies["fig1"][0]
    assert score("fig1", d)[0] == 0                                   # nothing run, template answers
    R = course.FIG1_RANGES
    fake_run(os.path.join(d, course.FIG1_RUN), course.FIG1_CONFIG,
             pl_acc_pix_all=mid(R, "pix_acc_all"), pl_acc_pix_conf=mid(R, "pix_acc_conf"),
             kept_pix_conf=mid(R, "pix_kept_conf"), pl_acc_pix_kept=mid(R, "pix_acc_dual"),
             kept_pix=mid(R, "pix_kept_dual"), kept_img_conf=mid(R, "img_kept_conf"))
    right = {k: mid(R, k) for k in R}
    right["kappa_binds_from"] = course.first_binding_step(60)
    write_answers(d, right)
    got, top, res = score("fig1", d)
    assert got == top, [r for r in res if r["points"] < r["max"]]
    write_answers(d, dict(right, pix_acc_conf=f"{100 * right['pix_acc_conf']}%"))   # percent is fine
    assert score("fig1", d)[0] == top
    write_answers(d, dict(right, pix_acc_dual=right["pix_acc_dual"] + 0.01, kappa_binds_from=30))
    assert score("fig1", d)[0] == top - 3                             # disagrees with the log (1), wrong step (2)


def test_ablation_grading(copies):
    d = copies["ablation"][0]
    assert score("ablation", d)[0] == 0
    R = course.ABL_RANGES
    zeros = dict(seg_u=0.0, seg_c=0.0, cls_u=0.0, cls_c=0.0, itc=0.0)
    (run1, cfg1), (run2, cfg2) = course.ABL_RUNS["row1"], course.ABL_RUNS["row2"]
    fake_run(os.path.join(d, run1), cfg1, dice=mid(R, "row1_dice"), acc=mid(R, "row1_acc"), sec_per_step=1.0, **zeros)
    fake_run(os.path.join(d, run2), cfg2, dice=mid(R, "row2_dice"), acc=mid(R, "row2_acc"),
             sec_per_step=mid(R, "step_time_ratio"), **dict(zeros, seg_u=0.3, seg_c=5.0, cls_c=2.0))
    right = {k: mid(R, k) for k in ("row1_dice", "row1_acc", "row2_dice", "row2_acc", "step_time_ratio")}
    right.update(row1_zero_terms="seg_u seg_c cls_u cls_c itc", row2_zero_terms="cls_u, itc")
    write_answers(d, right)
    got, top, res = score("ablation", d)
    assert got == top, [r for r in res if r["points"] < r["max"]]
    write_answers(d, dict(right, row2_zero_terms="itc", row1_acc=right["row1_acc"] + 0.01))
    assert score("ablation", d)[0] == top - 3                         # wrong zero terms (1), disagrees with metrics (2)
    cfg = json.load(open(os.path.join(d, run2, "config.json")))
    json.dump(dict(cfg, unsup_weight=0.1), open(os.path.join(d, run2, "config.json"), "w"))  # not the paper's
    got, _, res = score("ablation", d)
    assert got < top - 3 and any("unsup_weight is 0.1" in r["msg"] for r in res)
    json.dump(dict(cfg, iters=30), open(os.path.join(d, run2, "config.json"), "w"))          # not the assignment's
    got, _, res = score("ablation", d)
    assert got < top - 3 and any("iters is 30" in r["msg"] for r in res)
