"""config.py: every setting declared once; the parser, resume rules and report keys are built from it."""
import ast
import glob
import os
import subprocess
import sys

import config
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_flag_of_train_is_declared_in_config():
    dests = {a.dest for a in train.build_parser()._actions if a.dest != "help"}
    assert dests == set(config.SETTINGS)


def test_no_add_argument_outside_config_for_train_options():
    """A flag added to train.py's parser by hand (not from config.py) is caught here."""
    src = open(os.path.join(ROOT, "train.py"), encoding="utf-8").read()
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", getattr(n.func, "id", None)) == "add_argument"]
    assert calls == []


def test_defaults_and_paper_values():
    p = train.build_parser().parse_args([])
    assert (p.lr, p.batch_size, p.lambda_seg, p.lambda_cls, p.alpha, p.beta, p.gamma, p.temperature) == \
        (1e-4, 8, 0.5, 1.0, 0.8, 0.2, 0.1, 0.07)
    assert (p.dtcl, p.ias, p.itcl) == (True, True, True)
    assert train.build_parser().parse_args(["--no-dtcl"]).dtcl is False
    assert config.image_size_for("demo") == 96 and config.image_size_for("busi") == 224


def test_derived_lists():
    # settings that do not change results may change on resume and never split a table
    for name in ("workers", "ckpt_minutes", "progress_seconds", "keep_optimizer", "device", "eval_every"):
        assert name in config.RESUME_OVERRIDABLE and name in config.NEUTRAL_KEYS
    for name in ("lr", "beta", "burn_in", "image_size", "iters", "dataset", "labels", "method"):
        assert name not in config.RESUME_OVERRIDABLE and name not in config.NEUTRAL_KEYS
    assert config.RESUME_MISSING["augment"] == "cpu" and config.RESUME_MISSING["burn_in"] == 0
    assert {k for k, _, _ in config.NOT_IN_PAPER} >= {"unlabeled_bn", "unsup_weight", "ita_form", "init"}
    assert list(config.RECIPE_OPTIONS)[:3] == ["lr_seg", "lr_cls", "burn_in"]   # run-folder names keep this order
    assert config.note_of("unlabeled_bn", "separate") == "separate BN"


def test_every_setting_has_help_group_and_paper_entry():
    for name, f in config.SETTINGS.items():
        m = f.metadata
        assert m["help"] and m["group"] in config.GROUPS, name
        assert m["resume"] in (config.MATCH, config.GIVEN, config.COMMAND), name


def test_config_imports_no_torch():
    code = "import sys, config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_help_answers_without_torch():
    code = ("import sys, runpy; sys.argv = ['train.py', '--help']\n"
            "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported by --help'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.index("common options") < out.stdout.index("running:")


def test_no_import_circle():
    """Project modules (top level and tools/) import each other without a cycle (imports inside functions
    included)."""
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "tools", "*.py"))
    names = {os.path.relpath(f, ROOT)[:-3].replace(os.sep, "."): f for f in files}
    graph = {}
    for mod, path in names.items():
        deps = set()
        for n in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(n, ast.Import):
                deps |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                deps.add(n.module)
                deps |= {f"{n.module}.{a.name}" for a in n.names}
        graph[mod] = {d for d in deps if d in names and d != mod}
    seen, stack = set(), []

    def visit(m):
        assert m not in stack, f"import circle: {' -> '.join(stack[stack.index(m):] + [m])}"
        if m in seen:
            return
        stack.append(m)
        for d in graph[m]:
            visit(d)
        stack.pop()
        seen.add(m)
    for m in graph:
        visit(m)


def _resolved(*argv):
    argv = list(argv)
    return train.resolve(train.build_parser().parse_args(argv), train.given_on_command_line(argv))


def test_recipe_auto_is_scratch_from_random_weights_and_paper_from_pretrained(capsys):
    a = _resolved("--iters", "2000")
    assert (a.recipe, a.lr_seg, a.lr_cls, a.burn_in, a.unlabeled_bn, a.ita_form, a.unsup_weight_cls) == (
        "scratch", 1e-3, 1e-2, 500, "separate", "residual", 0.0)
    assert "recipe scratch (both encoders start from random weights)" in capsys.readouterr().out
    p = _resolved("--iters", "2000", "--pretrained")
    assert (p.recipe, p.lr_seg, p.lr_cls, p.burn_in, p.unlabeled_bn, p.ita_form, p.unsup_weight_cls) == (
        "paper", 1e-4, 1e-4, 0, "shared", "paper", None)
    assert _resolved("--init", "x.pt").recipe == "paper"
    forced = _resolved("--recipe", "paper")
    assert (forced.lr_seg, forced.burn_in, forced.unlabeled_bn) == (1e-4, 0, "shared")


def test_class_prior_from_the_recipe_only_where_there_are_unlabeled_images(capsys):
    assert _resolved().class_prior == "unlabeled"                                       # Hermes, scratch
    assert _resolved("--method", "cps").class_prior == "unlabeled"                      # a comparator
    capsys.readouterr()
    sup = _resolved("--no-dtcl", "--no-ias", "--no-itcl")                               # SupOnly: no unlabeled set
    assert sup.class_prior == "labeled" and "--class-prior" not in capsys.readouterr().out
    assert _resolved("--no-dtcl", "--no-ias", "--no-itcl", "--class-prior", "unlabeled").class_prior == "unlabeled"
    assert _resolved("--pretrained").class_prior == "labeled"                           # paper recipe: §4.1
    assert config.RESUME_MISSING["class_prior"] == "labeled"


def test_ias_warmup_is_the_burn_in_where_there_is_an_ias_module():
    assert (_resolved("--iters", "2000").ias_warmup, _resolved("--iters", "100", "--burn-in", "7").ias_warmup) == (
        500, 7)                                                                          # scratch: = the burn-in
    assert _resolved("--iters", "2000", "--ias-warmup", "0").ias_warmup == 0            # given wins
    for argv in (("--no-ias",), ("--no-dtcl", "--no-ias", "--no-itcl"), ("--method", "cps"), ("--pretrained",)):
        assert _resolved("--iters", "2000", *argv).ias_warmup == 0, argv                # no IAS module / paper
    assert config.recipe_value("burn_in", {"burn_in": 9, "iters": 100}) == 9
    assert config.recipe_value("quarter", {"iters": 101}) == 25 and config.recipe_value(0.5, {}) == 0.5


def test_teacher_ema_only_where_there_is_a_teacher_pass():
    assert _resolved("--teacher", "ema").teacher == "ema"
    assert _resolved("--teacher", "ema", "--no-dtcl").teacher == "self"            # SupOnly: no weak-view pass
    assert _resolved("--teacher", "ema", "--method", "cps").teacher == "self"      # a comparator's own step


def test_options_given_win_over_the_recipe():
    a = _resolved("--iters", "100", "--burn-in", "7", "--unlabeled-bn", "shared", "--unsup-weight-cls", "1")
    assert (a.recipe, a.burn_in, a.unlabeled_bn, a.lr_seg, a.unsup_weight_cls) == ("scratch", 7, "shared", 1e-3, 1.0)
    assert config.RESUME_MISSING["recipe"] == "paper"   # runs made before --recipe ran the paper's settings
