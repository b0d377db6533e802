"""Graded checks of 'pixel-contrast' (eq. (11) and the anchor sampling of §3.4). Each check records what the code
computes; the grader compares the record with the reference's (tools/course/observe.py). The loss and the
anchors are checked separately: a mistake in one costs none of the other's points.

The anchor sampler under test is the hermes.py function that meta.toml cuts (ANCHOR_FN below): change the
assignment's target there, in one place. It is called as f(labels, w, pred_strong, n, generator=...) and may
return (idx, labels) or fixed-size slots (idx, labels, valid)."""
import os
import tomllib

import torch

from tools.course.observe import Fail, expect_loss_and_finite_grad, gen, unit
from tools.course.registry import check

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "meta.toml"), "rb") as _f:
    ANCHOR_FN = next(q for f, q, _ in tomllib.load(_f)["cuts"] if f == "hermes.py")


def _anchor_case(g, K, M_, D, n_cls, dtype):
    a, k = unit(g, K, D, dtype), unit(g, M_, D, dtype)
    la, lk = torch.randint(0, n_cls, (K,), generator=g), torch.randint(0, n_cls, (M_,), generator=g)
    return a, la, k, lk


# ---------------------------------------------------------------------------- eq. (11)

@check(1)
def loss_by_hand(ctx, M):
    """eq. (11): the hand-worked anchors and keys of the visible tests (τ = 1 and τ = 0.5)"""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    ctx.expect(M.losses.pixel_contrastive_loss(a, torch.tensor([0, 1, 2]), k, torch.tensor([0, 1, 1]),
                                               temperature=1.0), "eq. (11) at τ = 1", atol=1e-10)
    ctx.expect(M.losses.pixel_contrastive_loss(a[:2], torch.tensor([0, 1]), k, torch.tensor([0, 1, 1]),
                                               temperature=0.5), "eq. (11) at τ = 0.5", atol=1e-10)


@check(3)
def loss_matches(ctx, M):
    """pixel_contrastive_loss (eq. (11)) matches the reference on random anchors and keys"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            for K, Mk, D, n_cls in ((1, 1, 2, 2), (5, 7, 3, 2), (13, 21, 8, 2), (9, 30, 4, 3)):
                for dtype in (torch.float32, torch.float64):
                    a, la, k, lk = _anchor_case(gen(seed * 31 + K), K, Mk, D, n_cls, dtype)
                    ctx.expect(M.losses.pixel_contrastive_loss(a, la, k, lk, 0.07),
                               f"eq. (11), {K} anchors, {Mk} keys, D {D}, {n_cls} classes, {dtype}",
                               atol=1e-4 if dtype == torch.float32 else 1e-9, rtol=1e-5)


@check(2)
def loss_uses_temperature(ctx, M):
    """pixel_contrastive_loss uses its temperature argument"""
    a, la, k, lk = _anchor_case(gen(3), 6, 11, 5, 2, torch.float64)
    for T in (0.07, 0.1, 0.2, 1.0):
        ctx.expect(M.losses.pixel_contrastive_loss(a, la, k, lk, temperature=T), f"eq. (11) at τ = {T}", atol=1e-9)


@check(2)
def loss_skips_anchors_without_positive(ctx, M):
    """anchors without a positive key are left out of the mean (at τ = 1)

    At τ = 1 a missing temperature costs only the temperature checks, not this one."""
    a, _, k, _ = _anchor_case(gen(4), 8, 9, 4, 2, torch.float64)
    la = torch.tensor([0, 1, 2, 2, 0, 3, 1, 2])      # classes 2 and 3 have no key
    lk = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1])
    ctx.expect(M.losses.pixel_contrastive_loss(a, la, k, lk, 1.0), "eq. (11) with 4 of 8 anchors without positive",
               atol=1e-9)


@check(1, needs=('loss_matches',))
def loss_degenerate_zero(ctx, M):
    """anchors without negatives give 0; no positive anywhere gives 0 (finite gradients)"""
    a, _, k, _ = _anchor_case(gen(5), 4, 5, 3, 2, torch.float64)
    for la, lk, what in ((torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), "every key positive"),
                         (torch.ones(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), "no key positive")):
        with ctx.part(what):
            x = a.clone().requires_grad_(True)
            out = M.losses.pixel_contrastive_loss(x, la, k, lk, 0.07)
            expect_loss_and_finite_grad(ctx, out, x, f"eq. (11) with {what}", atol=1e-7)


@check(1, needs=('loss_matches',))
def loss_empty_inputs(ctx, M):
    """no anchors or no keys give 0"""
    a, la, k, lk = _anchor_case(gen(6), 4, 5, 3, 2, torch.float32)
    for args, what in (((a[:0], la[:0], k, lk), "no anchors"), ((a, la, k[:0], lk[:0]), "no keys")):
        with ctx.part(what):
            ctx.expect(M.losses.pixel_contrastive_loss(*args, 0.07), f"eq. (11) with {what}")


@check(1)
def loss_low_temperature(ctx, M):
    """eq. (11) stays finite and right at τ = 0.01 in float32 (log-sum-exp)"""
    g = gen(7)
    base = torch.nn.functional.normalize(torch.ones(6, 4) + 1e-2 * torch.randn(6, 4, generator=g), dim=1)
    la, lk = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([1, 1, 0, 0, 1, 0])
    ctx.expect(M.losses.pixel_contrastive_loss(base, la, base, lk, 0.01),
               "eq. (11) on near-identical float32 embeddings at τ = 0.01", atol=2e-3, rtol=1e-3)


@check(2)
def loss_gradients(ctx, M):
    """eq. (11): gradient w.r.t. the anchors matches the reference"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            a, la, k, lk = _anchor_case(gen(40 + seed), 7, 12, 5, 2, torch.float64)
            x = a.clone().requires_grad_(True)
            M.losses.pixel_contrastive_loss(x, la, k, lk, 0.1).backward()
            ctx.expect(x.grad, "d(eq. (11))/d(anchors)", atol=1e-8)


