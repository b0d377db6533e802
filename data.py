"""Datasets and splits for Hermes (paper Section 4.1; README "Datasets").

Every dataset is decoded and resized once into a `CachedSet` of uint8 arrays held in memory (the sets have
< 1,000 images); augmentation and ImageNet normalisation happen on the way out (augment.py).

    ds = load_dataset("busi", "PATH/Dataset_BUSI_with_GT", image_size=224)   # or "demo" (no root)
    split = make_split(ds, labels=72, seed=0)         # per class 70/30, 36 + 36 labeled, nested budgets
    loader_l, loader_u, loader_eval = augment.make_loaders(ds, split, batch_size=8, seed=0)
    x, y, z = next(iter(loader_l))                     # (8,3,S,S) float32, (8,S,S) int64, (8,) int64
    x_w, x_s, y_gt, z_gt = next(iter(loader_u))        # weak and strong view, pixel-aligned

    python data.py --preview demo.png                                  # contact sheet of the demo set
    python data.py --preview busi.png --dataset busi --data-root PATH  # ... of a real dataset

Layouts read (`--data-root`), labels 0 = benign, 1 = malignant:
    busi    ROOT/{benign,malignant}/NAME.png + NAME_mask.png [+ NAME_mask_1.png ...] (union of all masks);
            ROOT may also be the parent of Dataset_BUSI_with_GT/; normal/ is skipped.
    udiat   ROOT/original/ID.png, ROOT/GT/ID.png, ROOT/DatasetB.xlsx (first sheet, columns Image, Type).
    sztus   ROOT/labeled.txt lines "IMAGE MASK CLASS", ROOT/image/IMAGE, ROOT/mask/MASK;
            IMAGE = L<k>-<patient>-<n>.png gives the patient id used to keep patients on one side of the
            split.
    folder  ROOT/images/*, ROOT/masks/* (same stem, any format), ROOT/labels.csv with columns
    image,label[,group];
            a row with an empty label, or an image without a mask, is an unlabeled image
            (docs/your-own-data.md).
    --unlabeled-dir DIR (any dataset): every image under DIR joins the unlabeled pool (`unlabeled_dirs=`).
    demo    synthetic B-mode breast ultrasound generated from the seed (demo.py).
"""
import argparse
import csv
import functools
import hashlib
import json
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

import demo
from cli import DEBUG_ENV, DataError, MissingFileError, cause, cli_main, write_json_atomic
from demo import DEMO_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASETS = ("demo", "busi", "udiat", "sztus", "folder")
CLASSES = ("benign", "malignant")
# An unlabeled image stores these where it has no class / no mask; they never enter a loss (split_indices
# keeps unannotated images out of the labeled and evaluation sets) and hermes._pseudo_label_stats skips them.
NO_LABEL = -1    # labels[i] of an image without a class
NO_MASK = 255    # every pixel of masks[i] of an image without a mask (the usual segmentation "ignore" value)
# Raster formats PIL reads (GIF: the masks of the DDTI thyroid set); other files in image folders are ignored.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".gif", ".webp",
              ".pbm", ".pgm", ".ppm", ".pnm", ".tga")


