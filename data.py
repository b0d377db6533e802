"""Datasets, splits and augmentation for Hermes (paper Section 4.1, SPEC §2).

Every dataset is decoded and resized once into a `CachedSet` of uint8 arrays held in memory (the sets have
< 1,000 images); augmentation and ImageNet normalisation happen on the way out, in `LabeledSet` /
`UnlabeledSet`.

    ds = load_dataset("busi", "PATH/Dataset_BUSI_with_GT", image_size=224)   # or "demo" (no root)
    split = make_split(ds, labels=72, seed=0)         # per class 70/30, 36 + 36 labeled, nested budgets
    loader_l, loader_u, loader_eval = make_loaders(ds, split, batch_size=8, seed=0)
    x, y, z = next(iter(loader_l))                     # (8,3,S,S) float32, (8,S,S) int64, (8,) int64
    x_w, x_s, y_gt, z_gt = next(iter(loader_u))        # weak and strong view, pixel-aligned

    python data.py --preview demo.png                                  # contact sheet of the demo set
    python data.py --preview busi.png --dataset busi --data-root PATH  # ... of a real dataset

Layouts read (`--data-root`), labels 0 = benign, 1 = malignant:
    busi    ROOT/{benign,malignant}/NAME.png + NAME_mask.png [+ NAME_mask_1.png ...] (union of all masks);
            ROOT may also be the parent of Dataset_BUSI_with_GT/; normal/ is skipped.
    udiat   ROOT/original/ID.png, ROOT/GT/ID.png, ROOT/DatasetB.xlsx (first sheet, columns Image, Type).
    sztus   ROOT/labeled.txt lines "IMAGE MASK CLASS", ROOT/image/IMAGE, ROOT/mask/MASK;
            IMAGE = L<k>-<patient>-<n>.png gives the patient id used to keep patients on one side of the split.
    folder  ROOT/images/*, ROOT/masks/* (same stem), ROOT/labels.csv with columns image,label.
    demo    synthetic B-mode breast ultrasound generated from the seed (see `make_demo`).
"""
import argparse
import csv
import functools
import json
import math
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASETS = ("demo", "busi", "udiat", "sztus", "folder")
CLASSES = ("benign", "malignant")
DEMO_SIZE = 240               # images in the demo set (BUSI-like class balance, DEMO_MALIGNANT)
DEMO_MALIGNANT = 0.4
DEMO_BORDERLINE = 0.18        # share of demo cases whose signs lean to the other class
# Raster formats PIL reads (GIF: the masks of the DDTI thyroid set); other files in image folders are ignored.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".gif", ".webp",
              ".pbm", ".pgm", ".ppm", ".pnm", ".tga")


# ---------------------------------------------------------------------------------------------- errors
class DataError(ValueError):
    """Input the user can fix (a file, a folder, a value): the message is one line naming it and the fix."""


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder the input needs is not there."""


# ----------------------------------------------------------------------------------------------- cache
@dataclass(eq=False)
class CachedSet:
    """A whole dataset decoded and resized once, in memory.

    images (N,S,S,3) uint8 RGB; masks (N,S,S) uint8 in {0,1}; labels (N,) int64 (0 benign, 1 malignant);
    names: N unique ids (what split files store); groups: N patient ids (= names without patient ids);
    merged: how many images had more than one mask file (union taken); name: dataset name; root: folder read;
    borderline (N,) bool: demo cases with signs of the other class (demo only, else None).
    """
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    names: list
    groups: list
    merged: int = 0
    name: str = ""
    root: str = None
    borderline: np.ndarray = None
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        N = len(self.names)
        S = self.images.shape[1] if self.images.ndim == 4 else None
        if (self.images.shape != (N, S, S, 3) or self.masks.shape != (N, S, S) or self.labels.shape != (N,)
                or len(self.groups) != N):
            raise DataError(f"inconsistent CachedSet shapes: images {self.images.shape}, masks "
                            f"{self.masks.shape}, labels {self.labels.shape}, {N} names, {len(self.groups)} groups")
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != N:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise DataError(f"{self.name}: duplicate image names {dup[:5]} (names must be unique)")

    def __len__(self):
        return len(self.names)

    @property
    def image_size(self):
        return self.images.shape[1]

    @functools.cached_property
    def grey(self):
        """True when R = G = B everywhere (ultrasound): photometric ops may then run on one channel."""
        return bool((self.images[..., 0] == self.images[..., 1]).all() and
                    (self.images[..., 0] == self.images[..., 2]).all())


def _natural_key(s):
    """'benign (2)' sorts before 'benign (10)'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _parse_label(value, where):
    """0/1/benign/malignant (any case, surrounding spaces) -> 0/1; anything else is an error naming `where`."""
    v = value.strip().lower() if isinstance(value, str) else value
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if v in (0, "0", "benign"):
        return 0
    if v in (1, "1", "malignant"):
        return 1
    raise DataError(f"unknown label {value!r} in {where} (expected 0/1 or benign/malignant)")


def _open(path, mode):
    """Decoded PIL image of `path` converted to `mode`; a missing or unreadable file is named in the error."""
    if not os.path.isfile(path):
        raise MissingFileError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "L" and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                # A mask drawn on a transparent background: only opaque foreground counts.
                alpha = np.asarray(im.convert("RGBA"), dtype=np.uint16)[..., 3]
                grey = np.asarray(im.convert("L"), dtype=np.uint16)
                return Image.fromarray((grey * alpha // 255).astype(np.uint8))
            return im.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {cause(e)} (replace or remove the file)") from e


def _decode(image_path, mask_paths, S):
    """One record -> (image (S,S,3) uint8, mask (S,S) uint8 in {0,1}).

    Image: RGB, bilinear resize. Mask: union of the files' ("L" > 127) at the original size, then nearest resize
    of the binary mask (threshold first, so nearest never sees grey values)."""
    im = _open(image_path, "RGB")
    m = None
    for mp in mask_paths:
        mk = _open(mp, "L")
        if mk.size != im.size:
            raise DataError(f"image/mask size mismatch: {image_path} is {im.size[0]}x{im.size[1]} but "
                            f"{mp} is {mk.size[0]}x{mk.size[1]} (a mask must cover its image pixel for pixel)")
        v = np.asarray(mk)
        b = v > 127 if v.max() > 1 else v > 0       # masks stored as 0/1 instead of 0/255 are read too
        m = b if m is None else m | b
    image = np.asarray(im.resize((S, S), Image.Resampling.BILINEAR), dtype=np.uint8)
    mask = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((S, S), Image.Resampling.NEAREST)) > 127
    return image, mask.astype(np.uint8)


def _build(records, S, name, root):
    """records: list of (name, image_path, [mask_paths], label, group) -> CachedSet, decoded in parallel threads."""
    if not records:
        raise DataError(f"empty dataset: no images found for {name} in {root} (README: Datasets shows the layout)")
    labels = np.array([r[3] for r in records], dtype=np.int64)
    for c, cname in enumerate(CLASSES):
        if not (labels == c).any():
            raise DataError(f"empty class: {name} in {root} has no {cname} images (both classes are needed)")
    images = np.empty((len(records), S, S, 3), np.uint8)
    masks = np.empty((len(records), S, S), np.uint8)

    def one(k):
        images[k], masks[k] = _decode(records[k][1], records[k][2], S)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
        list(pool.map(one, range(len(records))))
    empty = [r[0] for r, m in zip(records, masks) if not m.any()]
    if empty:
        warnings.warn(f"{name}: {len(empty)} images have an empty lesion mask at {S} px, e.g. {empty[:3]}")
    return CachedSet(images=images, masks=masks, labels=labels, names=[r[0] for r in records],
                     groups=[r[4] for r in records], merged=sum(len(r[2]) > 1 for r in records), name=name,
                     root=root)


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise MissingFileError(f"{what} not found: {path}")
    return path


def _image_files(folder):
    """Image file names in `folder` (hidden files and other extensions ignored), natural order."""
    return sorted((f for f in os.listdir(folder) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS)),
                  key=_natural_key)


