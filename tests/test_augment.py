"""Batched on-device augmentation (augment.DeviceBatches and its parts) against torchvision's per-image transforms."""
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import augment
import data

MEAN = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)


def unnormalise(x):
    """(B,3,S,S) normalised -> (B,3,S,S) float in [0,255]."""
    return (x * STD.to(x.device) + MEAN.to(x.device)) * 255


def ramp_set(S=16, n=5):
    """RGB set whose R channel is 16·row, G is 16·column, and whose 'mask' is row·16 + column (S <= 16)."""
    r = np.arange(S, dtype=np.uint8)
    images = np.zeros((n, S, S, 3), np.uint8)
    images[..., 0], images[..., 1] = 16 * r[:, None], 16 * r[None, :]
    masks = np.broadcast_to((16 * r[:, None] + r[None, :]).astype(np.uint8), (n, S, S)).copy()
    names = [f"im{i}" for i in range(n)]
    return data.CachedSet(images=images, masks=masks, labels=np.arange(n) % 2, names=names, groups=names)


def grey_set(S=32, n=6, seed=0):
    """Grey images (R = G = B) with a bright square lesion, its mask 1."""
    rng = np.random.default_rng(seed)
    images = rng.integers(20, 120, (n, S, S), dtype=np.uint8)
    masks = np.zeros((n, S, S), np.uint8)
    masks[:, S // 4:S // 2, S // 5:S // 2] = 1
    images[masks == 1] = 220
    names = [f"im{i}" for i in range(n)]
    return data.CachedSet(images=np.repeat(images[..., None], 3, -1), masks=masks, labels=np.arange(n) % 2,
                          names=names, groups=names)


# ------------------------------------------------------------------------ each op against torchvision, per image
def test_crop_flip_matches_torchvision_resized_crop_per_image():
    S = 40
    x = torch.rand(16, 3, S, S, generator=torch.Generator().manual_seed(0)) * 255
    p = augment.draw_weak(16, S, torch.Generator().manual_seed(1))
    boxes = torch.cat([p["boxes"][:, :14], torch.tensor([[0, 0, S, S], [3, 5, 20, 31]]).T], 1)   # + whole, odd box
    out, _ = augment.resized_crop_flip(x, torch.zeros(16, S, S), boxes, p["flip"], S)
    assert p["flip"].any() and not p["flip"].all()
    for k in range(16):
        top, left, h, w = boxes[:, k].tolist()
        ref = TF.resized_crop(x[k], top, left, h, w, [S, S], antialias=True)                    # naive twin
        ref = ref.flip(-1) if p["flip"][k] else ref
        torch.testing.assert_close(out[k], ref, atol=5e-3, rtol=0)
    assert torch.equal(augment.resized_crop_flip(x[14:15], torch.zeros(1, S, S), boxes[:, 14:15],
                                              torch.tensor([False]), S)[0][0].round(), x[14].round())


def test_mask_follows_the_image_to_half_a_pixel():
    S = 24
    ramp = torch.arange(S, dtype=torch.float32)
    x = torch.stack([ramp[:, None].expand(S, S), ramp[None, :].expand(S, S)])[None].repeat(64, 1, 1, 1)  # rows, cols
    m = (ramp[:, None] * 100 + ramp[None, :]).long()[None].repeat(64, 1, 1)                          # id = 100·r + c
    p = augment.draw_weak(64, S, torch.Generator().manual_seed(2))
    out, mo = augment.resized_crop_flip(x, m, p["boxes"], p["flip"], S)
    row, col = torch.div(mo, 100, rounding_mode="floor"), mo % 100
    # the image at each output pixel holds its exact source coordinate (bilinear of a ramp); the mask's source
    # pixel is the nearest one
    assert (row - out[:, 0]).abs().max() <= 0.5 + 1e-4
    assert (col - out[:, 1]).abs().max() <= 0.5 + 1e-4
    for k in range(64):                                                                          # inside the box
        top, left, h, w = p["boxes"][:, k].tolist()
        assert row[k].min() == top and row[k].max() == top + h - 1
        assert col[k].min() == left and col[k].max() == left + w - 1
        assert (col[k, :, 0] > col[k, :, -1]).all() == bool(p["flip"][k])


def test_colour_jitter_matches_torchvision_in_both_orders():
    x = torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(3))                        # [0,1]
    b = torch.tensor([0.6, 1.4, 1.0, 0.5, 1.5, 0.9])
    c = torch.tensor([1.3, 0.7, 1.0, 1.5, 0.5, 1.1])
    first = torch.tensor([True, False, True, False, True, False])
    out = augment.colour_jitter(x * 255, b, c, first)
    for k in range(6):
        ops = [lambda r: TF.adjust_contrast(r, c[k].item()), lambda r: TF.adjust_brightness(r, b[k].item())]
        r = x[k]
        for op in (ops if first[k] else ops[::-1]):
            r = op(r)
        torch.testing.assert_close(out[k], r * 255, atol=1e-3, rtol=0)
    grey = x[:, :1]                                                                              # one channel
    torch.testing.assert_close(augment.colour_jitter(grey * 255, b, c, first),
                               augment.colour_jitter(grey.expand(-1, 3, -1, -1) * 255, b, c, first)[:, :1],
                               atol=0.1, rtol=0)                                                  # 0.2989+0.587+0.114


