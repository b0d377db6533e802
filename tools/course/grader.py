"""Grading: the teacher names the assignment; verdicts are reached here, never in the student's process.

For a code assignment, every check runs twice on the same seeded inputs: once in this process with the
project's own modules (the reference; once per assignment and grading command), once in the student's process
(child.py) with the student's modules. The student's process reports what their code computed on a pipe; this
process checks that every expected check answered, in order and under its title, and compares the values
(judge.py). Each check has its own time limit: a check that runs too long, or during which the process exits or
crashes, scores 0 with the reason, and a fresh process continues with the next check.

An experiment assignment runs no student code: its checks read the student's run folders and answers here."""
import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

from . import handin, judge, observe, sandbox
from .registry import ASSIGNMENTS, HERE

ROOT = os.path.dirname(os.path.dirname(HERE))       # the project checkout (the reference solution)
MODULES = ("losses", "hermes", "models")
ASSIGNMENT_FILE = ".assignment.json"
CHECK_TIMEOUT_S = 60      # per check
IMPORT_TIMEOUT_S = 180    # starting Python, torch and the student's modules (a busy 2-core machine is slow)
BUDGET_S = 300            # everything of one student and assignment: imports, every check, restarts
MAX_RECORDS = 20_000      # records per check
WATCH_S = 0.5             # how often the grader counts a sandbox's processes
NO_SANDBOX_WARNING = "graded WITHOUT a sandbox (--no-sandbox): this student's code ran with your permissions"


# ------------------------------------------------------------------------------------------ the reference run

def _collect(records_by_check):
    def emit(msg):
        if "start" in msg:
            records_by_check[msg["start"]] = {"records": [], "error": None}
        elif "end" in msg:
            records_by_check[msg["end"]]["error"] = msg.get("error")
        else:
            records_by_check[msg["check"]]["records"].append(msg)
    return emit


def _run_all(a, M):
    out = {}
    emit = _collect(out)
    for i, c in enumerate(a.checks):
        observe.run_check(c, i, M, emit)
    return out


_REFERENCE = {}


def reference_records(a):
    """{check index: {"records", "error"}} of the project's own modules (computed once per process)."""
    if a.name not in _REFERENCE:
        import importlib
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        M = SimpleNamespace(**{n: importlib.import_module(n) for n in MODULES})
        _REFERENCE[a.name] = _run_all(a, M)
    return _REFERENCE[a.name]


# ------------------------------------------------------------------------------------------ in-process (tests)

@contextlib.contextmanager
def project_modules(root):
    """Import the project's modules from `root` (their own imports resolve inside `root` too) and yield them as a
    namespace; afterwards sys.modules and sys.path are as before. For the kit's own tests, on trusted code."""
    import importlib
    flat = {f[:-3] for d in (ROOT, root) for f in os.listdir(d) if f.endswith(".py")}
    saved = {n: sys.modules.pop(n) for n in flat if n in sys.modules}
    old_path, old_dwb = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, os.path.abspath(root))
    sys.dont_write_bytecode = True  # a planted mistake of the same size must not reuse a stale .pyc
    importlib.invalidate_caches()
    try:
        yield SimpleNamespace(**{n: importlib.import_module(n) for n in MODULES})
    finally:
        for n in flat:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
        sys.path[:] = old_path
        sys.dont_write_bytecode = old_dwb


def records_in_process(a, student_dir):
    """The student's records computed in this process: for the kit's tests on planted mistakes (trusted code)."""
    try:
        with project_modules(student_dir) as M:
            return _run_all(a, M), {}
    except Exception as e:
        reason = f"could not import your modules: {observe.why(e)}"
        return {}, {i: reason for i in range(len(a.checks))}


# ------------------------------------------------------------------------------------------ the student's process

@contextlib.contextmanager
def runner_copy(a):
    """A temporary folder with only the runner, this assignment's checks.py (see child.py) and, where needed, the
    relocated environment of child_python."""
    tmp = tempfile.mkdtemp(prefix="course-grader-")
    try:
        runner = os.path.join(tmp, "runner")
        os.makedirs(os.path.join(runner, "tools", "course"))
        with open(os.path.join(runner, "tools", "__init__.py"), "w") as f:
            f.write('"""Grading runner."""\n')
        for name in ("__init__.py", "registry.py", "observe.py", "child.py"):
            shutil.copy(os.path.join(HERE, name), os.path.join(runner, "tools", "course", name))
        shutil.copy(a.checks_path, os.path.join(runner, "checks.py"))
        shutil.copy(os.path.join(a.folder, "meta.toml"), os.path.join(runner, "meta.toml"))
        with open(os.path.join(runner, "run_child.py"), "w") as f:
            f.write("import sys\nfrom tools.course.child import main\nsys.exit(main())\n")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Lines:
    """Lines from a pipe with a deadline: readline(timeout) -> bytes, None at end of file, "timeout", or the
    reason `watch()` gave to stop (it is asked every WATCH_S seconds)."""

    def __init__(self, fd, max_line, watch=None):
        self.fd, self.buf, self.eof, self.max_line, self.watch = fd, b"", False, max_line, watch

    def readline(self, timeout):
        end = time.monotonic() + max(0.0, timeout)
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line
            if len(self.buf) > self.max_line:
                return b"\x00too long"
            if self.eof:
                return None
            left = end - time.monotonic()
            if left <= 0:
                return "timeout"
            r, _, _ = select.select([self.fd], [], [], min(left, WATCH_S))
            if r:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    self.eof = True
                self.buf += chunk
            elif self.watch:
                stop = self.watch()
                if stop:
                    return ("stop", stop)


