"""Graded checks of 'image-contrast' (eqs. (12)–(13)). Each check records what the code computes; the grader compares
the record with the reference's (tools/course/observe.py)."""
import torch

from tools.course.observe import expect_loss_and_finite_grad, gen, unit
from tools.course.registry import check

V = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)   # the visible tests'


def _image_case(g, N, D, dtype, Mb=0, per_image=True, p_keep=0.6, n_cls=2):
    v = unit(g, 2 * N, D, dtype)
    if per_image:
        lab = torch.randint(0, n_cls, (N,), generator=g).repeat(2)
        wt = (torch.rand(N, generator=g) < p_keep).to(dtype).repeat(2)
    else:
        lab = torch.randint(0, n_cls, (2 * N,), generator=g)
        wt = (torch.rand(2 * N, generator=g) < p_keep).to(dtype)
    bank = bank_lab = None
    if Mb:
        bank, bank_lab = unit(g, Mb, D, dtype), torch.randint(0, n_cls, (Mb,), generator=g)
    return v, lab, wt, bank, bank_lab


def _expect_loss(ctx, M, case, T, what, atol=1e-9):
    v, lab, wt, bank, bank_lab = case
    ctx.expect(M.losses.image_contrastive_loss(v, lab, wt, T, bank_feats=bank, bank_labels=bank_lab), what,
               atol=atol, rtol=1e-5)


@check(1)
def by_hand(ctx, M):
    """eqs. (12)–(13): the hand-worked batch of the visible tests (weights, per-image labels, a bank entry, τ = 0.5)"""
    ones = torch.ones(4, dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.long)
    f = M.losses.image_contrastive_loss
    ctx.expect(f(V, zeros, ones, 1.0), "one label, weights 1", atol=1e-10)
    ctx.expect(f(V, zeros, torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64), 1.0), "weights (1, 0)",
               atol=1e-10)
    ctx.expect(f(V, torch.tensor([0, 1]), torch.ones(2, dtype=torch.float64), 1.0), "labels per image", atol=1e-10)
    ctx.expect(f(V, torch.tensor([0, 1, 0, 1]), ones, 1.0, bank_feats=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                 bank_labels=torch.tensor([0])), "one bank entry", atol=1e-10)
    ctx.expect(f(V, zeros, ones, 0.5), "τ = 0.5", atol=1e-10)


@check(3)
def matches_without_bank(ctx, M):
    """eqs. (12)–(13) match the reference without a memory bank"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            for N, D, per_image in ((1, 3, True), (2, 4, True), (5, 6, True), (5, 6, False), (8, 16, True)):
                for dtype in (torch.float32, torch.float64):
                    case = _image_case(gen(seed * 13 + N), N, D, dtype, per_image=per_image)
                    _expect_loss(ctx, M, case, 0.07, f"eq. (12) for N = {N}, D = {D}, "
                                 f"{'views share labels' if per_image else 'labels per row'}, {dtype}",
                                 atol=1e-4 if dtype == torch.float32 else 1e-9)


@check(3)
def matches_with_bank(ctx, M):
    """eqs. (12)–(13) match the reference with a memory bank (1 to 64 entries)"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            for N, Mb in ((1, 1), (3, 7), (5, 64)):
                _expect_loss(ctx, M, _image_case(gen(seed * 17 + Mb), N, 5, torch.float64, Mb=Mb), 0.07,
                             f"eq. (12) for N = {N} with a bank of {Mb}")


@check(1)
def empty_bank(ctx, M):
    """an empty bank (0 rows) or None is the same as no bank"""
    v, lab, wt, _, _ = _image_case(gen(3), 4, 5, torch.float64)
    ctx.expect(M.losses.image_contrastive_loss(v, lab, wt, 0.2), "eq. (12) without a bank", atol=1e-9)
    ctx.expect(M.losses.image_contrastive_loss(v, lab, wt, 0.2, bank_feats=v[:0].clone(), bank_labels=lab[:0].clone()),
               "eq. (12) with an empty bank", atol=1e-9)


@check(1)
def per_image_labels(ctx, M):
    """labels and weights given per image (N,) are used for both views"""
    v, lab, wt, _, _ = _image_case(gen(4), 5, 4, torch.float64)
    ctx.expect(M.losses.image_contrastive_loss(v, lab[:5], wt[:5], 0.1), "eq. (12) with (N,) labels and weights",
               atol=1e-9)


@check(2)
def other_view_weight_one(ctx, M):
    """eq. (13): with all weights 0, only the other view of the same image is a positive"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            v, lab, _, bank, bank_lab = _image_case(gen(60 + seed), 4, 5, torch.float64, Mb=5)
            _expect_loss(ctx, M, (v, lab, torch.zeros(8, dtype=torch.float64), bank, bank_lab), 0.1,
                         "eq. (12) with every weight 0")
            _expect_loss(ctx, M, (v, lab, torch.tensor([1.0, 0, 0, 1] * 2, dtype=torch.float64), None, None), 0.1,
                         "eq. (12) with weights (1,0,0,1) per image")


@check(1, needs=('matches_without_bank', 'matches_with_bank'))
def no_positive_zero(ctx, M):
    """no positive pair at all gives 0 with a finite gradient"""
    v = unit(gen(5), 4, 3, torch.float64).requires_grad_(True)
    out = M.losses.image_contrastive_loss(v, torch.tensor([0, 1, 1, 0]), torch.zeros(4, dtype=torch.float64), 0.07)
    expect_loss_and_finite_grad(ctx, out, v, "eq. (12) when the two views disagree and w = 0", atol=1e-9)


@check(1)
def uses_temperature(ctx, M):
    """eq. (12) uses its temperature argument"""
    case = _image_case(gen(6), 4, 5, torch.float64, Mb=3)
    for T in (0.1, 0.5, 1.0):
        _expect_loss(ctx, M, case, T, f"eq. (12) at τ = {T}")


@check(2)
def gradients(ctx, M):
    """eq. (12): gradient w.r.t. the features matches the reference"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            v, lab, wt, bank, bank_lab = _image_case(gen(70 + seed), 4, 6, torch.float64, Mb=4 * seed)
            x = v.clone().requires_grad_(True)
            M.losses.image_contrastive_loss(x, lab, wt, 0.1, bank_feats=bank, bank_labels=bank_lab).backward()
            ctx.expect(x.grad, "d(eq. (12))/d(features)", atol=1e-8)


@check(1, needs=('matches_without_bank', 'matches_with_bank'))
def odd_rows_and_empty(ctx, M):
    """an odd number of rows raises ValueError; N = 0 gives 0"""
    with ctx.part("odd rows"):
        ctx.raises(lambda: M.losses.image_contrastive_loss(torch.randn(3, 4), torch.zeros(3), torch.ones(3), 0.07),
                   "3 feature rows")
    with ctx.part("empty"):
        ctx.expect(M.losses.image_contrastive_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                                   torch.zeros(0), 0.07), "eq. (12) on an empty batch")


@check(1)
def low_temperature(ctx, M):
    """eq. (12) stays finite and right at τ = 0.005 with near-identical float32 embeddings"""
    g = gen(8)
    v = torch.nn.functional.normalize(torch.ones(6, 3) + 1e-2 * torch.randn(6, 3, generator=g), dim=1)
    ctx.expect(M.losses.image_contrastive_loss(v, torch.tensor([0, 1, 0]), torch.tensor([1.0, 1.0, 0.0]), 0.005),
               "eq. (12) at τ = 0.005", atol=2e-3, rtol=1e-3)
