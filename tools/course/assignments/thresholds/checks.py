"""Graded checks of 'thresholds' (eqs. (7)–(8), (16)–(17)). Each check records what the code computes (ctx.expect,
ctx.number, ctx.raises); the grader compares the record with the reference's (tools/course/observe.py).
eq. (7)'s checks replace hermes.uncertainty by fixed values, so a mistake in eq. (8) does not cost eq. (7)'s points."""
import torch

from tools.course.observe import gen
from tools.course.registry import check


def _probs(g, B, C, spatial, dtype, sharp):
    return (torch.randn(B, C, *spatial, generator=g, dtype=dtype) * sharp).softmax(1)


def _fixed_u(ctx, M, u):
    """eq. (7) with u(p) given: hermes.uncertainty returns `u` whatever its input (the student's eq. (8) is not used)."""
    return ctx.patch(M.hermes, "uncertainty", lambda probs, eps=1e-8: u)


# ---------------------------------------------------------------------------- eq. (8)

@check(1)
def uncertainty_by_hand(ctx, M):
    """uncertainty: the hand-worked values of the visible tests (ln 2, 0.325, a sure prediction 0)"""
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]], dtype=torch.float64)
    ctx.expect(M.hermes.uncertainty(p), "u of [.5 .5], [.9 .1], [1 0]", atol=1e-6)
    ctx.expect(tuple(M.hermes.uncertainty(torch.rand(2, 2, 3, 4).softmax(1)).shape), "shape of u for (2,2,3,4)")


@check(3)
def uncertainty_matches(ctx, M):
    """uncertainty (eq. (8)) matches the reference: 2-5 classes, maps and vectors, float32/64"""
    for seed in range(3):
        with ctx.part(f"seed {seed}"):
            g = gen(seed)
            for C in (2, 3, 5):
                for spatial in ((), (4, 5), (1, 7)):
                    for dtype in (torch.float32, torch.float64):
                        p = _probs(g, 3, C, spatial, dtype, (0.5, 3.0, 12.0)[seed])
                        ctx.expect(M.hermes.uncertainty(p), f"uncertainty of probs {tuple(p.shape)} {dtype}",
                                   atol=1e-5 if dtype == torch.float32 else 1e-9)


@check(1)
def uncertainty_zero_probabilities_and_eps(ctx, M):
    """uncertainty: classes with p = 0 add 0 (no NaN); eps is used inside the log"""
    with ctx.part("p = 0"):
        p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 0.7]], dtype=torch.float64)
        ctx.expect(M.hermes.uncertainty(p), "uncertainty with zero probabilities", atol=1e-9)
    with ctx.part("eps"):
        q = torch.tensor([[0.2, 0.8], [0.05, 0.95]], dtype=torch.float64)
        for eps in (0.0, 0.1):
            ctx.expect(M.hermes.uncertainty(q, eps=eps), f"uncertainty(probs, eps={eps})", atol=1e-9)


# ---------------------------------------------------------------------------- eq. (7) (u fixed)

@check(1)
def mask_by_hand(ctx, M):
    """dual_threshold_mask: the hand-worked 2x2 map of the visible tests (u given: 0.673 0.199 0.367 0.056)"""
    q = torch.tensor([[0.6, 0.95], [0.88, 0.99]], dtype=torch.float64)
    probs = torch.stack([1 - q, q])[None]                                        # (1,2,2,2)
    u = torch.tensor([[[0.673, 0.199], [0.367, 0.056]]], dtype=torch.float64)
    with _fixed_u(ctx, M, u):
        for kappa, tau in ((0.4, 0.85), (0.4, 0.9), (0.15, 0.9)):
            ctx.expect(M.hermes.dual_threshold_mask(probs, kappa=kappa, tau=tau), f"w at κ {kappa}, τ {tau}",
                       dtype=True)
    cls = torch.tensor([[0.02, 0.98], [0.7, 0.3]], dtype=torch.float64)
    with _fixed_u(ctx, M, torch.tensor([0.098, 0.611], dtype=torch.float64)):
        ctx.expect(M.hermes.dual_threshold_mask(cls, kappa=0.4, tau=0.85), "w for (B,C) probabilities")


@check(3)
def mask_matches(ctx, M):
    """dual_threshold_mask (eq. (7)) matches the reference on random maps, κ and τ (u fixed)"""
    for seed in range(4):
        with ctx.part(f"seed {seed}"):
            g = gen(100 + seed)
            for C, spatial in ((2, (6, 5)), (2, ()), (3, (4, 4))):
                p = _probs(g, 4, C, spatial, torch.float64, 4.0)
                u = torch.rand((4,) + spatial, generator=g, dtype=torch.float64) * 0.8
                kappa = float(torch.empty(()).uniform_(0.05, 0.75, generator=g))
                tau = float(torch.empty(()).uniform_(0.5, 0.97, generator=g))
                with _fixed_u(ctx, M, u):
                    ctx.expect(M.hermes.dual_threshold_mask(p, kappa, tau),
                               f"w for probs {tuple(p.shape)}, κ {kappa:.3f}, τ {tau:.3f}")