def test_gaussian_blur_matches_torchvision_per_sigma():
    x = torch.rand(5, 2, 21, 21, generator=torch.Generator().manual_seed(4)) * 255
    sigma = torch.tensor([0.1, 0.4, 1.0, 1.7, 2.0])
    for k_size in (3, 9):
        out = augment.gaussian_blur_batch(x, sigma, k_size)
        for k in range(5):
            ref = TF.gaussian_blur(x[k], [k_size, k_size], [sigma[k].item()] * 2)
            torch.testing.assert_close(out[k], ref, atol=1e-3, rtol=0)
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 9                                           # a dot away from the edges; σ = 1, k = 3 by hand:
    e = float(np.exp(-0.5))
    w = torch.tensor([0, e, 1, e, 0]) / (1 + 2 * e)              # exp(-d²/2σ²) / Σ, d = -1, 0, 1
    torch.testing.assert_close(augment.gaussian_blur_batch(dot, torch.tensor([1.0]), 3)[0, 0], 9 * w[:, None] * w)


def test_normalisation_identical_to_normalise():
    u8 = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    out = augment.normalise_batch(u8.float())
    for k in range(4):
        assert torch.equal(out[k], augment.normalise(tv_tensors.Image(u8[k])))
    grey = u8[:, :1]
    assert torch.equal(augment.normalise_batch(grey.float()), augment.normalise_batch(grey.expand(-1, 3, -1, -1).float()))


# ------------------------------------------------------------------------- parameter ranges, rates, distributions
def test_parameter_ranges_and_rates():
    n, S = 20000, 224
    g = torch.Generator().manual_seed(6)
    p, s = augment.draw_weak(n, S, g), augment.draw_strong(n, g)
    top, left, h, w = p["boxes"]
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= S).all() and (left + w <= S).all()
    area, aspect = (h * w).float() / S ** 2, w.float() / h
    whole = (h == S) & (w == S)
    assert area[~whole].min() >= 0.5 - 0.01 and area.max() <= 1
    assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01
    assert (top == 0).any() and (top == S - h).any() and (left == S - w).any()                  # both edges reached
    se = lambda q: 4 * (q * (1 - q) / n) ** 0.5                                                  # 4 standard errors
    assert abs(p["flip"].float().mean() - 0.5) < se(0.5)
    jitter = (s["bright"] != 1) | (s["contrast"] != 1)
    assert abs(jitter.float().mean() - 0.8) < se(0.8)
    assert abs(s["blur"].float().mean() - 0.5) < se(0.5)
    assert abs(s["contrast_first"].float().mean() - 0.5) < se(0.5)
    for f in (s["bright"][jitter], s["contrast"][jitter]):
        assert f.min() >= 0.5 and f.max() <= 1.5
        q = torch.quantile(f, torch.tensor([0.1, 0.5, 0.9]))                                     # uniform on [0.5,1.5]
        torch.testing.assert_close(q, torch.tensor([0.6, 1.0, 1.4]), atol=0.02, rtol=0)
    assert s["sigma"].min() >= 0.1 and s["sigma"].max() <= 2.0
    torch.testing.assert_close(s["sigma"].mean(), torch.tensor(1.05), atol=0.02, rtol=0)


