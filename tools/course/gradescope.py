"""Gradescope: an autograder archive in Gradescope's documented layout, and what runs inside it.

    python -m tools.course gradescope NAME --out autograder.zip      # build (teacher)
    python -m tools.course.gradescope run NAME [--root /autograder]   # what run_autograder calls

The archive holds setup.sh (installs Python, bubblewrap and requirements.txt), run_autograder, and the project
with the kit (Gradescope unpacks it to /autograder/source). run_autograder grades /autograder/submission (the
student's files: laid over a pristine copy, handin.py) in the sandbox when bwrap works in the container, and
writes /autograder/results/results.json: {"score", "output", "tests": [{"name", "score", "max_score",
"output"}]}. AUTOGRADER_ROOT replaces /autograder (to run it locally against a fake tree)."""
import argparse
import json
import os
import stat
import sys
import zipfile

from . import grader, kit, report, sandbox
from .registry import ASSIGNMENTS

SETUP = """#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image.
set -euo pipefail
apt-get update
apt-get install -y python3 python3-pip python3-venv bubblewrap git
python3 -m venv /opt/course-venv
/opt/course-venv/bin/pip install --upgrade pip
/opt/course-venv/bin/pip install -r /autograder/source/requirements.txt
"""

RUN = """#!/usr/bin/env bash
# Gradescope runs this for every submission; it writes $ROOT/results/results.json.
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PY=python3
if [ -x /opt/course-venv/bin/python ]; then PY=/opt/course-venv/bin/python; fi
if [ -n "${{COURSE_PYTHON:-}}" ]; then PY="$COURSE_PYTHON"; fi
cd "$ROOT/source" && OMP_NUM_THREADS=1 exec "$PY" -m tools.course.gradescope run {name} --root "$ROOT"
"""


def build(name, out):
    """Write the autograder archive of assignment `name` to `out`."""
    from .handout import project_files
    if name not in ASSIGNMENTS:
        raise SystemExit(f"tools.course gradescope: unknown assignment {name}; known: {', '.join(ASSIGNMENTS)}")
    files = project_files()
    kit_files = [os.path.relpath(p, grader.ROOT) for p in kit.kit_files()]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, text in (("setup.sh", SETUP), ("run_autograder", RUN.format(name=name))):
            info = zipfile.ZipInfo(arc)
            info.external_attr = (stat.S_IFREG | 0o755) << 16
            z.writestr(info, text)
        for rel in sorted(set(files) | set(kit_files)):
            z.write(os.path.join(grader.ROOT, rel), rel)
    return out


def results_json(g):
    got, top = report.total(g)
    tests = [{"name": r["title"], "score": r["points"], "max_score": r["max"], "output": r["msg"]}
             for r in g["results"]]
    return {"score": got, "output": "\n".join(g["warnings"]) or f"{got}/{top}", "tests": tests,
            "visibility": "visible", "stdout_visibility": "hidden"}


def run(name, root):
    """Grade root/submission on `name`; write root/results/results.json (also when grading fails)."""
    results = os.path.join(root, "results", "results.json")
    os.makedirs(os.path.dirname(results), exist_ok=True)
    try:
        from .cli import prepare_kit
        why = sandbox.check()
        settings = grader.Settings(sandboxed=why is None)
        prepare_kit([name])
        before = kit.snapshot()
        os.chdir("/")
        g = grader.grade(os.path.join(root, "submission"), name, settings=settings)
        kit.verify(before)
        if why:
            g["warnings"].append(f"graded without a sandbox: {why}")
        out = results_json(g)
    except Exception as e:          # Gradescope shows this output; the score is 0
        out = {"score": 0, "output": f"the autograder failed: {type(e).__name__}: {e}"[:2000], "tests": []}
    tmp = results + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    os.replace(tmp, results)
    print(out["output"])
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.course.gradescope")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("run", help="grade ROOT/submission, write ROOT/results/results.json")
    pr.add_argument("name", choices=list(ASSIGNMENTS))
    pr.add_argument("--root", default="/autograder")
    args = p.parse_args(argv)
    return run(args.name, os.path.abspath(args.root))


if __name__ == "__main__":
    sys.exit(main())
