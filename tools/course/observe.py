"""What a check records. A check never decides in the student's process whether the student is right.

A code check is a function fn(ctx, M) that builds inputs, calls functions of M (the student's modules in the
student's process, the project's own in the teacher's reference run) and records their outputs with
`ctx.expect(value, what)`. The grader runs every check twice, on the same seeded inputs: with the reference
modules in its own process, and with the student's in a separate process that holds no reference code. It
then compares the two records, value by value, in its own process (grader.py, judge.py), so nothing the
student's code does to its own process (replacing torch functions, printing, exiting) can turn a wrong value
into a right one: it can only change the values it reports, which is what it is graded on.

`with ctx.part("..."):` splits a check into independent parts, each worth an equal share of its points.

Only the standard library and torch are used here; the student's process imports this from a temporary copy.
"""
import contextlib
import math
import traceback

import torch

# Bound before any student module is imported (the student's process imports this module first).
_is_tensor = torch.is_tensor
_Tensor = torch.Tensor
_detach, _cpu, _flatten, _tolist = _Tensor.detach, _Tensor.cpu, _Tensor.flatten, _Tensor.tolist
_to = _Tensor.to
_float64 = torch.float64
_isinstance, _float, _type, _str = isinstance, float, type, str
MAX_ITEMS = 200_000   # values per observation


class Fail(AssertionError):
    """A check's own message that the student's output cannot be used (wrong type, wrong structure)."""


def why(e):
    """One line saying what an exception means for the student."""
    if _isinstance(e, NotImplementedError):
        return "not implemented yet (the TODO stub raises NotImplementedError)"
    if _isinstance(e, SystemExit):
        return f"your code called sys.exit({e.code!r})"
    if _isinstance(e, Fail):
        return _str(e)[:400]
    where = ""
    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        fs = tb[-1]
        where = f" (at {fs.filename.rsplit('/', 1)[-1]}:{fs.lineno} in {fs.name})"
    return f"{_type(e).__name__}: {e}{where}"[:400]


def encode(v, depth=0):
    """A JSON-able record of a value: tensors as dtype, shape and a flat list; containers element by element."""
    if depth > 6:
        return {"t": "object", "type": "nested too deep"}
    if _is_tensor(v):
        t = _cpu(_detach(v))
        if t.numel() > MAX_ITEMS:
            return {"t": "object", "type": f"tensor of {t.numel()} values (too many to record)"}
        if t.is_floating_point():
            data = _tolist(_flatten(_to(t, _float64)))
        elif t.is_complex():
            return {"t": "object", "type": f"complex tensor {t.dtype}"}
        else:
            data = _tolist(_flatten(t))
        return {"t": "tensor", "dtype": _str(t.dtype), "shape": list(t.shape), "data": data}
    if v is None or _isinstance(v, (bool, int, str)):
        return v
    if _isinstance(v, float):
        return v if math.isfinite(v) else {"t": "float", "repr": repr(v)}
    if _isinstance(v, (tuple, list, torch.Size)):
        return {"t": "list", "items": [encode(x, depth + 1) for x in list(v)[:1000]], "len": len(v)}
    if _isinstance(v, torch.dtype):
        return {"t": "dtype", "name": _str(v)}
    return {"t": "object", "type": _type(v).__name__}


class Context:
    """Handed to every check as `ctx`; `emit` receives one dict per record."""

    def __init__(self, emit, folder=None):
        self._emit = emit
        self._part = None
        self.dir = folder

    def expect(self, value, what, atol=0.0, rtol=0.0, dtype=False):
        """Record `value` (the output of the code under test); it must equal the reference's within atol + rtol·|ref|
        (exactly for integers, booleans and text; with the same dtype when `dtype`)."""
        self._emit({"what": _str(what), "part": self._part, "value": encode(value), "atol": _float(atol),
                    "rtol": _float(rtol), "dtype": bool(dtype)})

    def number(self, value, what, atol=1e-9):
        """Record `value` as a Python number (a 0-d tensor is fine)."""
        try:
            v = _float(value)
        except NotImplementedError:
            raise
        except Exception:
            v = {"t": "object", "type": f"{_type(value).__name__} (not a number)"}
        self.expect(v, what, atol=atol)

    def raises(self, fn, what):
        """Record the exception fn() raises (its class and base classes), or that it raised none."""
        try:
            fn()
        except NotImplementedError:
            raise
        except Exception as e:
            value = {"t": "raised", "types": [c.__name__ for c in _type(e).__mro__][:8]}
        else:
            value = {"t": "raised", "types": []}
        self._emit({"what": _str(what), "part": self._part, "value": value, "atol": 0.0, "rtol": 0.0,
                    "dtype": False})

    @contextlib.contextmanager
    def part(self, name):
        """An independent part of a check: an error inside it fails this part only."""
        if self._part is not None:
            raise RuntimeError("parts do not nest")
        self._part = _str(name)
        self._emit({"part_start": self._part})
        try:
            yield
        except Exception as e:
            self._emit({"part_error": self._part, "error": why(e)})
        finally:
            self._part = None

    @contextlib.contextmanager
    def patch(self, obj, name, value):
        """Set obj.name = value for the block (a fixed input for one equation, so another's mistake cannot leak)."""
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)


# ------------------------------------------------------------------------------ input helpers used by the checks

def gen(seed):
    return torch.Generator().manual_seed(seed)


def unit(g, n, d, dtype):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def expect_loss_and_finite_grad(ctx, out, leaf, what, atol):
    """Record the loss `out` (`what`), then backpropagate it and record whether the gradient reaching the input
    `leaf` is finite or absent: the edge cases whose loss is 0 (nothing kept, no positive pair)."""
    ctx.expect(out, what, atol=atol)
    if torch.is_tensor(out) and out.requires_grad:
        out.backward()
    ctx.expect(leaf.grad is None or bool(torch.isfinite(leaf.grad).all()), "the gradient is finite (or absent)")


def run_check(c, index, M, emit, folder=None):
    """Run check `c` (number `index`) on modules M, emitting start, its records and end (with the error, if any).

    The global torch RNG is seeded before the check, so inputs drawn from it are the same in both runs."""
    emit({"start": index, "title": c.title})
    ctx = Context(lambda rec: emit(dict(rec, check=index)), folder)
    error = None
    with torch.random.fork_rng():
        torch.manual_seed(1000 + index)
        try:
            c.fn(ctx, M)
        except BaseException as e:  # noqa: B036 - sys.exit() in the student's code is a verdict, not an exit
            error = why(e)
    emit({"end": index, "error": error})
