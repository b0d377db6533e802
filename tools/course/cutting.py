"""Cutting on the syntax tree: a function's body replaced by a stub (signature and docstring kept byte for byte),
and the project's tests that would show a solution removed with the helpers only they use."""
import ast
import re


def find_function(tree, qualname):
    """The FunctionDef node of `qualname` ("f" or "Class.method") among the module's top-level definitions."""
    body, node = tree.body, None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise KeyError(f"tools.course: no definition {qualname!r} (missing {part!r})")
        body = node.body
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise KeyError(f"tools.course: {qualname!r} is a class, not a function")
    return node


def body_span(fn):
    """(first line, last line, indent) of a function's body after its docstring (1-based, inclusive)."""
    body = fn.body[1:] if ast.get_docstring(fn, clean=False) is not None else fn.body
    if not body:
        raise ValueError(f"tools.course: {fn.name} has nothing to cut besides its docstring")
    first = body[0]
    start = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
    if start <= fn.lineno:
        raise ValueError(f"tools.course: {fn.name} has its body on the `def` line; cannot cut it by lines")
    return start, fn.end_lineno, first.col_offset


def stub_lines(module, qualname, eq, pad, mine=True):
    """The two lines that replace a cut body: a TODO for the student's own assignment, a plain stub otherwise."""
    if mine:
        msg = f"{module}.{qualname}: {eq} is your assignment (see ASSIGNMENT.md)"
        return [f"{pad}# TODO ({eq}): write the body of this function; see ASSIGNMENT.md.\n",
                f"{pad}raise NotImplementedError({msg!r})\n"]
    msg = f"{module}.{qualname} ({eq}) is another assignment's, cut from this copy"
    return [f"{pad}# Cut: another assignment of the course implements this ({eq}).\n",
            f"{pad}raise NotImplementedError({msg!r})\n"]


def cut_source(src, cuts, module="module"):
    """Replace the bodies of the functions in `cuts` [(qualname, "eq. (N)"[, mine])] by a stub; returns the source.

    The docstring, signature, decorators and everything outside the bodies stay byte for byte. `mine` (default
    True) marks the student's own assignment (a TODO stub); False marks another assignment's function."""
    tree = ast.parse(src)
    spans = []
    for cut in cuts:
        qualname, eq, mine = (tuple(cut) + (True,))[:3]
        spans.append((body_span(find_function(tree, qualname)), qualname, eq, mine))
    lines = src.splitlines(keepends=True)
    for (start, end, col), qualname, eq, mine in sorted(spans, reverse=True):  # bottom-up: line numbers stay valid
        lines[start - 1:end] = stub_lines(module, qualname, eq, " " * col, mine)
    out = "".join(lines)
    ast.parse(out)  # still valid Python
    return out


def _idents(node):
    """Every name a definition mentions: variables, attributes, argument names (fixtures), imported names."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
    return out


def strip_tests(src, names):
    """Remove the top-level tests that mention any of `names`, then the helpers only they used.

    Returns (new source, [removed definition names]). Used so that the project's own tests (which hold
    hand-worked derivations and naive-loop twins) do not hand the solution to the student."""
    tree = ast.parse(src)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    others = [n for n in tree.body if n not in defs]
    is_test = lambda n: n.name.startswith(("test_", "Test"))
    removed = {n.name for n in defs if is_test(n) and _idents(n) & set(names)}
    while True:  # helpers used by removed tests and by nothing that stays
        kept = [n for n in defs if n.name not in removed]
        used_kept = set().union(*[_idents(n) for n in kept + others]) if kept or others else set()
        used_removed = set().union(*[_idents(n) for n in defs if n.name in removed]) if removed else set()
        more = {n.name for n in kept if not is_test(n) and n.name in used_removed and n.name not in used_kept}
        if not more:
            break
        removed |= more
    if not removed:
        return src, []
    lines = src.splitlines(keepends=True)
    for n in sorted((n for n in defs if n.name in removed), key=lambda n: n.lineno, reverse=True):
        start = min([n.lineno] + [d.lineno for d in n.decorator_list])
        del lines[start - 1:n.end_lineno]
    out = re.sub(r"\n{4,}", "\n\n\n", "".join(lines))
    ast.parse(out)
    return out, [n.name for n in defs if n.name in removed]