def test_crop_and_jitter_draws_have_torchvision_distributions():
    n, S = 4000, 224
    ours = augment.draw_crops(n, S, torch.Generator().manual_seed(7))
    rrc = v2.RandomResizedCrop(S, scale=(0.5, 1.0))
    img = [tv_tensors.Image(torch.zeros(1, S, S, dtype=torch.uint8))]
    torch.manual_seed(7)
    ref = torch.tensor([[d[k] for k in ("top", "left", "height", "width")]
                        for d in (rrc.make_params(img) for _ in range(n))]).T                   # (4,n)

    def stats(b):
        top, left, h, w = b.double()
        pos = top[h < S] / (S - h[h < S])
        area, log_aspect = h * w / S ** 2, (w / h).log()
        return torch.stack([area.mean(), area.quantile(0.1), area.quantile(0.9), log_aspect.mean(), log_aspect.std(),
                            pos.mean(), ((h == S) & (w == S)).double().mean()])
    torch.testing.assert_close(stats(ours), stats(ref), atol=0.015, rtol=0)

    cj = v2.ColorJitter(brightness=0.5, contrast=0.5)
    torch.manual_seed(8)
    ref = [cj.make_params([]) for _ in range(n)]
    ref_b = torch.tensor([d["brightness_factor"] for d in ref])
    ref_first = torch.tensor([(d["fn_idx"] == 1).nonzero().item() < (d["fn_idx"] == 0).nonzero().item() for d in ref])
    s = augment.draw_strong(n, torch.Generator().manual_seed(8), p_jitter=1.0)
    q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    torch.testing.assert_close(torch.quantile(s["bright"], q), torch.quantile(ref_b, q), atol=0.03, rtol=0)
    assert abs(s["contrast_first"].float().mean() - ref_first.float().mean()) < 0.05


def test_views_have_the_statistics_of_the_per_image_transforms():
    """Whole pipeline vs LabeledSet/UnlabeledSet on one grey image, 600 draws each: lesion share of the weak mask,
    brightness and contrast of the strong image."""
    ds = grey_set(S=32, n=2)
    n = 600
    us = augment.UnlabeledSet(ds, [0])
    torch.manual_seed(9)
    ref = [us[0] for _ in range(n)]
    ref_w = unnormalise(torch.stack([r[0] for r in ref]))[:, 0]
    ref_s = unnormalise(torch.stack([r[1] for r in ref]))[:, 0]
    ref_y = torch.stack([r[2] for r in ref]).float()
    (_, _, _), (x_w, x_s, y, _) = augment.DeviceBatches(ds, [1], [0], n, seed=9)(0)
    x_w, x_s, y = unnormalise(x_w)[:, 0], unnormalise(x_s)[:, 0], y.float()

    def per_image(w, s, y):                                                     # (n,6) per-view quantities
        grad = lambda v: (v[:, :, 1:] - v[:, :, :-1]).abs().mean((1, 2))
        return torch.stack([y.mean((1, 2)), (y[:, :, :16].sum((1, 2)) > y[:, :, 16:].sum((1, 2))).float(),
                            s.mean((1, 2)), s.std((1, 2)), (s - w).abs().mean((1, 2)), grad(s) / grad(w)], 1)
    a, b = per_image(x_w, x_s, y), per_image(ref_w, ref_s, ref_y)
    # lesion share, not flipped, strong brightness, contrast, change and sharpness: equal means to 4 std. errors
    se = ((a.var(0) + b.var(0)) / n).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all(), (a.mean(0), b.mean(0), se)


