"""What is graded: the student's hand-in laid over a pristine copy of the assignment, in a fresh private folder.

A hand-in may be a whole student copy or only the files the student edited (e.g. `hermes.py`): every regular
file in it replaces the pristine copy's file of the same path. A file that cannot be handed in (a symbolic link
that leaves the folder, a FIFO, socket or device, a file over MAX_FILE_MB, more than MAX_FILES files, deeper
than MAX_DEPTH folders) raises HandInError with one line saying which; the grader turns that into an error row
for this student and goes on with the class. Checkpoints (*.pt), caches and version control are skipped."""
import errno
import os
import shutil
import stat
import tempfile

MAX_FILE_MB = 32
MAX_TOTAL_MB = 256
MAX_FILES = 5000
MAX_DEPTH = 24
SKIP_DIRS = {".git", ".hg", "__pycache__", ".pytest_cache", ".mypy_cache", ".ipynb_checkpoints", ".venv", "venv"}
SKIP_SUFFIXES = (".pt", ".pth", ".ckpt", ".pyc")


class HandInError(Exception):
    """One line: why this hand-in cannot be graded."""


_PRISTINE = {}


def pristine(a):
    """A pristine student copy of assignment `a` (made by `assign` once per process, in a private folder)."""
    if a.name not in _PRISTINE:
        from .handout import assign
        base = tempfile.mkdtemp(prefix=f"course-pristine-{a.slug}-")
        assign([a.name], os.path.join(base, "copy"))
        _PRISTINE[a.name] = os.path.join(base, "copy")
    return _PRISTINE[a.name]


def _copy_regular(src, dst, budget):
    """Copy the regular file `src` to `dst` without following links or blocking on a FIFO; returns its size."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HandInError("a symbolic link changed while it was copied")
        raise HandInError(f"cannot read it ({e.strerror})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HandInError("not a regular file (a FIFO, socket or device)")
        if st.st_size > MAX_FILE_MB << 20:
            raise HandInError(f"{st.st_size / 2**20:.0f} MB, more than the {MAX_FILE_MB} MB a file may have")
        if st.st_size > budget:
            raise HandInError(f"the hand-in holds more than {MAX_TOTAL_MB} MB")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst):
            os.unlink(dst)
        n = 0
        with open(dst, "wb") as out:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                n += len(chunk)
                if n > MAX_FILE_MB << 20 or n > budget:
                    raise HandInError(f"grew past {MAX_FILE_MB} MB while it was copied")
                out.write(chunk)
        return n
    finally:
        os.close(fd)


def overlay(student_dir, dest):
    """Copy the hand-in's regular files over `dest`; returns the paths copied (relative, '/'-separated)."""
    root = os.path.realpath(student_dir)
    if not os.path.isdir(root):
        raise HandInError(f"{student_dir} is not a folder")
    copied, budget = [], MAX_TOTAL_MB << 20
    for d, dirs, files in os.walk(root):
        rel_d = os.path.relpath(d, root)
        depth = 0 if rel_d == "." else rel_d.count(os.sep) + 1
        if depth > MAX_DEPTH:
            raise HandInError(f"{rel_d}: folders nested deeper than {MAX_DEPTH}")
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        for name in sorted(files) + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            src = os.path.join(d, name)
            rel = os.path.normpath(os.path.join(rel_d, name))
            if name.endswith(SKIP_SUFFIXES):
                continue
            if os.path.islink(src):
                target = os.path.realpath(src)
                if not (target == root or target.startswith(root + os.sep)):
                    raise HandInError(f"{rel} is a symbolic link that leaves the hand-in (to {os.readlink(src)})")
                if rel.split(os.sep)[0] == "runs":
                    raise HandInError(f"{rel} is a symbolic link: a run folder must hold its own files")
                if not os.path.isfile(target):
                    continue                      # a link to a folder inside the hand-in: its files come anyway
                src = target
            if len(copied) >= MAX_FILES:
                raise HandInError(f"more than {MAX_FILES} files in the hand-in")
            try:
                budget -= _copy_regular(src, os.path.join(dest, rel), budget)
            except HandInError as e:
                raise HandInError(f"{rel}: {e}") from None
            copied.append(rel.replace(os.sep, "/"))
        dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
    return copied


def prepare(a, student_dir, dest):
    """`dest` (new): a pristine copy of assignment `a` with the hand-in in `student_dir` laid over it."""
    shutil.copytree(pristine(a), dest, symlinks=True)
    return overlay(student_dir, dest)
