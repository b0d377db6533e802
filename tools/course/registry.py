"""The assignments: one folder each under tools/course/assignments/, found by listing that folder.

A folder holds
    meta.toml                  name, kind, one-line summary, paper section, expected time, what is cut, hand-in
    TASK.md                    the task and hints (copied into the student's ASSIGNMENT.md)
    test_assignment_<name>.py  the visible tests: a real pytest file, copied to the student's tests/
    checks.py                  the graded checks, each a function decorated with @check(points) in that module
and, for an experiment, the answer templates and the shared helper of its visible tests (tools/course/
assignment_runs.py) it names in meta.toml [files]. Adding an assignment is adding a folder.

This module is light (no torch): the student's grading process imports it from a temporary copy.
"""
import importlib.util
import os
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "assignments")


@dataclass
class Check:
    name: str       # the function's name in checks.py (unique in the module)
    title: str      # the first line of its docstring (unique in the module): what the teacher and student read
    points: int
    fn: object
    needs: tuple = ()   # checks (names) of which one must score at least half its points for this one to count


def check(points=1, needs=()):
    """Decorator: register fn(ctx, M) as a graded check of the module that defines it, worth `points`.

    The title is the first line of the docstring. The module's list is its global CHECKS, in definition order;
    a repeated function name or title is an error, so a check cannot be dropped or shadowed silently.
    `needs`: names of other checks of the module, of which one must score at least half its points for this one
    to count. An edge case that a constant answer gets right (a zero loss, a restored mode) pays only when the
    code also does the math."""
    def deco(fn):
        doc = (fn.__doc__ or "").strip()
        if not doc:
            raise ValueError(f"{fn.__module__}.{fn.__name__}: a check needs a docstring (its title)")
        title = doc.splitlines()[0].strip()
        checks = fn.__globals__.setdefault("CHECKS", [])
        for c in checks:
            if c.name == fn.__name__ or c.title == title:
                raise ValueError(f"{fn.__module__}: two checks named {fn.__name__!r} or titled {title!r}")
        if not (isinstance(points, int) and points > 0):
            raise ValueError(f"{fn.__module__}.{fn.__name__}: points must be a positive int, got {points!r}")
        checks.append(Check(fn.__name__, title, points, fn, tuple(needs)))
        return fn
    return deco


@dataclass
class Assignment:
    name: str
    folder: str              # absolute path of its folder
    kind: str                # "code" | "experiment"
    what: str
    section: str
    minutes: str
    order: int
    hand_in: str
    cuts: tuple = ()         # ((file, qualname, "eq. (N)"), ...)
    wrappers: tuple = ()     # functions that only call a cut one: their project tests are removed too
    files: dict = field(default_factory=dict)  # {path in the copy: file, relative to the folder} (answer
                                               # templates, a helper the visible tests import)
    _checks: list = None

    @property
    def slug(self):
        return self.name.replace("-", "_")

    @property
    def test_file(self):
        """Where the visible tests go in the student's copy."""
        return f"tests/test_assignment_{self.slug}.py"

    @property
    def visible_path(self):
        return os.path.join(self.folder, f"test_assignment_{self.slug}.py")

    @property
    def checks_path(self):
        return os.path.join(self.folder, "checks.py")

    def read(self, rel):
        with open(os.path.join(self.folder, rel), encoding="utf-8") as f:
            return f.read()

    @property
    def task(self):
        return self.read("TASK.md").strip()

    @property
    def strip_names(self):
        """Names whose project tests are removed from a copy: the cut functions, the class of a cut method."""
        return sorted({q.split(".")[0] for _, q, _ in self.cuts} | set(self.wrappers))

    @property
    def checks(self):
        if self._checks is None:
            self._checks = load_checks(self.checks_path, f"course_checks_{self.slug}")
        return self._checks

    @property
    def module(self):
        """The checks.py module (experiments keep their measured ranges and questions there)."""
        self.checks  # noqa: B018 - loads it
        return sys.modules[f"course_checks_{self.slug}"]

    @property
    def points(self):
        return sum(c.points for c in self.checks)


def load_checks(path, module_name):
    """Import a checks.py by its path (once) and return its CHECKS."""
    checks = list(getattr(load_module(path, module_name), "CHECKS", []))
    if not checks:
        raise ValueError(f"{path}: no @check functions")
    names = {c.name for c in checks}
    for c in checks:
        if set(c.needs) - names or c.name in c.needs:
            raise ValueError(f"{path}: {c.name} needs {sorted(set(c.needs) - names) or c.name}: not another check")
    return checks


def load_module(path, module_name):
    mod = sys.modules.get(module_name)
    if mod is None or getattr(mod, "__file__", None) != path:
        spec = importlib.util.spec_from_file_location(module_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = mod
        spec.loader.exec_module(mod)
    return mod


def load(folder=FOLDER):
    """{name: Assignment} for every folder with a meta.toml, in their `order`."""
    import tomllib
    out = []
    for d in sorted(os.listdir(folder)):
        meta_path = os.path.join(folder, d, "meta.toml")
        if not os.path.isfile(meta_path):
            continue
        with open(meta_path, "rb") as f:
            m = tomllib.load(f)
        a = Assignment(name=m["name"], folder=os.path.join(folder, d), kind=m["kind"], what=m["what"],
                       section=m["section"], minutes=m["minutes"], order=m["order"], hand_in=m["hand_in"],
                       cuts=tuple(tuple(c) for c in m.get("cuts", [])), wrappers=tuple(m.get("wrappers", [])),
                       files=dict(m.get("files", {})))
        if a.slug != d:
            raise ValueError(f"{meta_path}: name {a.name!r} does not match its folder {d!r} ('-' is '_' there)")
        if a.kind not in ("code", "experiment") or (a.kind == "code") != bool(a.cuts):
            raise ValueError(f"{meta_path}: kind {a.kind!r}: a code assignment cuts functions, an experiment none")
        out.append(a)
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: repeated assignment names {names}")
    return {a.name: a for a in sorted(out, key=lambda a: (a.order, a.name))}


ASSIGNMENTS = load() if os.path.isdir(FOLDER) else {}  # the student's process has no folder
