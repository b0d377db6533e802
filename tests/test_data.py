"""Tests of data.py on tiny fixtures written to tmp_path: readers, demo set, splits, augmentation, loaders, errors."""
import json
import os
import re

import numpy as np
import openpyxl
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import augment
import cli
import data

MEAN = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(3, 1, 1)


# ------------------------------------------------------------------------------------------- helpers
def png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    (im.convert(mode) if mode else im).save(path)
    return path


def grey_image(h, w, seed=0):
    g = np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def rect_mask(h, w, y0, y1, x0, x1, value=255):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = value
    return m


def make_busi(root):
    """BUSI-like tree: 3 benign (one with _mask_1/_mask_2), 2 malignant, a normal/ folder; sizes differ."""
    d = root / "Dataset_BUSI_with_GT"
    # benign (2): 32x32, three masks whose union is checked at S=16 (even rectangle edges survive nearest x0.5).
    png(d / "benign" / "benign (2).png", grey_image(32, 32))
    png(d / "benign" / "benign (2)_mask.png", rect_mask(32, 32, 24, 32, 0, 8), "1")          # 1-bit
    png(d / "benign" / "benign (2)_mask_1.png", np.repeat(rect_mask(32, 32, 0, 8, 0, 8)[..., None], 3, 2))  # RGB
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[16:24, 16:32, :3] = 255
    png(d / "benign" / "benign (2)_mask_2.png", rgba)                                          # RGBA
    png(d / "benign" / "benign (10).png", grey_image(30, 44, 1))
    png(d / "benign" / "benign (10)_mask.png", rect_mask(30, 44, 5, 20, 5, 30))                # 8-bit
    png(d / "benign" / "benign (1).png", grey_image(50, 40, 2))
    png(d / "benign" / "benign (1)_mask.png", rect_mask(50, 40, 10, 30, 10, 30))
    for i in (1, 2):
        png(d / "malignant" / f"malignant ({i}).png", grey_image(40, 52, 3 + i))
        png(d / "malignant" / f"malignant ({i})_mask.png", rect_mask(40, 52, 8, 30, 8, 40))
    png(d / "normal" / "normal (1).png", grey_image(20, 20))
    png(d / "normal" / "normal (1)_mask.png", np.zeros((20, 20)))
    return d


def make_udiat(root, types=None):
    types = types or {1: "Benign", "000002": "MALIGNANT", 3.0: "benign ", 4: "Malignant"}
    for k in range(1, 6):  # 000005 is on disk but not in the sheet: ignored
        png(root / "original" / f"{k:06d}.png", grey_image(24, 28, k))
        png(root / "GT" / f"{k:06d}.png", rect_mask(24, 28, 4, 12 + k, 4, 20))
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Image", "Type", "Diagnosis", "Notes"])
    for i, t in types.items():
        ws.append([i, t, "FA", None])
    ws.append([None, None, None, None])
    ws.append([None, None, None, None])
    ws.append(["Legend", None, None])
    ws.append(["FA", "Fibroadenoma"])
    ws.append(["IDC", "Invasive ductal carcinoma"])
    wb.save(root / "DatasetB.xlsx")
    return root


def make_sztus(root, lines=None):
    names = ["L1-p01-1", "L1-p01-2", "L2-p01-3", "L1-p02-1", "L1-p03-1", "L3-p03-2"]
    for k, n in enumerate(names):
        png(root / "image" / f"{n}.png", grey_image(20, 26, k))
        png(root / "mask" / f"{n}_mask.png", rect_mask(20, 26, 2, 10, 3, 12))
    classes = ["0", "benign", "0", "1", "Malignant", "1"]
    lines = lines or [f"{n}.png {n}_mask.png {c}" for n, c in zip(names, classes)]
    (root / "labeled.txt").write_bytes(("\r\n".join(lines[:3] + [""] + lines[3:]) + "\r\n\r\n").encode())
    return root


