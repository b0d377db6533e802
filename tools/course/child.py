"""The student's grading process. It runs from a temporary folder that holds only this runner (tools/course/
__init__.py, registry.py, observe.py, child.py) and the assignment's checks.py: no reference code, no path into
the teacher's checkout on sys.path, sys.argv or in the environment. Its working directory is the student's copy.

    python -E -B RUNNER/run_child.py FD START

It imports observe (binding the torch functions it uses) and the checks before the student's modules, then runs
the checks from number START on, writing one JSON line per event to file descriptor FD: what the student's code
computed, never a verdict (the grader compares with the reference in its own process)."""
import importlib
import json
import os
import sys
from types import SimpleNamespace

MODULES = ("losses", "hermes", "models")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fd, start = int(argv[0]), int(argv[1])
    out = os.fdopen(fd, "w", encoding="utf-8")
    dumps, write, flush = json.dumps, out.write, out.flush   # bound before the student's code runs

    def emit(msg):
        write(dumps(msg) + "\n")
        flush()

    import torch
    torch.set_num_threads(1)                                  # tiny tensors: threads only add overhead
    from tools.course import observe
    from tools.course.registry import load_checks
    checks = load_checks(os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "checks.py"), "course_checks")
    run_check = observe.run_check
    emit({"event": "importing"})
    sys.path.insert(1, os.getcwd())                           # the student's copy (the runner stays first)
    try:
        M = SimpleNamespace(**{n: importlib.import_module(n) for n in MODULES})
    except BaseException as e:  # noqa: B036 - a student module that exits or raises at import
        emit({"import_error": observe.why(e)})
        return 0
    emit({"event": "imported"})
    for i in range(start, len(checks)):
        run_check(checks[i], i, M, emit)
    emit({"event": "done"})
    return 0
