"""Grades as text (one block per student), JSON, CSV (one row per student and check) and a class summary."""
import csv
import io
import statistics

CSV_COLUMNS = ("student", "assignment", "check", "points", "max", "message")


def _num(x):
    return int(x) if float(x).is_integer() else round(float(x), 2)


def total(g):
    return _num(sum(r["points"] for r in g["results"])), sum(r["max"] for r in g["results"])


def text(g, what=""):
    got, top = total(g)
    lines = [f"{g['student']}: {g['assignment']}" + (f" ({what})" if what else "")]
    lines += [f"  warning: {w}" for w in g["warnings"]]
    width = max(len(r["title"]) for r in g["results"])
    for r in g["results"]:
        mark = f"{_num(r['points']):>4}/{r['max']:<2}"
        lines.append((f"  {r['title']:<{width}}  {mark}" + (f"  {r['msg']}" if r["msg"] else "")).rstrip())
    lines.append(f"  Total: {got}/{top}" + ("  (full marks)" if got == top else ""))
    return "\n".join(lines)


def rows(grades):
    for g in grades:
        for r in g["results"]:
            yield {"student": g["student"], "assignment": g["assignment"], "check": r["title"],
                   "points": _num(r["points"]), "max": r["max"], "message": r["msg"]}


def to_csv(grades):
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows(grades))
    return buf.getvalue()


def summary(grades):
    """Per assignment: totals (mean, min, median, max) and each check's mean points and how many lost points on
    it, the checks most students lose first."""
    out = {}
    for g in grades:
        s = out.setdefault(g["assignment"], {"students": 0, "totals": [], "max": total(g)[1], "checks": {}})
        s["students"] += 1
        s["totals"].append(total(g)[0])
        for r in g["results"]:
            c = s["checks"].setdefault(r["title"], {"max": r["max"], "points": [], "lost_by": 0})
            c["points"].append(r["points"])
            c["lost_by"] += r["points"] < r["max"]
    result = {}
    for name, s in out.items():
        checks = [{"check": t, "max": c["max"], "mean": _num(round(statistics.mean(c["points"]), 2)),
                   "lost_by": c["lost_by"]} for t, c in s["checks"].items()]
        checks.sort(key=lambda c: (-c["lost_by"], c["mean"] / c["max"]))
        result[name] = {"students": s["students"], "max": s["max"],
                        "mean": _num(round(statistics.mean(s["totals"]), 2)), "min": min(s["totals"]),
                        "median": _num(statistics.median(s["totals"])), "max_scored": max(s["totals"]),
                        "full_marks": sum(t == s["max"] for t in s["totals"]), "checks": checks}
    return result


def summary_text(summ):
    lines = []
    for name, s in summ.items():
        lines.append(f"Class summary, {name}: {s['students']} student(s), mean {s['mean']}/{s['max']}, "
                     f"min {s['min']}, median {s['median']}, max {s['max_scored']}, full marks {s['full_marks']}")
        lost = [c for c in s["checks"] if c["lost_by"]]
        for c in lost[:10]:
            lines.append(f"  lost by {c['lost_by']}/{s['students']}  mean {c['mean']}/{c['max']}  {c['check']}")
        if not lost:
            lines.append("  no check lost by anyone")
    return "\n".join(lines)