# ----------------------------------------------------------------------------------------------- cache
@dataclass(eq=False)
class CachedSet:
    """A whole dataset decoded and resized once, in memory.

    images (N,S,S,3) uint8 RGB; masks (N,S,S) uint8 in {0,1}; labels (N,) int64 (0 benign, 1 malignant);
    names: N unique ids (what split files store); groups: N patient ids (= names without patient ids);
    merged: how many images had more than one mask file (union taken); name: dataset name; root: folder read;
    borderline (N,) bool: demo cases with signs of the other class (demo only, else None).
    Unlabeled images (no class and/or no mask) carry NO_LABEL / NO_MASK there; `annotated` marks the others.
    from_dirs: how many images came from --unlabeled-dir; duplicates: [(dropped file, name it duplicates)].
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
    from_dirs: int = 0
    duplicates: list = field(default_factory=list)
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        N = len(self.names)
        S = self.images.shape[1] if self.images.ndim == 4 else None
        if (self.images.shape != (N, S, S, 3) or self.masks.shape != (N, S, S) or self.labels.shape != (N,)
                or len(self.groups) != N):
            raise DataError(f"inconsistent CachedSet shapes: images {self.images.shape}, masks "
                            f"{self.masks.shape}, labels {self.labels.shape}, {N} names, {len(self.groups)} "
                            "groups")
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
    def annotated(self):
        """(N,) bool: the image has a class and a mask (it may be labeled or evaluated); False = unlabeled."""
        return (self.labels != NO_LABEL) & (self.masks[:, 0, 0] != NO_MASK)

    def counts(self):
        """One-line summary of the annotated and unlabeled images (data.py and train.py print it)."""
        a = self.annotated
        out = ", ".join(f"{c} {int(((self.labels == i) & a).sum())}" for i, c in enumerate(CLASSES))
        if not a.all():
            n_u, src = int((~a).sum()), []
            if n_u > self.from_dirs:
                src.append(f"{n_u - self.from_dirs} listed without a class or mask")
            if self.from_dirs:
                src.append(f"{self.from_dirs} from --unlabeled-dir")
            if self.duplicates:
                src.append(f"{len(self.duplicates)} duplicate files skipped")
            out += f"; unlabeled {n_u} ({', '.join(src)})"
        return out

    @functools.cached_property
    def grey(self):
        """True when R = G = B everywhere (ultrasound): photometric ops may then run on one channel."""
        return bool((self.images[..., 0] == self.images[..., 1]).all() and
                    (self.images[..., 0] == self.images[..., 2]).all())


def _natural_key(s):
    """'benign (2)' sorts before 'benign (10)'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _parse_label(value, where):
    """0/1/benign/malignant (any case, surrounding spaces) -> 0/1; anything else is an error naming
    `where`."""
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

    Image: RGB, bilinear resize. Mask: union of the files' ("L" > 127) at the original size, then nearest
    resize of the binary mask (threshold first, so nearest never sees grey values); no mask file: NO_MASK
    everywhere."""
    im = _open(image_path, "RGB")
    if not mask_paths:
        return (np.asarray(im.resize((S, S), Image.Resampling.BILINEAR), dtype=np.uint8),
                np.full((S, S), NO_MASK, np.uint8))
    m = None
    for mp in mask_paths:
        mk = _open(mp, "L")
        if mk.size != im.size:
            raise DataError(f"image/mask size mismatch: {image_path} is {im.size[0]}x{im.size[1]} but "
                            f"{mp} is {mk.size[0]}x{mk.size[1]} (a mask must cover its image pixel for "
                            "pixel)")
        v = np.asarray(mk)
        b = v > 127 if v.max() > 1 else v > 0       # masks stored as 0/1 instead of 0/255 are read too
        m = b if m is None else m | b
    image = np.asarray(im.resize((S, S), Image.Resampling.BILINEAR), dtype=np.uint8)
    mask = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((S, S),
                                                                       Image.Resampling.NEAREST)) > 127
    return image, mask.astype(np.uint8)


def _decode_all(records, S):
    """_decode of every record, in parallel threads -> images (N,S,S,3) uint8, masks (N,S,S) uint8."""
    images = np.empty((len(records), S, S, 3), np.uint8)
    masks = np.empty((len(records), S, S), np.uint8)

    def one(k):
        images[k], masks[k] = _decode(records[k][1], records[k][2], S)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
        list(pool.map(one, range(len(records))))
    return images, masks


def _build(records, S, name, root, from_dirs=0, duplicates=()):
    """records: list of (name, image_path, [mask_paths], label, group) -> CachedSet, decoded in parallel
    threads.

    label NO_LABEL and/or no mask path: an unlabeled image; both classes need an annotated image."""
    if not records:
        raise DataError(f"empty dataset: no images found for {name} in {root} (README: Datasets shows the "
                        "layout)")
    labels = np.array([r[3] for r in records], dtype=np.int64)
    for c, cname in enumerate(CLASSES):
        if not any(r[3] == c and r[2] for r in records):
            raise DataError(f"empty class: {name} in {root} has no {cname} images with a mask (both classes "
                            f"are needed)")
    images, masks = _decode_all(records, S)
    empty = [r[0] for r, m in zip(records, masks) if r[2] and not m.any()]
    if empty:
        warnings.warn(f"{name}: {len(empty)} images have an empty lesion mask at {S} px, e.g. {empty[:3]}")
    return CachedSet(images=images, masks=masks, labels=labels, names=[r[0] for r in records],
                     groups=[r[4] for r in records], merged=sum(len(r[2]) > 1 for r in records), name=name,
                     root=root, from_dirs=from_dirs, duplicates=list(duplicates))


def _require_dir(path, what, root=None):
    """path, or a MissingFileError naming it (and, given the dataset root, the folder one level up or down
    that holds what was expected)."""
    if not os.path.isdir(path):
        hint = _elsewhere(root, os.path.relpath(path, root)) if root is not None else ""
        raise MissingFileError(f"{what} not found: {path}{hint}")
    return path


def _elsewhere(root, relative):
    """When ROOT/relative is missing: '; found in FOLDER: pass --data-root FOLDER' for the folder one level up
    or down from root that holds it, or '' (a --data-root one level too high or too low)."""
    root = os.path.abspath(root)
    candidates = [os.path.dirname(root)]
    try:
        candidates += sorted(os.path.join(root,
                                          d) for d in os.listdir(root) if os.path.isdir(os.path.join(root,
                                                                                                     d)))
    except OSError:
        pass
    for c in candidates:
        if c != root and os.path.exists(os.path.join(c, relative)):
            return f"; found in {c}: pass --data-root {c}"
    return ""


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
        folder = _require_dir(os.path.join(root, cname),
                              f"BUSI class folder (expected {' and '.join(CLASSES)} under the root)", root)
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

    The first sheet's header row holds `Image` and `Type`; rows whose Image cell is not an id (blank rows, a
    legend block) are skipped; other columns are ignored."""
    import openpyxl
    _require_dir(root, "UDIAT root")
    xlsx = os.path.join(root, "DatasetB.xlsx")
    if not os.path.isfile(xlsx):
        raise MissingFileError(f"UDIAT label sheet not found: {xlsx}{_elsewhere(root, 'DatasetB.xlsx')}")
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
    return p if os.path.isfile(p) or not os.path.isfile(os.path.join(root, entry)) else os.path.join(root,
                                                                                                     entry)


