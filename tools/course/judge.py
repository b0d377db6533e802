"""Verdicts, reached in the grader's process only: the student's records of a check against the reference's.

A record is what observe.Context emits. A check's parts (or the whole check, when it has none) each pass when
every value the reference recorded was recorded by the student too, under the same description, and matches;
the check scores points × passed parts / parts."""
import math


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def _describe(v):
    if isinstance(v, dict):
        t = v.get("t")
        if t == "tensor":
            return f"a {tuple(v['shape'])} {v['dtype'].replace('torch.', '')} tensor"
        if t == "raised":
            return f"raised {v['types'][0]}" if v["types"] else "no exception"
        if t == "list":
            return f"a sequence of {v['len']}"
        if t == "float":
            return v["repr"]
        if t == "dtype":
            return v["name"]
        return v.get("type", "?")
    if v is None or isinstance(v, (bool, int, float)):
        return _fmt(v) if isinstance(v, float) else repr(v)
    return f"{type(v).__name__} {_fmt(v)}"


def _num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _close(g, w, atol, rtol):
    return math.isfinite(g) and abs(g - w) <= atol + rtol * abs(w)


def compare(got, want, atol=0.0, rtol=0.0, dtype=False):
    """None when `got` matches `want`, else a short reason."""
    if isinstance(want, dict) and want.get("t") == "tensor":
        if not (isinstance(got, dict) and got.get("t") == "tensor"):
            return f"got {_describe(got)}, expected {_describe(want)}"
        if list(got["shape"]) != list(want["shape"]):
            return f"shape {tuple(got['shape'])}, expected {tuple(want['shape'])}"
        if dtype and got["dtype"] != want["dtype"]:
            return f"dtype {got['dtype']}, expected {want['dtype']}"
        g, w = got["data"], want["data"]
        if len(g) != len(w):
            return f"{len(g)} values, expected {len(w)}"
        exact = not any(isinstance(x, float) for x in w)
        for i, (a, b) in enumerate(zip(g, w)):
            na, nb = _num(a), _num(b)
            ok = (a == b) if exact or na is None or nb is None else _close(na, nb, atol, rtol)
            if not ok:
                if len(w) <= 6:
                    return f"got [{', '.join(_fmt(x) for x in g)}], expected [{', '.join(_fmt(x) for x in w)}]"
                return f"entry {i} is {_fmt(a)}, expected {_fmt(b)}"
        return None
    if isinstance(want, dict) and want.get("t") == "list":
        if not (isinstance(got, dict) and got.get("t") == "list"):
            return f"got {_describe(got)}, expected {_describe(want)}"
        if got["len"] != want["len"]:
            return f"got {got['len']} items, expected {want['len']}"
        for i, (a, b) in enumerate(zip(got["items"], want["items"])):
            r = compare(a, b, atol, rtol, dtype)
            if r:
                return f"item {i}: {r}"
        return None
    if isinstance(want, dict) and want.get("t") == "raised":
        if not (isinstance(got, dict) and got.get("t") == "raised"):
            return f"got {_describe(got)}, expected {_describe(want)}"
        if want["types"] and want["types"][0] not in got["types"]:
            return f"{_describe(got)}, expected {want['types'][0]}"
        if not want["types"] and got["types"]:
            return f"{_describe(got)}, expected no exception"
        return None
    nw, ng = _num(want), _num(got)
    if nw is not None and not isinstance(want, int) or (nw is not None and (atol or rtol)):
        if ng is None:
            return f"got {_describe(got)}, expected {_describe(want)}"
        return None if _close(ng, nw, atol, rtol) else f"got {_fmt(ng)}, expected {_fmt(nw)}"
    if got != want or type(got) is not type(want):
        return f"got {_describe(got)}, expected {_describe(want)}"
    return None


def _split(records):
    """{part: {"obs": [...], "error": str|None}} in order of appearance; records outside parts go to part None."""
    parts = {}
    for r in records:
        if "part_start" in r:
            parts.setdefault(r["part_start"], {"obs": [], "error": None})
        elif "part_error" in r:
            parts.setdefault(r["part_error"], {"obs": [], "error": None})["error"] = r.get("error")
        elif "what" in r:
            parts.setdefault(r.get("part"), {"obs": [], "error": None})["obs"].append(r)
    return parts


def verdict(check, want, got, reason=None):
    """The result of one check: want/got are {"records": [...], "error": str|None} (got None: no answer)."""
    res = {"title": check.title, "name": check.name, "max": check.points, "points": 0, "msg": ""}
    if want.get("error"):
        raise RuntimeError(f"the reference fails its own check {check.title!r}: {want['error']}")
    wparts = _split(want["records"])
    if not wparts:
        raise RuntimeError(f"check {check.title!r} records nothing")
    if got is None:
        res["msg"] = reason or "no answer"
        return res
    gparts, failed = _split(got["records"]), []
    for name, w in wparts.items():
        if w["error"]:
            raise RuntimeError(f"the reference fails part {name!r} of {check.title!r}: {w['error']}")
        g = gparts.get(name, {"obs": [], "error": None})
        msg = None
        for i, wo in enumerate(w["obs"]):
            if i >= len(g["obs"]):
                msg = (wo["what"] if len(w["obs"]) > 1 else None,
                       g["error"] or got.get("error") or reason or "no value recorded")
                break
            go = g["obs"][i]
            if go.get("what") != wo["what"]:
                msg = (wo["what"], "the records are out of order")
                break
            r = compare(go.get("value"), wo["value"], wo["atol"], wo["rtol"], wo["dtype"])
            if r:
                msg = (wo["what"], r)
                break
        else:
            if len(g["obs"]) > len(w["obs"]):
                msg = (None, "more values recorded than the reference")
            elif g["error"]:
                msg = (None, g["error"])
        if msg:
            failed.append((name, msg))
    if not failed and got.get("error"):
        failed.append((None, (None, got["error"])))
    n = len(wparts)
    passed = max(0, n - len(failed))
    res["points"] = check.points if passed == n else round(check.points * passed / n, 2)
    if failed:
        reasons, whats = {m[1] for _, m in failed}, {m[0] for _, m in failed}
        if len(reasons) == 1 and len(failed) > 1:       # the same reason everywhere (a stub, a crash): say it once
            what = whats.pop() if len(whats) == 1 else None
            res["msg"] = ((f"{what}: " if what else "") + reasons.pop())[:600]
        else:
            shown = "; ".join((f"[{p}] " if p and n > 1 else "") + (f"{m[0]}: " if m[0] else "") + m[1]
                              for p, m in failed[:3])
            res["msg"] = (shown + (f"; and {len(failed) - 3} more" if len(failed) > 3 else ""))[:600]
    return res


def apply_needs(checks, results):
    """A check with `needs` keeps its points only when one of the checks it needs scored at least half of theirs
    (registry.check): constant answers that happen to pass an edge case score nothing there."""
    by_name = {r["name"]: r for r in results}
    for c, r in zip(checks, results):
        if not c.needs or not r["points"]:
            continue
        if not any(by_name[n]["points"] >= by_name[n]["max"] / 2 for n in c.needs):
            titles = " or ".join(f"'{by_name[n]['title']}'" for n in c.needs)
            r["points"], r["msg"] = 0, f"counts once {titles} passes (at least half)"[:600]
    return results
