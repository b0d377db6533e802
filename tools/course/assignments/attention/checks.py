"""Graded checks of 'attention' (eqs. (3)–(5)). Each check records what the code computes; the grader compares the
record with the reference's (tools/course/observe.py). Each equation is checked on its own:
eq. (3) through M_c only; eq. (4) with M_c fixed (a hook replaces W_1's output, so M_c = σ(fixed values) whatever
the student's eq. (3) does upstream); eq. (5) from the student's own M_c and M_s. A mistake in one equation costs
that equation's points only."""
import torch

from tools.course.observe import Fail, gen
from tools.course.registry import check

F64 = torch.float64


def _module(M, C, c_seg, seed, dtype=F64, residual=False):
    m = M.models.InterTaskAttention(C, c_seg, residual=residual).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(seed + p.numel()), dtype=dtype) * 0.5)
    return m


def _inputs(seed, B, C, c_seg, h, w, dtype=F64):
    g = gen(seed)
    return (torch.randn(B, C, h, w, generator=g, dtype=dtype), torch.randn(B, c_seg, h, w, generator=g, dtype=dtype))


def _run(m, x_cls, x_seg):
    out = m(x_cls, x_seg)
    if not (isinstance(out, (tuple, list)) and len(out) == 3 and all(torch.is_tensor(t) for t in out)):
        raise Fail("forward must return (x_out, M_c, M_s)")
    return out


def _fixed_mc(m, C, seed, dtype=F64):
    """Make W_1's output the fixed values z, so M_c = σ(z) (eqs. (4) and (5) then see a known M_c)."""
    z = torch.randn(C, generator=gen(900 + seed), dtype=dtype) * 2
    return m.W_1.register_forward_hook(lambda mod, inp, out: z.expand_as(out))


def _zeroed(M, C, c_seg):
    m = M.models.InterTaskAttention(C, c_seg).double()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return m


SIZES = ((1, 4, 3, 1, 1), (2, 8, 16, 3, 5), (3, 64, 32, 7, 7), (2, 5, 2, 4, 6))   # B, C, c_seg, h, w


# ---------------------------------------------------------------------------- all three (structure)

@check(1, needs=("eq3_matches", "eq4_matches"))
def zero_module(ctx, M):
    """every weight 0 (visible tests): M_c = M_s = ½ and x_out = ¼ x_cls, with the right shapes"""
    x_cls, x_seg = _inputs(0, 2, 4, 3, 5, 3)
    x_out, M_c, M_s = _run(_zeroed(M, 4, 3), x_cls, x_seg)
    for name, t in (("M_c", M_c), ("M_s", M_s), ("x_out / x_cls", x_out / x_cls)):
        ctx.expect(t, name, atol=1e-12)


@check(1, needs=("eq3_matches", "eq4_matches"))
def shapes(ctx, M):
    """returns x_out (B,C,h,w), M_c (B,C,1,1), M_s (B,1,h,w)"""
    m = _module(M, 6, 4, 0, torch.float32)
    x_out, M_c, M_s = _run(m, torch.randn(2, 6, 3, 4), torch.randn(2, 4, 3, 4))
    ctx.expect([tuple(t.shape) for t in (x_out, M_c, M_s)], "shapes of x_out, M_c, M_s")


# ---------------------------------------------------------------------------- eq. (3) (M_c)

@check(1)
def eq3_by_hand(ctx, M):
    """eq. (3): the hand-worked channel attention of the visible tests (M_c = σ(4), σ(-4))"""
    m = _zeroed(M, 2, 1)
    with torch.no_grad():
        m.adapter.weight[:, 0, 0, 0] = 1.0
        m.W_c.weight[0, 0, 1, 1] = 1.0
        m.W_c.weight[0, 2, 1, 1] = 1.0
        m.W_c.bias[1] = 1.0
        m.W_0.weight[:] = torch.tensor([[1.0, 1.0]])
        m.W_1.weight[:] = torch.tensor([[1.0], [-1.0]])
    x_cls = torch.tensor([1.0, 3.0], dtype=F64).view(1, 2, 1, 1)
    x_seg = torch.tensor([2.0], dtype=F64).view(1, 1, 1, 1)
    ctx.expect(_run(m, x_cls, x_seg)[1], "M_c", atol=1e-12)


