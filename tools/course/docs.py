"""COURSE.md's tables, generated from the registry: `python -m tools.course docs --write` rewrites the text
between the BEGIN/END markers; tests/test_course.py fails when COURSE.md differs from what this generates."""
import os
import re

from .grader import ROOT
from .registry import ASSIGNMENTS

COURSE_MD = os.path.join(ROOT, "COURSE.md")
BLOCKS = ("assignments", "checks")


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


def blocks():
    return {"assignments": assignments_table(), "checks": checks_table()}


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
