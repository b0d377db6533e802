"""The student copy: the project's tracked files, with the assignments' functions cut and their tests removed.

By default a copy holds the reference body of no code assignment: the functions of the assignments handed out
become TODO stubs, and those of every other code assignment plain stubs, so no copy holds another assignment's
solution. `keep_others=True` (and any copy that includes an experiment, which needs a working training run)
keeps the other assignments' bodies."""
import json
import os
import shutil
import subprocess
import time

from .cutting import cut_source, strip_tests
from .grader import ASSIGNMENT_FILE, ROOT, git_commit
from .registry import ASSIGNMENTS

NOT_COPIED = ("runs/", ".git/", "__pycache__/", ".pytest_cache/", "tools/course/")
TEACHER_FILES = {"COURSE.md", "tests/test_course.py", "course.py"}


def project_files(root=ROOT):
    """Paths (relative, '/'-separated) of the project's files (tracked, and new ones git does not ignore: the
    reference imports them too), without the teacher's files and run outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=30).stdout
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: every file but caches, runs, hidden ones
        files = []
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("runs", "__pycache__")]
            files += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names
                      if not n.startswith(".") and not n.endswith(".pyc")]
    teacher = lambda f: f in TEACHER_FILES or f.startswith("tests/test_course")
    # a virtual environment inside the checkout (python -m venv .venv) is no project file: gigabytes per copy
    venvs = tuple(f[:-len("pyvenv.cfg")] for f in files if f.endswith("/pyvenv.cfg"))
    files = [f for f in files if not f.startswith(venvs)] if venvs else files
    return sorted(f for f in set(files) if not teacher(f) and not f.startswith(NOT_COPIED)
                  and "/__pycache__/" not in f and os.path.isfile(os.path.join(root, f)))


def plan_cuts(names, keep_others=False):
    """{file: [(qualname, eq, mine)]} and the names whose project tests go: the assignments' own cuts, and unless
    kept, every other code assignment's."""
    chosen = [ASSIGNMENTS[n] for n in names]
    keep_others = keep_others or any(a.kind == "experiment" for a in chosen)
    by_file, strip = {}, set()
    for a in ASSIGNMENTS.values():
        mine = a.name in names
        if not mine and (keep_others or a.kind != "code"):
            continue
        for f, q, eq in a.cuts:
            if all(q != c[0] for c in by_file.get(f, [])):
                by_file.setdefault(f, []).append((q, eq, mine))
        strip |= set(a.strip_names)
    return by_file, sorted(strip), keep_others


def experiment_md(a):
    """The measured ranges and the questions of an experiment (kept in its checks.py: RANGES, FRACTIONS, QUESTIONS)."""
    mod = a.module
    pct = lambda k, v: f"{100 * v:.1f} %" if k in mod.FRACTIONS else f"{v:.2f}"
    return (["The grader also checks that every number in answers.txt agrees with your own log.csv / metrics.json, "
             "and that it lies in the range measured with the project's committed code (3 seeds, widened by a "
             "margin). A number far outside means a wrong command or a wrong reading:", "",
             "| answer | expected range |", "|---|---|"]
            + [f"| `{k}` | {pct(k, lo)} – {pct(k, hi)} |" for k, (lo, hi) in mod.RANGES.items()]
            + ["", "## Questions (answers.md)", ""] + [f"{i}. {q}" for i, q in enumerate(mod.QUESTIONS, 1)] + [""])


