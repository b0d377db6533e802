"""Augmentation and training batches (paper §4.1): the weak view (flip, scale, crop) and the strong view
(weak + blur and colour jitter), pixel-aligned, for labeled and unlabeled images.

Two paths give the same views: `LabeledSet` / `UnlabeledSet` augment one image at a time with torchvision
(`StepBatches` for train.py --augment cpu); `DeviceBatches` augments whole batches
on the training device (train.py's default). Both make every batch a pure function of (seed, step), so a
resumed run draws exactly the batches of the uninterrupted one.
"""
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2

from cli import DataError
from data import IMAGENET_MEAN, IMAGENET_STD


def blur_kernel(S):
    """Odd Gaussian-blur kernel side for S px images: about S/10 (23 at 224, 9 at 96), at least 3."""
    return max(3, (S // 10) | 1)


def weak_transform(S):
    """Weak view (§4.1 "random horizontal flipping, random scaling, and random cropping"), image + mask
    jointly."""
    return v2.Compose([v2.RandomResizedCrop(S, scale=(0.5, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(0.5)])


def strong_photometric(S):
    """Photometric part of the strong view (§4.1 "blurring and color jittering"), applied to the weak image
    only."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(brightness=0.5, contrast=0.5)], p=0.8),
                       v2.RandomApply([v2.GaussianBlur(blur_kernel(S), sigma=(0.1, 2.0))], p=0.5)])


_normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalise(image):
    """uint8 (3,S,S) -> float32 (3,S,S), ImageNet mean/std."""
    return _normalise(image).as_subclass(torch.Tensor)


def _item(ds, i):
    """Cached item i as (tv_tensors.Image uint8 (3,S,S), tv_tensors.Mask uint8 (S,S)); views, never
    modified."""
    return (tv_tensors.Image(torch.from_numpy(ds.images[i]).permute(2, 0, 1)),   # (S,S,3) -> (3,S,S)
            tv_tensors.Mask(torch.from_numpy(ds.masks[i])))


class LabeledSet(Dataset):
    """Labeled images: item = (image float32 (3,S,S) normalised, mask int64 (S,S), label int64 ()).

    train=True: a fresh weak augmentation per access (global torch RNG); train=False: the cached image
    as is."""

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
    """64-bit seed of step t's augmentation draws: SeedSequence mixing keeps (seed, t, stream) streams
    apart."""
    return int(np.random.SeedSequence([seed, t, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw_crops(n, S, g, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """Boxes of torchvision's RandomResizedCrop for n square S×S images, all drawn at once from generator g.

    Per image, `attempts` draws of (area ~ U(scale)·S², log aspect ~ U(log ratio)),
    w = round(√(area·aspect)), h = round(√(area/aspect)); the first whose box fits is kept, otherwise
    the whole image (torchvision's fallback for a square image); top ~ U{0..S-h}, left ~ U{0..S-w}.
    -> boxes (4,n) int64 rows top, left, h, w (CPU).
    """
    area = S * S * torch.empty(n, attempts).uniform_(*scale, generator=g)                      # (n,attempts)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    w = torch.round(torch.sqrt(area * torch.exp(log_r))).long()
    h = torch.round(torch.sqrt(area / torch.exp(log_r))).long()
    fits = (w > 0) & (w <= S) & (h > 0) & (h <= S)                                              # (n,attempts)
    first = fits.int().argmax(1)                                                                  # first fit
    found = fits.any(1)
    w = torch.where(found, w[torch.arange(n), first], S)                                          # (n,)
    h = torch.where(found, h[torch.arange(n), first], S)
    u = torch.rand(2, n, generator=g)
    top = (u[0] * (S - h + 1)).long().clamp(max=S - h)     # floor(U·(S-h+1)): uniform over 0..S-h
    left = (u[1] * (S - w + 1)).long().clamp(max=S - w)
    return torch.stack([top, left, h, w])


def draw_weak(n, S, g):
    """Parameters of n weak views (weak_transform): crop boxes (4,n) and horizontal flips (n,) bool
    (p 0.5)."""
    boxes = draw_crops(n, S, g)
    return {"boxes": boxes, "flip": torch.rand(n, generator=g) < 0.5}


def draw_strong(n, g, p_jitter=0.8, brightness=0.5, contrast=0.5, p_blur=0.5, sigma=(0.1, 2.0)):
    """Parameters of n strong photometric ops (strong_photometric): ColorJitter applied with p 0.8, brightness
    and contrast factors ~ U(1 ± 0.5) in random order (factor 1 where not applied); GaussianBlur applied with
    p 0.5, σ ~ U(0.1, 2). -> dict of (n,) CPU tensors: bright, contrast, contrast_first (bool), blur (bool),
    sigma."""
    u = torch.rand(5, n, generator=g)
    jitter = u[0] < p_jitter
    bright = torch.where(jitter, 1 - brightness + 2 * brightness * u[1], 1.0)
    contr = torch.where(jitter, 1 - contrast + 2 * contrast * u[2], 1.0)
    return {"bright": bright, "contrast": contr, "contrast_first": u[3] < 0.5, "blur": u[4] < p_blur,
            "sigma": torch.empty(n).uniform_(*sigma, generator=g)}


def resized_crop_flip(images, masks, boxes, flip, size):
    """Crop box k of image k, resized to size×size and mirrored left-right where flip[k]; the mask follows.

    Image: bilinear with align_corners=False, sample points clamped to the box (what torchvision's
    resized_crop computes when the box is not larger than the output). Mask: the box pixel whose centre is
    nearest to the image's sample point, so image and mask stay aligned to half a pixel.
    images (B,C,S,S) float, masks (B,S,S) any dtype, boxes (4,B) int64 (top, left, h, w), flip (B,) bool
    -> images (B,C,size,size) float, masks (B,size,size).
    """
    B, C, S, S2 = images.shape
    top, left, h, w = boxes.to(images.device)
    d = torch.arange(size, device=images.device)                                                # output index
    # image: source coordinate of output pixel d = start + clamp((d + 0.5)·len/size - 0.5, 0, len - 1)
    coord = lambda start, n: start[:, None] + ((d + 0.5) * n[:, None] / size - 0.5).clamp(min=0).minimum(
        n[:, None] - 1)                                                                           # (B,size)
    ys, xs = coord(top, h), coord(left, w)
    xs = torch.where(flip.to(images.device)[:, None], xs.flip(1), xs)
    gx = ((2 * xs + 1) / S2 - 1)[:, None, :].expand(B, size, size)                             # (B,size,size)
    gy = ((2 * ys + 1) / S - 1)[:, :, None].expand(B, size, size)
    out = F.grid_sample(images, torch.stack([gx, gy], -1).to(images.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)                          # (B,C,size,size)
    # mask: nearest box pixel = start + floor((d + 0.5)·len/size), in integers
    iy = top[:, None] + torch.div((2 * d + 1) * h[:, None], 2 * size, rounding_mode="floor")     # (B,size)
    ix = left[:, None] + torch.div((2 * d + 1) * w[:, None], 2 * size, rounding_mode="floor")
    ix = torch.where(flip.to(images.device)[:, None], ix.flip(1), ix)
    b = torch.arange(B, device=images.device)[:, None, None]
    return out, masks[b, iy[:, :, None], ix[:, None, :]]


def colour_jitter(x, bright, contrast, contrast_first):
    """torchvision's ColorJitter(brightness, contrast) with per-image factors, in either order per image.

    brightness: clamp(b·x); contrast: clamp(c·x + (1 - c)·mean(grey(x))),
    grey = 0.2989 R + 0.587 G + 0.114 B (the image itself with one channel). x (B,C,H,W) float in [0,255];
    bright, contrast (B,); contrast_first (B,) bool -> (B,C,H,W) float in [0,255]."""
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
    """torchvision's GaussianBlur(k, σ) with a per-image σ: weights ∝ exp(-d²/2σ²), d = -k//2..k//2,
    reflect padding; separable, one grouped convolution per axis. x (B,C,H,W) float, sigma (B,)
    -> (B,C,H,W)."""
    B, C, H, W = x.shape
    d = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.softmax(-d ** 2 / (2 * sigma.to(x)[:, None] ** 2), 1)                          # (B,k)
    kern = kern.repeat_interleave(C, 0)                                                          # (B*C,k)
    y = F.pad(x.reshape(1, B * C, H, W), [k // 2] * 4, mode="reflect")                   # (1,B*C,H+k-1,W+k-1)
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
    """ImageNet mean and std (1,3,1,1) on `device`, copied there once (a copy from the host would wait
    for it)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


class DeviceBatches:
    """(labeled batch, unlabeled batch) of training step t, drawn and augmented on `device`; StepBatches'
    format.

    batches = DeviceBatches(ds, idx_l, idx_u, batch_size=8, seed=0, device="cuda")
    (x, y, z), (x_w, x_s, y_gt, z_gt) = batches(t)    # float32 (B,3,S,S), int64 (B,S,S), int64 (B,) on device

    The training images are copied once to the device as uint8 (one channel when the set is grey). Which
    images: StepSampler (the same indices as StepBatches). Their views: weak_transform /
    strong_photometric's distributions with per-image parameters drawn from a generator seeded by (seed, t),
    on the CPU, so a batch is a pure function of t (any call order, exact resume) and the same on CPU and
    CUDA up to float rounding.
    """

    def __init__(self, ds, idx_l, idx_u, batch_size, seed, device="cpu"):
        self.S, self.B, self.seed, self.device = ds.image_size, batch_size, seed, torch.device(device)
        self.k = blur_kernel(self.S)
        images = ds.images[..., :1] if ds.grey else ds.images   # grey: R = G = B, one channel is enough

        def to_dev(idx):
            idx = np.asarray(idx, dtype=np.int64)
            # images (n,C,S,S)
            return (torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous().to(self.device),
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
        """Step t's draws, on the CPU: indices j_l, j_u (B,) into the labeled / unlabeled set, weak views of
        both (boxes_l, flip_l, boxes_u, flip_u: draw_weak) and the strong ops (draw_strong's keys)."""
        g = torch.Generator().manual_seed(_step_seed(self.seed, t, 0))
        p_l, p_u = draw_weak(self.B, self.S, g), draw_weak(self.B, self.S, g)
        return {"j_l": torch.tensor(self.draw_l(t)), "j_u": torch.tensor(self.draw_u(t)),
                "boxes_l": p_l["boxes"], "flip_l": p_l["flip"],
                "boxes_u": p_u["boxes"], "flip_u": p_u["flip"], **draw_strong(self.B, g)}

    def __call__(self, t):
        p = _to_device(self.params(t), self.device)
        x, y, z = self._weak(self.set_l, p["j_l"], {"boxes": p["boxes_l"], "flip": p["flip_l"]})
        x_w, y_gt, z_gt = self._weak(self.set_u, p["j_u"], {"boxes": p["boxes_u"], "flip": p["flip_u"]})
        x_s = strong_views(x_w, p, self.k)
        return (normalise_batch(x), y, z), (normalise_batch(x_w), normalise_batch(x_s), y_gt, z_gt)


def memory_format(batches, channels_last):
    """(batch_l, batch_u) with every image batch (4-D float) in channels-last format when asked, else
    unchanged."""
    if not channels_last:
        return batches
    cl = lambda t: (t.contiguous(memory_format=torch.channels_last)
                    if t.dim() == 4 and t.is_floating_point() else t)
    return tuple(tuple(cl(t) for t in b) for b in batches)


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