def make_folder(root, rows=None):
    png(root / "images" / "a.png", grey_image(20, 20, 0))
    png(root / "masks" / "a.png", rect_mask(20, 20, 2, 8, 2, 8))
    png(root / "images" / "b.png", grey_image(30, 20, 1))
    png(root / "masks" / "b.png", rect_mask(30, 20, 2, 8, 2, 8))
    Image.fromarray(grey_image(24, 24, 2)).save(root / "images" / "c.jpg")
    png(root / "masks" / "c.png", rect_mask(24, 24, 2, 18, 2, 8, value=1))                   # 0/1 mask
    png(root / "images" / "d.png", grey_image(24, 24, 3))
    png(root / "masks" / "d.png", rect_mask(24, 24, 10, 18, 2, 8))
    rows = rows or ["a.png,0", "b,benign", "c.jpg,malignant", " d.png , 1 "]
    (root / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    return root


def fake_set(n_b, n_m, S=8, groups=None, name="fake", seed=0):
    """CachedSet built in memory (no files): random images, a square lesion, names f'im{i}'."""
    n = n_b + n_m
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, S, S), np.uint8)
    masks[:, S // 4:S // 2, S // 4:S // 2] = 1
    names = [f"im{i}" for i in range(n)]
    return data.CachedSet(images=rng.integers(0, 255, (n, S, S, 3), dtype=np.uint8), masks=masks,
                          labels=np.array([0] * n_b + [1] * n_m, np.int64), names=names,
                          groups=groups or list(names), name=name)


def pattern_set(S=32, n=6):
    """Images whose only content is their (asymmetric) mask: white where the mask is 1."""
    masks = np.zeros((n, S, S), np.uint8)
    for i in range(n):
        masks[i, 4:S - 6, 3:9] = 1                    # vertical bar on the left
        masks[i, S - 10:S - 6, 3:S - 4] = 1           # foot of an L
        masks[i, 5:10, S - 12 + i:S - 6 + i // 2] = 1  # a block top right
    images = np.repeat((masks * 255)[..., None], 3, axis=3).astype(np.uint8)
    names = [f"p{i}" for i in range(n)]
    return data.CachedSet(images=images, masks=masks, labels=np.arange(n) % 2, names=names, groups=list(names),
                          name="pattern")


def unnormalise_grey(x):
    return ((x * STD + MEAN) * 255).mean(0)


def iou(a, b):
    a, b = a.bool(), b.bool()
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


def off_boundary_errors(pred, mask, r=1):
    """Pixels where pred and mask disagree more than r px away from the mask's boundary (bilinear image vs
    nearest mask may differ next to the boundary; a geometric mismatch shows up elsewhere)."""
    m = mask.float()[None, None]
    dil = torch.nn.functional.max_pool2d(m, 2 * r + 1, 1, r)[0, 0]
    ero = -torch.nn.functional.max_pool2d(-m, 2 * r + 1, 1, r)[0, 0]
    return ((pred.bool() != mask.bool()) & (dil == ero)).sum().item()


# ------------------------------------------------------------------------------------------- readers
def test_busi_layout_counts_labels_union_and_normal_skipped(tmp_path):
    make_busi(tmp_path)
    ds = data.load_dataset("busi", tmp_path, image_size=16)
    assert ds.names == ["benign (1)", "benign (2)", "benign (10)", "malignant (1)", "malignant (2)"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.masks.shape == (5, 16, 16) and set(np.unique(ds.masks)) <= {0, 1}
    assert ds.merged == 1 and ds.groups == ds.names and ds.name == "busi"
    union = np.zeros((16, 16), np.uint8)
    union[12:16, 0:4] = union[0:4, 0:4] = union[8:12, 8:16] = 1
    np.testing.assert_array_equal(ds.masks[ds.index["benign (2)"]], union)
    # the class folders themselves as root give the same set
    ds2 = data.load_dataset("busi", tmp_path / "Dataset_BUSI_with_GT", image_size=16)
    np.testing.assert_array_equal(ds2.images, ds.images)
    np.testing.assert_array_equal(ds2.masks, ds.masks)


def test_image_resize_is_bilinear_rgb_and_mask_nearest(tmp_path):
    make_busi(tmp_path)
    ds = data.load_dataset("busi", tmp_path, image_size=16)
    src = Image.open(tmp_path / "Dataset_BUSI_with_GT" / "benign" / "benign (10).png").convert("RGB")
    np.testing.assert_array_equal(ds.images[ds.index["benign (10)"]],
                                  np.asarray(src.resize((16, 16), Image.Resampling.BILINEAR)))
    m = Image.open(tmp_path / "Dataset_BUSI_with_GT" / "benign" / "benign (10)_mask.png")
    np.testing.assert_array_equal(ds.masks[ds.index["benign (10)"]],
                                  np.asarray(m.resize((16, 16), Image.Resampling.NEAREST)) > 127)


def test_udiat_xlsx_numeric_ids_case_and_legend(tmp_path):
    make_udiat(tmp_path)
    ds = data.load_dataset("udiat", tmp_path, image_size=12)
    assert ds.names == ["000001", "000002", "000003", "000004"]
    assert ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.masks.shape == (4, 12, 12) and ds.masks.sum() > 0


def test_sztus_crlf_list_patient_ids(tmp_path):
    make_sztus(tmp_path)
    ds = data.load_dataset("sztus", tmp_path, image_size=10)
    assert ds.names == ["L1-p01-1", "L1-p01-2", "L2-p01-3", "L1-p02-1", "L1-p03-1", "L3-p03-2"]
    assert ds.groups == ["p01", "p01", "p01", "p02", "p03", "p03"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_csv_extensions_and_01_masks(tmp_path):
    make_folder(tmp_path)
    ds = data.load_dataset("folder", tmp_path, image_size=12)
    assert ds.names == ["a", "b", "c", "d"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.masks[2].sum() > 0  # stored as 0/1, not 0/255


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["busi", "udiat", "sztus", "folder"])
def test_missing_root(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_dataset(name, tmp_path / "nowhere")


def test_unknown_dataset_and_missing_root_argument():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="data-root"):
        data.load_dataset("busi", None)


def test_busi_missing_mask(tmp_path):
    d = make_busi(tmp_path)
    (d / "benign" / "benign (1)_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"benign \(1\)_mask\.png"):
        data.load_dataset("busi", tmp_path, image_size=8)


def test_corrupt_image_named(tmp_path):
    d = make_busi(tmp_path)
    (d / "malignant" / "malignant (2).png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"malignant \(2\)\.png"):
        data.load_dataset("busi", tmp_path, image_size=8)


def test_truncated_image_named(tmp_path):
    make_folder(tmp_path)
    p = tmp_path / "images" / "b.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(ValueError, match="b.png"):
        data.load_dataset("folder", tmp_path, image_size=8)


def test_size_mismatch_named(tmp_path):
    d = make_busi(tmp_path)
    png(d / "benign" / "benign (10)_mask_1.png", np.zeros((31, 44)))
    with pytest.raises(ValueError, match=r"size mismatch.*benign \(10\)"):
        data.load_dataset("busi", tmp_path, image_size=8)


def test_unknown_labels(tmp_path):
    make_folder(tmp_path / "f", rows=["a.png,0", "b.png,normal", "c.jpg,1"])
    with pytest.raises(ValueError, match=r"'normal'.*labels.csv line 3"):
        data.load_dataset("folder", tmp_path / "f")
    make_udiat(tmp_path / "u", types={1: "Benign", 2: "Suspicious"})
    with pytest.raises(ValueError, match=r"Suspicious.*DatasetB.xlsx row 3"):
        data.load_dataset("udiat", tmp_path / "u")
    make_sztus(tmp_path / "s", lines=["L1-p01-1.png L1-p01-1_mask.png 2"])
    with pytest.raises(ValueError, match=r"'2'.*labeled.txt line 1"):
        data.load_dataset("sztus", tmp_path / "s")


def test_missing_files_of_lists(tmp_path):
    make_udiat(tmp_path / "u", types={1: "Benign", 7: "Malignant"})
    with pytest.raises(FileNotFoundError, match="000007"):
        data.load_dataset("udiat", tmp_path / "u")
    make_sztus(tmp_path / "s")
    (tmp_path / "s" / "mask" / "L1-p02-1_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="L1-p02-1_mask.png"):
        data.load_dataset("sztus", tmp_path / "s")
    make_folder(tmp_path / "f")
    (tmp_path / "f" / "masks" / "d.png").unlink()       # folder format: an image without a mask is unlabeled
    with pytest.warns(UserWarning, match="class but no mask.*used as unlabeled images.*'d'"):
        ds = data.load_dataset("folder", tmp_path / "f")
    assert ds.annotated.tolist() == [True, True, True, False]
    (tmp_path / "f" / "labels.csv").write_text("image,label\na.png,0\nb.png,0\nzz.png,1\n")
    with pytest.raises(FileNotFoundError, match="zz.png"):
        data.load_dataset("folder", tmp_path / "f")


def test_empty_class_and_empty_dataset(tmp_path):
    d = make_busi(tmp_path / "b")
    for f in (d / "malignant").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no malignant images"):
        data.load_dataset("busi", tmp_path / "b")
    make_folder(tmp_path / "f", rows=[" , "])
    with pytest.raises(ValueError, match="empty dataset"), pytest.warns(UserWarning, match="not listed"):
        data.load_dataset("folder", tmp_path / "f")


# -------------------------------------------------------------------------------------------- demo set
def test_demo_default_size_and_signs():
    ds = data.load_dataset("demo", image_size=96, seed=0)  # speed is measured by tools/bench.py, not asserted here
    assert ds.images.shape == (240, 96, 96, 3) and ds.masks.shape == (240, 96, 96)
    assert (ds.labels == 0).sum() == 144 and (ds.labels == 1).sum() == 96
    assert 0.1 < ds.borderline.mean() < 0.25
    assert (ds.images[..., 0] == ds.images[..., 2]).all()  # grey
    assert ds.masks.reshape(240, -1).sum(1).min() >= 20
    grey = ds.images[..., 0].astype(float)
    inside = np.array([grey[i][ds.masks[i] > 0].mean() for i in range(240)])
    assert (inside < grey.mean(axis=(1, 2))).mean() > 0.95  # hypoechoic lesions
    # class signs on average: malignant taller than wide and shadowed, benign wider than tall and enhanced
    tall, post = [], []
    for i in range(240):
        ys, xs = np.nonzero(ds.masks[i])
        tall.append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
        x0, x1 = np.percentile(xs, 30).astype(int), np.percentile(xs, 70).astype(int) + 1
        post.append(grey[i, ys.max() + 2:ys.max() + 14, x0:x1].mean() / grey[i, ys.max() + 2:ys.max() + 14].mean())
    tall, post, typ = np.array(tall), np.array(post), ~ds.borderline
    assert np.median(tall[(ds.labels == 1) & typ]) > 1 > np.median(tall[(ds.labels == 0) & typ])
    assert np.median(post[(ds.labels == 1) & typ]) < 1 < np.median(post[(ds.labels == 0) & typ])


def test_demo_deterministic_in_seed():
    a = data.load_dataset("demo", image_size=32, seed=5, demo_size=12)
    b = data.load_dataset("demo", image_size=32, seed=5, demo_size=12)
    c = data.load_dataset("demo", image_size=32, seed=6, demo_size=12)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.labels.sum() == 5 and a.names[0] == "demo_0000"


# ---------------------------------------------------------------------------------------------- splits
def test_split_sizes_stratified_disjoint():
    ds = fake_set(437, 210, S=2)  # BUSI's class sizes
    sp = data.make_split(ds, 72, seed=0)
    assert set(sp) == {"dataset", "seed", "labels", "train_labeled", "train_unlabeled", "eval"}
    lab = lambda names: np.bincount([ds.labels[ds.index[n]] for n in names], minlength=2).tolist()
    assert lab(sp["train_labeled"]) == [36, 36]
    assert lab(sp["train_labeled"] + sp["train_unlabeled"]) == [306, 147]  # round(0.7 n), halves up
    assert lab(sp["eval"]) == [131, 63]
    everything = sp["train_labeled"] + sp["train_unlabeled"] + sp["eval"]
    assert sorted(everything) == sorted(ds.names) and len(set(everything)) == len(ds)


def test_split_nested_budgets_same_eval_deterministic():
    ds = fake_set(40, 30)
    s20, s40, s60 = (data.make_split(ds, k, seed=3) for k in (20, 40, 2 * 17))
    assert set(s20["train_labeled"]) < set(s40["train_labeled"])
    assert s20["eval"] == s40["eval"] == s60["eval"]
    assert set(s20["train_labeled"] + s20["train_unlabeled"]) == set(s40["train_labeled"] + s40["train_unlabeled"])
    assert data.make_split(ds, 20, seed=3) == s20
    other = data.make_split(ds, 20, seed=4)
    assert other["eval"] != s20["eval"] and other["train_labeled"] != s20["train_labeled"]
    # the split depends on names, not on the order the reader produced them in
    perm = np.random.default_rng(0).permutation(len(ds))
    shuffled = data.CachedSet(images=ds.images[perm], masks=ds.masks[perm], labels=ds.labels[perm],
                              names=[ds.names[i] for i in perm], groups=[ds.groups[i] for i in perm], name="fake")
    assert data.make_split(shuffled, 20, seed=3) == s20


def test_split_groups_patients():
    # 30 patients with 1-4 images each; patient 0 has a benign and a malignant image
    groups, labels = [], []
    rng = np.random.default_rng(1)
    for p in range(30):
        for _ in range(rng.integers(1, 5)):
            groups.append(f"p{p}")
            labels.append(p % 3 == 0)
    labels[1] = not labels[0]
    order = np.argsort(labels, kind="stable")
    n_m = int(np.sum(labels))
    ds = fake_set(len(labels) - n_m, n_m, groups=[groups[i] for i in order])
    sp = data.make_split(ds, 6, seed=0)
    side = {}
    for key in ("train_labeled", "train_unlabeled", "eval"):
        for n in sp[key]:
            g = ds.groups[ds.index[n]]
            side.setdefault(g, set()).add("eval" if key == "eval" else "train")
    assert all(len(s) == 1 for s in side.values())
    assert len({g for g, s in side.items() if s == {"eval"}}) == 3 + 6  # 30% of the 10 + 20 patients


def test_split_budget_errors():
    ds = fake_set(20, 10)  # train parts 14 and 7
    with pytest.raises(ValueError, match="even"):
        data.make_split(ds, 7, 0)
    with pytest.raises(ValueError, match="even"):
        data.make_split(ds, 0, 0)
    with pytest.raises(ValueError, match=r"labels=16.*malignant.*only 7.*maximum labels: 12"):
        data.make_split(ds, 16, 0)
    # each class keeps at least one unlabeled training image (README: Datasets): 7 malignant -> 6 labeled
    with pytest.raises(ValueError, match=r"labels=14 labels every malignant image.*maximum labels: 12"):
        data.make_split(ds, 14, 0)
    assert len(data.make_split(ds, 12, 0)["train_labeled"]) == 12
    with pytest.raises(ValueError, match="malignant"):
        data.make_split(fake_set(5, 1), 2, 0)


def test_save_load_split_and_indices(tmp_path):
    ds = fake_set(10, 10)
    sp = data.make_split(ds, 4, seed=0)
    p = data.save_split(sp, tmp_path / "run" / "split.json")
    assert data.load_split(p) == sp
    assert data.load_split(p, ds) == sp
    idx_l, idx_u, idx_e = data.split_indices(ds, sp)
    assert idx_l.dtype == np.int64 and [ds.names[i] for i in idx_l] == sp["train_labeled"]
    assert len(idx_l) + len(idx_u) + len(idx_e) == 20
    bad = dict(sp, eval=sp["eval"] + ["ghost (1)"])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"ghost \(1\)"):
        data.load_split(tmp_path / "bad.json", ds)
    with pytest.raises(ValueError, match="both"):
        data.split_indices(ds, dict(sp, eval=sp["eval"] + sp["train_labeled"][:1]))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        data.load_split(tmp_path / "nope.json")


# -------------------------------------------------------------------------------------------- augmentation
def test_eval_items_are_the_cached_arrays():
    ds = fake_set(3, 3, S=16)
    x, y, z = augment.LabeledSet(ds, [4], train=False)[0]
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert y.dtype == torch.int64 and z.dtype == torch.int64 and z.shape == () and z.item() == 1
    expected = (torch.from_numpy(ds.images[4]).permute(2, 0, 1) / 255 - MEAN) / STD
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, torch.from_numpy(ds.masks[4]).long())


def test_labeled_weak_view_moves_image_and_mask_together():
    ds = pattern_set()
    ls = augment.LabeledSet(ds, range(len(ds)), train=True)
    torch.manual_seed(0)
    changed = flipped = 0
    for _ in range(4):
        for j in range(len(ds)):
            x, y, _ = ls[j]
            assert off_boundary_errors(unnormalise_grey(x) > 127, y) == 0
            changed += not torch.equal(y, torch.from_numpy(ds.masks[j]).long())
            flipped += y[:, :10].sum() < y[:, -10:].sum()  # the left bar is now on the right
    assert changed > 20 and 3 < flipped < 21
    assert ds.images.max() == 255 and ds.images.sum() == ds.masks.sum() * 255 * 3  # cache untouched


def test_unlabeled_weak_strong_gt_pixel_aligned():
    ds = pattern_set()
    us = augment.UnlabeledSet(ds, range(len(ds)))
    torch.manual_seed(1)
    for _ in range(3):
        for j in range(len(ds)):
            w, s, y, z = us[j]
            assert w.shape == s.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
            assert z.item() == ds.labels[j]
            gw, gs = unnormalise_grey(w), unnormalise_grey(s)
            assert off_boundary_errors(gw > 127, y) == 0
            assert off_boundary_errors(gs > (gs.max() + gs.min()) / 2, y, r=2) == 0  # colour ops + blur: same geometry
            assert torch.corrcoef(torch.stack([gw.flatten(), gs.flatten()]))[0, 1] > 0.8


def test_strong_is_photometric_on_top_of_weak():
    ds = pattern_set()
    ds.images[2] = (ds.images[2] * np.linspace(0.3, 1, 32)[None, :, None]).astype(np.uint8)  # grey levels
    assert ds.grey and not fake_set(1, 1).grey
    us = augment.UnlabeledSet(ds, range(len(ds)))
    for seed in range(4):
        torch.manual_seed(seed)
        w, s, y, _ = us[2]
        torch.manual_seed(seed)
        wi, wm = us.weak(*augment._item(ds, 2))
        state = torch.get_rng_state()
        si = us.photometric(tv_tensors.Image(wi[:1])).expand(3, -1, -1)   # ds.grey: one channel
        torch.set_rng_state(state)
        si3 = us.photometric(wi)                                                # the same draws on RGB
        torch.testing.assert_close(w, augment.normalise(wi))
        torch.testing.assert_close(s, augment.normalise(si))
        assert (si.int() - si3.int()).abs().max() <= 2  # grey shortcut = RGB path up to rounding
        assert torch.equal(y, wm.long())
    assert augment.blur_kernel(224) == 23 and augment.blur_kernel(96) == 9 and augment.blur_kernel(16) == 3


# ----------------------------------------------------------------------------------------------- preview
def test_preview_cli(tmp_path, capsys):
    out = tmp_path / "demo.png"
    data.main(["--preview", str(out), "--demo-size", "24", "--image-size", "32", "--labels", "4"])
    im = Image.open(out)
    assert im.size[0] > 6 * 32 and im.mode == "RGB"
    assert "demo: 24 images" in capsys.readouterr().out
    make_busi(tmp_path / "b")
    data.main(["--preview", str(tmp_path / "b.png"), "--dataset", "busi", "--data-root", str(tmp_path / "b"),
               "--image-size", "16", "--rows", "2", "--cols", "2"])
    assert (tmp_path / "b.png").exists()


def test_step_sampler_covers_each_pass_and_repeats_small_sets():
    draw = augment.StepSampler(10, 4, seed=3, stream=1)
    assert draw.per_pass == 2
    first_pass = draw(0) + draw(1)
    assert len(set(first_pass)) == 8 and set(first_pass) <= set(range(10))      # drop-last, no repeat
    assert draw(2) != draw(0) or draw(3) != draw(1)                               # a new permutation per pass
    assert draw(5) == augment.StepSampler(10, 4, seed=3, stream=1)(5)               # stateless in the step
    small = augment.StepSampler(3, 8, seed=0, stream=2)(0)
    assert len(small) == 8 and set(small) == {0, 1, 2}


def test_step_batches_are_a_pure_function_of_the_step():
    ds = data.load_dataset("demo", image_size=64, demo_size=24, seed=0)
    split = data.make_split(ds, 4, seed=0)
    idx_l, idx_u, _ = data.split_indices(ds, split)
    make = lambda: augment.StepBatches(augment.LabeledSet(ds, idx_l), augment.UnlabeledSet(ds, idx_u), 2, seed=5)
    a, b = make(), make()
    torch.manual_seed(0)
    (xa, ya, za), (wa, sa, _, _) = a[7]
    _ = b[3]                                                                       # other steps in between
    (xb, yb, zb), (wb, sb, _, _) = b[7]
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(wa, wb) and torch.equal(sa, sb)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _ = a[1]
    assert torch.equal(torch.get_rng_state(), before)                              # the global RNG is untouched


# ------------------------------------------------------------------------- issue 11: budgets, formats, groups
def test_maximum_budget_named_by_the_error_trains():
    ds = fake_set(12, 12)                                   # train parts 8 and 8 (folder set of 12/12)
    with pytest.raises(cli.DataError, match=r"maximum labels: (\d+)") as e:
        data.make_split(ds, 16, 0)
    maximum = int(re.search(r"maximum labels: (\d+)", str(e.value)).group(1))
    assert maximum == 14                                    # 7 + 7 labeled leaves 1 + 1 unlabeled
    sp = data.make_split(ds, maximum, 0)
    idx_l, idx_u, _ = data.split_indices(ds, sp)
    assert len(idx_l) == 14 and len(idx_u) == 2
    batches = augment.StepBatches(augment.LabeledSet(ds, idx_l), augment.UnlabeledSet(ds, idx_u), 8, seed=0)
    (x, _, _), (w, _, _, _) = batches[0]
    assert x.shape[0] == 8 and w.shape[0] == 8
    assert "no unlabeled" in str(e.value)
    # 14 / 10 train parts: 9 + 9 labeled, so each class keeps an unlabeled image
    assert "maximum labels: 18" in _error(lambda: data.make_split(fake_set(20, 14), 20, 0))
    assert "maximum labels: 18" in _error(lambda: data.make_split(fake_set(20, 14), 21, 0))   # odd: names it too


def _error(fn):
    try:
        fn()
    except cli.DataError as e:
        return str(e)
    raise AssertionError("no DataError")


def test_split_with_no_unlabeled_image_is_refused(tmp_path):
    ds = fake_set(10, 10)
    sp = data.make_split(ds, 4, seed=0)
    bad = dict(sp, train_labeled=sp["train_labeled"] + sp["train_unlabeled"], train_unlabeled=[])
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(cli.DataError, match=r"s\.json.*no train_unlabeled"):
        data.load_split(tmp_path / "s.json", ds)


def gif(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).convert("P").save(path)   # palette GIF, as DDTI ships masks
    return path


def make_ddti_like(root, n_cases=10, crops=2, group_column=True):
    """DDTI-style folder set: case k's image cropped into 'k_1(1)', 'k_1(2)' (JPEG), GIF masks, group = case."""
    rows = ["image,label,group" if group_column else "image,label"]
    for k in range(100, 100 + n_cases):
        for j in range(1, crops + 1):
            name = f"{k}_1({j})"
            png(root / "images" / f"{name}.jpg", grey_image(24, 28, k * 10 + j))
            gif(root / "masks" / f"{name}.gif", rect_mask(24, 28, 4, 12 + j, 4, 20))
            rows.append(f"{name}.jpg,{k % 2}" + (f",{k}" if group_column else ""))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_folder_reads_gif_masks(tmp_path):
    make_ddti_like(tmp_path, n_cases=2, crops=2)
    ds = data.load_dataset("folder", tmp_path, image_size=16)
    assert ds.names == ["100_1(1)", "100_1(2)", "101_1(1)", "101_1(2)"]
    assert ds.masks.sum() > 0 and set(np.unique(ds.masks)) == {0, 1}
    expected = np.asarray(Image.fromarray(rect_mask(24, 28, 4, 13, 4, 20)).resize((16, 16), Image.NEAREST)) > 127
    assert np.array_equal(ds.masks[0], expected)


def test_folder_two_masks_of_one_stem_is_an_error(tmp_path):
    make_ddti_like(tmp_path, n_cases=2, crops=1)
    png(tmp_path / "masks" / "100_1(1).png", rect_mask(24, 28, 4, 12, 4, 20))
    with pytest.raises(cli.DataError, match=r"100_1\(1\)\.gif.*100_1\(1\)\.png"):
        data.load_dataset("folder", tmp_path, image_size=16)


def test_folder_unlisted_images_are_named_in_a_warning(tmp_path):
    make_folder(tmp_path, rows=["a.png,0", "c.jpg,1"])                 # b.png and d.png are not listed
    with pytest.warns(UserWarning, match=r"2 images in .*images.* not listed in .*labels\.csv.*'b\.png', 'd\.png'"):
        ds = data.load_dataset("folder", tmp_path, image_size=8)
    assert ds.names == ["a", "c"]


def test_folder_group_column_keeps_groups_on_one_side(tmp_path):
    make_ddti_like(tmp_path, n_cases=20, crops=3)
    ds = data.load_dataset("folder", tmp_path, image_size=8)
    assert ds.groups[:3] == ["100"] * 3 and len(set(ds.groups)) == 20
    for seed in range(5):
        sp = data.make_split(ds, 8, seed)
        side = {}
        for key in data._SPLIT_KEYS:
            for n in sp[key]:
                side.setdefault(ds.groups[ds.index[n]], set()).add("eval" if key == "eval" else "train")
        assert all(len(s) == 1 for s in side.values()), side
        assert sum(s == {"eval"} for s in side.values()) == 6            # 3 of each class's 10 cases
    # without the column every crop is its own group: the same cases then straddle the split
    make_ddti_like(tmp_path / "nogroup", n_cases=20, crops=3, group_column=False)
    ds2 = data.load_dataset("folder", tmp_path / "nogroup", image_size=8)
    assert ds2.groups == ds2.names


def test_folder_blank_group_is_its_own_group(tmp_path):
    make_folder(tmp_path, rows=["a.png,0,p1", "b,benign,", "c.jpg,malignant,p1", " d.png , 1 , p2"])
    (tmp_path / "labels.csv").write_text("image,label,Group\n" + (tmp_path / "labels.csv").read_text().split("\n", 1)[1])
    ds = data.load_dataset("folder", tmp_path, image_size=8)
    assert ds.groups == ["p1", "b", "p1", "p2"]


@pytest.mark.parametrize("case", ["missing_root", "missing_mask", "bad_label", "corrupt", "odd_budget",
                                  "budget", "csv_columns", "image_size", "duplicate_row"])
def test_data_errors_are_one_line_data_errors(tmp_path, case):
    make_folder(tmp_path / "f")
    f = tmp_path / "f"
    if case == "missing_root":
        call = lambda: data.load_dataset("folder", tmp_path / "nowhere")
    elif case == "missing_mask":         # a missing mask file makes an unlabeled image; a missing mask folder errs
        for m in (f / "masks").iterdir():
            m.unlink()
        (f / "masks").rmdir()
        call = lambda: data.load_dataset("folder", f)
    elif case == "bad_label":
        make_folder(f, rows=["a.png,0", "b.png,normal"])
        call = lambda: data.load_dataset("folder", f)
    elif case == "corrupt":
        (f / "images" / "b.png").write_bytes(b"nope")
        call = lambda: data.load_dataset("folder", f, image_size=8)
    elif case == "odd_budget":
        call = lambda: data.make_split(fake_set(10, 10), 3, 0)
    elif case == "budget":
        call = lambda: data.make_split(fake_set(10, 10), 40, 0)
    elif case == "csv_columns":
        (f / "labels.csv").write_text("file,class\na.png,0\n")
        call = lambda: data.load_dataset("folder", f)
    elif case == "image_size":
        call = lambda: data.load_dataset("folder", f, image_size=4)
    else:
        make_folder(f, rows=["a.png,0", "b.png,0", "a.png,1", "c.jpg,1"])
        call = lambda: data.load_dataset("folder", f)
    with pytest.raises(cli.DataError) as e:
        call()
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_save_split_fsyncs_and_a_kill_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "split.json"
    data.save_split({"a": 1}, path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    data.save_split({"a": 2}, path)
    assert synced and json.loads(path.read_text()) == {"a": 2}

    def dying_dump(obj, f, **kw):
        f.write('{"a": ')
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(json, "dump", dying_dump)
    with pytest.raises(KeyboardInterrupt):
        data.save_split({"a": 3}, path)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 2} and os.listdir(tmp_path) == ["split.json"]


def test_remove_stale_temporaries(tmp_path):
    for f in ["best.pt.tmp123", "split.json.tmp", "checkpoint.pt", "log.csv", "notes.tmp.txt"]:
        (tmp_path / f).write_text("x")
    removed = cli.remove_stale_temporaries(tmp_path)
    assert sorted(os.path.basename(r) for r in removed) == ["best.pt.tmp123", "split.json.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "log.csv", "notes.tmp.txt"]