# ---------------------------------------------------------------------------- anchors (§3.4)

def _anchor_maps(seed, B=2, h=6, w=5, p_keep=0.7, p_hard=0.4):
    g = gen(seed)
    labels = torch.randint(0, 2, (B, h, w), generator=g)
    keep = (torch.rand(B, h, w, generator=g) < p_keep).float()
    pred = torch.where(torch.rand(B, h, w, generator=g) < p_hard, 1 - labels, labels)
    return labels, keep, pred


def _anchors(M, labels, keep, pred, n, seed):
    """(idx, labels) of the sampler under test, unused slots dropped; Fail on a wrong structure."""
    out = getattr(M.hermes, ANCHOR_FN)(labels, keep, pred, n, generator=gen(seed))
    if not (isinstance(out, tuple) and len(out) in (2, 3) and all(torch.is_tensor(t) for t in out)):
        raise Fail(f"hermes.{ANCHOR_FN} must return a tuple (idx, labels[, valid]) of tensors")
    idx, lab = out[0], out[1]
    if idx.dtype != torch.long or lab.dtype != torch.long or idx.dim() != 1 or idx.shape != lab.shape:
        raise Fail(f"hermes.{ANCHOR_FN}: expected (K,) long tensors, got {tuple(idx.shape)} {idx.dtype} and "
                   f"{tuple(lab.shape)} {lab.dtype}")
    if len(out) == 3:
        if out[2].dtype != torch.bool or out[2].shape != idx.shape:
            raise Fail(f"hermes.{ANCHOR_FN}: valid must be a bool tensor of idx's shape")
        idx, lab = idx[out[2]], lab[out[2]]
    return idx, lab


def _summary(labels, keep, pred, idx, lab):
    """What must hold for any uniform draw: per class (hard, easy) counts; no repeats, kept, own labels, in range."""
    P = labels.numel()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= P):
        return {"in range": False}
    hard = (pred.flatten() != labels.flatten())[idx]
    return {"no repeats": idx.unique().numel() == idx.numel(), "all kept": bool((keep.flatten()[idx] == 1).all()),
            "labels at their pixels": bool((labels.flatten()[idx] == lab).all()),
            "counts": [[int(hard[lab == c].sum()), int((~hard[lab == c]).sum())] for c in (0, 1)]}


def _expect_summary(ctx, s, what):
    for key in ("in range", "no repeats", "all kept", "labels at their pixels"):
        ctx.expect(s.get(key, True), f"{what}: {key}")
    ctx.expect(s.get("counts"), f"{what}: (hard, easy) anchors of class 0 and class 1")


@check(1)
def anchors_by_hand(ctx, M):
    """anchors: the hand-worked 4x4 map of the visible tests (counts, kept pixels, n larger than the pools)"""
    labels = torch.tensor([0] * 10 + [1] * 6)
    pred = labels.clone()
    pred[[0, 1, 2]] = 1
    pred[10] = 0
    w = torch.ones(16)
    w[[3, 15]] = 0
    labels, w, pred = labels.view(1, 4, 4), w.view(1, 4, 4), pred.view(1, 4, 4)
    for seed in (0, 1):
        idx, lab = _anchors(M, labels, w, pred, 4, seed)
        _expect_summary(ctx, _summary(labels, w, pred, idx, lab), f"n = 4 (seed {seed})")
    idx, lab = _anchors(M, labels, w, pred, 20, 0)
    ctx.expect(sorted(idx.tolist()), "n = 20: every kept pixel once")