inside = sandbox.inside


def _child_env(tmp):
    path = os.pathsep.join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                           if p and not inside(p, ROOT))          # an activated .venv/bin names the checkout
    return {"PATH": path or "/usr/bin:/bin", "HOME": tmp, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}


SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}


def child_python(tmp):
    """The interpreter path for students' processes without a sandbox, one that does not lead into the checkout.

    A virtual environment made inside the checkout (`python -m venv .venv`) would hand its folder to student code
    as sys.executable and sys.prefix, two folders below the reference. Such an environment is stood up again in
    `tmp` (its pyvenv.cfg, bin/python and lib/ as links), so that both name `tmp`: Python finds pyvenv.cfg beside
    the path it was started by, not beside the file the link points to. Paths resolved with realpath still lead
    back (COURSE.md: grade in the sandbox)."""
    if not inside(sys.prefix, ROOT):
        return sys.executable
    cfg = os.path.join(sys.prefix, "pyvenv.cfg")
    if not os.path.isfile(cfg):
        raise RuntimeError(f"the Python environment {sys.prefix} lies inside the project checkout {ROOT} and is not "
                           f"a virtual environment the grader can relocate: student code would find the reference "
                           f"through it. Grade with a Python installed outside the checkout (COURSE.md)")
    env = os.path.join(tmp, "python")
    os.makedirs(os.path.join(env, "bin"))
    shutil.copy(cfg, env)
    for name in ("lib", "lib64", "include"):
        if os.path.isdir(os.path.join(sys.prefix, name)):
            os.symlink(os.path.join(sys.prefix, name), os.path.join(env, name))
    exe = os.path.join(env, "bin", os.path.basename(sys.executable))
    os.symlink(sys.executable, exe)
    return exe


def _kill(p):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        p.wait(timeout=10)


def _tail(path):
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 2000))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            return f": {lines[-1][:200]}" if lines else ""
    return ""


class Settings:
    """How students' processes run: time limits, resource limits and the sandbox."""

    def __init__(self, check_timeout=CHECK_TIMEOUT_S, import_timeout=IMPORT_TIMEOUT_S, budget=BUDGET_S,
                 limits=None, sandboxed=True, rerun=True):
        self.check_timeout, self.import_timeout, self.budget = check_timeout, import_timeout, budget
        self.limits = limits or sandbox.Limits()
        self.sandboxed, self.rerun = sandboxed, rerun