def _read_sztus(root):
    """SZ-TUS (paper's release): ROOT/labeled.txt lines 'IMAGE MASK CLASS', ROOT/image/, ROOT/mask/.

    Patient id = <patient> of L<k>-<patient>-<n>.png; a name without it becomes its own group (warned)."""
    _require_dir(root, "SZ-TUS root")
    lst = os.path.join(root, "labeled.txt")
    if not os.path.isfile(lst):
        raise MissingFileError(f"SZ-TUS list file not found: {lst}{_elsewhere(root, 'labeled.txt')}")
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
    ROOT/labels.csv with columns image,label and an optional group (patient, case): images of one group stay
    on one side of the split; a blank group is the image's own. A row with an empty label, or whose image has
    no mask, is an unlabeled image (what it has, class or mask, only measures pseudo-label accuracy); a class
    without a mask is warned about, since it may be a forgotten mask. Images not in labels.csv are skipped
    with a warning naming them."""
    _require_dir(root, "dataset root")
    if not os.path.isdir(os.path.join(root, "images")) and not _elsewhere(root, "images"):
        raise MissingFileError(f"image folder not found: {os.path.join(root, 'images')} (the folder layout: "
                               f"images/, masks/, labels.csv); a data set shipped another way (DDTI's XML "
                               f"annotations, say): docs/your-own-data.md converts it")
    img_dir = _require_dir(os.path.join(root, "images"), "image folder", root)
    mask_dir = _require_dir(os.path.join(root, "masks"), "mask folder", root)
    csv_path = os.path.join(root, "labels.csv")
    if not os.path.isfile(csv_path):
        raise MissingFileError(f"label file not found: {csv_path} (columns image,label[,group])"
                               f"{_elsewhere(root, 'labels.csv')}; a data set shipped another way (DDTI's "
                               f"XML annotations, say): docs/your-own-data.md converts it")
    images, masks = _by_stem(img_dir), _by_stem(mask_dir)
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = {(k or "").strip().lower(): k for k in reader.fieldnames or []}
        if "image" not in fields or "label" not in fields:
            raise DataError(f"{csv_path}: needs a header with columns 'image' and 'label' (and optionally "
                            f"'group'), found {reader.fieldnames}")
        rows = list(reader)
    records, line_of, class_only = [], {}, []
    for n, row in enumerate(rows, start=2):
        entry = (row[fields["image"]] or "").strip()
        if not entry:
            continue
        listed_ext = entry.lower().endswith(IMAGE_EXTS)
        stem = os.path.splitext(entry)[0] if listed_ext else entry
        raw = (row[fields["label"]] or "").strip()
        label = _parse_label(raw, f"{csv_path} line {n}") if raw else NO_LABEL   # empty: unlabeled
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
        if len(masks.get(stem, [])) > 1:
            raise DataError(f"two masks for image {stem!r} in {mask_dir}: {', '.join(masks[stem])} (keep "
                            "one)")
        if stem not in masks and label != NO_LABEL:
            class_only.append(stem)
        group = (row.get(fields["group"]) or "").strip() if "group" in fields else ""
        records.append((stem, os.path.join(img_dir, files[0]),
                        [os.path.join(mask_dir, m) for m in masks.get(stem, [])], label, group or stem))
    if class_only:
        warnings.warn(f"{len(class_only)} images of {csv_path} have a class but no mask in {mask_dir} and "
                      f"are used as unlabeled images, e.g. {', '.join(repr(n) for n in class_only[:3])} (add "
                      "the mask, same stem, to train on one as a labeled image; empty its label to silence "
                      "this)")
    unlisted = [f for stem, fs in images.items() if stem not in line_of for f in fs]
    if unlisted:
        warnings.warn(f"{len(unlisted)} images in {img_dir} are not listed in {csv_path} and are not used, "
                      f"e.g. {', '.join(repr(f) for f in unlisted[:3])} (add a row image,label to use one; "
                      f"with an empty label it is used unlabeled)")
    return sorted(records, key=lambda rec: _natural_key(rec[0]))


_READERS = {"busi": _read_busi, "udiat": _read_udiat, "sztus": _read_sztus, "folder": _read_folder}


def _walk_images(folder):
    """Paths of the image files under `folder`, recursively (hidden files and folders skipped), natural
    order."""
    out = []
    for d, subdirs, files in os.walk(folder):
        subdirs[:] = [x for x in subdirs if not x.startswith(".")]
        out += [os.path.join(d, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTS)]
    return sorted(out, key=lambda p: _natural_key(os.path.relpath(p, folder)))


def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _unlabeled_records(dirs, records, taken=()):
    """Records of the images under each of `dirs` (no class, no mask, each its own group), after `records`.

    Name: the path under DIR without extension ('2024/scan_17'); with the extension when that name is taken by
    another file; a file whose bytes equal an image already read (a labeled one, or one under an earlier DIR)
    is skipped and reported. The dataset's own images and masks under a DIR are left out (said in one line).
    -> (new records, [(skipped file, name of the image it duplicates)])."""
    own_masks = {os.path.realpath(p) for r in records for p in r[2]}
    own = own_masks | {os.path.realpath(r[1]) for r in records}   # the dataset's own images and masks
    seen = {_file_digest(r[1]): r[0] for r in records}
    taken = {r[0] for r in records} | set(taken)
    out, dups = [], []
    for d in dirs:
        d = _require_dir(os.path.abspath(os.path.expanduser(str(d))), "--unlabeled-dir folder")
        paths = _walk_images(d)
        if not paths:
            raise DataError(f"--unlabeled-dir {d}: no image files under it (formats read: "
                            f"{', '.join(IMAGE_EXTS)})")
        mine = [p for p in paths if os.path.realpath(p) in own]
        if mine:
            n_masks = sum(os.path.realpath(p) in own_masks for p in mine)
            print(f"--unlabeled-dir {d} overlaps the dataset: left out its {len(mine)} own files "
                  f"({n_masks} masks, {len(mine) - n_masks} images)")
            paths = [p for p in paths if os.path.realpath(p) not in own]
            if not paths:
                raise DataError(f"--unlabeled-dir {d}: every image under it belongs to the dataset itself "
                                f"(its images and masks); name a folder of other images")
        for p in paths:
            h = _file_digest(p)
            if h in seen:
                dups.append((p, seen[h]))
                continue
            rel = os.path.relpath(p, d).replace(os.sep, "/")
            name = next((c for c in (os.path.splitext(rel)[0], rel) if c not in taken), None)
            if name is None:
                raise DataError(f"--unlabeled-dir {d}: image {rel!r} has the name of another, different "
                                f"image already read; rename one of them")
            seen[h] = name
            taken.add(name)
            out.append((name, p, [], NO_LABEL, name))
    if dups:
        warnings.warn(f"{len(dups)} files under --unlabeled-dir are copies of images already read and are "
                      f"used once, e.g. {dups[0][0]} = {dups[0][1]!r}")
    return out, dups


LAYOUTS = (("udiat", "DatasetB.xlsx", lambda r: os.path.isfile(os.path.join(r, "DatasetB.xlsx"))),
           ("busi", "Dataset_BUSI_with_GT/ or benign/ + malignant/",
            lambda r: os.path.isdir(os.path.join(r, "Dataset_BUSI_with_GT"))
            or all(os.path.isdir(os.path.join(r, c)) for c in CLASSES)),
           ("sztus", "labeled.txt", lambda r: os.path.isfile(os.path.join(r, "labeled.txt"))),
           ("folder", "labels.csv", lambda r: os.path.isfile(os.path.join(r, "labels.csv"))))


def detect_dataset(root):
    """The dataset whose layout `root` has (README: Datasets): UDIAT's DatasetB.xlsx, BUSI's class folders,
    SZ-TUS's labeled.txt, labels.csv of `folder`. One-line DataError when none (or several) match."""
    root = _require_dir(os.path.abspath(os.path.expanduser(str(root))), "--data-root folder")
    found = [name for name, _, has in LAYOUTS if has(root)]
    looked = "; ".join(f"{what} ({name})" for name, what, _ in LAYOUTS)
    if len(found) != 1:
        what = "no known dataset layout" if not found else f"the layouts of {' and '.join(found)}"
        raise DataError(f"--data-root {root} has {what} (looked for {looked}): pass --dataset NAME"
                        + ("; your own images: docs/your-own-data.md (a DDTI recipe "
                           "too)" if not found else ""))
    return found[0]