@check(3)
def anchors_counts(ctx, M):
    """anchors: n//2 hard + the rest easy per class, only kept pixels, their labels, no repeats"""
    for seed in range(5):
        with ctx.part(f"seed {seed}"):
            labels, keep, pred = _anchor_maps(seed)
            for n in (1, 4, 7, 40):
                idx, lab = _anchors(M, labels, keep, pred, n, seed)
                _expect_summary(ctx, _summary(labels, keep, pred, idx, lab),
                                f"random maps {tuple(labels.shape)}, n = {n}")


@check(1)
def anchors_fill_short_pool(ctx, M):
    """anchors: a short pool is filled from the other one"""
    labels = torch.zeros(1, 3, 4, dtype=torch.long)
    pred = torch.zeros(1, 3, 4, dtype=torch.long)
    pred.view(-1)[:2] = 1                                             # 2 hard, 10 easy pixels of class 0
    for p, what in ((pred, "2 hard + 10 easy pixels"), (1 - pred, "10 hard + 2 easy pixels")):
        for n in (3, 8, 11):
            idx, lab = _anchors(M, labels, torch.ones(1, 3, 4), p, n, 0)
            ctx.expect(_summary(labels, torch.ones(1, 3, 4), p, idx, lab)["counts"][0],
                       f"{what}, n = {n}: (hard, easy) anchors")


@check(1, needs=('anchors_counts',))
def anchors_empty_class(ctx, M):
    """anchors: a class with no kept pixel gives none; nothing kept gives no anchor"""
    labels, keep, pred = _anchor_maps(9)
    keep = keep * (labels == 0)
    with ctx.part("class 1 without kept pixel"):
        idx, lab = _anchors(M, labels, keep, pred, 6, 0)
        _expect_summary(ctx, _summary(labels, keep, pred, idx, lab), "class 1 has no kept pixel")
    with ctx.part("nothing kept"):
        idx, lab = _anchors(M, labels, torch.zeros_like(keep), pred, 6, 0)
        ctx.expect(idx.numel(), "number of anchors when nothing is kept")


@check(1, needs=('anchors_counts',))
def anchors_order(ctx, M):
    """anchors are ordered class 0 (hard, easy), then class 1 (hard, easy)"""
    for seed in range(3):
        labels, keep, pred = _anchor_maps(50 + seed)
        idx, lab = _anchors(M, labels, keep, pred, 6, seed)
        hard = (pred.flatten() != labels.flatten())[idx].long()
        key = (lab * 2 + (1 - hard)).tolist()
        ctx.expect(key == sorted(key), f"(class, hard first) order (seed {seed})")


@check(2, needs=('anchors_counts',))
def anchors_uniform(ctx, M):
    """anchors are drawn uniformly with the generator (reproducible, not the first pixels)"""
    labels = torch.zeros(1, 1, 12, dtype=torch.long)
    pred = torch.zeros(1, 1, 12, dtype=torch.long)
    pred[0, 0, :4] = 1                                                # pixels 0-3 hard, 4-11 easy
    keep = torch.ones(1, 1, 12)
    with ctx.part("reproducible"):
        a, b = _anchors(M, labels, keep, pred, 2, 123), _anchors(M, labels, keep, pred, 2, 123)
        ctx.expect(bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])),
                   "the same seeded generator gives the same anchors")
    with ctx.part("uniform"):
        counts, draws = torch.zeros(12), 400
        for s in range(draws):
            counts[_anchors(M, labels, keep, pred, 2, s)[0]] += 1
        rel = torch.cat([counts[:4] / (draws / 4), counts[4:] / (draws / 8)])
        ctx.expect(bool(rel.min() >= 0.5 and rel.max() <= 1.5),
                   f"each pixel drawn about as often as its pool's others over {draws} seeds")


@check(1)
def anchors_reject_shapes(ctx, M):
    """anchors: maps of different shapes are rejected with a ValueError"""
    ctx.raises(lambda: getattr(M.hermes, ANCHOR_FN)(torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 5),
                                                    torch.zeros(1, 4, 4, dtype=torch.long), 4),
               "labels (1,4,4) with w (1,4,5)")
