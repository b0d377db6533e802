"""The entry points as a user runs them: subprocesses on generated data and bad input.

Each bad input must give a one- or two-line message naming the file or value, a non-zero exit status and no
traceback, and must leave every file that existed before unchanged; --debug or HERMES_DEBUG=1 shows the
traceback."""
import hashlib
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clis(*calls, cwd, env=None):
    """Run each `(script, *args)` of calls as `python script args` from `cwd` as a user would (one thread, no debug
    unless env says so), side by side: each pays a torch import (~4 s of CPU), which two cores halve."""
    e = {k: v for k, v in os.environ.items() if k != "HERMES_DEBUG"}
    e.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="default", **(env or {}))
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for script, *args in calls]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def cli(script, *args, cwd, env=None):
    return clis((script, *args), cwd=cwd, env=env)[0]


def snapshot(folder):
    """{relative path: sha256} of every file under folder."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_clean_error(r, *expected):
    """Non-zero status; stderr = at most two error lines (warnings aside), no traceback; each expected text in it."""
    assert r.returncode not in (0, None), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and ": warning: " not in ln]
    assert 1 <= len(lines) <= 2, r.stderr
    assert "error" in lines[0], r.stderr
    for text in expected:
        assert text in r.stderr, (text, r.stderr)


def make_folder_set(root, n=12, mask_ext=".png", group=False):
    """A `folder` dataset of n benign + n malignant 40x40 images with square masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = ["image,label" + (",group" if group else "")]
    for i in range(2 * n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        m = np.zeros((40, 40), np.uint8)
        m[8:30, 10:28] = 255
        Image.fromarray(m).save(root / "masks" / f"im{i}{mask_ext}")
        rows.append(f"im{i}.png,{i % 2}" + (f",case{i % 2}-{i // 4}" if group else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def folder_set(tmp_path):
    return make_folder_set(tmp_path / "data")


# ------------------------------------------------------------------------------------------- data.py
def preview(tmp_path, *args, env=None):
    return cli("data.py", "--preview", tmp_path / "sheet.png", "--dataset", "folder", "--image-size", 32, *args,
               cwd=tmp_path, env=env)


# One subprocess costs a torch import (~4 s of CPU): one case per kind of failure here; test_data.py checks
# that every DataError message is one line.
@pytest.mark.parametrize("case", ["no_root", "no_mask", "bad_label", "corrupt_image", "budget_too_large"])
def test_data_errors(tmp_path, folder_set, case):
    args, expected = ["--data-root", folder_set], []
    if case == "no_root":
        args, expected = ["--data-root", tmp_path / "nowhere"], ["nowhere", "not found"]
    elif case == "no_mask":            # one missing mask file makes an unlabeled image (issue 22); no folder errs
        shutil.rmtree(folder_set / "masks")
        expected = ["mask folder not found", "masks"]
    elif case == "bad_label":
        (folder_set / "labels.csv").write_text("image,label\nim0.png,0\nim1.png,normal\n")
        expected = ["'normal'", "labels.csv line 3", "benign/malignant"]
    elif case == "corrupt_image":
        (folder_set / "images" / "im5.png").write_bytes(b"not a png")
        expected = ["cannot read image", "im5.png"]
    else:
        args += ["--labels", 16]           # 12 + 12 images: train parts 8 + 8, all labeled would leave none
        expected = ["labels=16", "no unlabeled", "maximum labels: 14"]
    before = snapshot(tmp_path)
    r = preview(tmp_path, *args)
    assert_clean_error(r, *expected)
    assert snapshot(tmp_path) == before


def test_debug_flag_shows_the_traceback(tmp_path):
    r = preview(tmp_path, "--data-root", tmp_path / "nowhere", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "MissingFileError" in r.stderr


def test_cli_main_in_process(capsys, monkeypatch):
    """cli.cli_main: DataError -> one line, status 1; other errors -> two lines; HERMES_DEBUG re-raises."""
    import cli as shared  # the module; cli() above runs a program

    def fails(exc):
        def main(argv):
            raise exc
        return main

    monkeypatch.delenv("HERMES_DEBUG", raising=False)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)   # cli_main replaces it
    errs = []
    for exc, status in ((shared.DataError("bad value 7 in x.csv (use 0/1)"), 1),
                        (RuntimeError("deep trouble\nsecond line"), 1), (KeyboardInterrupt(), 130)):
        with pytest.raises(SystemExit) as e:
            shared.cli_main(fails(exc), [])
        assert e.value.code == status
        errs.append(capsys.readouterr().err.strip().splitlines())
    assert errs[0] == [f"{os.path.basename(sys.argv[0])}: error: bad value 7 in x.csv (use 0/1)"]
    assert len(errs[1]) == 2 and errs[1][0].endswith("error: RuntimeError: deep trouble ...")
    assert "--debug" in errs[1][1] and "HERMES_DEBUG=1" in errs[1][1]
    assert len(errs[2]) == 1 and errs[2][0].endswith("interrupted")
    monkeypatch.setenv("HERMES_DEBUG", "1")
    with pytest.raises(shared.DataError):
        shared.cli_main(fails(shared.DataError("x")), [])
    monkeypatch.setenv("HERMES_DEBUG", "0")
    with pytest.raises(SystemExit):
        shared.cli_main(fails(shared.DataError("x")), [])
    assert shared.cli_main(lambda argv: argv, ["--debug"]) == ["--debug"]


def test_gif_masks_unlisted_images_and_the_maximum_budget(tmp_path):
    root = make_folder_set(tmp_path / "data", mask_ext=".gif", group=True)
    Image.new("RGB", (40, 40)).save(root / "images" / "extra.png")       # not in labels.csv
    r = preview(tmp_path, "--data-root", root, "--labels", 14)
    assert r.returncode == 0, r.stderr
    assert "train_labeled 14, train_unlabeled 2" in r.stdout and "12 groups" in r.stdout, r.stdout
    warning = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warning) == 1 and "warning: 1 images" in warning[0] and "'extra.png'" in warning[0], r.stderr


# ------------------------------------------------------------------------------------ the snapshot helper
def test_snapshot_sees_every_change(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    before = snapshot(tmp_path)
    (tmp_path / "a" / "f.txt").write_text("y")
    assert snapshot(tmp_path) != before


# ------------------------------------------------------------------------- train.py, evaluate.py, tools/bench.py
def fake_run(folder):
    """A run folder as a killed run leaves it, with its checkpoint cut in half by a bad copy."""
    folder.mkdir()
    (folder / "config.json").write_text('{"dataset": "demo"}\n')
    (folder / "log.csv").write_text("kind,iter\ntrain,1\n")
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip archive")
    return folder


def test_train_resume_without_checkpoint_touches_nothing(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    before = snapshot(tmp_path)
    r = cli("train.py", "--resume", "--out", run, cwd=tmp_path)
    assert_clean_error(r, "checkpoint.pt", str(run))
    assert snapshot(tmp_path) == before


def test_train_truncated_checkpoint_out_file_and_debug(tmp_path):
    run, again = fake_run(tmp_path / "run"), fake_run(tmp_path / "again")   # two folders: one writer each
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    truncated, is_file, debug = clis(("train.py", "--resume", "--out", run), ("train.py", "--out", tmp_path / "notes.txt"),
                                     ("train.py", "--resume", "--out", again, "--debug"), cwd=tmp_path)
    assert_clean_error(truncated, str(run / "checkpoint.pt"), "without --resume")
    assert_clean_error(is_file, "notes.txt", "is a file")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert snapshot(tmp_path) == before


def test_evaluate_and_bench_errors(tmp_path):
    run = fake_run(tmp_path / "run")
    before = snapshot(tmp_path)
    truncated, nowhere, bench = clis(("evaluate.py", run), ("evaluate.py", tmp_path / "nowhere"),
                                     ("tools/bench.py", "--dataset", "busi", "--data-root", tmp_path / "nowhere"),
                                     cwd=tmp_path)
    assert_clean_error(truncated, str(run / "checkpoint.pt"))
    assert_clean_error(nowhere, "nowhere")
    assert_clean_error(bench, "nowhere")
    assert snapshot(tmp_path) == before


def test_first_errors_name_the_fix_in_one_line(tmp_path):
    (tmp_path / "UDIAT" / "BUS" / "original").mkdir(parents=True)        # a --data-root one level too high
    (tmp_path / "UDIAT" / "BUS" / "DatasetB.xlsx").write_bytes(b"")
    (tmp_path / "BUSI" / "benign").mkdir(parents=True)                    # ... and one level too low
    (tmp_path / "BUSI" / "malignant").mkdir()
    *names, high, low = clis(
        ("train.py", "--dataset", "UDIAT"), ("train.py", "--dataset", "ddti"),
        ("train.py", "--dataset", "udiat", "--data-root", tmp_path / "UDIAT", "--no-pretrained"),
        ("tools/bench.py", "--dataset", "busi", "--data-root", tmp_path / "BUSI" / "benign"), cwd=tmp_path)
    for name, r in zip(("UDIAT", "ddti"), names):
        assert_clean_error(r, f"--dataset {name}", "demo, busi, udiat, sztus, folder", "--dataset folder")
        assert len(r.stderr.strip().splitlines()) == 1 and "usage" not in r.stderr
        assert ("did you mean udiat" in r.stderr) == (name == "UDIAT")
    assert_clean_error(high, "DatasetB.xlsx", f"--data-root {tmp_path / 'UDIAT' / 'BUS'}")
    assert_clean_error(low, "benign and malignant", f"--data-root {tmp_path / 'BUSI'}")
    assert "(" + "'" not in low.stderr                                       # no Python tuple


def test_offline_pretrained_names_every_file(monkeypatch):
    import urllib.error

    import models
    import train

    def offline(self, *a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(type(models.ENCODERS["resnet34"][1].IMAGENET1K_V1), "get_state_dict", offline)
    monkeypatch.setattr(models, "weights_dir", lambda: "/nowhere/hub/checkpoints")
    cfg = vars(train.resolve(train.build_parser().parse_args(["--pretrained"])))
    with pytest.raises(models.WeightsUnavailable) as e:
        train.build_model(cfg)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, models.cli.DataError)   # a user error: no 'unexpected' framing
    for text in ("resnet34-b627a593.pth", "resnet18-f37072fd.pth", "/nowhere/hub/checkpoints",
                 "--init-seg-encoder FILE --init-cls-encoder FILE", "--no-pretrained"):
        assert text in msg, (text, msg)
