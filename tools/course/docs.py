"""COURSE.md's tables, generated from the registry: `python -m tools.course docs --write` rewrites the text
between the BEGIN/END markers; tests/test_course.py fails when COURSE.md differs from what this generates."""
import os
import re

from .grader import ROOT
from .registry import ASSIGNMENTS

COURSE_MD = os.path.join(ROOT, "COURSE.md")
BLOCKS = ("assignments", "checks", "example")


def assignments_table():
    lines = ["| name | the student | paper | expected time | points |", "|---|---|---|---|---|"]
    for a in ASSIGNMENTS.values():
        lines.append(f"| `{a.name}` | {a.what.replace('|', chr(92) + '|')} | {a.section} | {a.minutes} | {a.points} |")
    return "\n".join(lines)


def checks_table():
    lines = []
    for a in ASSIGNMENTS.values():
        lines += [f"`{a.name}` ({a.points} points, `{os.path.relpath(a.checks_path, ROOT)}`):", "",
                  "| points | check |", "|---|---|"]
        lines += [f"| {c.points} | {c.title.replace('|', chr(92) + '|')} |" for c in a.checks] + [""]
    return "\n".join(lines).rstrip()


def worked_example():
    """The grade of a student who coded eq. (3)'s formula without the ReLU of the sentence after it (a hand-in of
    only models.py), graded as `grade` prints it (in-process: the same verdicts as the sandbox, on trusted code)."""
    import ast
    import shutil
    import tempfile
    from . import cutting, grader, report
    with tempfile.TemporaryDirectory(prefix="course-example-") as tmp:
        d = os.path.join(tmp, "hand-in", "wrong")
        os.makedirs(d)
        shutil.copy(os.path.join(ROOT, "models.py"), d)
        path = os.path.join(d, "models.py")
        with open(path, encoding="utf-8") as f:
            src = f.read()
        start, end, _ = cutting.body_span(cutting.find_function(ast.parse(src), "InterTaskAttention.forward"))
        lines = src.splitlines(keepends=True)
        body = "".join(lines[start - 1:end])
        old = "self.W_1(F.relu(self.W_0(a)))"
        if body.count(old) != 1:
            raise ValueError(f"COURSE.md's worked example: {old!r} is no longer in InterTaskAttention.forward")
        lines[start - 1:end] = [body.replace(old, "self.W_1(self.W_0(a))")]
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(lines))
        g = dict(grader.grade(d, "attention", in_process=True), student="hand-in/wrong")
    text = report.text(g, ASSIGNMENTS["attention"].what)
    return "```\n" + "\n".join(ln[:160] for ln in text.splitlines()) + "\n```"


def blocks():
    return {"assignments": assignments_table(), "checks": checks_table(), "example": worked_example()}


def render(text):
    """`text` with every generated block replaced by its current content."""
    for name, body in blocks().items():
        pat = re.compile(rf"(<!-- BEGIN generated: {name} [^\n]*-->\n)(?:.*?\n)?(<!-- END generated: {name} -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"COURSE.md has no block '{name}' (<!-- BEGIN generated: {name} ... -->)")
        text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def list_lines(with_checks=False):
    rows = [(a.name, a.minutes, a.section, a.what) for a in ASSIGNMENTS.values()]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    out = [f"{n:<{w[0]}}  {m:<{w[1]}}  {s:<{w[2]}}  {what}" for n, m, s, what in rows]
    if with_checks:
        for a in ASSIGNMENTS.values():
            out += ["", f"{a.name} ({a.points} points)"] + [f"  {c.points}  {c.title}" for c in a.checks]
    return out