def load_dataset(name, root=None, image_size=224, seed=0, demo_size=None, unlabeled_dirs=None):
    """Read dataset `name` from `root` (ignored for demo) into a CachedSet of image_size×image_size arrays.

    seed and demo_size (number of images, default 240) only concern the generated demo set. unlabeled_dirs:
    folders whose images (recursively, no labels, no masks) are added as unlabeled images
    (_unlabeled_records)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if int(image_size) != image_size or image_size < 8:
        raise DataError(f"image size must be an integer >= 8, got {image_size}")
    if name == "demo":
        ds = make_demo(DEMO_SIZE if demo_size is None else demo_size, image_size, seed)
        if not unlabeled_dirs:
            return ds
        extra, dups = _unlabeled_records(unlabeled_dirs, [], taken=ds.names)
        images, masks = _decode_all(extra, image_size)
        return CachedSet(images=np.concatenate([ds.images, images]), masks=np.concatenate([ds.masks, masks]),
                         labels=np.concatenate([ds.labels, np.full(len(extra), NO_LABEL, np.int64)]),
                         names=ds.names + [r[0] for r in extra], groups=ds.groups + [r[4] for r in extra],
                         name=ds.name, borderline=np.concatenate([ds.borderline, np.zeros(len(extra), bool)]),
                         from_dirs=len(extra), duplicates=dups)
    if root is None:
        raise DataError(f"dataset {name!r} needs a root folder (--data-root)")
    root = os.path.abspath(os.path.expanduser(str(root)))
    records = _READERS[name](root)
    extra, dups = _unlabeled_records(unlabeled_dirs, records) if unlabeled_dirs else ([], [])
    return _build(records + extra, image_size, name, root, from_dirs=len(extra), duplicates=dups)


def make_demo(n=DEMO_SIZE, image_size=96, seed=0):
    """The demo set (demo.py) as a CachedSet: n images of image_size px, deterministic in (n, size, seed);
    ds.borderline marks the cases whose signs lean to the other class."""
    if n < 4:
        raise DataError(f"demo set needs at least 4 images, got {n} (--demo-size)")
    images, masks, labels, borderline = demo.synthesise(n, image_size, seed)
    names = [f"demo_{i:04d}" for i in range(n)]
    return CachedSet(images=images, masks=masks, labels=labels, names=names, groups=list(names), merged=0,
                     name="demo", borderline=borderline)

# ---------------------------------------------------------------------------------------------- splits
def _n_train(n):
    """Train share of n groups (Section 4.1: "randomly divided into training and validation sets at a ratio of
    7:3"): round(0.7 n) with halves rounded up, in integers, kept in [1, n-1] so both sides are non-empty."""
    return min(max((7 * n + 5) // 10, 1), n - 1)


from config import LABELS_ALL, image_size_for, parse_labels  # noqa: E402  (declared with the settings)


def make_split(ds, labels, seed):
    """Seeded split of `ds` (paper Section 4.1; README "Paper ↔ code", split) -> dict of names.

    Per class c: the class's groups (patients; images when the dataset has none) are permuted with a generator
    seeded by (seed, c); the first _n_train(groups) go to train, the rest to evaluation. A patient whose
    images carry both labels is assigned to the class of its malignant images (never split). Then the class's
    train images are permuted once with a generator seeded by (seed, c, 1) and the first labels/2 are labeled,
    so for one seed the budgets are nested (the 40-label set contains the 20-label set) and the evaluation set
    is the same for every budget. A budget must leave each class at least one unlabeled train image (Hermes
    draws unlabeled batches of both classes); an odd or too large budget is an error naming the largest one
    allowed.

    Unlabeled images (ds.annotated False: no class or no mask) take no part in these draws, so the annotated
    images split exactly as without them; they all join train_unlabeled, except those in a group that went to
    evaluation (left out, listed under "left_out", so a patient stays on one side). labels="all": every
    annotated train image is labeled and the unlabeled images are the unlabeled set. With unlabeled images the
    split also lists them under "real_unlabeled" (the images whose pseudo-labels have no ground truth).
    Returns {"dataset", "seed", "labels", "train_labeled", "train_unlabeled", "eval"[, "real_unlabeled",
    "left_out"]}."""
    every = labels == LABELS_ALL
    labels, seed = (labels if every else int(labels)), int(seed)
    k = 0 if every else labels // 2
    order = sorted(range(len(ds)), key=lambda i: _natural_key(ds.names[i]))   # independent of reading order
    annotated = ds.annotated
    real = [i for i in order if not annotated[i]]
    patient_class = {}
    for i in order:
        if annotated[i]:
            patient_class[ds.groups[i]] = max(patient_class.get(ds.groups[i], 0), int(ds.labels[i]))
    train_groups, train_c = set(), {}
    for c, cname in enumerate(CLASSES):
        groups = sorted({g for g, pc in patient_class.items() if pc == c}, key=_natural_key)
        unit = "patients" if ds.groups != ds.names else "images"
        if len(groups) < 2:
            raise DataError(f"empty class: {ds.name} has {len(groups)} {cname} {unit}; a 70/30 split needs "
                            ">= 2")
        perm = np.random.default_rng([seed, c]).permutation(len(groups))
        train_groups.update(groups[j] for j in perm[:_n_train(len(groups))])
    for c in (0, 1):
        train_c[c] = [i for i in order if annotated[i] and ds.labels[i] == c and ds.groups[i] in train_groups]
    real_train = [i for i in real if ds.groups[i] in train_groups or ds.groups[i] not in patient_class]
    n0, n1 = len(train_c[0]), len(train_c[1])
    # labels/2 per class, each class keeping >= 1 unlabeled image, unless real unlabeled images are there
    # to be the unlabeled set (README: Datasets)
    k_max = min(n0, n1) - (not real_train)
    where = f"the train part of {ds.name} (seed {seed}: {n0} benign, {n1} malignant)"
    if every:
        if not real_train:
            raise DataError(f"--labels {LABELS_ALL} labels every annotated training image and needs "
                            f"unlabeled images, but {ds.name} has none in its train part (add rows with an "
                            "empty label, or --unlabeled-dir DIR), or give a budget (maximum labels: "
                            f"{2 * k_max})")
    else:
        if k_max < 1:
            raise DataError(f"{where} is too small for a labeled and an unlabeled set; add images or use "
                            f"other data")
        if labels <= 0 or labels % 2:
            raise DataError(f"labels must be a positive even number (labels/2 per class), got {labels}; "
                            f"maximum labels: {2 * k_max}")
        for c, cname in enumerate(CLASSES):
            if k > len(train_c[c]):
                raise DataError(f"labels={labels} needs {k} labeled {cname} images but {where} has only "
                                f"{len(train_c[c])}; maximum labels: {2 * k_max}")
        if k > k_max:
            short = [cname for c, cname in enumerate(CLASSES) if k >= len(train_c[c])]
            raise DataError(f"labels={labels} labels every {' and '.join(short)} image of {where} and leaves "
                            f"that class no unlabeled image (each class keeps at least one); maximum labels: "
                            f"{2 * k_max}")
    labeled = []
    for c in (0, 1):
        if every:
            labeled += train_c[c]
            continue
        perm = np.random.default_rng([seed, c, 1]).permutation(len(train_c[c]))
        labeled += [train_c[c][j] for j in perm[:k]]
    labeled = set(labeled)
    name = lambda idx: [ds.names[i] for i in order if i in idx]
    train = {i for c in (0, 1) for i in train_c[c]} | set(real_train)
    split = {"dataset": ds.name, "seed": seed, "labels": labels,
             "train_labeled": name(labeled), "train_unlabeled": name(train - labeled),
             "eval": name(set(order) - train - set(real))}
    if real:
        split["real_unlabeled"] = name(set(real_train))
    if len(real_train) < len(real):
        split["left_out"] = name(set(real) - set(real_train))
    return split


_SPLIT_KEYS = ("train_labeled", "train_unlabeled", "eval")


def describe_unlabeled(ds, split, idx_u):
    """One line on the unlabeled images of a split (train.py prints it when the set has real unlabeled
    images): the set's counts, how many unlabeled training images carry a hidden class / mask (what
    pl_acc_img_* / pl_acc_pix_* are measured on) and how many were left out with their group."""
    n_img = int((ds.labels[idx_u] != NO_LABEL).sum())
    n_pix = int((ds.masks[idx_u, 0, 0] != NO_MASK).sum())
    left = (f"; {len(split['left_out'])} left out (their group is in evaluation)" if split.get("left_out")
            else "")
    return (f"{ds.name}: {ds.counts()}; of the {len(idx_u)} unlabeled training images, {n_img} have a hidden "
            f"class (pl_acc_img_*) and {n_pix} a hidden mask (pl_acc_pix_*); an accuracy with none in a "
            f"batch is blank in log.csv{left}")


# ------------------------------------------------------------------------------------------ split files
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
        real = [n for n in split["train_unlabeled"] if not ds.annotated[ds.index[n]]]
        split = {k: v for k, v in split.items() if k != "real_unlabeled"}
        # what this dataset has, whatever the file said (a split drawn by simulation has no such key)
        if real:
            split["real_unlabeled"] = real
    return split


def split_indices(ds, split, where="split"):
    """Names of a split -> (idx_l, idx_u, idx_eval) int64 arrays of positions in ds; unknown names and names
    on two sides are errors."""
    out, seen = [], {}
    for key in _SPLIT_KEYS:
        if not isinstance(split.get(key), list):
            raise DataError(f"{where}: no list {key!r} (expected keys {_SPLIT_KEYS})")
        names = split[key]
        unknown = [n for n in names if n not in ds.index]
        if unknown:
            raise DataError(f"{where}: {len(unknown)} of the {key} names are not in dataset {ds.name!r} "
                            f"({len(ds)} images{', root ' + ds.root if ds.root else ''}), e.g. "
                            f"{unknown[:3]}; was the split made for {split.get('dataset')!r} with other "
                            "settings?")
        for n in names:
            if n in seen:
                raise DataError(f"{where}: image {n!r} is in both {seen[n]} and {key}")
            seen[n] = key
        if key != "train_unlabeled":
            bare = [n for n in names if not ds.annotated[ds.index[n]]]
            if bare:
                raise DataError(f"{where}: {len(bare)} of the {key} images have no class or no mask in "
                                f"{ds.name!r}, e.g. {bare[:3]}; an unlabeled image can only be in "
                                f"train_unlabeled (draw a split with --labels instead)")
        out.append(np.array([ds.index[n] for n in names], dtype=np.int64))
    return tuple(out)


# ------------------------------------------------------------------------------------------- preview
def _outline(mask):
    """Boundary pixels of a binary mask (S,S) -> bool (S,S)."""
    m = mask.astype(bool)
    p = np.pad(m, 1)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def preview(ds, path, rows=4, cols=6, seed=0, scale=None):
    """Write a contact sheet PNG: top half benign (green border and outline), bottom half malignant (red);
    when the set has unlabeled images, one more row of them apart (grey border, 'U', outline only where a mask
    is known)."""
    rng = np.random.default_rng(seed)
    n_b = (rows // 2) * cols
    picks = []
    for c, k in ((0, n_b), (1, rows * cols - n_b)):
        idx = np.nonzero((ds.labels == c) & ds.annotated)[0]
        picks += sorted(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    unl = np.nonzero(~ds.annotated)[0]
    if len(unl):
        picks += [None] * (rows * cols - len(picks))    # the unlabeled row starts on a row of its own
        picks += sorted(rng.choice(unl, size=min(cols, len(unl)), replace=False).tolist())
        rows += 1
    S = ds.image_size
    scale = scale or max(1, 192 // S)
    T, strip, pad = S * scale, 14, 3
    colour = {0: (40, 220, 90), 1: (240, 50, 40), NO_LABEL: (150, 150, 150)}
    sheet = Image.new("RGB", (cols * (T + 2 * pad), rows * (T + strip + 2 * pad)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for j, i in enumerate(picks):
        if i is None:
            continue
        r, c = divmod(j, cols)
        x0, y0 = c * (T + 2 * pad), r * (T + strip + 2 * pad)
        tile = ds.images[i].copy()
        tile[_outline(ds.masks[i] == 1)] = (255, 230, 0)
        tile = np.kron(tile, np.ones((scale, scale, 1), np.uint8))
        lab = int(ds.labels[i]) if ds.annotated[i] else NO_LABEL
        tag = CLASSES[lab][0].upper() if lab != NO_LABEL else "U"
        draw.rectangle([x0, y0, x0 + T + 2 * pad - 1, y0 + T + strip + 2 * pad - 1], fill=colour[lab])
        sheet.paste(Image.fromarray(tile), (x0 + pad, y0 + pad + strip))
        draw.text((x0 + pad + 2, y0 + 2), f"{tag}  {ds.names[i]}"[:T // 6], fill=(0, 0, 0))
    sheet.save(path)
    return path


# ----------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(description="Preview a dataset as a contact sheet; print its counts and "
                                            "split.")
    p.add_argument("--preview", required=True, help="output PNG (4x6 tiles: benign green, malignant red)")
    p.add_argument("--dataset", default="demo", choices=DATASETS)
    p.add_argument("--data-root", default=None, help="dataset folder (README: Datasets); not for demo")
    p.add_argument("--image-size", type=int, default=None, help="side S (default: demo 96, others 224)")
    p.add_argument("--demo-size", type=int, default=DEMO_SIZE, help="number of demo images")
    p.add_argument("--seed", type=int, default=0, help="demo generation, tile choice and split seed")
    p.add_argument("--unlabeled-dir", action="append", default=None, metavar="DIR",
                   help="add every image under DIR as an unlabeled image (repeatable)")
    p.add_argument("--labels", type=parse_labels, default=None,
                   help="also print the split sizes for this budget (or 'all')")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--debug", action="store_true",
                   help=f"show the Python traceback of an error (or {DEBUG_ENV}=1)")
    args = p.parse_args(argv)
    S = args.image_size or image_size_for(args.dataset)
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset, args.data_root, image_size=S, seed=args.seed, demo_size=args.demo_size,
                      unlabeled_dirs=args.unlabeled_dir)
    dt = time.perf_counter() - t0
    mib = (ds.images.nbytes + ds.masks.nbytes) / 2 ** 20
    print(f"{ds.name}: {len(ds)} images at {S} px ({ds.counts()}); {ds.merged} with merged masks; "
          f"{len(set(ds.groups))} groups; loaded in {dt:.2f} s; cache {mib:.0f} MiB")
    if args.labels:
        sp = make_split(ds, args.labels, args.seed)
        extra = "".join(f", {k} {len(sp[k])}" for k in ("real_unlabeled", "left_out") if k in sp)
        print(f"split seed {args.seed} labels {args.labels}: "
              + ", ".join(f"{k} {len(sp[k])}" for k in _SPLIT_KEYS)
              + extra)
    print(f"wrote {preview(ds, args.preview, rows=args.rows, cols=args.cols, seed=args.seed)}")


if __name__ == "__main__":
    cli_main(main)