def _spawn(tmp, python, work, start, wfd, err, st):
    argv = ["-E", "-B", "run_child.py", str(wfd), str(start)]
    if st.sandboxed:
        cmd = sandbox.command([python] + argv[:2] + ["/runner/run_child.py"] + argv[3:], work,
                              os.path.join(tmp, "runner"), st.limits, SANDBOX_ENV)
        cwd = "/"
    else:
        cmd = [python] + argv[:2] + [os.path.join(tmp, "runner", "run_child.py")] + argv[3:]
        cwd = work
    return subprocess.Popen(cmd, cwd=cwd, pass_fds=(wfd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, env=SANDBOX_ENV if st.sandboxed else _child_env(tmp),
                            start_new_session=True, preexec_fn=st.limits.apply)


def _one_process(tmp, python, a, work, start, got, reasons, st, end_all):
    """Run the checks from `start` in one student process; fill got/reasons; return the next check to start
    from (len(checks) when done). `end_all`: the end of this student's time budget (time.monotonic())."""
    checks, n = a.checks, len(a.checks)
    max_bytes = st.limits.output_mb << 20
    rfd, wfd = os.pipe()
    err_path = os.path.join(tmp, f"stderr-{start}.txt")
    with open(err_path, "wb") as err:
        p = _spawn(tmp, python, work, start, wfd, err, st)
    os.close(wfd)

    def watch():
        if sandbox.count_tasks(p.pid) > st.limits.procs + 2:        # + bwrap's own two processes
            return f"more than {st.limits.procs} processes and threads (the sandbox's limit)"
        return None

    lines = _Lines(rfd, max_bytes, watch if st.sandboxed else None)
    imported, current, expected, records, used = False, None, start, [], 0
    deadline = time.monotonic() + st.import_timeout
    out_of_budget = f"the time budget of {st.budget:g} s for this assignment ran out"

    def rest(reason):
        for i in range(expected, n):
            reasons.setdefault(i, reason)
        return n

    def cut_short(reason):
        """The check under way ends here: the parts it finished keep their records (partial credit)."""
        if current is None:
            reasons[expected] = reason
            return expected + 1
        got[current] = {"records": records, "error": reason}
        return current + 1

    def broken(what):
        _kill(p)
        if current is None and not imported:
            return rest(f"{what} while your modules were imported")
        i = current if current is not None else expected
        reasons[i] = what
        return i + 1

    try:
        while True:
            line = lines.readline(min(deadline, end_all) - time.monotonic())
            if isinstance(line, tuple):
                return broken(line[1])
            if line == "timeout":
                _kill(p)
                if time.monotonic() >= end_all - 0.05:
                    if not imported:
                        return rest(out_of_budget)
                    cut_short(out_of_budget)
                    expected = current + 1 if current is not None else expected + 1
                    return rest(out_of_budget)
                if not imported:
                    return rest(f"importing your modules took longer than {st.import_timeout:g} s")
                return cut_short(f"time limit of {st.check_timeout:g} s exceeded (an endless loop?)")
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
                code = p.returncode
                why = f"(exit status {code}){_tail(err_path)}"
                if not imported:
                    return rest(f"the process exited while your modules were imported {why}")
                if expected >= n:
                    return n
                return cut_short(f"the process exited during this check {why}" if current is not None
                                 else f"the process exited before this check {why}")
            used += len(line) + 1
            if current is not None and used > max_bytes:
                return broken(f"more than {st.limits.output_mb} MB of records in one check")
            try:
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError, RecursionError):
                return broken("malformed record on the grading channel")
            if not imported:
                if msg.get("event") == "importing":
                    continue
                if msg.get("event") == "imported":
                    imported, deadline = True, time.monotonic() + st.check_timeout
                    continue
                if "import_error" in msg:
                    _kill(p)
                    return rest(f"could not import your modules: {str(msg['import_error'])[:400]}")
                return broken("unexpected record on the grading channel")
            if "start" in msg:
                if current is not None or msg["start"] != expected or expected >= n \
                        or msg.get("title") != checks[expected].title:
                    return broken("unexpected record on the grading channel (a check started out of order)")
                current, records, used = expected, [], 0
                deadline = time.monotonic() + st.check_timeout
            elif "end" in msg:
                if current is None or msg["end"] != current:
                    return broken("unexpected record on the grading channel (a check ended out of order)")
                error = msg.get("error")
                got[current] = {"records": records, "error": str(error)[:600] if error is not None else None}
                current, expected = None, expected + 1
                deadline = time.monotonic() + st.check_timeout
            elif msg.get("event") == "done":
                if current is not None or expected != n:
                    return broken("unexpected record on the grading channel (done too early)")
                _kill(p)
                return n
            else:
                if current is None or msg.get("check") != current or len(records) >= MAX_RECORDS:
                    return broken("unexpected record on the grading channel")
                records.append(msg)
    finally:
        os.close(rfd)
        _kill(p)


def student_records(a, work, st=None):
    """({check index: records}, {check index: reason it has none}) from the student's own process(es), run on
    the prepared folder `work` (handin.prepare) within one time budget."""
    st = st or Settings()
    if st.sandboxed:
        why = sandbox.check()
        if why:
            raise RuntimeError(why)
    got, reasons, start = {}, {}, 0
    end_all = time.monotonic() + st.budget
    with runner_copy(a) as tmp:
        python = sys.executable if st.sandboxed else child_python(tmp)
        while start < len(a.checks):
            if time.monotonic() >= end_all:
                for i in range(start, len(a.checks)):
                    reasons.setdefault(i, f"the time budget of {st.budget:g} s for this assignment ran out")
                break
            start = _one_process(tmp, python, a, work, start, got, reasons, st, end_all)
    return got, reasons


# ------------------------------------------------------------------------------------------ verdicts

def grade_code(a, work, st=None, in_process=False):
    ref = reference_records(a)
    if in_process:
        got, reasons = records_in_process(a, work)
    else:
        got, reasons = student_records(a, work, st)
    results = [judge.verdict(c, ref[i], got.get(i), reasons.get(i)) for i, c in enumerate(a.checks)]
    return judge.apply_needs(a.checks, results)


