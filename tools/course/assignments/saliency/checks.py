"""Graded checks of 'saliency' (eq. (6)). Each check records what the code computes; the grader compares the
record with the reference's (tools/course/observe.py)."""
import torch
import torch.nn as nn

from tools.course.observe import Fail, gen
from tools.course.registry import check

A = [[[1.0, -2.0], [0.0, 0.5]], [[-3.0, 1.0], [0.0, 0.0]], [[0.5, 0.5], [2.0, -1.0]]]   # the visible tests'
B = [[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -4.0]]]


class TwoLinearLogits(nn.Module):
    """f_0(x) = Σ A·x,  f_1(x) = Σ B·x + 1: the input gradient of f_c is A or B."""

    def __init__(self):
        super().__init__()
        self.A, self.B = nn.Parameter(torch.tensor(A)), nn.Parameter(torch.tensor(B))

    def forward(self, x):
        return torch.stack([(x * self.A).sum(dim=(1, 2, 3)), (x * self.B).sum(dim=(1, 2, 3)) + 1.0], dim=1)


def _tiny_cnn(H, W, seed, dtype):
    g = gen(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(),
                        nn.Linear(4 * H * W, 3)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
        net[1].running_mean.uniform_(-1, 1, generator=g)
        net[1].running_var.uniform_(0.5, 2, generator=g)
    net.train()
    return net


def _sal(M, net, x):
    s = M.models.saliency(net, x)
    if not torch.is_tensor(s):
        raise Fail(f"saliency returned {type(s).__name__}, expected a tensor")
    return s


@check(1)
def by_hand(ctx, M):
    """saliency: the hand-worked two-class linear model of the visible tests"""
    x = torch.stack([10 * torch.tensor(A), torch.zeros(3, 2, 2)])
    ctx.expect(_sal(M, TwoLinearLogits(), x), "saliency of the two images", atol=1e-6)


@check(3)
def matches_small_cnns(ctx, M):
    """matches the reference on small CNNs with BatchNorm (train mode outside)"""
    for seed, (Bn, H, W) in enumerate(((1, 4, 4), (3, 4, 4), (2, 6, 5))):
        with ctx.part(f"{Bn}x3x{H}x{W}"):
            net = _tiny_cnn(H, W, seed, torch.float64)
            x = torch.randn(Bn, 3, H, W, generator=gen(seed + 50), dtype=torch.float64)
            ctx.expect(_sal(M, net, x), f"saliency of a {Bn}x3x{H}x{W} batch", atol=1e-8)


@check(1)
def matches_small_resnet(ctx, M):
    """matches the reference on a small ResNet (in-place ReLU, max-pool, residual block)"""
    from torchvision.models.resnet import BasicBlock
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2), BasicBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(3, 3, 16, 16, generator=gen(1))
    ctx.expect(_sal(M, net, x), "saliency of a small ResNet on 3x3x16x16", atol=1e-5)


@check(2, needs=("matches_small_cnns",))
def eval_mode_and_modes_restored(ctx, M):
    """BatchNorm runs in eval mode; every module's train/eval mode is restored"""
    net = _tiny_cnn(4, 4, 3, torch.float64)
    net[0].eval()
    net[4].eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ran = []
    hook = net[4].register_forward_hook(lambda mod, inp, out: ran.append(bool(out.requires_grad)))
    _sal(M, net, torch.randn(3, 3, 4, 4, dtype=torch.float64))
    hook.remove()
    with ctx.part("modes restored"):
        ctx.expect(bool(ran) and all(ran), "the network ran, with gradients, on the images")
        ctx.expect([m.training for m in net.modules()], "train/eval mode of every module after the call")
    with ctx.part("eval mode inside"):
        ctx.expect(sorted(k for k, v in net.state_dict().items() if not torch.equal(v, state[k])),
                   "buffers changed by the call (BatchNorm in train mode updates its running statistics)")


@check(1)
def no_grad_detached(ctx, M):
    """no parameter .grad, a detached output, and it works under torch.no_grad()"""
    net = _tiny_cnn(4, 4, 4, torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        s = _sal(M, net, x)
    ctx.expect(bool(s.requires_grad or s.grad_fn is not None), "the map carries a graph")
    ctx.expect([n for n, p in net.named_parameters() if p.grad is not None], "parameters that received a .grad")
    ctx.expect(s, "saliency computed under torch.no_grad()", atol=1e-8)


@check(2)
def per_image(ctx, M):
    """each image gets its own map (the batch does not matter)"""
    net = _tiny_cnn(5, 5, 5, torch.float64)
    x = torch.randn(4, 3, 5, 5, generator=gen(5), dtype=torch.float64)
    s = _sal(M, net, x)
    for i in range(4):
        ctx.expect((s[i:i + 1] - _sal(M, net, x[i:i + 1])).abs().max(), f"image {i}: in a batch vs alone",
                   atol=1e-8)
    ctx.expect(s, "the batch's maps", atol=1e-8)


@check(1, needs=("matches_small_cnns",))
def constant_map(ctx, M):
    """a constant map gives zeros, not NaN"""
    class SumLogits(nn.Module):          # input gradient of the winning logit: all ones
        def forward(self, x):
            return torch.stack([x.sum(dim=(1, 2, 3)), -x.sum(dim=(1, 2, 3)) - 1e9], dim=1)

    ctx.expect(_sal(M, SumLogits(), torch.randn(2, 3, 4, 4)), "saliency when |gradient| is constant")
