"""The students' sandbox: every student process runs under bubblewrap (`bwrap`, Debian package `bubblewrap`).

What a student's process sees (COURSE.md, "The sandbox"):
    /work        the student's hand-in laid over a pristine copy of the assignment (read-only, private)
    /runner      the grading runner and the assignment's checks.py (read-only)
    /tmp         a private tmpfs of `tmp_mb`
    the Python installation and its site-packages, /usr and the system libraries (read-only)
and nothing else: no checkout, no other hand-in, no grader folder, no home folder. New namespaces for PIDs
(the grader's /proc is invisible; every process of the student dies with the sandbox), the network (none), IPC,
UTS and users (no capabilities); resource limits on address space, CPU seconds, file size, open files and
processes; the grader caps the bytes of records per check and watches the number of processes.

Without bwrap the grader refuses (`INSTALL`) unless --no-sandbox is given."""
import contextlib
import os
import resource
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass

INSTALL = ("bwrap not found: bubblewrap grades students' code in a sandbox; install it (Debian/Ubuntu: "
           "sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap) or, only for code you trust, "
           "grade with --no-sandbox")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")


@dataclass
class Limits:
    """Per student process (and for `procs`, per sandbox)."""
    memory_mb: int = 8192        # address space of each process (importing torch maps about 3.3 GB)
    cpu_s: int = 900             # CPU seconds of each process
    file_mb: int = 64            # largest file a process may write
    procs: int = 64              # processes and threads in the sandbox (the grader kills it beyond)
    tmp_mb: int = 256            # size of the private /tmp
    output_mb: int = 16          # bytes of records per check on the grading channel

    def apply(self):
        """Set the resource limits of this process (called in the child, before bwrap or python starts)."""
        mb = 1 << 20
        for lim, value in ((resource.RLIMIT_AS, self.memory_mb * mb), (resource.RLIMIT_CPU, self.cpu_s),
                           (resource.RLIMIT_FSIZE, self.file_mb * mb), (resource.RLIMIT_CORE, 0),
                           (resource.RLIMIT_NOFILE, 1024)):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(lim, (value, value))
        with contextlib.suppress(ValueError, OSError):      # counted per user: only caps a non-root grader
            resource.setrlimit(resource.RLIMIT_NPROC, (_user_procs() + self.procs,) * 2)


def _user_procs():
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{pid}").st_uid == uid
    return n


def bwrap():
    return shutil.which("bwrap")


_WORKS = {}


def check():
    """None when bwrap is installed and can create its namespaces here, else one line saying why not."""
    exe = bwrap()
    if not exe:
        return INSTALL
    if exe not in _WORKS:
        try:
            p = subprocess.run([exe] + base_args() + ["--", "/bin/true"], capture_output=True, text=True,
                               timeout=30)
            _WORKS[exe] = None if p.returncode == 0 else (
                f"bwrap cannot create its sandbox here ({p.stderr.strip()[:200] or f'exit status {p.returncode}'}): "
                f"allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or in a container "
                f"--security-opt seccomp=unconfined) or grade with --no-sandbox (unsafe, COURSE.md)")
        except (OSError, subprocess.SubprocessError) as e:
            _WORKS[exe] = f"bwrap failed to start: {e}"
    return _WORKS[exe]


def inside(path, folder):
    """path is folder or lies below it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def python_paths():
    """The folders of the Python installation the students' processes need: prefixes and site-packages."""
    cands = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    cands |= set(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        cands.add(site.getusersitepackages())
    cands |= {p for p in sys.path if os.path.isabs(p or ".") and ("site-packages" in p or "dist-packages" in p)}
    out = []
    for p in sorted({os.path.realpath(c) for c in cands if c and os.path.isdir(c)}, key=len):
        if p != "/" and not any(inside(p, q) for q in out) and not p.startswith(SYSTEM):
            out.append(p)
    return out


def refuse_exposed(folders):
    """Raise when a folder the sandbox must hide (the checkout, a hand-in) lies inside a mounted folder."""
    for f in folders:
        for m in python_paths() + [d for d in SYSTEM if os.path.isdir(d)]:
            if inside(f, m):
                raise RuntimeError(f"{f} lies inside {m}, which the sandbox shows to students: move it elsewhere")


def base_args(tmp_mb=None):
    """bwrap's options without the student's folders: namespaces, the system, a private /tmp (of tmp_mb MB)
    and the Python installation, mounted after /tmp so that an installation under /tmp (a virtual
    environment there, say) stays visible."""
    args = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
            "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    for d in SYSTEM:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in SYSTEM_FILES:
        args += ["--ro-bind-try", f, f]
    if tmp_mb is not None:
        args += ["--size", str(tmp_mb << 20), "--tmpfs", "/tmp"]
    for p in python_paths():
        args += ["--ro-bind", p, p]
    return args + ["--proc", "/proc", "--dev", "/dev"]


def command(argv, work, runner, limits, env, out=None):
    """The bwrap command line that runs `argv` with the hand-in at /work, the runner at /runner (read-only) and
    `out`, when given, at /out (writable: a re-run's output)."""
    args = [bwrap()] + base_args(limits.tmp_mb)
    args += ["--ro-bind", work, "/work"]
    args += ["--ro-bind", runner, "/runner"] if runner else []
    args += ["--bind", out, "/out"] if out else []
    args += ["--chdir", "/work", "--clearenv"]
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args + ["--"] + list(argv)


def descendants(pid):
    """The processes below `pid` (from /proc), to count a sandbox's processes from outside."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            children.setdefault(int(fields[1]), []).append((int(d), int(fields[17])))   # ppid; threads
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for c, threads in children.get(todo.pop(), []):
            out.append((c, threads))
            todo.append(c)
    return out


def count_tasks(pid):
    """Processes and threads below `pid`."""
    return sum(t for _, t in descendants(pid))