def run_fingerprints(work):
    """{run folder: sha256 of its log.csv} of a prepared hand-in (identical logs across students are flagged)."""
    import hashlib
    out, runs = {}, os.path.join(work, "runs")
    for run in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        path = os.path.join(runs, run, "log.csv")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[f"runs/{run}"] = hashlib.sha256(f.read()).hexdigest()
    return out


IDENTICAL = "identical to the log.csv of "


def flag_identical_runs(grades):
    """Warn on every grade whose run folders hold a log.csv identical to another student's."""
    seen = {}
    for g in grades:
        for run, digest in g.get("fingerprints", {}).items():
            seen.setdefault(digest, []).append((g["student"], run))
    for g in grades:
        g["warnings"] = [w for w in g["warnings"] if IDENTICAL not in w]
        for run, digest in g.get("fingerprints", {}).items():
            others = [f"{s} ({r})" for s, r in seen[digest] if s != g["student"]]
            if others:
                g["warnings"].append(f"{run}/log.csv is {IDENTICAL}{', '.join(others)[:300]}: a copied run?")


def grade_experiment(a, student_dir, st=None):
    """Experiment checks read files only (no student code runs): fn(ctx, None) passes unless it raises. With
    st.rerun, the first steps of every run folder are re-run in the sandbox from its config.json first: a
    log.csv that disagrees (forged, edited) scores 0 on the whole assignment."""
    st = st or Settings()
    if st.rerun:
        from .rerun import verify_runs
        why = verify_runs(a, student_dir, st)
        if why:
            return error_results(a, why)
    out = []
    for c in a.checks:
        res = {"title": c.title, "name": c.name, "max": c.points, "points": 0, "msg": ""}
        try:
            c.fn(observe.Context(lambda rec: None, os.path.abspath(student_dir)), None)
            res["points"] = c.points
        except Exception as e:
            res["msg"] = observe.why(e)
        out.append(res)
    return out


def git_commit(root=ROOT):
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_small_json(path, limit=1 << 16):
    """The JSON value in the regular file `path` (at most `limit` bytes), or raise ValueError saying why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(e.strerror) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({type(e).__name__})") from None


def copy_warnings(student_dir, name, commit=None):
    """What the teacher should know about a copy: made for other assignments, or from another commit of the
    project (the reference may then differ from what the student was given). A hand-in of only the edited files
    has no .assignment.json: nothing to say."""
    path = os.path.join(student_dir, ASSIGNMENT_FILE)
    if not os.path.lexists(path):
        return []
    try:
        info = read_small_json(path)
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except ValueError as e:
        return [f"{ASSIGNMENT_FILE} unreadable ({e}): was this folder made by `assign`?"]
    out = []
    made_for = info.get("assignments")
    if isinstance(made_for, list) and name not in made_for:
        out.append(f"the copy was made for {', '.join(map(str, made_for))[:200]}, graded as {name} (as you asked)")
    commit = commit or git_commit()
    made_from = info.get("project_commit")
    if made_from and commit != "unknown" and made_from != commit:
        out.append(f"the copy was made from commit {str(made_from)[:12]}, the reference is {commit[:12]}: "
                   f"a check may have changed since (grade from that commit to be sure)")
    return out


def error_results(a, msg):
    return [{"title": c.title, "name": c.name, "max": c.points, "points": 0, "msg": msg} for c in a.checks]


def grade(student_dir, name, check_timeout=CHECK_TIMEOUT_S, import_timeout=IMPORT_TIMEOUT_S, in_process=False,
          commit=None, settings=None):
    """One student folder, one assignment named by the teacher -> {"student", "assignment", "results", "warnings"}.

    The hand-in is laid over a pristine copy of the assignment in a fresh private folder (handin.py); a code
    assignment runs there in the sandbox (settings.sandboxed), an experiment's checks read it."""
    a = ASSIGNMENTS[name]
    st = settings or Settings(check_timeout, import_timeout)
    warnings = [] if in_process or st.sandboxed or a.kind != "code" else [NO_SANDBOX_WARNING]
    if not os.path.isdir(student_dir):
        return {"student": student_dir, "assignment": name, "results": error_results(a, "no such folder"),
                "warnings": warnings + ["no such folder"]}
    with tempfile.TemporaryDirectory(prefix="course-student-") as tmp:
        work = os.path.join(tmp, "work")
        try:
            handin.prepare(a, student_dir, work)
        except handin.HandInError as e:
            msg = f"hand-in refused: {e}"
            return {"student": student_dir, "assignment": name, "results": error_results(a, msg),
                    "warnings": warnings + [msg]}
        prints = {}
        if a.kind == "code":
            results = grade_code(a, work, st, in_process)
        else:
            results = grade_experiment(a, work, st)
            prints = run_fingerprints(work)
    out = {"student": student_dir, "assignment": name, "results": results,
           "warnings": warnings + copy_warnings(student_dir, name, commit)}
    return dict(out, fingerprints=prints) if prints else out
