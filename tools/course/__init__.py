"""Course kit: assignments cut from this project's own code, graded against it (COURSE.md is the teacher's guide).

    python -m tools.course list [--checks]                    # the assignments (and every check with its points)
    python -m tools.course assign NAME [NAME...] --out DIR    # a student copy in DIR, with DIR/ASSIGNMENT.md
    python -m tools.course grade DIR... --assignment NAME     # a class at once: text, --json, --csv FILE
    python -m tools.course docs [--write]                     # COURSE.md's tables, generated from the registry

Modules: `registry` (the assignments: one folder each under assignments/), `cutting` (function bodies and tests
cut on the syntax tree), `handout` (the student copy), `observe` (what a check records; runs in the student's
process), `child` (the student's process), `grader` (processes, time limits, verdicts), `report` (text, JSON,
CSV, class summary), `docs`, `cli`.
"""