@check(1)
def mask_dtype_and_shape(ctx, M):
    """dual_threshold_mask returns a float 0/1 map of probs' dtype, shape (B,...)"""
    for dtype in (torch.float32, torch.float64):
        p = _probs(gen(7), 2, 2, (3, 3), dtype, 3.0)
        with _fixed_u(ctx, M, torch.rand(2, 3, 3, generator=gen(8), dtype=dtype)):
            ctx.expect(M.hermes.dual_threshold_mask(p, 0.5, 0.8), f"w for probs (2,2,3,3) {dtype}", dtype=True)


@check(2)
def mask_needs_both_bounds(ctx, M):
    """dual_threshold_mask: a prediction must pass BOTH bounds (AND, not OR)"""
    q = torch.tensor([0.95, 0.8, 0.99, 0.55], dtype=torch.float64)
    p = torch.stack([1 - q, q], 1)                                               # (4,2)
    u = torch.tensor([0.199, 0.500, 0.056, 0.688], dtype=torch.float64)
    with _fixed_u(ctx, M, u):
        for kappa, tau in ((0.1, 0.9), (0.75, 0.9), (0.75, 0.5)):
            ctx.expect(M.hermes.dual_threshold_mask(p, kappa, tau), f"w for max p {q.tolist()}, u {u.tolist()}, "
                       f"κ {kappa}, τ {tau}")


@check(1, needs=('mask_matches',))
def mask_keeps_ties(ctx, M):
    """dual_threshold_mask: ties are kept (max p = τ, u = κ)"""
    p = torch.tensor([[0.125, 0.875], [1.0, 0.0]], dtype=torch.float32)
    with _fixed_u(ctx, M, torch.tensor([0.5, 0.25])):
        ctx.expect(M.hermes.dual_threshold_mask(p, 0.5, 0.875), "w with max p = τ = 0.875 and u = κ = 0.5")


# ---------------------------------------------------------------------------- eqs. (16)–(17)

@check(1)
def schedules_by_hand(ctx, M):
    """κ and τ: the hand-worked values of the visible tests"""
    with ctx.part("κ (eq. (16))"):
        for it in (0, 25, 50, 100):
            ctx.number(M.hermes.uncertainty_threshold(it, 100), f"κ({it}, 100)", atol=1e-6)
    with ctx.part("τ (eq. (17))"):
        for it in (0, 50, 100):
            ctx.number(M.hermes.confidence_threshold(it, 100), f"τ({it}, 100)", atol=1e-6)


@check(2)
def kappa_matches(ctx, M):
    """uncertainty_threshold (eq. (16)) matches the reference, other η too"""
    for it, total in ((0, 1), (1, 1), (0, 3000), (750, 3000), (1500, 3000), (2999, 3000), (7, 60), (60, 60)):
        for eta_max, eta_min in ((0.75, 0.25), (0.9, 0.1), (0.5, 0.5)):
            ctx.number(M.hermes.uncertainty_threshold(it, total, eta_max, eta_min),
                       f"κ(it={it}, total={total}, η_max={eta_max}, η_min={eta_min})")
    ctx.number(M.hermes.uncertainty_threshold(30, 120), "κ(30, 120) with the default η")


@check(1)
def kappa_decays(ctx, M):
    """κ decays: η_max at the start, η_min at the end"""
    with ctx.part("start"):
        ctx.number(M.hermes.uncertainty_threshold(0, 500), "κ at it = 0")
    with ctx.part("end"):
        ctx.number(M.hermes.uncertainty_threshold(500, 500), "κ at it = total")


@check(2)
def tau_matches(ctx, M):
    """confidence_threshold (eq. (17)) matches the reference"""
    for it, total in ((0, 1), (1, 1), (0, 3000), (750, 3000), (2999, 3000), (7, 60), (60, 60), (1, 3)):
        ctx.number(M.hermes.confidence_threshold(it, total), f"τ(it={it}, total={total})")


@check(1, needs=('kappa_matches', 'tau_matches'))
def schedules_reject_bad_total(ctx, M):
    """both schedules reject total <= 0 with a ValueError"""
    with ctx.part("κ"):
        ctx.raises(lambda: M.hermes.uncertainty_threshold(0, 0), "uncertainty_threshold(0, 0)")
    with ctx.part("τ"):
        ctx.raises(lambda: M.hermes.confidence_threshold(3, -1), "confidence_threshold(3, -1)")
