"""Graded checks of 'dice' (eq. (9) and the Dice of eq. (1)). Each check records what the code computes; the grader
compares the record with the reference's (tools/course/observe.py). eq. (9)'s checks replace losses._dice_loss by
a stand-in, so a mistake in the Dice does not cost eq. (9)'s points (and the other way round)."""
import math

import torch

from tools.course.observe import expect_loss_and_finite_grad, gen
from tools.course.registry import check


def _seg_batch(g, B, H, W, dtype, keep):
    ls = torch.randn(B, 2, H, W, generator=g, dtype=dtype) * 2
    lw = torch.randn(B, 2, H, W, generator=g, dtype=dtype) * 2
    w = (torch.rand(B, H, W, generator=g) < keep).to(dtype)
    return ls, lw, w


def _stand_in_dice(p, g, w=None):
    """Not a Dice: a simple function of (p, g, w) that, like the Dice, is 0 for an image with no kept pixel and
    gives the same value for (p, g, w) and (p·w, g·w, None)."""
    w = torch.ones_like(p) if w is None else w
    return (w * (p + 2 * g + 3 * p * g)).flatten(1).sum(1)


def _eq9_alone(ctx, M):
    return ctx.patch(M.losses, "_dice_loss", _stand_in_dice)


def _logits_from_diff(d):
    d = torch.tensor(d, dtype=torch.float64)
    return torch.stack([torch.zeros_like(d), d], dim=1)


# ---------------------------------------------------------------------------- the Dice (eqs. (1), (9))

@check(1)
def dice_by_hand(ctx, M):
    """_dice_loss: the hand-worked 2x2 image of the visible tests, without and with w"""
    p = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    g = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    w = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    ctx.expect(M.losses._dice_loss(p, g), "_dice_loss(p, g)", atol=1e-12)
    ctx.expect(M.losses._dice_loss(p, g, w), "_dice_loss(p, g, w)", atol=1e-12)


@check(2)
def dice_matches(ctx, M):
    """_dice_loss matches the reference without a weight map"""
    for seed, (B, H, W) in enumerate(((1, 3, 5), (3, 8, 8), (2, 1, 1))):
        g = gen(seed)
        p = torch.rand(B, H, W, generator=g, dtype=torch.float64)
        t = (torch.rand(B, H, W, generator=g) < 0.4).double()
        ctx.expect(M.losses._dice_loss(p, t), f"_dice_loss(p, g) on {(B, H, W)}", atol=1e-10)


@check(2)
def dice_weighted_matches(ctx, M):
    """_dice_loss matches the reference with a weight map w"""
    for seed, (B, H, W) in enumerate(((1, 3, 5), (3, 8, 8), (4, 2, 7))):
        g = gen(10 + seed)
        p = torch.rand(B, H, W, generator=g, dtype=torch.float64)
        t = (torch.rand(B, H, W, generator=g) < 0.4).double()
        w = (torch.rand(B, H, W, generator=g) < 0.6).double()
        ctx.expect(M.losses._dice_loss(p, t, w), f"_dice_loss(p, g, w) on {(B, H, W)}", atol=1e-10)


@check(1, needs=('dice_matches', 'dice_weighted_matches'))
def dice_zero_weight(ctx, M):
    """_dice_loss: an all-zero weight map gives 0 per image"""
    p = torch.rand(2, 3, 3, generator=gen(3), dtype=torch.float64)
    ctx.expect(M.losses._dice_loss(p, (p > 0.5).double(), torch.zeros(2, 3, 3, dtype=torch.float64)),
               "_dice_loss with w = 0", atol=1e-12)


@check(1)
def eq1_uses_the_dice(ctx, M):
    """eq. (1) (seg_supervised_loss, which uses your _dice_loss) still matches"""
    for seed in range(2):
        ls, lw, _ = _seg_batch(gen(30 + seed), 3, 6, 5, torch.float64, 0.5)
        ctx.expect(M.losses.seg_supervised_loss(ls, lw.argmax(1)), f"eq. (1) on a random batch (seed {seed})",
                   atol=1e-10)