@check(4)
def eq3_matches(ctx, M):
    """eq. (3): M_c matches the reference module (same weights), several sizes"""
    for seed, (B, C, c_seg, h, w) in enumerate(SIZES):
        with ctx.part(f"C = {C}, {h}x{w}"):
            m = _module(M, C, c_seg, seed)
            ctx.expect(_run(m, *_inputs(seed, B, C, c_seg, h, w))[1], f"M_c with C = {C}, c_seg = {c_seg}, "
                       f"{B}x{h}x{w}", atol=1e-9)


@check(1, needs=("eq3_matches",))
def eq3_relu_after_w0(ctx, M):
    """eq. (3): a ReLU follows W_0 (the sentence after eq. (3)), so negative W_0 outputs do not reach W_1"""
    m = _module(M, 8, 3, 21)
    with torch.no_grad():
        m.W_0.weight.copy_(-m.W_0.weight.abs())          # W_0's outputs mostly negative on positive inputs
        m.W_c.bias.fill_(2.0)
    ctx.expect(_run(m, *_inputs(21, 2, 8, 3, 4, 4))[1], "M_c when W_0's outputs are mostly negative", atol=1e-9)


@check(1)
def eq3_uses_x_seg(ctx, M):
    """eq. (3): channel attention from the conv of [x_cls; adapter(x_seg)], pooled over space"""
    m = _module(M, 4, 5, 11)
    with torch.no_grad():                                # W_0's output positive: the ReLU passes it, M_c moves
        m.W_0.weight.copy_(m.W_0.weight.abs())
        m.W_c.bias.fill_(3.0)
    g = gen(11)
    x_cls = torch.randn(1, 4, 5, 5, generator=g, dtype=F64)
    for scale in (0.0, 3.0):
        x_seg = scale * torch.randn(1, 5, 5, 5, generator=g, dtype=F64)
        ctx.expect(_run(m, x_cls, x_seg)[1], f"M_c with x_seg scaled by {scale}", atol=1e-9)


# ---------------------------------------------------------------------------- eq. (4) (M_s, M_c fixed)

@check(1)
def eq4_by_hand(ctx, M):
    """eq. (4): the hand-worked spatial attention of the visible tests (W_s reads the average, then the max map)"""
    x_cls = torch.tensor([[[2.0, -2.0]], [[0.0, 4.0]]], dtype=F64)[None]
    x_seg = torch.zeros(1, 3, 1, 2, dtype=F64)
    for channel in (0, 1):
        m = _zeroed(M, 2, 3)
        with torch.no_grad():
            m.W_s.weight[0, channel, 1, 1] = 1.0
        ctx.expect(_run(m, x_cls, x_seg)[2], f"M_s when W_s reads only its input channel {channel}", atol=1e-12)


@check(4)
def eq4_matches(ctx, M):
    """eq. (4): M_s matches the reference with M_c fixed, several sizes"""
    for seed, (B, C, c_seg, h, w) in enumerate(SIZES):
        with ctx.part(f"C = {C}, {h}x{w}"):
            m = _module(M, C, c_seg, seed)
            _fixed_mc(m, C, seed)
            ctx.expect(_run(m, *_inputs(seed, B, C, c_seg, h, w))[2], f"M_s with C = {C}, {B}x{h}x{w}, M_c fixed",
                       atol=1e-9)


