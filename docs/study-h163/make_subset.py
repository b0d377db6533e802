"""A BUSI subset the size of the held-out set of issue 27 (40 labeled + 74 unlabeled + 49 evaluation images:
163 at the split's 7:3), at BUSI's own malignant share (53 of 163, 0.325; held-out evaluation: 16 of 49),
as symlinks into a BUSI copy in its original layout (normal/ left out, as the loader does).

    python docs/study-h163/make_subset.py ../shared/data/BUSI/Dataset_BUSI_with_GT 0 runs/h163/A/Dataset_BUSI_with_GT
"""
import os
import random
import sys

src, seed, out = os.path.abspath(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
for cls, n in (("benign", 110), ("malignant", 53)):
    files = sorted(os.listdir(os.path.join(src, cls)))
    cases = sorted(f for f in files if "_mask" not in f)
    os.makedirs(os.path.join(out, cls), exist_ok=True)
    for case in rng.sample(cases, n):
        stem = case[:-4]
        for f in files:
            if f == case or f.startswith(stem + "_mask"):
                os.symlink(os.path.join(src, cls, f), os.path.join(out, cls, f))
print(out, {c: sum("_mask" not in f for f in os.listdir(os.path.join(out, c))) for c in ("benign", "malignant")})