def assignment_md(chosen, removed, others_cut):
    """ASSIGNMENT.md: each assignment's summary, task, how to check and what to hand in."""
    parts = []
    for a in chosen:
        parts += [f"# Assignment `{a.name}`: {a.what}", "", f"Paper: {a.section}. Expected time: {a.minutes}.", ""]
        if a.kind == "code":
            eqs = ", ".join(f"`{f[:-3]}.{q}` ({eq})" for f, q, eq in a.cuts)
            parts += [f"Cut from this copy: {eqs}. Each raises `NotImplementedError` until you write its body; the "
                      "signature and the docstring (read it: shapes, edge cases) are the project's.", ""]
        parts += [a.task, "", "## How to check", "", "```bash", f"python -m pytest {a.test_file}", "```", ""]
        if a.kind == "code":
            parts += ["The grader does not run your copy of these tests: it runs its own checks, which repeat these "
                      "hand-worked cases and add hidden ones, comparing your functions with the reference "
                      "implementation on random tiny tensors (several seeds, shapes and dtypes), on edge cases and "
                      "through gradients. Each check tests one equation; passing the visible tests does not mean full "
                      "marks, so test the edge cases the docstrings name.", ""]
        else:
            parts += experiment_md(a)
        parts += ["## What to hand in", "", a.hand_in, "",
                  "The grader lays what you hand in over a fresh copy of this assignment, so the files you did not "
                  "edit need not be handed in (a whole copy is fine too). Hand in regular files only: a symbolic "
                  "link that leaves the folder, a FIFO or a file over 32 MB makes the hand-in ungradable; "
                  "checkpoints (*.pt) are ignored.", ""]
    held = "; ".join(f"`{f}`: {', '.join(n)}" for f, n in removed.items()) or "none"
    parts += ["# About this copy", "",
              f"Tests of the project that would show a solution were removed ({held}).", ""]
    if others_cut:
        parts += ["The functions of the course's other code assignments are cut too (their bodies raise "
                  "`NotImplementedError`), so the tests and commands that run a whole training step fail in this "
                  "copy; your assignment's tests do not need them.", ""]
    parts += ["Keep the folder layout: the teacher grades the folder as it is.", ""]
    return "\n".join(parts)


def assign(names, out, keep_others=False, root=ROOT):
    """Write the student copy of the assignments `names` into `out` (new or empty). Returns its .assignment.json."""
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in ASSIGNMENTS]
    if unknown or not names:
        raise SystemExit(f"tools.course: unknown assignment {', '.join(unknown) or '(none)'}; "
                         f"`python -m tools.course list` shows: {', '.join(ASSIGNMENTS)}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise SystemExit(f"tools.course assign: {out} exists and is not empty; give a new folder with --out")
    chosen = [ASSIGNMENTS[n] for n in names]
    files = project_files(root)
    for rel in files:
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        shutil.copy2(os.path.join(root, rel), dst)
    by_file, strip, kept = plan_cuts(names, keep_others)
    for f, cuts in by_file.items():
        path = os.path.join(out, f)
        with open(path, encoding="utf-8") as fh:
            src = fh.read()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(cut_source(src, cuts, module=f[:-3]))
    removed = {}
    if strip:
        for rel in files:
            if not (rel.startswith("tests/") and os.path.basename(rel).startswith("test_") and rel.endswith(".py")):
                continue
            path = os.path.join(out, rel)
            with open(path, encoding="utf-8") as fh:
                src = fh.read()
            new, gone = strip_tests(src, strip)
            if gone:
                removed[rel] = gone
                note = (f"# tools.course ({', '.join(names)}): removed the tests that would show a solution: "
                        f"{', '.join(gone)}.\n")
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(note + new)
    extra = {"ASSIGNMENT.md": assignment_md(chosen, removed, not kept)}
    for a in chosen:
        extra[a.test_file] = a.read(os.path.basename(a.visible_path))
        for rel, src in a.files.items():
            extra[rel] = a.read(src)
    for rel, text in extra.items():
        os.makedirs(os.path.dirname(os.path.join(out, rel)) or ".", exist_ok=True)
        with open(os.path.join(out, rel), "w", encoding="utf-8") as fh:
            fh.write(text)
    info = {"assignments": names, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "project_commit": git_commit(root),
            "cut": [f"{f[:-3]}.{q}" for f, cuts in by_file.items() for q, _, mine in cuts if mine],
            "cut_other_assignments": [f"{f[:-3]}.{q}" for f, cuts in by_file.items() for q, _, mine in cuts
                                      if not mine],
            "removed_tests": removed, "visible_tests": [a.test_file for a in chosen],
            "note": "for the student's information only: the teacher names what is graded"}
    with open(os.path.join(out, ASSIGNMENT_FILE), "w") as fh:
        json.dump(info, fh, indent=1)
    return info