# ---------------------------------------------------------------------------- eq. (9) (the Dice stood in for)

@check(1)
def eq9_by_hand(ctx, M):
    """eq. (9): the hand-worked batch of the visible tests (two images, one with no kept pixel)"""
    ln3, ln9 = math.log(3), math.log(9)
    strong = _logits_from_diff([[[ln3, 0], [-ln3, ln9]], [[1, 2], [3, 4]]])
    weak = _logits_from_diff([[[2, -1], [-3, 1]], [[5, 5], [5, 5]]])
    w = torch.tensor([[[1, 1], [1, 0]], [[0, 0], [0, 0]]], dtype=torch.float64)
    with _eq9_alone(ctx, M):
        ctx.expect(M.losses.seg_unsupervised_loss(strong, weak, w), "eq. (9) of the visible tests' batch", atol=1e-10)


@check(3)
def eq9_matches(ctx, M):
    """seg_unsupervised_loss (eq. (9)) matches the reference on random batches, float32/64"""
    with _eq9_alone(ctx, M):
        for seed in range(4):
            with ctx.part(f"seed {seed}"):
                for B, H, W in ((1, 3, 5), (2, 8, 8), (4, 6, 3)):
                    for keep in (0.3, 0.8):
                        dtype = torch.float64 if seed % 2 else torch.float32
                        ls, lw, w = _seg_batch(gen(seed * 7 + B), B, H, W, dtype, keep)
                        ctx.expect(M.losses.seg_unsupervised_loss(ls, lw, w),
                                   f"eq. (9) on {B} images {H}x{W} {dtype}, {keep:.0%} kept",
                                   atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-5)


@check(1, needs=('eq9_matches',))
def eq9_nothing_kept(ctx, M):
    """eq. (9): no kept pixel anywhere gives exactly 0 with a finite gradient"""
    ls, lw, _ = _seg_batch(gen(5), 3, 4, 4, torch.float64, 0.5)
    ls.requires_grad_(True)
    with _eq9_alone(ctx, M):
        out = M.losses.seg_unsupervised_loss(ls, lw, torch.zeros(3, 4, 4, dtype=torch.float64))
    expect_loss_and_finite_grad(ctx, out, ls, "eq. (9) with w = 0 everywhere", atol=1e-9)


@check(1)
def eq9_all_kept(ctx, M):
    """eq. (9): all pixels kept"""
    ls, lw, _ = _seg_batch(gen(6), 3, 5, 4, torch.float64, 0.5)
    with _eq9_alone(ctx, M):
        ctx.expect(M.losses.seg_unsupervised_loss(ls, lw, torch.ones(3, 5, 4, dtype=torch.float64)),
                   "eq. (9) with w = 1 everywhere", atol=1e-10)


@check(2)
def eq9_divides_by_all_images(ctx, M):
    """eq. (9): an image with no kept pixel adds 0 but still counts in B"""
    ls, lw, w = _seg_batch(gen(8), 4, 6, 6, torch.float64, 0.7)
    w[1] = 0
    w[3] = 0
    with _eq9_alone(ctx, M):
        ctx.expect(M.losses.seg_unsupervised_loss(ls, lw, w), "eq. (9) with images 2 and 4 of 4 fully dropped",
                   atol=1e-10)


@check(2)
def eq9_gradients(ctx, M):
    """eq. (9): gradient w.r.t. the strong logits matches; none reaches the weak logits"""
    with _eq9_alone(ctx, M):
        for seed in range(3):
            with ctx.part(f"seed {seed}"):
                ls, lw, w = _seg_batch(gen(20 + seed), 2, 5, 5, torch.float64, 0.6)
                a, b = ls.clone().requires_grad_(True), lw.clone().requires_grad_(True)
                M.losses.seg_unsupervised_loss(a, b, w).backward()
                ctx.expect(a.grad, "d(eq. (9))/d(strong logits)", atol=1e-10)
                ctx.expect(b.grad is None or not bool(b.grad.any()),
                           "no gradient reaches the weak logits (the pseudo-mask is a constant target)")
