"""Real unlabeled images (issue 22): empty labels and mask-less images of the folder format, --unlabeled-dir,
--labels all; they reach the unlabeled batches only, never the evaluation split or a supervised loss; pl_acc_* is
measured on hidden ground truth only (blank without); start-up counts, resume, --split, evaluate.py, preview,
and the DDTI recipe of docs/your-own-data.md run as written. Tiny generated folders, 32 px, 2-3 steps."""
import copy
import csv
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import augment
import cli
import data
import evaluate
import hermes
import train

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The run machinery is tested with the paper's settings (cheaper steps than the scratch recipe's separate
# BatchNorm passes); the default recipe has its own tests (test_config, test_methods, test_one_truth).
TINY = ["--image-size", "32", "--batch-size", "2", "--seg-encoder", "resnet18", "--n-anchors", "8",
        "--pixel-bank-size", "32", "--image-bank-size", "8", "--log-every", "1", "--eval-every", "100",
        "--recipe", "paper"]


def img(path, seed, size=(20, 24), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)
    Image.fromarray(g).convert("RGB").save(path, format=fmt)
    return path


def mask(path, size=(20, 24), box=(4, 12, 4, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(m).save(path)
    return path


def make_set(root, n=6, rows_extra=(), group=None):
    """Folder set: b0..b{n-1} benign, m0.. malignant (masks, labels), plus `rows_extra` rows (image files made
    here; masks only for names starting with 'masked')."""
    rows = ["image,label,group"]
    for c, p in ((0, "b"), (1, "m")):
        for i in range(n):
            img(root / "images" / f"{p}{i}.png", 100 * c + i)
            mask(root / "masks" / f"{p}{i}.png")
            rows.append(f"{p}{i}.png,{c},{(group or {}).get(f'{p}{i}', '')}")
    for k, (name, label, grp) in enumerate(rows_extra):
        img(root / "images" / f"{name}.png", 1000 + k)
        if name.startswith("masked"):
            mask(root / "masks" / f"{name}.png")
        rows.append(f"{name}.png,{label},{grp}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_raw(root, copy_of=None):
    """A raw folder as a user holds it: nested, mixed formats, one copy of a labeled file, one name clash."""
    img(root / "x.png", 7)
    img(root / "2024" / "scan 2.jpg", 8, fmt="JPEG")
    img(root / "2024" / "scan 10.tif", 9)
    img(root / "b1.png", 11)                                    # same stem as labeled b1, other pixels
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored")
    if copy_of is not None:
        shutil.copy(copy_of, root / "copy_of_b0.png")           # the same file labeled and raw
    return root


@pytest.fixture
def folder(tmp_path):
    root = make_set(tmp_path / "set", rows_extra=[("masked_u", "", ""), ("bare_u", "", "b2"), ("cls_only", "1", "")])
    raw = make_raw(tmp_path / "raw", copy_of=root / "images" / "b0.png")
    return root, raw


def load(root, raw, S=32):
    with pytest.warns(UserWarning) as rec:
        ds = data.load_dataset("folder", root, image_size=S, unlabeled_dirs=[raw])
    return ds, " | ".join(str(w.message) for w in rec)


# ------------------------------------------------------------------------------------------ reading
def test_reader_marks_unlabeled_rows_and_dir_images(folder):
    root, raw = folder
    ds, warned = load(root, raw)
    assert "1 images of" in warned and "'cls_only'" in warned and "class but no mask" in warned
    assert "copies of images already read" in warned and "copy_of_b0.png" in warned
    a = dict(zip(ds.names, ds.annotated))
    assert sum(a.values()) == 12
    unl = sorted(n for n, v in a.items() if not v)
    assert unl == sorted(["masked_u", "bare_u", "cls_only", "x", "2024/scan 2", "2024/scan 10", "b1.png"])
    assert ds.from_dirs == 4 and [d for _, d in ds.duplicates] == ["b0"]
    i = ds.index
    assert ds.labels[i["masked_u"]] == data.NO_LABEL and set(np.unique(ds.masks[i["masked_u"]])) == {0, 1}
    assert ds.labels[i["bare_u"]] == data.NO_LABEL and (ds.masks[i["bare_u"]] == data.NO_MASK).all()
    assert ds.labels[i["cls_only"]] == 1 and (ds.masks[i["cls_only"]] == data.NO_MASK).all()
    assert ds.labels[i["x"]] == data.NO_LABEL and (ds.masks[i["x"]] == data.NO_MASK).all()
    assert ds.groups[i["bare_u"]] == "b2" and ds.groups[i["x"]] == "x"
    assert ds.counts() == ("benign 6, malignant 6; unlabeled 7 (3 listed without a class or mask, 4 from "
                           "--unlabeled-dir, 1 duplicate files skipped)")


def test_unlabeled_dir_errors_and_demo(tmp_path):
    with pytest.raises(cli.MissingFileError, match="--unlabeled-dir folder not found"):
        data.load_dataset("demo", image_size=32, demo_size=8, unlabeled_dirs=[tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.DataError, match="no image files under it"):
        data.load_dataset("demo", image_size=32, demo_size=8, unlabeled_dirs=[tmp_path / "empty"])
    raw = make_raw(tmp_path / "raw")
    with pytest.warns(UserWarning, match="4 files under --unlabeled-dir are copies"):
        ds = data.load_dataset("demo", image_size=32, demo_size=8, unlabeled_dirs=[raw, tmp_path / "raw"])
    assert len(ds) == 12 and ds.from_dirs == 4 and len(ds.duplicates) == 4   # the second dir is all copies
    assert ds.annotated.sum() == 8 and ds.borderline.shape == (12,)


# ------------------------------------------------------------------------------------------- splits
def sides(ds, sp):
    return {n: k for k in (*data._SPLIT_KEYS, "left_out") for n in sp.get(k, [])}


@pytest.mark.parametrize("labels", [4, 8, "all"])
def test_split_unlabeled_never_labeled_or_evaluated_and_annotated_draw_unchanged(folder, labels):
    root, raw = folder
    ds, _ = load(root, raw)
    plain = data.load_dataset("folder", make_set(root.parent / "plain"), image_size=8)   # no unlabeled image
    for seed in range(4):
        sp = data.make_split(ds, labels, seed)
        for key in ("train_labeled", "eval"):
            assert all(ds.annotated[ds.index[n]] for n in sp[key]), (key, sp[key])
        real = [n for n in ds.names if not ds.annotated[ds.index[n]]]
        side = sides(ds, sp)
        assert all(side[n] in ("train_unlabeled", "left_out") for n in real)           # every one is placed
        assert sp["real_unlabeled"] == [n for n in sp["train_unlabeled"] if n in real]
        # bare_u shares group b2: it is left out exactly when b2 went to evaluation
        assert (side["bare_u"] == "left_out") == (side["b2"] == "eval")
        # the annotated images split as they would without any unlabeled image
        ref = data.make_split(plain, 4, seed)
        assert sp["eval"] == ref["eval"]
        if labels != 4:                              # 8: every annotated train image (4 + 4), like "all"
            assert sp["train_labeled"] == sorted(ref["train_labeled"] + ref["train_unlabeled"], key=data._natural_key)
            assert set(sp["train_unlabeled"]) == set(sp["real_unlabeled"])
        else:
            assert sp["train_labeled"] == ref["train_labeled"]
            assert set(sp["train_unlabeled"]) == set(ref["train_unlabeled"]) | set(sp["real_unlabeled"])


def test_budget_may_label_every_annotated_image_when_real_ones_exist(folder):
    root, raw = folder
    ds, _ = load(root, raw)
    sp = data.make_split(ds, 8, 0)                   # 4 + 4 train images per class, all labeled
    assert len(sp["train_labeled"]) == 8 and set(sp["train_unlabeled"]) == set(sp["real_unlabeled"])
    with pytest.raises(cli.DataError, match="maximum labels: 6"):
        data.make_split(data.load_dataset("folder", make_set(root.parent / "plain"), image_size=8), 8, 0)


def test_labels_all_needs_unlabeled_images(tmp_path):
    ds = data.load_dataset("folder", make_set(tmp_path), image_size=8)
    with pytest.raises(cli.DataError, match="--labels all .* needs unlabeled images.*--unlabeled-dir"):
        data.make_split(ds, "all", 0)
    assert data.parse_labels("ALL") == "all" and data.parse_labels("72") == 72


def test_split_files_refuse_unlabeled_images_outside_train_unlabeled(folder, tmp_path):
    root, raw = folder
    ds, _ = load(root, raw)
    sp = data.make_split(ds, 4, 0)
    for key in ("train_labeled", "eval"):
        bad = {**sp, key: sp[key] + ["x"], "train_unlabeled": [n for n in sp["train_unlabeled"] if n != "x"]}
        with pytest.raises(cli.DataError, match=f"of the {key} images have no class or no mask.*'x'"):
            data.split_indices(ds, bad)
    # a split without the key (drawn by simulation, or older) gets it from the dataset when loaded
    data.save_split({k: v for k, v in sp.items() if k != "real_unlabeled"}, tmp_path / "s.json")
    assert data.load_split(tmp_path / "s.json", ds)["real_unlabeled"] == sp["real_unlabeled"]


# ------------------------------------------------------------------------------------------ batches
def test_batches_carry_real_unlabeled_images_only_in_the_unlabeled_stream(folder):
    root, raw = folder
    ds, _ = load(root, raw)
    sp = data.make_split(ds, 4, 0)
    idx_l, idx_u, _ = data.split_indices(ds, sp)
    real = {ds.index[n] for n in sp["real_unlabeled"]}
    B = len(idx_u)                                   # one step's unlabeled batch is the whole unlabeled set
    dev = augment.DeviceBatches(ds, idx_l, idx_u, B, seed=0)
    steps = augment.StepBatches(augment.LabeledSet(ds, idx_l), augment.UnlabeledSet(ds, idx_u), B, seed=0)
    for batch_l, batch_u in (dev(0), steps[0]):
        x, y, z = batch_l
        assert set(z.tolist()) <= {0, 1} and set(y.unique().tolist()) <= {0, 1}
        z_gt, y_gt = batch_u[3], batch_u[2]
        assert (z_gt == data.NO_LABEL).sum() == sum(ds.labels[i] == data.NO_LABEL for i in idx_u)
        no_mask = (y_gt == data.NO_MASK).flatten(1).all(1)
        assert no_mask.sum() == sum(ds.masks[i, 0, 0] == data.NO_MASK for i in idx_u) > 0
        assert len(real) == int(((z_gt == data.NO_LABEL) | no_mask).sum())


def test_pseudo_label_stats_count_hidden_ground_truth_only():
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05], [0.4, 0.6]])       # (4,2) image probabilities
    t = (p, p.argmax(1), torch.tensor([1.0, 1.0, 0.0, 0.0]))                    # p_img, pl_img, w_img
    full = hermes._pseudo_label_stats(*t, torch.tensor([0, 0, 0, 1]), 0.85, "img")
    assert full["pl_acc_img_all"] == 0.75 and full["pl_acc_img_kept"] == 0.5 and full["n_gt_img"] == 4
    part = hermes._pseudo_label_stats(*t, torch.tensor([0, -1, data.NO_LABEL, 1]), 0.85, "img")
    assert part["pl_acc_img_all"] == 1.0 and part["pl_acc_img_kept"] == 1.0 and part["n_gt_img"] == 2
    assert part["pl_acc_img_conf"] == 1.0 and part["kept_img"] == 0.5          # kept fraction: over all images
    none = hermes._pseudo_label_stats(*t, torch.full((4,), data.NO_LABEL), 0.85, "img")
    for k in ("pl_acc_img_all", "pl_acc_img_kept", "pl_acc_img_conf"):
        assert math.isnan(none[k]), k
    assert none["n_gt_img"] == 0 and none["kept_img"] == 0.5


def test_supervised_losses_never_see_the_unlabeled_ground_truth(folder):
    root, raw = folder
    ds, _ = load(root, raw)
    sp = data.make_split(ds, 4, 0)
    idx_l, idx_u, _ = data.split_indices(ds, sp)
    batch_l, (x_w, x_s, y_gt, z_gt) = augment.DeviceBatches(ds, idx_l, idx_u, 2, seed=0)(0)
    model = train.build_model(vars(train.resolve(train.build_parser().parse_args(
        ["--dataset", "folder", "--data-root", str(root), "--no-pretrained", *TINY]))))
    cfg = hermes.HermesConfig(n_anchors=8, pixel_bank_size=32, image_bank_size=8)
    outs = []
    for gt in ((y_gt, z_gt), (torch.full_like(y_gt, data.NO_MASK), torch.full_like(z_gt, data.NO_LABEL))):
        torch.manual_seed(0)
        m = copy.deepcopy(model)
        loss, stats = hermes.hermes_step(m, hermes.make_banks(m, cfg), batch_l, (x_w, x_s, *gt), 0, 10, cfg)
        loss.backward()
        outs.append((loss.detach(), stats, [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    assert torch.equal(outs[0][0], outs[1][0]) and len(outs[0][2]) > 10
    assert all(torch.equal(a, b) for a, b in zip(outs[0][2], outs[1][2]))
    assert math.isnan(outs[1][1]["pl_acc_pix_all"]) and math.isnan(outs[1][1]["pl_acc_img_kept"])


# ---------------------------------------------------------------------------------------- train.py
def read_log(out):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "train"]


def test_train_labels_all_resume_split_and_evaluate(tmp_path, capsys):
    root = make_set(tmp_path / "set")
    raw = make_raw(tmp_path / "raw", copy_of=root / "images" / "b0.png")
    common = ["--dataset", "folder", "--data-root", str(root), "--unlabeled-dir", str(raw), "--labels", "all",
              "--no-pretrained", *TINY, "--iters", "3"]
    full = str(tmp_path / "full")
    with pytest.warns(UserWarning, match="copies"):
        train.train(common + ["--out", full])
    said = capsys.readouterr().out
    assert "8 labeled, 4 unlabeled, 4 evaluation" in said
    assert ("unlabeled 4 (4 from --unlabeled-dir, 1 duplicate files skipped); of the 4 unlabeled training "
            "images, 0 have a hidden class (pl_acc_img_*) and 0 a hidden mask" in said)
    sp = json.load(open(os.path.join(full, "split.json")))
    assert sp["labels"] == "all" and sp["real_unlabeled"] == ["2024/scan 2", "2024/scan 10", "b1.png", "x"]
    assert sp["train_unlabeled"] == sp["real_unlabeled"] and not set(sp["eval"]) & set(sp["real_unlabeled"])
    rows = read_log(full)
    for r in rows:                                   # no hidden ground truth at all: every accuracy blank
        assert all(r[k] == "" for k in r if k.startswith("pl_acc_")), r
        assert all(r[k] != "" for k in ("loss", "seg_u", "cls_u", "kept_pix", "kept_img")), r
    # killed after step 1 and resumed: the same log and weights
    part = str(tmp_path / "part")
    with pytest.warns(UserWarning):
        assert train.train(common + ["--out", part, "--stop-after", "1", "--ckpt-every", "1"]) is None
        train.train(["--out", part, "--resume"])
    assert "resumed" in capsys.readouterr().out
    for a, b in zip(rows, read_log(part)):
        assert {k: v for k, v in a.items() if k != "sec_per_step"} == {k: v for k, v in b.items()
                                                                       if k != "sec_per_step"}
    wa, wb = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True)["model"] for d in (full, part))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # --split reuses the run's split; evaluate.py reloads the unlabeled folder from config.json
    again = str(tmp_path / "again")
    with pytest.warns(UserWarning):
        train.train([a for a in common if a not in ("--labels", "all")] + ["--split", os.path.join(full, "split.json"),
                                                                          "--iters", "1", "--out", again])
    assert json.load(open(os.path.join(again, "split.json"))) == sp
    with pytest.warns(UserWarning):
        m = evaluate.evaluate_run(full, batch_size=4)
    assert m["n_images"] == 4


def test_budget_plus_hidden_rest_plus_real_counts(tmp_path, capsys):
    root = make_set(tmp_path / "set", rows_extra=[("masked_u", "", ""), ("cls_only", "0", "")])
    raw = make_raw(tmp_path / "raw")
    with pytest.warns(UserWarning, match="class but no mask"):
        train.train(["--dataset", "folder", "--data-root", str(root), "--unlabeled-dir", str(raw), "--labels", "4",
                     "--no-pretrained", *TINY, "--iters", "2", "--out", str(tmp_path / "r")])
    said = capsys.readouterr().out
    # train part 4 + 4: 4 labeled, 4 hidden-label rest + 2 listed + 4 raw unlabeled
    assert "4 labeled, 10 unlabeled, 4 evaluation" in said
    assert "of the 10 unlabeled training images, 5 have a hidden class (pl_acc_img_*) and 5 a hidden mask" in said
    rows = read_log(str(tmp_path / "r"))
    assert len(rows) == 2 and all(r["kept_pix"] != "" for r in rows)


# --------------------------------------------------------------------------------- preview and recipe
def test_preview_shows_unlabeled_images_apart(folder, tmp_path, capsys):
    root, raw = folder
    with pytest.warns(UserWarning):
        data.main(["--preview", str(tmp_path / "p.png"), "--dataset", "folder", "--data-root", str(root),
                   "--unlabeled-dir", str(raw), "--image-size", "32", "--labels", "all", "--rows", "2", "--cols", "3"])
    said = capsys.readouterr().out
    assert "19 images at 32 px (benign 6, malignant 6; unlabeled 7" in said
    assert re.search(r"labels all: train_labeled 8, train_unlabeled \d, eval 4, real_unlabeled \d", said)
    with Image.open(tmp_path / "p.png") as im:
        assert im.size[1] == 3 * (32 * 6 + 14 + 6)          # 2 rows of classes + 1 row of unlabeled images


def ddti_recipe():
    """The python block of docs/your-own-data.md's DDTI recipe, as written there."""
    text = open(os.path.join(HERE, "docs", "your-own-data.md"), encoding="utf-8").read()
    block = re.search(r"<!-- ddti-recipe -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/your-own-data.md lost its DDTI recipe block"
    return block.group(1)


def test_ddti_recipe_runs_as_written(tmp_path, monkeypatch, capsys):
    """A folder in DDTI's own layout: images and GIF masks named case_crop(n), a headerless diagnosis.csv of
    case_crop(n),TI-RADS that omits some crops or leaves their grade empty."""
    root = tmp_path / "DDTI"
    grades = ["2", "3", "4a", "4b", "4c", "5"]
    lines = []
    for case in range(1, 13):
        for crop in (1, 2):
            name = f"{case}_{crop}"
            for n in (1, 2):
                img(root / "images" / f"{name}({n}).jpg", case * 10 + crop * 3 + n, fmt="JPEG")
                m = np.zeros((20, 24), np.uint8)
                m[4:12, 4:16] = 255
                (root / "masks").mkdir(parents=True, exist_ok=True)
                Image.fromarray(m).convert("P").save(root / "masks" / f"{name}({n}).gif")
                if case <= 10:                           # cases 11, 12: not in the csv (ungraded)
                    lines.append(f"{name}({n}),{grades[case % 6]}" if case != 10 else f"{name}({n}),")
    (root / "diagnosis.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(root)
    exec(compile(ddti_recipe(), "docs/your-own-data.md", "exec"), {"__name__": "__main__"})
    said = capsys.readouterr().out
    ds = data.load_dataset("folder", root, image_size=8)
    assert ds.annotated.sum() == 36 and (~ds.annotated).sum() == 12            # cases 10-12 ungraded
    assert sorted(set(ds.groups)) == sorted(str(c) for c in range(1, 13))      # group = case before '_'
    benign = sum(g in ("2", "3") for g in (grades[c % 6] for c in range(1, 10))) * 4
    assert int(((ds.labels == 0) & ds.annotated).sum()) == benign
    assert f"benign {benign}" in said and "ungraded 12" in said and "groups 12" in said
    sp = data.make_split(ds, "all", 0)
    assert len(sp["real_unlabeled"]) + len(sp.get("left_out", [])) == 12
    for key in ("train_labeled", "eval"):
        assert not {ds.groups[ds.index[n]] for n in sp[key]} & {"10", "11", "12"}


def test_reproduce_passes_unlabeled_dir_on_to_every_run(tmp_path, capsys):
    from tools import reproduce
    raw = make_raw(tmp_path / "raw")
    assert reproduce.main(["demo", "--dry-run", "--out", str(tmp_path / "r"), "--unlabeled-dir", str(raw)]) == 0
    cmds = [c for c in capsys.readouterr().out.splitlines() if c.startswith("python")]
    assert cmds and all(f"--unlabeled-dir {raw}" in c for c in cmds)
    for c in cmds:   # each parses with train.py's own parser, the folder kept
        args = train.build_parser().parse_args(c.split()[2:])
        assert args.unlabeled_dir == [str(raw)]
