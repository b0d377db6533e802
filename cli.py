"""What the command-line programs share: the error a user can fix (`DataError`), one-line error reporting
(`cli_main`), and the atomic writer of every file a run keeps (`atomic_write`, `write_json_atomic`).

Free of torch, so tools/reproduce.py imports it without paying for a torch import.
"""
import json
import os
import re
import sys
import warnings

import numpy as np


# ---------------------------------------------------------------------------------------------- errors
class DataError(ValueError):
    """Input the user can fix (a file, a folder, a value): the message is one line naming it and the fix."""


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder the input needs is not there."""


# ----------------------------------------------------------------------------------------------- numbers
def mean_std(values):
    """Mean and sample std (ddof=1; 0.0 for a single value) of the finite values; NaN, NaN when none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


# ------------------------------------------------------------------------------------- run-folder files
def atomic_write(path, write, binary=False, newline=None):
    """The project's one atomic writer: write(f) fills a temporary file in the same folder (unique name),
    which is flushed to disk and renamed over `path`, and the rename itself is flushed (fsync of the folder);
    a kill or a power cut leaves either the old file or the new one, never half. A failed write removes its
    temporary; one a kill left behind is removed by remove_stale_temporaries. newline: as for open() (csv
    wants "")."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)
    return path


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every system opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_SUFFIX = re.compile(r"\.tmp\d*$")   # what atomic_write leaves behind when killed mid-write


def remove_stale_temporaries(folder):
    """Delete the NAME.tmp[<pid>] files a killed atomic_write left in `folder`; returns their paths."""
    removed = []
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if TEMP_SUFFIX.search(f) and os.path.isfile(p) and not os.path.islink(p):
            os.remove(p)
            removed.append(p)
    return removed


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None  # NaN/inf -> null: strict JSON
    return v


def write_json_atomic(obj, path, indent=2):
    """JSON (NaN -> null, strict) written atomically."""
    return atomic_write(path, lambda f: json.dump(_jsonable(obj), f, indent=indent, allow_nan=False))


# ------------------------------------------------------------------------------------ command-line errors
def one_line(e):
    """First line of an exception's message (library messages can span many lines)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] + (" ..." if len(lines) > 1 else "")) if lines else type(e).__name__


def cause(e, limit=100):
    """A library exception's first sentence, short enough to quote inside one of our one-line messages."""
    first = one_line(e).split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[:limit - 4] + " ..."


DEBUG_ENV = "HERMES_DEBUG"


def debug_requested(argv):
    """--debug on the command line or HERMES_DEBUG set (not empty, not 0)."""
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def cli_main(main, argv=None):
    """Run an entry point main(argv) as a user sees it. An error prints one or two lines on stderr (what is
    wrong, naming the file or value, and the fix) and exits with status 1; Ctrl-C exits with 130; warnings
    print as one line. --debug or HERMES_DEBUG=1 shows Python's traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = os.path.basename(sys.argv[0]) or "hermes"
    if debug_requested(argv):
        return main(argv)
    warnings.showwarning = lambda message, *a, **k: print(f"{prog}: warning: {message}", file=sys.stderr)
    try:
        return main(argv)
    except KeyboardInterrupt as e:   # its message, if any, says what was kept (train.py's second signal)
        print(f"{prog}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        sys.exit(130)
    except (DataError, OSError) as e:  # the user's input, files or disk: the message names them
        print(f"{prog}: error: {_without(prog, one_line(e))}", file=sys.stderr)
    except Exception as e:  # anything else is unexpected: say so, and how to see where it came from
        print(f"{prog}: error: {type(e).__name__}: {_without(prog, one_line(e))}\n"
              f"{prog}: rerun with --debug (or {DEBUG_ENV}=1) for the traceback", file=sys.stderr)
    sys.exit(1)


def _without(prog, msg):
    """'evaluate.py: no checkpoint ...' -> 'no checkpoint ...' (the line already starts with the program)."""
    return msg[len(prog):].lstrip(": ") if msg.startswith(prog) else msg