# --------------------------------------------------------------------------------------------- readers
_BUSI_MASK = re.compile(r"^(?P<base>.+)_mask(?:_\d+)?$")


def _read_busi(root):
    """BUSI (Al-Dhabyani et al. 2020): ROOT/{benign,malignant}/NAME.png, masks NAME_mask[_k].png, union."""
    _require_dir(root, "BUSI root")
    if os.path.isdir(os.path.join(root, "Dataset_BUSI_with_GT")):
        root = os.path.join(root, "Dataset_BUSI_with_GT")
    records = []
    for label, cname in enumerate(CLASSES):
        folder = _require_dir(os.path.join(root, cname), f"BUSI class folder (expected {CLASSES} under the root)")
        files = _image_files(folder)
        masks = {}
        for f in files:
            m = _BUSI_MASK.match(os.path.splitext(f)[0])
            if m:
                masks.setdefault(m.group("base"), []).append(os.path.join(folder, f))
        for f in files:
            stem = os.path.splitext(f)[0]
            if _BUSI_MASK.match(stem):
                continue
            if stem not in masks:
                raise MissingFileError(f"missing mask: {os.path.join(folder, stem + '_mask.png')} "
                                       f"(for image {os.path.join(folder, f)})")
            records.append((stem, os.path.join(folder, f), masks[stem], label, stem))
    return records


