"""The kit cannot be changed by what it grades: its files are hashed before any student code runs and verified
after every student; a mismatch stops the grading loudly (KitChanged).

The kit is tools/course/: the runner, the checks and the code of the reference values. (The project's modules
the reference runs are imported, and the pristine copies made, before any student code runs.)"""
import hashlib
import os

from .grader import ROOT
from .registry import HERE


class KitChanged(RuntimeError):
    pass


def kit_files(root=ROOT, here=HERE):
    out = []
    for d, dirs, files in os.walk(here):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        out += [os.path.join(d, f) for f in sorted(files) if not f.endswith(".pyc")]
    return out


def _digest(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return h.hexdigest()


def snapshot(root=ROOT, here=HERE):
    """{path: sha256} of every kit file."""
    return {p: _digest(p) for p in kit_files(root, here)}


def verify(before, root=ROOT, here=HERE):
    """Raise KitChanged naming the files that changed, appeared or disappeared since `before`."""
    now = snapshot(root, here)
    changed = sorted(p for p in set(before) | set(now) if before.get(p) != now.get(p))
    if changed:
        shown = ", ".join(os.path.relpath(p, root) for p in changed[:5])
        raise KitChanged(f"the course kit changed while it graded ({shown}"
                         f"{f' and {len(changed) - 5} more' if len(changed) > 5 else ''}): the grades after the "
                         f"change cannot be trusted; restore the kit (git checkout / git status) and grade again")