@check(2)
def eq4_pool_order(ctx, M):
    """eq. (4) pools x_m over channels as [AvgPool; MaxPool], in that order (M_c fixed)"""
    for channel, name in ((0, "average"), (1, "max")):
        with ctx.part(f"{name} map"):
            m = _module(M, 6, 3, 5 + channel)
            _fixed_mc(m, 6, channel)
            with torch.no_grad():
                m.W_s.weight.zero_()
                m.W_s.weight[0, channel, 1, 1] = 2.0
            ctx.expect(_run(m, *_inputs(channel, 2, 6, 3, 4, 4))[2],
                       f"M_s when W_s reads only its input channel {channel} (the {name} map)", atol=1e-9)


# ---------------------------------------------------------------------------- eq. (5) (from the student's M_c, M_s)

def _attention_maps(ctx, M_c, M_s):
    """eq. (5) is checked with the student's own M_c and M_s; they must at least be attention maps (sigmoids), and
    M_c must be the fixed σ(z) of the hook, which varies over the channels (constant maps pay nothing here)."""
    ctx.expect(bool(((M_c > 0) & (M_c < 1)).all() and ((M_s > 0) & (M_s < 1)).all()),
               "M_c and M_s lie strictly between 0 and 1 (sigmoid outputs)")
    ctx.expect(M_c.flatten(), "M_c (fixed by the hook: σ(z))", atol=1e-9)


@check(2)
def eq5_output(ctx, M):
    """eq. (5): x_out = M_s ⊗ (M_c ⊗ x_cls), from your own M_c and M_s (M_c fixed)"""
    for seed, (B, C, c_seg, h, w) in enumerate(((1, 4, 3, 1, 1), (2, 8, 16, 3, 5), (2, 5, 2, 4, 6))):
        with ctx.part(f"C = {C}"):
            m = _module(M, C, c_seg, seed)
            _fixed_mc(m, C, seed)
            x_cls, x_seg = _inputs(seed, B, C, c_seg, h, w)
            x_out, M_c, M_s = _run(m, x_cls, x_seg)
            _attention_maps(ctx, M_c, M_s)
            ctx.expect((x_out - M_s * (M_c * x_cls)).abs().max(), f"max |x_out - M_s M_c x_cls|, C = {C}",
                       atol=1e-9)


@check(1)
def eq5_residual_form(ctx, M):
    """the residual form (not in the paper): x_out = x_cls + M_s ⊗ x_m when self.residual"""
    m = _module(M, 4, 3, 17, residual=True)
    _fixed_mc(m, 4, 17)
    x_cls, x_seg = _inputs(17, 2, 4, 3, 3, 5)
    x_out, M_c, M_s = _run(m, x_cls, x_seg)
    _attention_maps(ctx, M_c, M_s)
    ctx.expect((x_out - x_cls - M_s * (M_c * x_cls)).abs().max(), "max |x_out - x_cls - M_s M_c x_cls|", atol=1e-9)


# ---------------------------------------------------------------------------- the module as a whole

@check(1)
def gradients_reach_everything(ctx, M):
    """gradients reach x_cls, x_seg and every parameter"""
    m = _module(M, 4, 3, 13)
    x_cls, x_seg = _inputs(13, 2, 4, 3, 3, 3)
    a, b = x_cls.clone().requires_grad_(True), x_seg.clone().requires_grad_(True)
    x_out, M_c, M_s = _run(m, a, b)
    (x_out.sum() + M_c.sum() + M_s.sum()).backward()
    for name, t in [("x_cls", a), ("x_seg", b)] + list(m.named_parameters()):
        ctx.expect(t.grad is not None and bool(torch.isfinite(t.grad).all()), f"a finite gradient reaches {name}")


@check(1, needs=("eq3_matches", "eq4_matches"))
def rejects_sizes(ctx, M):
    """x_cls and x_seg of different spatial sizes raise a ValueError"""
    m = _module(M, 4, 3, 0, torch.float32)
    ctx.raises(lambda: m(torch.randn(1, 4, 4, 4), torch.randn(1, 3, 8, 8)), "x_cls 4x4, x_seg 8x8")