def _udiat_id(value):
    """Excel cell -> 6-digit id string, or None when the cell is no id (blank, legend text)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int):
        return f"{value:06d}" if value >= 0 else None
    s = os.path.splitext(str(value).strip())[0]
    return s.zfill(6) if s.isdigit() else None


def _read_udiat(root):
    """UDIAT Dataset B (Yap et al. 2018): ROOT/original/ID.png, ROOT/GT/ID.png, labels from DatasetB.xlsx.

    The first sheet's header row holds `Image` and `Type`; rows whose Image cell is not an id (blank rows, a legend
    block) are skipped; other columns are ignored."""
    import openpyxl
    _require_dir(root, "UDIAT root")
    xlsx = os.path.join(root, "DatasetB.xlsx")
    if not os.path.isfile(xlsx):
        raise MissingFileError(f"UDIAT label sheet not found: {xlsx}")
    try:
        wb = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile/KeyError/InvalidFileException on a bad file
        raise DataError(f"cannot read {xlsx}: {cause(e)}") from e
    rows = list(wb.worksheets[0].iter_rows(values_only=True))
    wb.close()
    header = None
    for r, row in enumerate(rows):
        cells = [str(c).strip().lower() if c is not None else "" for c in row]
        if "image" in cells and "type" in cells:
            header, ci, ct = r, cells.index("image"), cells.index("type")
            break
    if header is None:
        raise DataError(f"{xlsx}: no header row with columns 'Image' and 'Type' in the first sheet")
    img_dir = _require_dir(os.path.join(root, "original"), "UDIAT image folder")
    gt_dir = _require_dir(os.path.join(root, "GT"), "UDIAT mask folder")
    on_disk = {os.path.splitext(f)[0]: f for f in _image_files(img_dir)}
    gt_disk = {os.path.splitext(f)[0]: f for f in _image_files(gt_dir)}
    records, seen = [], set()
    for r, row in enumerate(rows[header + 1:], start=header + 2):
        row = tuple(row) + (None,) * (max(ci, ct) + 1 - len(row))
        i = _udiat_id(row[ci])
        if i is None:
            continue
        label = _parse_label(row[ct], f"{xlsx} row {r} (Type of image {i})")
        if i in seen:
            raise DataError(f"{xlsx} row {r}: image {i} listed twice")
        seen.add(i)
        if i not in on_disk:
            raise MissingFileError(f"image {i} of {xlsx} not found: {os.path.join(img_dir, i + '.png')}")
        if i not in gt_disk:
            raise MissingFileError(f"missing mask: {os.path.join(gt_dir, i + '.png')} (for image {i})")
        records.append((i, os.path.join(img_dir, on_disk[i]), [os.path.join(gt_dir, gt_disk[i])], label, i))
    return sorted(records, key=lambda rec: rec[0])


_SZTUS_NAME = re.compile(r"^L\d+-(?P<patient>[^-]+)-\d+$")


def _first_file(root, sub, entry):
    """ROOT/sub/entry, or ROOT/entry when the list already holds the sub-folder (e.g. 'image/L1-7-1.png')."""
    p = os.path.join(root, sub, entry)
    return p if os.path.isfile(p) or not os.path.isfile(os.path.join(root, entry)) else os.path.join(root, entry)


def _read_sztus(root):
    """SZ-TUS (paper's release): ROOT/labeled.txt lines 'IMAGE MASK CLASS', ROOT/image/, ROOT/mask/.

    Patient id = <patient> of L<k>-<patient>-<n>.png; a name without it becomes its own group (warned)."""
    _require_dir(root, "SZ-TUS root")
    lst = os.path.join(root, "labeled.txt")
    if not os.path.isfile(lst):
        raise MissingFileError(f"SZ-TUS list file not found: {lst}")
    with open(lst, encoding="utf-8-sig", newline=None) as f:  # universal newlines: CRLF tolerated
        lines = f.read().splitlines()
    records, no_patient = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"{lst} line {n}: expected 'IMAGE MASK CLASS', got {line.strip()!r}")
        img, msk, cls = parts
        label = _parse_label(cls, f"{lst} line {n}")
        ip, mp = _first_file(root, "image", img), _first_file(root, "mask", msk)
        if not os.path.isfile(ip):
            raise MissingFileError(f"image of {lst} line {n} not found: {ip}")
        if not os.path.isfile(mp):
            raise MissingFileError(f"missing mask: {mp} (for image {ip}, {lst} line {n})")
        stem = os.path.splitext(os.path.basename(img))[0]
        m = _SZTUS_NAME.match(stem)
        if m is None:
            no_patient.append(stem)
        records.append((stem, ip, [mp], label, m.group("patient") if m else stem))
    if no_patient:
        warnings.warn(f"{len(no_patient)} SZ-TUS names carry no patient id (L<k>-<patient>-<n>), e.g. "
                      f"{no_patient[0]!r}: each is its own group in the split")
    return records


def _by_stem(folder):
    """{stem: [file names]} of the image files in `folder` (a stem may have several extensions)."""
    out = {}
    for f in _image_files(folder):
        out.setdefault(os.path.splitext(f)[0], []).append(f)
    return out


def _read_folder(root):
    """Generic layout: ROOT/images/*, ROOT/masks/* with the same stem (any IMAGE_EXTS format, e.g. GIF masks),
    ROOT/labels.csv with columns image,label and an optional group (patient, case): images of one group stay on
    one side of the split; a blank group is the image's own. Images not in labels.csv are skipped with a
    warning naming them."""
    _require_dir(root, "dataset root")
    img_dir = _require_dir(os.path.join(root, "images"), "image folder")
    mask_dir = _require_dir(os.path.join(root, "masks"), "mask folder")
    csv_path = os.path.join(root, "labels.csv")
    if not os.path.isfile(csv_path):
        raise MissingFileError(f"label file not found: {csv_path} (columns image,label[,group])")
    images, masks = _by_stem(img_dir), _by_stem(mask_dir)
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = {(k or "").strip().lower(): k for k in reader.fieldnames or []}
        if "image" not in fields or "label" not in fields:
            raise DataError(f"{csv_path}: needs a header with columns 'image' and 'label' (and optionally "
                            f"'group'), found {reader.fieldnames}")
        rows = list(reader)
    records, line_of = [], {}
    for n, row in enumerate(rows, start=2):
        entry = (row[fields["image"]] or "").strip()
        if not entry:
            continue
        listed_ext = entry.lower().endswith(IMAGE_EXTS)
        stem = os.path.splitext(entry)[0] if listed_ext else entry
        label = _parse_label(row[fields["label"]] or "", f"{csv_path} line {n}")
        if stem in line_of:
            raise DataError(f"{csv_path} lines {line_of[stem]} and {n} both list image {stem!r} (keep one)")
        line_of[stem] = n
        files = images.get(stem, [])
        if listed_ext and entry in files:
            files = [entry]
        if not files:
            raise MissingFileError(f"image of {csv_path} line {n} not found: {os.path.join(img_dir, entry)}")
        if len(files) > 1:
            raise DataError(f"{csv_path} line {n}: image {stem!r} matches {files} in {img_dir} "
                            f"(name the file with its extension in labels.csv)")
        if stem not in masks:
            raise MissingFileError(f"missing mask: {os.path.join(mask_dir, stem)}.* (for image "
                                   f"{os.path.join(img_dir, files[0])}; masks have the image's stem)")
        if len(masks[stem]) > 1:
            raise DataError(f"two masks for image {stem!r} in {mask_dir}: {', '.join(masks[stem])} (keep one)")
        group = (row.get(fields["group"]) or "").strip() if "group" in fields else ""
        records.append((stem, os.path.join(img_dir, files[0]), [os.path.join(mask_dir, masks[stem][0])], label,
                        group or stem))
    unlisted = [f for stem, fs in images.items() if stem not in line_of for f in fs]
    if unlisted:
        warnings.warn(f"{len(unlisted)} images in {img_dir} are not listed in {csv_path} and are not used, "
                      f"e.g. {', '.join(repr(f) for f in unlisted[:3])} (add a row image,label to use one)")
    return sorted(records, key=lambda rec: _natural_key(rec[0]))


_READERS = {"busi": _read_busi, "udiat": _read_udiat, "sztus": _read_sztus, "folder": _read_folder}


def load_dataset(name, root=None, image_size=224, seed=0, demo_size=None):
    """Read dataset `name` from `root` (ignored for demo) into a CachedSet of image_size×image_size arrays.

    seed and demo_size (number of images, default 240) only concern the generated demo set."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if int(image_size) != image_size or image_size < 8:
        raise DataError(f"image size must be an integer >= 8, got {image_size}")
    if name == "demo":
        return make_demo(DEMO_SIZE if demo_size is None else demo_size, image_size, seed)
    if root is None:
        raise DataError(f"dataset {name!r} needs a root folder (--data-root)")
    root = os.path.abspath(os.path.expanduser(str(root)))
    return _build(_READERS[name](root), image_size, name, root)


# ------------------------------------------------------------------------------------------ demo set
@functools.lru_cache(maxsize=8)
def _gaussian_filters(S, sigmas):
    """Fourier transfer functions (K,S,S//2+1) of Gaussian blurs, sigmas ((axial, lateral) px, ...)."""
    fy = np.fft.fftfreq(S)[None, :, None]
    fx = np.fft.rfftfreq(S)[None, None, :]
    sig = np.asarray(sigmas, dtype=np.float64)[:, :, None, None]                  # (K,2,1,1)
    return np.exp(-2 * np.pi ** 2 * ((sig[:, 0] * fy) ** 2 + (sig[:, 1] * fx) ** 2)).astype(np.complex64)


def _gaussian_fields(rng, S, sigmas):
    """len(sigmas) smooth zero-mean unit-std random fields (K,S,S) float32 (periodic boundary).

    One batched FFT for all fields: the demo set's cost is mostly per-call overhead."""
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((len(sigmas), S, S), dtype=np.float32))
                      * _gaussian_filters(S, tuple(sigmas)), s=(S, S))
    return f / (f.std(axis=(1, 2), keepdims=True) + 1e-8)


def _demo_case(rng, S, label, borderline):
    """One synthetic B-mode breast ultrasound image: (image (S,S) float32 in [0,1], mask (S,S) bool).

    Tissue (top to bottom): gel, bright skin line, hypoechoic subcutaneous fat crossed by echogenic Cooper's
    ligaments, bright fibroglandular layer, retromammary fat, striated pectoralis muscle. One hypoechoic lesion:
    benign signs = oval, circumscribed (thin capsule), wider than tall, posterior enhancement (and edge shadows);
    malignant signs = irregular / spiculated margin (echogenic halo), taller than wide, posterior shadowing,
    microcalcifications. Borderline cases flip 1-3 of the signs (shape, orientation, posterior feature).
    Then depth attenuation, compounded Rayleigh speckle (multiplicative) and log compression."""
    u = S / 96.0                                        # texture scale: the same anatomy at any S
    y = ((np.arange(S, dtype=np.float32) + 0.5) / S)[:, None]   # depth (S,1), 0 = transducer
    x = ((np.arange(S, dtype=np.float32) + 0.5) / S)[None, :]   # lateral (1,S)
    wav = lambda amp: amp * np.sin(2 * np.pi * (rng.uniform(0.4, 1.4) * x + rng.random()))
    step = lambda b, w: 0.5 + 0.5 * np.tanh((y - b) / (2 * w))              # smooth 0 -> 1 at depth b
    F = _gaussian_fields(rng, S, [(3 * u, 8 * u), (4 * u, 4 * u), (1.2 * u, 6 * u), (6 * u, 6 * u),
                                  (3 * u, 10 * u), (1.5 * u, 1.5 * u)] + [(0.7 * u, 1.4 * u)] * 6)

    sign = {k: label == 1 for k in ("shape", "orient", "posterior")}         # True = the malignant sign
    if borderline:
        for k in rng.permutation(list(sign))[:rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])]:
            sign[k] = not sign[k]

    # --- layered tissue echogenicity E (S,S)
    y_skin = 0.035 + wav(0.006)
    y_fat = 0.2 + 0.08 * rng.random() + wav(0.03)
    y_gland = y_fat + 0.38 + 0.1 * rng.random() + wav(0.04)
    y_muscle = y_gland + 0.06 + 0.04 * rng.random()
    fat = 0.16 + 0.3 * np.exp(-(F[0] / 0.1) ** 2) + 0.04 * F[1]     # ligaments: zero set of a smooth field
    gland = np.clip(0.8 + 0.3 * F[2] + 0.15 * F[3], 0.3, 1.4)          # horizontally layered parenchyma
    fibres = np.sin(2 * np.pi * (y + rng.uniform(-0.25, 0.25) * x) * rng.uniform(14, 20) + 1.5 * F[4])
    E = 0.03 + (fat - 0.03) * step(y_skin + 0.02, 0.012)
    E = E + (gland - E) * step(y_fat, 0.02)
    E = E + (0.28 - E) * step(y_gland, 0.02)
    E = E + (0.3 + 0.15 * fibres - E) * step(y_muscle, 0.012)
    E = E + 1.1 * np.exp(-((y - y_skin) / (0.008 + 0.6 / S)) ** 2)     # skin line

    # --- lesion: ellipse in rotated normalised coordinates, margin r(theta); mask = rho < r exactly
    size = rng.uniform(0.07, 0.19)                                      # equivalent radius / S
    aspect = rng.uniform(1.1, 1.6) if sign["orient"] else rng.uniform(0.45, 0.8)   # height / width
    angle = rng.uniform(-0.5, 0.5) if sign["orient"] else rng.uniform(-0.25, 0.25)
    a, b = size / np.sqrt(aspect), size * np.sqrt(aspect)              # lateral, axial semi-axes
    cx = rng.uniform(0.22, 0.78)
    cy = float(np.clip(rng.uniform(0.32, 0.58), 0.1 + b, 0.8 - b))
    c, s = np.cos(angle), np.sin(angle)
    u_, v_ = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    rho = np.sqrt((u_ / a) ** 2 + (v_ / b) ** 2)                       # 1 on the ellipse
    theta = np.arctan2(v_ / b, u_ / a)
    r = np.ones_like(theta)
    if sign["shape"]:                                                   # angular, microlobulated, spiculated
        for k in range(3, 11):
            r = r + rng.uniform(0.02, 0.09) / np.sqrt(k - 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        for t0 in rng.uniform(-np.pi, np.pi, rng.integers(4, 10)):
            d = np.abs((theta - t0 + np.pi) % (2 * np.pi) - np.pi)
            r = r + rng.uniform(0.2, 0.6) * np.clip(1 - d / rng.uniform(0.08, 0.18), 0, None) ** 1.5
        edge_w, E_in = 1.0, rng.uniform(0.06, 0.16)
    else:                                                               # oval, circumscribed, gently lobulated
        for k in (2, 3):
            r = r + rng.uniform(0.0, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        edge_w, E_in = 0.5, rng.uniform(0.02, 0.14)
    mask = rho < r
    if mask.sum() < 4:                                                  # tiny S: keep a visible lesion
        mask = rho <= np.sort(rho.ravel())[3]
    dist = (rho - r) * (min(a, b) * S)                                  # ~ signed distance to the margin, px
    soft = 0.5 - 0.5 * np.tanh(dist / (2 * edge_w * u))
    inside = E_in * (1 + (0.35 if sign["shape"] else 0.15) * F[5])
    if label == 1 and rng.random() < 0.4:                               # microcalcifications
        ys, xs = np.nonzero(mask)
        for j in rng.integers(len(ys), size=rng.integers(2, 6)):
            inside = inside + 2.0 * np.exp(-(((y - (ys[j] + .5) / S) ** 2 + (x - (xs[j] + .5) / S) ** 2)
                                             / (0.6 * u / S) ** 2))
    E = E * (1 - soft) + inside * soft
    if sign["shape"] and rng.random() < 0.6:                            # echogenic halo
        E = E + rng.uniform(0.25, 0.5) * np.exp(-((dist - 2.5 * u) / (2.0 * u)) ** 2) * (dist > 0)
    elif not sign["shape"] and rng.random() < 0.5:                      # thin echogenic capsule
        E = E + 0.4 * np.exp(-(dist / (0.7 * u)) ** 2)

    # --- posterior features below the lesion core (ellipse without spicules), soft lateral edges
    core = rho < 1
    cols = core.any(axis=0)
    if not cols.any():
        core, cols = mask, mask.any(axis=0)
    bottom = (np.where(cols, S - 1 - np.argmax(core[::-1], axis=0), int(cy * S)) / S)[None, :]   # (1,S)
    k = np.exp(-0.5 * (np.arange(-4 * u, 4 * u + 1) / (1.5 * u)) ** 2)
    cover = np.clip(np.convolve(cols.astype(float), k / k.sum(), mode="same"), 0, 1)[None, :]   # (1,S)
    below = step(bottom - 0.005, 0.01) * cover                                                # (S,S)
    depth_below = np.clip(y - bottom, 0, None)
    if sign["posterior"]:                                               # shadowing
        E = E * (1 - rng.uniform(0.6, 0.85) * below * np.exp(-depth_below / 0.8))
    else:                                                               # enhancement, strongest for cysts
        strength = rng.uniform(1.0, 1.8) if E_in < 0.06 else rng.uniform(0.5, 1.2)
        E = E * (1 + strength * below * np.exp(-depth_below / 0.4))
        if rng.random() < 0.4:                                          # lateral edge (refraction) shadows
            xs = np.nonzero(cols)[0]
            for xe in (xs[0], xs[-1]):
                edge = np.exp(-((x - (xe + 0.5) / S) / (1.5 * u / S)) ** 2)
                E = E * (1 - 0.6 * edge * step(bottom - 0.3 * b, 0.01))

    # --- attenuation with imperfect gain compensation, 3-look compounded Rayleigh speckle, log compression
    E = E * np.exp(-rng.uniform(0.4, 0.9) * y) * (1 + 0.2 * np.exp(-((y - 0.45) / 0.2) ** 2))
    speckle = (F[6] ** 2 + F[7] ** 2 + F[8] ** 2 + F[9] ** 2 + F[10] ** 2 + F[11] ** 2) / 6   # |z|^2, 3 looks
    img = 0.87 + 10 * np.log10(np.clip(E, 0.005, None) ** 2 * speckle) / rng.uniform(32, 40)  # 32-40 dB shown
    return np.clip(img, 0, 1).astype(np.float32), mask


def make_demo(n=DEMO_SIZE, image_size=96, seed=0):
    """Synthetic ultrasound CachedSet: n images of image_size px, 40 % malignant, deterministic in (n, size, seed).

    DEMO_BORDERLINE of the cases show signs of the other class (see `_demo_case`); ds.borderline marks them."""
    if n < 4:
        raise DataError(f"demo set needs at least 4 images, got {n} (--demo-size)")
    S = image_size
    children = np.random.SeedSequence(seed).spawn(n + 1)
    rng = np.random.default_rng(children[0])
    n_mal = int(round(DEMO_MALIGNANT * n))
    labels = np.zeros(n, np.int64)
    labels[rng.permutation(n)[:n_mal]] = 1
    borderline = rng.random(n) < DEMO_BORDERLINE
    images = np.empty((n, S, S, 3), np.uint8)
    masks = np.empty((n, S, S), np.uint8)

    def one(i):
        img, m = _demo_case(np.random.default_rng(children[1 + i]), S, int(labels[i]), bool(borderline[i]))
        images[i] = (img * 255 + 0.5).astype(np.uint8)[..., None]
        masks[i] = m

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # numpy releases the GIL
        list(pool.map(one, range(n)))
    names = [f"demo_{i:04d}" for i in range(n)]
    return CachedSet(images=images, masks=masks, labels=labels, names=names, groups=list(names), merged=0,
                     name="demo", borderline=borderline)


# ---------------------------------------------------------------------------------------------- splits
def _n_train(n):
    """Train share of n groups (Section 4.1: "randomly divided into training and validation sets at a ratio of
    7:3"): round(0.7 n) with halves rounded up, in integers, kept in [1, n-1] so both sides are non-empty."""
    return min(max((7 * n + 5) // 10, 1), n - 1)


def make_split(ds, labels, seed):
    """Seeded split of `ds` (Section 4.1 and SPEC §2) -> dict of names.

    Per class c: the class's groups (patients; images when the dataset has none) are permuted with a generator
    seeded by (seed, c); the first _n_train(groups) go to train, the rest to evaluation. A patient whose images
    carry both labels is assigned to the class of its malignant images (never split). Then the class's train
    images are permuted once with a generator seeded by (seed, c, 1) and the first labels/2 are labeled, so for one
    seed the budgets are nested (the 40-label set contains the 20-label set) and the evaluation set is the same
    for every budget. A budget must leave at least one unlabeled train image (Hermes draws unlabeled batches);
    an odd or too large budget is an error naming the largest one allowed.
    Returns {"dataset", "seed", "labels", "train_labeled", "train_unlabeled", "eval"}."""
    labels, seed = int(labels), int(seed)
    k = labels // 2
    order = sorted(range(len(ds)), key=lambda i: _natural_key(ds.names[i]))   # independent of reading order
    patient_class = {}
    for i in order:
        patient_class[ds.groups[i]] = max(patient_class.get(ds.groups[i], 0), int(ds.labels[i]))
    train_groups, train_c = set(), {}
    for c, cname in enumerate(CLASSES):
        groups = sorted({g for g, pc in patient_class.items() if pc == c}, key=_natural_key)
        unit = "patients" if ds.groups != ds.names else "images"
        if len(groups) < 2:
            raise DataError(f"empty class: {ds.name} has {len(groups)} {cname} {unit}; a 70/30 split needs >= 2")
        perm = np.random.default_rng([seed, c]).permutation(len(groups))
        train_groups.update(groups[j] for j in perm[:_n_train(len(groups))])
    for c in (0, 1):
        train_c[c] = [i for i in order if ds.labels[i] == c and ds.groups[i] in train_groups]
    n0, n1 = len(train_c[0]), len(train_c[1])
    k_max = min(n0, n1) - (n0 == n1)                    # labels/2 per class, leaving >= 1 unlabeled image
    where = f"the train part of {ds.name} (seed {seed}: {n0} benign, {n1} malignant)"
    if k_max < 1:
        raise DataError(f"{where} is too small for a labeled and an unlabeled set; add images or use other data")
    if labels <= 0 or labels % 2:
        raise DataError(f"labels must be a positive even number (labels/2 per class), got {labels}; "
                        f"maximum labels: {2 * k_max}")
    for c, cname in enumerate(CLASSES):
        if k > len(train_c[c]):
            raise DataError(f"labels={labels} needs {k} labeled {cname} images but {where} has only "
                            f"{len(train_c[c])}; maximum labels: {2 * k_max}")
    if k > k_max:
        raise DataError(f"labels={labels} labels every image of {where} and leaves no unlabeled image; "
                        f"maximum labels: {2 * k_max}")
    labeled = []
    for c in (0, 1):
        perm = np.random.default_rng([seed, c, 1]).permutation(len(train_c[c]))
        labeled += [train_c[c][j] for j in perm[:k]]
    labeled = set(labeled)
    name = lambda idx: [ds.names[i] for i in order if i in idx]
    train = {i for c in (0, 1) for i in train_c[c]}
    return {"dataset": ds.name, "seed": seed, "labels": labels,
            "train_labeled": name(labeled), "train_unlabeled": name(train - labeled),
            "eval": name(set(order) - train)}


_SPLIT_KEYS = ("train_labeled", "train_unlabeled", "eval")


# ------------------------------------------------------------------------------------- run-folder files
def atomic_write(path, write, binary=False, newline=None):
    """The project's one atomic writer: write(f) fills a temporary file in the same folder (unique name), which
    is flushed to disk and renamed over `path`, and the rename itself is flushed (fsync of the folder); a kill or
    a power cut leaves either the old file or the new one, never half. A failed write removes its temporary;
    one a kill left behind is removed by remove_stale_temporaries. newline: as for open() (csv wants "")."""
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


def save_split(split, path):
    """Write a split dict as JSON (names, not indices), atomically."""
    return write_json_atomic(split, path, indent=1)


def load_split(path, ds=None):
    """Read a split written by save_split; checks its keys, and its names against `ds` when given."""
    if not os.path.isfile(path):
        raise MissingFileError(f"split file not found: {path}")
    try:
        with open(path) as f:
            split = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from e
    missing = [k for k in _SPLIT_KEYS if not isinstance(split, dict) or not isinstance(split.get(k), list)]
    if missing:
        raise DataError(f"split file {path} lacks the lists {missing} (expected keys {_SPLIT_KEYS})")
    empty = [k for k in _SPLIT_KEYS if not split[k]]
    if empty:
        raise DataError(f"split file {path} has no {' and no '.join(empty)} images (every list needs one; "
                        f"draw a split with --labels instead)")
    if ds is not None:
        split_indices(ds, split, where=path)
    return split


def split_indices(ds, split, where="split"):
    """Names of a split -> (idx_l, idx_u, idx_eval) int64 arrays of positions in ds; unknown names and names on
    two sides are errors."""
    out, seen = [], {}
    for key in _SPLIT_KEYS:
        if not isinstance(split.get(key), list):
            raise DataError(f"{where}: no list {key!r} (expected keys {_SPLIT_KEYS})")
        names = split[key]
        unknown = [n for n in names if n not in ds.index]
        if unknown:
            raise DataError(f"{where}: {len(unknown)} of the {key} names are not in dataset {ds.name!r} "
                            f"({len(ds)} images{', root ' + ds.root if ds.root else ''}), e.g. {unknown[:3]}; "
                            f"was the split made for {split.get('dataset')!r} with other settings?")
        for n in names:
            if n in seen:
                raise DataError(f"{where}: image {n!r} is in both {seen[n]} and {key}")
            seen[n] = key
        out.append(np.array([ds.index[n] for n in names], dtype=np.int64))
    return tuple(out)


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
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
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


# -------------------------------------------------------------------------------------- augmentation
def blur_kernel(S):
    """Odd Gaussian-blur kernel side for S px images: about S/10 (23 at 224, 9 at 96), at least 3."""
    return max(3, (S // 10) | 1)


def weak_transform(S):
    """Weak view (§4.1 "random horizontal flipping, random scaling, and random cropping"), image + mask jointly."""
    return v2.Compose([v2.RandomResizedCrop(S, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(0.5)])


def strong_photometric(S):
    """Photometric part of the strong view (§4.1 "blurring and color jittering"), applied to the weak image only."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(brightness=0.5, contrast=0.5)], p=0.8),
                       v2.RandomApply([v2.GaussianBlur(blur_kernel(S), sigma=(0.1, 2.0))], p=0.5)])


_normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalise(image):
    """uint8 (3,S,S) -> float32 (3,S,S), ImageNet mean/std."""
    return _normalise(image).as_subclass(torch.Tensor)


def _item(ds, i):
    """Cached item i as (tv_tensors.Image uint8 (3,S,S), tv_tensors.Mask uint8 (S,S)); views, never modified."""
    return (tv_tensors.Image(torch.from_numpy(ds.images[i]).permute(2, 0, 1)),   # (S,S,3) -> (3,S,S)
            tv_tensors.Mask(torch.from_numpy(ds.masks[i])))


class LabeledSet(Dataset):
    """Labeled images: item = (image float32 (3,S,S) normalised, mask int64 (S,S), label int64 ()).

    train=True: a fresh weak augmentation per access (global torch RNG); train=False: the cached image as is."""

    def __init__(self, ds, indices, train=True):
        self.ds, self.indices, self.train = ds, np.asarray(indices, dtype=np.int64), train
        self.weak = weak_transform(ds.image_size)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        image, mask = _item(self.ds, i)
        if self.train:
            image, mask = self.weak(image, mask)
        return normalise(image), mask.as_subclass(torch.Tensor).long(), torch.tensor(int(self.ds.labels[i]))


class UnlabeledSet(Dataset):
    """Unlabeled images: item = (weak (3,S,S), strong (3,S,S), mask_gt int64 (S,S), label_gt int64 ()).

    strong = photometric ops on the weak view's uint8 image, so the two views are pixel-aligned; mask_gt went
    through the weak view's geometric transform. Ground truth is only for measuring pseudo-label accuracy."""

    def __init__(self, ds, indices):
        self.ds, self.indices = ds, np.asarray(indices, dtype=np.int64)
        self.weak, self.photometric = weak_transform(ds.image_size), strong_photometric(ds.image_size)
        self.grey = ds.grey  # computed once here, not in every loader worker

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        image, mask = self.weak(*_item(self.ds, i))
        if self.grey:  # same ops and random draws on one channel, ~3x cheaper (GaussianBlur dominates)
            strong = self.photometric(tv_tensors.Image(image[:1])).expand(3, -1, -1)
        else:
            strong = self.photometric(image)
        return (normalise(image), normalise(strong), mask.as_subclass(torch.Tensor).long(),
                torch.tensor(int(self.ds.labels[i])))


def _train_loader(dataset, batch_size, num_workers, seed):
    """Shuffled, seeded, drop-last loader; a set smaller than the batch is drawn with replacement so every
    batch is full (one batch per pass)."""
    if len(dataset) == 0:
        raise DataError(f"cannot build a training loader over an empty {type(dataset).__name__} "
                        f"(the labeled budget leaves no images of this kind)")
    g = torch.Generator().manual_seed(seed)
    sampler = (RandomSampler(dataset, generator=g) if len(dataset) >= batch_size else
               RandomSampler(dataset, replacement=True, num_samples=batch_size, generator=g))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())


def make_loaders(ds, split, batch_size=8, num_workers=0, seed=0):
    """(loader_l, loader_u, loader_eval) of a split.

    loader_l: (x (B,3,S,S), y (B,S,S), z (B,)); loader_u: (x_w, x_s (B,3,S,S), y_gt (B,S,S), z_gt (B,));
    loader_eval: like loader_l without augmentation, in split order, last batch kept. Train loaders reshuffle
    (generators seeded from seed) and re-augment every pass. For notebooks and custom loops; train.py draws
    its batches with StepBatches instead, which makes every batch a pure function of the step (exact resume)."""
    idx_l, idx_u, idx_eval = split_indices(ds, split)
    loader_l = _train_loader(LabeledSet(ds, idx_l, train=True), batch_size, num_workers, seed)
    loader_u = _train_loader(UnlabeledSet(ds, idx_u), batch_size, num_workers, seed + 1)
    loader_eval = DataLoader(LabeledSet(ds, idx_eval, train=False), batch_size=batch_size, shuffle=False,
                             num_workers=num_workers, pin_memory=torch.cuda.is_available())
    return loader_l, loader_u, loader_eval


# ------------------------------------------------------------------- step batches (train.py)
class StepSampler:
    """Indices of the batch of step t: a fresh seeded permutation every pass over the set (drop-last).

    Stateless in t, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
    A set smaller than the batch is repeated within the batch."""

    def __init__(self, n, batch_size, seed, stream):
        if n == 0:
            raise DataError(f"cannot draw batches from an empty {('', 'labeled', 'unlabeled')[stream]} set "
                            f"(stream {stream}): the split leaves no such training image")
        self.n, self.B, self.seed, self.stream = n, batch_size, seed, stream
        self.per_pass = max(1, n // batch_size)

    def __call__(self, t):
        epoch, pos = divmod(t, self.per_pass)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream * 7_919 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.n < self.B:
            perm = perm.repeat(math.ceil(self.B / self.n))
        return perm[pos * self.B:(pos + 1) * self.B].tolist()


class StepBatches(Dataset):
    """Item t = (labeled batch, unlabeled batch) of training step t, freshly augmented.

    The augmentation of step t draws from a torch RNG seeded by (seed, t) — forked, so the global RNG that
    anchor sampling uses is untouched — which makes every batch a pure function of the step: identical with
    any number of loader workers, and after a resume."""

    def __init__(self, set_l, set_u, batch_size, seed):
        self.set_l, self.set_u, self.seed = set_l, set_u, seed
        self.draw_l = StepSampler(len(set_l), batch_size, seed, stream=1)
        self.draw_u = StepSampler(len(set_u), batch_size, seed, stream=2)

    def __len__(self):
        return 2 ** 62  # indexed by step; the loader's sampler says which steps

    def __getitem__(self, t):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + t)
            batch_l = default_collate([self.set_l[i] for i in self.draw_l(t)])
            batch_u = default_collate([self.set_u[i] for i in self.draw_u(t)])
        return batch_l, batch_u


def step_loader(batches, start, total, workers):
    """Batches of steps start..total-1, prepared by `workers` processes ahead of the training step."""
    # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
    return DataLoader(batches, sampler=range(start, total), batch_size=None,
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None, generator=torch.Generator())


# ---------------------------------------------------------- on-device batches (augmented on the device)
# The same views as LabeledSet / UnlabeledSet (weak_transform, strong_photometric), drawn for a whole batch at
# once on the training device from the uint8 cache held there: per-image random parameters come from a CPU
# torch.Generator seeded by (seed, step, stream), so a batch is a pure function of the step on CPU and CUDA.
def _step_seed(seed, t, stream):
    """64-bit seed of step t's augmentation draws: SeedSequence mixing keeps (seed, t, stream) streams apart."""
    return int(np.random.SeedSequence([seed, t, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw_crops(n, S, g, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """Boxes of torchvision's RandomResizedCrop for n square S×S images, all drawn at once from generator g.

    Per image, `attempts` draws of (area ~ U(scale)·S², log aspect ~ U(log ratio)), w = round(√(area·aspect)),
    h = round(√(area/aspect)); the first whose box fits is kept, otherwise the whole image (torchvision's
    fallback for a square image); top ~ U{0..S-h}, left ~ U{0..S-w}.
    -> boxes (4,n) int64 rows top, left, h, w (CPU).
    """
    area = S * S * torch.empty(n, attempts).uniform_(*scale, generator=g)                      # (n,attempts)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    w = torch.round(torch.sqrt(area * torch.exp(log_r))).long()
    h = torch.round(torch.sqrt(area / torch.exp(log_r))).long()
    fits = (w > 0) & (w <= S) & (h > 0) & (h <= S)                                                # (n,attempts)
    first = fits.int().argmax(1)                                                                  # first fit
    found = fits.any(1)
    w = torch.where(found, w[torch.arange(n), first], S)                                          # (n,)
    h = torch.where(found, h[torch.arange(n), first], S)
    u = torch.rand(2, n, generator=g)
    top = (u[0] * (S - h + 1)).long().clamp(max=S - h)     # floor(U·(S-h+1)): uniform over 0..S-h
    left = (u[1] * (S - w + 1)).long().clamp(max=S - w)
    return torch.stack([top, left, h, w])


def draw_weak(n, S, g):
    """Parameters of n weak views (weak_transform): crop boxes (4,n) and horizontal flips (n,) bool (p 0.5)."""
    boxes = draw_crops(n, S, g)
    return {"boxes": boxes, "flip": torch.rand(n, generator=g) < 0.5}


def draw_strong(n, g, p_jitter=0.8, brightness=0.5, contrast=0.5, p_blur=0.5, sigma=(0.1, 2.0)):
    """Parameters of n strong photometric ops (strong_photometric): ColorJitter applied with p 0.8, brightness and
    contrast factors ~ U(1 ± 0.5) in random order (factor 1 where not applied); GaussianBlur applied with p 0.5,
    σ ~ U(0.1, 2). -> dict of (n,) CPU tensors: bright, contrast, contrast_first (bool), blur (bool), sigma."""
    u = torch.rand(5, n, generator=g)
    jitter = u[0] < p_jitter
    bright = torch.where(jitter, 1 - brightness + 2 * brightness * u[1], 1.0)
    contr = torch.where(jitter, 1 - contrast + 2 * contrast * u[2], 1.0)
    return {"bright": bright, "contrast": contr, "contrast_first": u[3] < 0.5, "blur": u[4] < p_blur,
            "sigma": torch.empty(n).uniform_(*sigma, generator=g)}


def resized_crop_flip(images, masks, boxes, flip, size):
    """Crop box k of image k, resized to size×size and mirrored left-right where flip[k]; the mask follows.

    Image: bilinear with align_corners=False, sample points clamped to the box (what torchvision's resized_crop
    computes when the box is not larger than the output). Mask: the box pixel whose centre is nearest to the
    image's sample point, so image and mask stay aligned to half a pixel.
    images (B,C,S,S) float, masks (B,S,S) any dtype, boxes (4,B) int64 (top, left, h, w), flip (B,) bool
    -> images (B,C,size,size) float, masks (B,size,size).
    """
    B, C, S, S2 = images.shape
    top, left, h, w = boxes.to(images.device)
    d = torch.arange(size, device=images.device)                                                 # output index
    # image: source coordinate of output pixel d = start + clamp((d + 0.5)·len/size - 0.5, 0, len - 1)
    coord = lambda start, n: start[:, None] + ((d + 0.5) * n[:, None] / size - 0.5).clamp(min=0).minimum(
        n[:, None] - 1)                                                                           # (B,size)
    ys, xs = coord(top, h), coord(left, w)
    xs = torch.where(flip.to(images.device)[:, None], xs.flip(1), xs)
    gx = ((2 * xs + 1) / S2 - 1)[:, None, :].expand(B, size, size)                              # (B,size,size)
    gy = ((2 * ys + 1) / S - 1)[:, :, None].expand(B, size, size)
    out = F.grid_sample(images, torch.stack([gx, gy], -1).to(images.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)                               # (B,C,size,size)
    # mask: nearest box pixel = start + floor((d + 0.5)·len/size), in integers
    iy = top[:, None] + torch.div((2 * d + 1) * h[:, None], 2 * size, rounding_mode="floor")     # (B,size)
    ix = left[:, None] + torch.div((2 * d + 1) * w[:, None], 2 * size, rounding_mode="floor")
    ix = torch.where(flip.to(images.device)[:, None], ix.flip(1), ix)
    b = torch.arange(B, device=images.device)[:, None, None]
    return out, masks[b, iy[:, :, None], ix[:, None, :]]


def colour_jitter(x, bright, contrast, contrast_first):
    """torchvision's ColorJitter(brightness, contrast) with per-image factors, in either order per image.

    brightness: clamp(b·x); contrast: clamp(c·x + (1 - c)·mean(grey(x))), grey = 0.2989 R + 0.587 G + 0.114 B
    (the image itself with one channel). x (B,C,H,W) float in [0,255]; bright, contrast (B,); contrast_first (B,)
    bool -> (B,C,H,W) float in [0,255]."""
    shape = (-1, 1, 1, 1)
    for contrast_now in (contrast_first, ~contrast_first):
        if x.shape[1] == 3:
            grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2))               # (B,)
        else:
            grey = x.mean((1, 2, 3))
        f = torch.where(contrast_now, contrast, bright).view(shape)
        ref = torch.where(contrast_now, grey, torch.zeros_like(grey)).view(shape)
        x = (f * x + (1 - f) * ref).clamp(0, 255)
    return x


def gaussian_blur_batch(x, sigma, k):
    """torchvision's GaussianBlur(k, σ) with a per-image σ: weights ∝ exp(-d²/2σ²), d = -k//2..k//2, reflect
    padding; separable, one grouped convolution per axis. x (B,C,H,W) float, sigma (B,) -> (B,C,H,W)."""
    B, C, H, W = x.shape
    d = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.softmax(-d ** 2 / (2 * sigma.to(x)[:, None] ** 2), 1)                          # (B,k)
    kern = kern.repeat_interleave(C, 0)                                                          # (B*C,k)
    y = F.pad(x.reshape(1, B * C, H, W), [k // 2] * 4, mode="reflect")                           # (1,B*C,H+k-1,W+k-1)
    y = F.conv2d(y, kern.view(B * C, 1, 1, k), groups=B * C)                                     # along x
    y = F.conv2d(y, kern.view(B * C, 1, k, 1), groups=B * C)                                     # along y
    return y.view(B, C, H, W)


def strong_views(x, p, k):
    """Strong photometric ops of parameters p (draw_strong) on weak images x (B,C,H,W) float in [0,255]."""
    x = colour_jitter(x, p["bright"], p["contrast"], p["contrast_first"])
    return torch.where(p["blur"].view(-1, 1, 1, 1), gaussian_blur_batch(x, p["sigma"], k), x)


def normalise_batch(x):
    """(B,C,S,S) float in [0,255] (C = 1: grey, repeated to RGB) -> (B,3,S,S) float32, as `normalise`."""
    x = x.expand(-1, 3, -1, -1).float().mul(1 / 255)
    mean, std = _imagenet_stats(x.device)
    return (x - mean) / std


@functools.lru_cache
def _imagenet_stats(device):
    """ImageNet mean and std (1,3,1,1) on `device`, copied there once (a copy from the host would wait for it)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


class DeviceBatches:
    """(labeled batch, unlabeled batch) of training step t, drawn and augmented on `device`; StepBatches' format.

    batches = DeviceBatches(ds, idx_l, idx_u, batch_size=8, seed=0, device="cuda")
    (x, y, z), (x_w, x_s, y_gt, z_gt) = batches(t)       # float32 (B,3,S,S), int64 (B,S,S), int64 (B,) on device

    The training images are copied once to the device as uint8 (one channel when the set is grey). Which images:
    StepSampler (the same indices as StepBatches). Their views: weak_transform / strong_photometric's
    distributions with per-image parameters drawn from a generator seeded by (seed, t), on the CPU, so a batch is
    a pure function of t (any call order, exact resume) and the same on CPU and CUDA up to float rounding.
    """

    def __init__(self, ds, idx_l, idx_u, batch_size, seed, device="cpu"):
        self.S, self.B, self.seed, self.device = ds.image_size, batch_size, seed, torch.device(device)
        self.k = blur_kernel(self.S)
        images = ds.images[..., :1] if ds.grey else ds.images   # grey: R = G = B, one channel is enough

        def to_dev(idx):
            idx = np.asarray(idx, dtype=np.int64)
            return (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous().to(self.device),  # (n,C,S,S)
                    torch.from_numpy(ds.masks[idx]).to(self.device),                                 # (n,S,S)
                    torch.from_numpy(ds.labels[idx]).to(self.device))                                # (n,)
        self.set_l, self.set_u = to_dev(idx_l), to_dev(idx_u)
        self.draw_l = StepSampler(len(idx_l), batch_size, seed, stream=1)
        self.draw_u = StepSampler(len(idx_u), batch_size, seed, stream=2)

    def _weak(self, cache, j, p):
        images, masks, labels = (c[j] for c in cache)
        x, y = resized_crop_flip(images.float(), masks, p["boxes"], p["flip"], self.S)
        return x, y.long(), labels

    def params(self, t):
        """Step t's draws, on the CPU: indices j_l, j_u (B,) into the labeled / unlabeled set, weak views of both
        (boxes_l, flip_l, boxes_u, flip_u: draw_weak) and the strong ops (draw_strong's keys)."""
        g = torch.Generator().manual_seed(_step_seed(self.seed, t, 0))
        p_l, p_u = draw_weak(self.B, self.S, g), draw_weak(self.B, self.S, g)
        return {"j_l": torch.tensor(self.draw_l(t)), "j_u": torch.tensor(self.draw_u(t)),
                "boxes_l": p_l["boxes"], "flip_l": p_l["flip"], "boxes_u": p_u["boxes"], "flip_u": p_u["flip"],
                **draw_strong(self.B, g)}

    def __call__(self, t):
        p = _to_device(self.params(t), self.device)
        x, y, z = self._weak(self.set_l, p["j_l"], {"boxes": p["boxes_l"], "flip": p["flip_l"]})
        x_w, y_gt, z_gt = self._weak(self.set_u, p["j_u"], {"boxes": p["boxes_u"], "flip": p["flip_u"]})
        x_s = strong_views(x_w, p, self.k)
        return (normalise_batch(x), y, z), (normalise_batch(x_w), normalise_batch(x_s), y_gt, z_gt)


def _to_device(tensors, device):
    """Dict of small CPU tensors -> the same on `device` in one copy, from pinned memory and asynchronous on
    CUDA, so preparing a batch never waits for the device."""
    if device.type == "cpu":
        return tensors
    flat = torch.cat([v.reshape(-1).double() for v in tensors.values()])   # float64 holds the ints exactly
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    out, i = {}, 0
    for k, v in tensors.items():
        out[k] = flat[i:i + v.numel()].view(v.shape).to(v.dtype)
        i += v.numel()
    return out


# ------------------------------------------------------------------------------------------- preview
def _outline(mask):
    """Boundary pixels of a binary mask (S,S) -> bool (S,S)."""
    m = mask.astype(bool)
    p = np.pad(m, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def preview(ds, path, rows=4, cols=6, seed=0, scale=None):
    """Write a contact sheet PNG: top half benign (green border and outline), bottom half malignant (red)."""
    rng = np.random.default_rng(seed)
    n_b = (rows // 2) * cols
    picks = []
    for c, k in ((0, n_b), (1, rows * cols - n_b)):
        idx = np.nonzero(ds.labels == c)[0]
        picks += sorted(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    S = ds.image_size
    scale = scale or max(1, 192 // S)
    T, strip, pad = S * scale, 14, 3
    colour = {0: (40, 220, 90), 1: (240, 50, 40)}
    sheet = Image.new("RGB", (cols * (T + 2 * pad), rows * (T + strip + 2 * pad)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for j, i in enumerate(picks):
        r, c = divmod(j, cols)
        x0, y0 = c * (T + 2 * pad), r * (T + strip + 2 * pad)
        tile = ds.images[i].copy()
        tile[_outline(ds.masks[i])] = (255, 230, 0)
        tile = np.kron(tile, np.ones((scale, scale, 1), np.uint8))
        lab = int(ds.labels[i])
        draw.rectangle([x0, y0, x0 + T + 2 * pad - 1, y0 + T + strip + 2 * pad - 1], fill=colour[lab])
        sheet.paste(Image.fromarray(tile), (x0 + pad, y0 + pad + strip))
        draw.text((x0 + pad + 2, y0 + 2), f"{CLASSES[lab][0].upper()}  {ds.names[i]}"[:T // 6], fill=(0, 0, 0))
    sheet.save(path)
    return path


# ----------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description="Preview a dataset as a contact sheet; print its counts and split.")
    p.add_argument("--preview", required=True, help="output PNG (4x6 tiles: benign green, malignant red)")
    p.add_argument("--dataset", default="demo", choices=DATASETS)
    p.add_argument("--data-root", default=None, help="dataset folder (README: Datasets); not for demo")
    p.add_argument("--image-size", type=int, default=None, help="side S (default: demo 96, others 224)")
    p.add_argument("--demo-size", type=int, default=DEMO_SIZE, help="number of demo images")
    p.add_argument("--seed", type=int, default=0, help="demo generation, tile choice and split seed")
    p.add_argument("--labels", type=int, default=None, help="also print the split sizes for this budget")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--debug", action="store_true", help=f"show the Python traceback of an error (or {DEBUG_ENV}=1)")
    args = p.parse_args(argv)
    S = args.image_size or (96 if args.dataset == "demo" else 224)
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, args.data_root, image_size=S, seed=args.seed, demo_size=args.demo_size)
    dt = time.perf_counter() - t0
    counts = ", ".join(f"{c} {int((ds.labels == i).sum())}" for i, c in enumerate(CLASSES))
    mib = (ds.images.nbytes + ds.masks.nbytes) / 2 ** 20
    print(f"{ds.name}: {len(ds)} images at {S} px ({counts}); {ds.merged} with merged masks; "
          f"{len(set(ds.groups))} groups; loaded in {dt:.2f} s; cache {mib:.0f} MiB")
    if args.labels:
        sp = make_split(ds, args.labels, args.seed)
        print(f"split seed {args.seed} labels {args.labels}: " + ", ".join(f"{k} {len(sp[k])}" for k in _SPLIT_KEYS))
    print(f"wrote {preview(ds, args.preview, rows=args.rows, cols=args.cols, seed=args.seed)}")


if __name__ == "__main__":
    cli_main(main)