# ------------------------------------------------------------------------------------------------ DeviceBatches
def test_device_batches_format_alignment_and_images_of_step_batches():
    ds = ramp_set(S=16, n=9)
    idx_l, idx_u = [0, 1, 2], [3, 4, 5, 6, 7, 8]
    db = augment.DeviceBatches(ds, idx_l, idx_u, batch_size=4, seed=3)
    sb = augment.StepBatches(augment.LabeledSet(ds, idx_l), augment.UnlabeledSet(ds, idx_u), 4, seed=3)
    for t in range(3):
        (x, y, z), (x_w, x_s, y_gt, z_gt) = db(t)
        (rx, ry, rz), (rw, rs, ryg, rzg) = sb[t]
        for a, b in ((x, rx), (y, ry), (z, rz), (x_w, rw), (x_s, rs), (y_gt, ryg), (z_gt, rzg)):
            assert a.shape == b.shape and a.dtype == b.dtype and type(a) is torch.Tensor
        assert torch.equal(z, rz) and torch.equal(z_gt, rzg)                     # the same images as StepBatches
        for img, mask in ((x, y), (x_w, y_gt)):
            rc = unnormalise(img)[:, :2] / 16                                  # source row, column of each pixel
            assert (torch.div(mask, 16, rounding_mode="floor") - rc[:, 0]).abs().max() <= 0.5 + 1e-3
            assert ((mask % 16) - rc[:, 1]).abs().max() <= 0.5 + 1e-3
        strong = augment.strong_views(unnormalise(x_w), db.params(t), db.k)
        torch.testing.assert_close(x_s, augment.normalise_batch(strong),
                                   atol=1e-4, rtol=0)                          # strong = photometric ops on weak
    assert ds.images[0, 3, 0, 0] == 48 and ds.masks[0, 3, 2] == 50              # cache untouched


def test_device_batches_pure_function_of_seed_and_step():
    ds = grey_set(S=32, n=12)
    make = lambda seed: augment.DeviceBatches(ds, range(4), range(4, 12), batch_size=3, seed=seed)
    a, b = make(5), make(5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = a(7)
    assert torch.equal(torch.get_rng_state(), before)                          # the global RNG is untouched
    b(3), b(0)                                                                 # other steps first
    second = b(7)
    for u, v in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(u, v)
    other_step, other_seed = a(8), make(6)(7)
    assert not torch.equal(first[1][1], other_step[1][1]) and not torch.equal(first[1][1], other_seed[1][1])


def test_grey_shortcut_equals_the_rgb_path():
    ds = grey_set(S=32, n=8)
    assert ds.grey
    rgb = data.CachedSet(images=ds.images, masks=ds.masks, labels=ds.labels, names=ds.names, groups=ds.groups)
    rgb.grey = False                                                            # force the three-channel path
    a = augment.DeviceBatches(ds, range(4), range(4, 8), 4, seed=1)(2)
    b = augment.DeviceBatches(rgb, range(4), range(4, 8), 4, seed=1)(2)
    assert a[0][0].shape == b[0][0].shape == (4, 3, 32, 32)
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        torch.testing.assert_close(u, v, atol=2e-3, rtol=0)                     # grey weights sum to 0.9999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    p = {"i": torch.tensor([3, 2**40]), "f": torch.tensor([0.25, 1.5]), "b": torch.tensor([True, False])}
    for k, v in augment._to_device(p, torch.device("cuda")).items():                # one packed copy
        assert v.is_cuda and v.dtype == p[k].dtype and torch.equal(v.cpu(), p[k])
    ds = grey_set(S=32, n=8)
    a = augment.DeviceBatches(ds, range(4), range(4, 8), 4, seed=1, device="cpu")(5)
    b = augment.DeviceBatches(ds, range(4), range(4, 8), 4, seed=1, device="cuda")(5)
    for u, v in zip(a[0] + a[1], b[0] + b[1]):
        assert v.is_cuda
        torch.testing.assert_close(u, v.cpu(), atol=1e-3, rtol=0)
