"""The command line: python -m tools.course list | assign | grade | docs (see tools/course/__init__.py)."""
import argparse
import csv
import glob
import json
import os
import sys

from . import docs, grader, handin, kit, report, sandbox
from .registry import ASSIGNMENTS


def _dirs(patterns):
    out = []
    for p in patterns:
        hits = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") and not os.path.exists(p) else [p]
        out += [h for h in hits if os.path.isdir(h)] if len(hits) > 1 else hits
    return out


def _roster(path):
    """A CSV with the columns student (a folder) and assignment; a student may have several rows."""
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        if not r.fieldnames or not {"student", "assignment"} <= set(r.fieldnames):
            raise SystemExit(f"tools.course grade: {path} needs the columns student,assignment")
        return [(row["student"].strip(), row["assignment"].strip()) for row in r if row["student"].strip()]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.course",
                                description=sys.modules["tools.course"].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("list", help="the assignments, one line each")
    pl.add_argument("--checks", action="store_true", help="also every check with its points (teachers)")
    pa = sub.add_parser("assign", help="write a student copy with the assignments cut out")
    pa.add_argument("names", nargs="+", help="assignments of `list`, all into one copy")
    pa.add_argument("--out", required=True, help="new folder for the student copy")
    pa.add_argument("--keep-others", action="store_true",
                    help="keep the reference bodies of the other code assignments (a runnable training step, but "
                         "their solutions are then in the copy)")
    pg = sub.add_parser("grade", help="grade student folders; the teacher names the assignment")
    pg.add_argument("dirs", nargs="*", help="student folders (globs are expanded)")
    pg.add_argument("--assignment", nargs="+", default=[], metavar="NAME",
                    help="what every folder is graded on (one or more assignments)")
    pg.add_argument("--roster", help="CSV with columns student,assignment instead of DIRS and --assignment")
    pg.add_argument("--json", action="store_true", help="print JSON (grades and class summary) instead of text")
    pg.add_argument("--csv", metavar="FILE", help="write one row per student and check: " + ", ".join(report.CSV_COLUMNS))
    pg.add_argument("--check-timeout", type=float, default=grader.CHECK_TIMEOUT_S, help="seconds per check")
    pg.add_argument("--import-timeout", type=float, default=grader.IMPORT_TIMEOUT_S,
                    help="seconds to start Python and import a student's modules")
    pg.add_argument("--time-budget", type=float, default=grader.BUDGET_S,
                    help="seconds for everything of one student and assignment (imports, checks, restarts)")
    pg.add_argument("--memory-mb", type=int, default=sandbox.Limits.memory_mb,
                    help="address space of each student process, MB")
    pg.add_argument("--no-rerun", action="store_true",
                    help="experiments: do not re-run the first steps of each run folder to check its log.csv")
    pg.add_argument("--no-sandbox", action="store_true",
                    help="run students' code without bubblewrap, with your permissions (only for code you trust)")
    pz = sub.add_parser("gradescope", help="build a Gradescope autograder archive for one assignment")
    pz.add_argument("name", help="an assignment of `list`")
    pz.add_argument("--out", required=True, help="the .zip to write")
    pd = sub.add_parser("docs", help="COURSE.md's generated tables")
    pd.add_argument("--write", action="store_true", help="rewrite COURSE.md's generated blocks")
    args = p.parse_args(argv)

    if args.cmd == "list":
        print("\n".join(docs.list_lines(args.checks)))
        return 0
    if args.cmd == "gradescope":
        from . import gradescope
        gradescope.build(args.name, args.out)
        print(f"wrote {args.out}: upload it as the autograder of {args.name} (Gradescope: Configure Autograder, "
              f"Zip file upload; base image Ubuntu)")
        return 0
    if args.cmd == "docs":
        with open(docs.COURSE_MD, encoding="utf-8") as f:
            old = f.read()
        new = docs.render(old)
        if args.write:
            with open(docs.COURSE_MD, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"{docs.COURSE_MD}: {'updated' if new != old else 'already up to date'}")
            return 0
        print("\n\n".join(docs.blocks().values()))
        return 0 if new == old else 1
    if args.cmd == "assign":
        from .handout import assign
        info = assign(args.names, args.out, keep_others=args.keep_others)
        print(f"wrote {args.out}: {', '.join(args.names)}")
        if info["cut"]:
            print(f"  cut (the student's): {', '.join(info['cut'])}")
        if info["cut_other_assignments"]:
            print(f"  cut (other assignments): {', '.join(info['cut_other_assignments'])}")
        for f, gone in info["removed_tests"].items():
            print(f"  removed from {f}: {', '.join(gone)}")
        print(f"  student: read {os.path.join(args.out, 'ASSIGNMENT.md')}")
        print(f"  teacher: python -m tools.course grade {args.out} --assignment {' '.join(args.names)}")
        return 0

    if args.roster:
        if args.dirs or args.assignment:
            raise SystemExit("tools.course grade: give either --roster FILE or DIRS --assignment NAME")
        jobs = _roster(args.roster)
    else:
        if not args.dirs or not args.assignment:
            raise SystemExit("tools.course grade: name the student folders and what they are graded on: "
                             "grade DIR... --assignment NAME (or --roster FILE); the folder's own "
                             ".assignment.json is never trusted for that")
        jobs = [(d, n) for d in _dirs(args.dirs) for n in args.assignment]
    unknown = sorted({n for _, n in jobs if n not in ASSIGNMENTS})
    if unknown:
        raise SystemExit(f"tools.course grade: unknown assignment {', '.join(unknown)}; known: {', '.join(ASSIGNMENTS)}")
    settings = grader.Settings(args.check_timeout, args.import_timeout, args.time_budget,
                               sandbox.Limits(memory_mb=args.memory_mb), sandboxed=not args.no_sandbox,
                               rerun=not args.no_rerun)
    names = list(dict.fromkeys(n for _, n in jobs))
    if any(ASSIGNMENTS[n].kind == "code" or settings.rerun for n in names):
        if args.no_sandbox:
            print(f"warning: {grader.NO_SANDBOX_WARNING.replace('this', 'every')}", file=sys.stderr)
        else:
            why = sandbox.check()
            if why:
                raise SystemExit(f"tools.course grade: {why}")
            try:
                sandbox.refuse_exposed([grader.ROOT] + [d for d, _ in jobs])
            except RuntimeError as e:
                raise SystemExit(f"tools.course grade: {e}")
    if args.no_sandbox and grader.inside(sys.prefix, grader.ROOT):
        print(f"warning: the Python environment {sys.prefix} is inside the reference checkout; the students' "
              f"processes get it under a throwaway path, but a resolved path (os.path.realpath) still leads "
              f"there (COURSE.md, 'The sandbox')", file=sys.stderr)
    commit = grader.git_commit()
    prepare_kit(names)                    # every check and reference value, before any student code runs
    before = kit.snapshot()
    jobs = [(d, os.path.abspath(d), n) for d, n in jobs]
    csv_path = os.path.abspath(args.csv) if args.csv else None
    cwd = os.getcwd()
    os.chdir("/")   # the grader's own working directory is no longer the reference checkout (COURSE.md, "Grading")
    grades = []
    try:
        for shown, d, n in jobs:
            try:
                g = grader.grade(d, n, commit=commit, settings=settings)
            except Exception as e:                       # one student cannot stop the class
                g = {"student": d, "assignment": n, "warnings": [f"grading failed: {type(e).__name__}: {e}"[:300]],
                     "results": grader.error_results(ASSIGNMENTS[n], f"grading failed: {type(e).__name__}: {e}"[:300])}
            g = dict(g, student=shown)
            grades.append(g)
            kit.verify(before)                           # KitChanged: stop loudly, keep the rows so far
            grader.flag_identical_runs(grades)
            if csv_path:
                write_atomically(csv_path, report.to_csv(grades))
            if not args.json:
                print(report.text(g, ASSIGNMENTS[n].what), flush=True)
                print()
    except kit.KitChanged as e:
        if csv_path:
            write_atomically(csv_path, report.to_csv(grades))
        print(f"tools.course grade: STOPPED: {e}", file=sys.stderr)
        return 3
    finally:
        os.chdir(cwd)
    summ = report.summary(grades)
    if csv_path:
        write_atomically(csv_path, report.to_csv(grades))
    if args.json:
        print(json.dumps({"grades": grades, "summary": summ}, indent=1, ensure_ascii=False))
    else:
        print(report.summary_text(summ))
        if args.csv:
            print(f"wrote {args.csv}")
    return 0 if all(report.total(g)[0] == report.total(g)[1] for g in grades) else 1


def prepare_kit(names):
    """Load every check, compute every reference value and make every pristine copy the grading needs."""
    from . import experiments
    for n in names:
        a = ASSIGNMENTS[n]
        a.checks  # noqa: B018 - loads checks.py
        handin.pristine(a)
        if a.kind == "code":
            grader.reference_records(a)
        else:
            experiments.first_binding_step(60)          # imports the project's hermes.py now


def write_atomically(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
