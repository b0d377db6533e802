"""Tests for models.py: shapes, eqs. (3)–(5) by hand, eq. (6) against finite differences, branch isolation,
parameter partition, offline pretrained error. CPU, resnet18 seg encoder, small sides."""
import copy
import math
import os
import urllib.error

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import models
from models import HermesNet, InterTaskAttention, saliency

KEYS = {"seg_logits", "cls_logits", "pixel_emb", "image_emb", "itc_seg", "itc_cls", "saliency", "M_c", "M_s"}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HermesNet(seg_encoder="resnet18").eval()


@pytest.mark.parametrize("H,W,B", [(64, 64, 1), (64, 64, 3), (96, 96, 1), (96, 96, 3), (224, 224, 1),
                                   (64, 96, 2), (96, 64, 1), (160, 32, 3), (32, 32, 2)])
def test_output_shapes(net, H, W, B):
    """Any H and W divisible by 32, square or not: every map keeps the input's aspect (H/k × W/k)."""
    x = torch.randn(B, 3, H, W)
    with torch.no_grad():
        out = net(x)
        off = net(x, ias=False)
    assert set(out) == KEYS and set(off) == KEYS
    assert out["seg_logits"].shape == (B, 2, H, W)
    assert out["cls_logits"].shape == (B, 2)
    assert out["pixel_emb"].shape == (B, 256, H // 16, W // 16)  # contrast level 3 = layer3
    assert out["image_emb"].shape == (B, 128)
    assert out["itc_seg"].shape == (B, 128) and out["itc_cls"].shape == (B, 128)
    assert out["saliency"].shape == (B, 1, H, W)
    assert [m.shape for m in out["M_c"]] == [(B, 64, 1, 1), (B, 128, 1, 1), (B, 256, 1, 1)]
    assert [m.shape for m in out["M_s"]] == [(B, 1, H // k, W // k) for k in (4, 8, 16)]
    torch.testing.assert_close(out["pixel_emb"].norm(dim=1), torch.ones(B, H // 16, W // 16))
    torch.testing.assert_close(out["image_emb"].norm(dim=1), torch.ones(B))
    assert 0 <= out["saliency"].min() and out["saliency"].max() <= 1
    assert off["saliency"] is None and off["M_c"] == [] and off["M_s"] == []
    for k in ("seg_logits", "cls_logits", "pixel_emb", "image_emb", "itc_seg", "itc_cls"):
        assert off[k].shape == out[k].shape


def test_single_branch_helpers(net):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        seg = net.forward_seg(x)
        cls = net.forward_cls(x)
    assert {"seg_logits", "pixel_emb", "itc_seg", "feats"} <= set(seg)
    assert {k: v.shape for k, v in seg["feats"].items() if k.startswith("up")} == {
        "up1": (2, 256, 4, 4), "up2": (2, 128, 8, 8), "up3": (2, 64, 16, 16), "up4": (2, 32, 32, 32)}
    assert {"cls_logits", "image_emb", "itc_cls"} <= set(cls) and cls["M_c"] == []


@pytest.mark.parametrize("level", [1, 2, 4])
def test_contrast_level(level):
    m = HermesNet(seg_encoder="resnet18", contrast_level=level).eval()
    with torch.no_grad():
        out = m.forward_seg(torch.randn(1, 3, 64, 64))
    side = 64 // 2 ** (level + 1)
    assert out["pixel_emb"].shape == (1, 256, side, side)


def test_non_square_training_step():
    """A 64×96 batch in train mode (BatchNorm on batch statistics): finite losses reach every branch."""
    torch.manual_seed(0)
    m = HermesNet(seg_encoder="resnet18").train()
    x, masks = torch.randn(2, 3, 64, 96), torch.randint(0, 2, (2, 64, 96))
    out = m(x)
    loss = F.cross_entropy(out["seg_logits"], masks) + F.cross_entropy(out["cls_logits"], torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    for part in m.SEG_PARTS[:2] + m.CLS_PARTS[:1]:
        grads = [p.grad for p in getattr(m, part).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), part


def test_bad_sizes_and_args(net):
    """A side not divisible by 32 (odd or even, either side) stops with both sizes in the message."""
    for shape in [(1, 3, 100, 100), (1, 3, 96, 100), (1, 3, 97, 64), (1, 3, 64, 97), (1, 3, 16, 16)]:
        size = f"{shape[2]}x{shape[3]}"
        with pytest.raises(ValueError, match=rf"input size {size} is not divisible by 32"):
            net(torch.randn(*shape))
    with pytest.raises(ValueError, match="100x64 is not divisible by 32"):
        net.forward_seg(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match="64x33 is not divisible by 32"):
        net.forward_cls(torch.randn(1, 3, 64, 33))
    with pytest.raises(ValueError, match="contrast_level"):
        HermesNet(seg_encoder="resnet18", contrast_level=5)
    with pytest.raises(ValueError, match="resnet50"):
        HermesNet(seg_encoder="resnet50")


def _conv3x3_by_hand(x, w, b):
    """x (C_in,h,w) nested lists via tensor indexing, zero padding 1; returns (C_out,h,w) float64."""
    c_out, c_in = w.shape[:2]
    h, wd = x.shape[1:]
    y = torch.zeros(c_out, h, wd, dtype=torch.float64)
    for o in range(c_out):
        for i in range(h):
            for j in range(wd):
                s = float(b[o])
                for c in range(c_in):
                    for di in range(3):
                        for dj in range(3):
                            ii, jj = i + di - 1, j + dj - 1
                            if 0 <= ii < h and 0 <= jj < wd:
                                s += float(w[o, c, di, dj]) * float(x[c, ii, jj])
                y[o, i, j] = s
    return y


def test_inter_task_attention_by_hand():
    C, c_seg, h, w = 2, 3, 2, 2
    ita = InterTaskAttention(C, c_seg).double()
    with torch.no_grad():  # fixed, hand-chosen weights
        ita.adapter.weight.copy_(torch.tensor([[0.5, -1.0, 0.25], [1.5, 0.0, -0.5]]).view(C, c_seg, 1, 1))
        ita.adapter.bias.copy_(torch.tensor([0.1, -0.2]))
        ita.W_c.weight.copy_(torch.linspace(-1, 1, 2 * C * C * 9).view(C, 2 * C, 3, 3))
        ita.W_c.bias.copy_(torch.tensor([0.3, -0.1]))
        ita.W_0.weight.copy_(torch.tensor([[0.7, -0.4]]))   # C -> max(1, C/4) = 1
        ita.W_1.weight.copy_(torch.tensor([[1.2], [-0.8]]))  # 1 -> C
        ita.W_s.weight.copy_(torch.linspace(0.5, -0.5, 18).view(1, 2, 3, 3))
        ita.W_s.bias.copy_(torch.tensor([0.05]))
    g = torch.Generator().manual_seed(0)
    x_cls = torch.randn(2, C, h, w, generator=g, dtype=torch.float64)
    x_seg = torch.randn(2, c_seg, h, w, generator=g, dtype=torch.float64)
    x_out, M_c, M_s = ita(x_cls, x_seg)

    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    A, a = ita.adapter.weight.detach()[:, :, 0, 0], ita.adapter.bias.detach()
    W0, W1 = ita.W_0.weight.detach(), ita.W_1.weight.detach()
    for n in range(2):
        xs = torch.zeros(C, h, w, dtype=torch.float64)  # adapter (1x1 conv)
        for c in range(C):
            for i in range(h):
                for j in range(w):
                    xs[c, i, j] = a[c] + sum(A[c, k] * x_seg[n, k, i, j] for k in range(c_seg))
        cat = torch.cat([x_cls[n], xs])  # [x_cls; x_seg]
        conv = _conv3x3_by_hand(cat, ita.W_c.weight.detach(), ita.W_c.bias.detach())
        pooled = [float(conv[c].sum()) / (h * w) for c in range(C)]
        hidden = [max(0.0, sum(float(W0[r, c]) * pooled[c] for c in range(C))) for r in range(W0.shape[0])]
        mc = [sig(sum(float(W1[c, r]) * hidden[r] for r in range(W0.shape[0]))) for c in range(C)]  # eq. (3)
        xm = torch.stack([mc[c] * x_cls[n, c] for c in range(C)])  # eq. (5)
        avg_max = torch.zeros(2, h, w, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                vals = [float(xm[c, i, j]) for c in range(C)]
                avg_max[0, i, j], avg_max[1, i, j] = sum(vals) / C, max(vals)
        s = _conv3x3_by_hand(avg_max, ita.W_s.weight.detach(), ita.W_s.bias.detach())
        ms = s.apply_(sig)  # eq. (4)
        out = torch.stack([ms[0] * xm[c] for c in range(C)])  # eq. (5)
        torch.testing.assert_close(M_c[n, :, 0, 0], torch.tensor(mc, dtype=torch.float64))
        torch.testing.assert_close(M_s[n], ms)
        torch.testing.assert_close(x_out[n], out)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def test_saliency_matches_finite_differences():
    torch.manual_seed(0)
    net = TinyNet().double()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    net.train()
    net.conv.eval()  # a mixed mode that must come back exactly
    state = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    with torch.no_grad():
        s = saliency(net, x)
    assert s.shape == (2, 1, 4, 4) and not s.requires_grad
    assert net.training and net.bn.training and not net.conv.training and net.fc.training
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():  # BN ran in eval mode: running stats untouched
        torch.testing.assert_close(v, state[k])

    ref = copy.deepcopy(net).eval()
    eps = 1e-6
    for n in range(2):  # eq. (6) by central differences on the max logit of image n alone
        k = int(ref(x[n:n + 1]).argmax())
        g = torch.zeros(3, 4, 4, dtype=torch.float64)
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    xp, xm = x[n:n + 1].clone(), x[n:n + 1].clone()
                    xp[0, c, i, j] += eps
                    xm[0, c, i, j] -= eps
                    with torch.no_grad():
                        g[c, i, j] = (ref(xp)[0, k] - ref(xm)[0, k]) / (2 * eps)
        d = g.abs().amax(dim=0)
        d = (d - d.min()) / (d.max() - d.min())
        torch.testing.assert_close(s[n, 0], d, atol=1e-6, rtol=1e-5)
    assert s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s, saliency(net, x))  # same with grad enabled


def test_saliency_constant_map_gives_zeros():
    class Linear(nn.Module):  # gradient of sum(x) is all ones -> a constant map
        def forward(self, x):
            return torch.stack([x.sum(dim=(1, 2, 3)), -x.sum(dim=(1, 2, 3)) - 1e9], dim=1)
    s = saliency(Linear(), torch.randn(2, 3, 8, 8))
    assert torch.equal(s, torch.zeros(2, 1, 8, 8))


def test_hermes_saliency_is_plain_cls_saliency(net):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
    torch.testing.assert_close(out["saliency"], saliency(net.cls_net, x))


def test_cls_depends_on_seg_only_with_ias(net):
    x = torch.randn(2, 3, 64, 64)
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.seg_parameters():
            p.add_(0.5 * torch.randn_like(p))
        torch.testing.assert_close(net(x, ias=False)["cls_logits"], other(x, ias=False)["cls_logits"])
        assert not torch.allclose(net(x, ias=True)["cls_logits"], other(x, ias=True)["cls_logits"])


@pytest.mark.parametrize("cross_grad", [False, True])
def test_cross_grad(cross_grad):
    torch.manual_seed(0)
    m = HermesNet(seg_encoder="resnet18", cross_grad=cross_grad).train()
    x, z = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    F.cross_entropy(m(x)["cls_logits"], z).backward()
    seg_grad = sum(float(p.grad.abs().sum()) for p in m.seg_parameters() if p.grad is not None)
    assert (seg_grad > 0) == cross_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.ita.parameters())
    m.zero_grad(set_to_none=True)
    m(x)["seg_logits"].sum().backward()  # saliency is detached: the seg loss never reaches cls
    assert all(p.grad is None for p in m.cls_parameters())


def test_parameter_partition(net):
    seg = {id(p) for p in net.seg_parameters()}
    cls = {id(p) for p in net.cls_parameters()}
    assert len(seg) == len(net.seg_parameters()) and len(cls) == len(net.cls_parameters())
    assert not seg & cls
    assert seg | cls == {id(p) for p in net.parameters() if p.requires_grad}


def test_pretrained_offline_raises(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    for build in (lambda: HermesNet(seg_encoder="resnet18", pretrained=True), lambda: HermesNet(pretrained=True)):
        with pytest.raises(models.WeightsUnavailable, match="--no-pretrained") as e:   # a user error (DataError)
            build()
        assert folder in str(e.value) and isinstance(e.value.__cause__, urllib.error.URLError)
        assert isinstance(e.value, models.cli.DataError) and "\n" not in str(e.value)


def test_pretrained_weights_are_loaded(monkeypatch):
    torch.manual_seed(1)
    fake = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: fake)
    r = models.build_resnet("resnet18", pretrained=True)
    for k, v in r.state_dict().items():
        assert torch.equal(v, fake[k]), k


# ------------------------------------------------------------------ starting from files (--init, --init-*-encoder)
def test_load_init_both_branches_heads_optional_and_strict():
    torch.manual_seed(0)
    src = HermesNet(seg_encoder="resnet18")
    torch.manual_seed(1)
    dst = HermesNet(seg_encoder="resnet18")
    head_before = dst.pixel_head[0].weight.clone()
    loaded = models.load_init(dst, src.state_dict(), heads=False)
    assert "seg_encoder.stem.0.weight" in loaded and "ita.0.W_c.weight" in loaded and "cls_net.fc.weight" in loaded
    assert not any(k.split(".")[0] in models.HEADS for k in loaded)
    assert torch.equal(dst.seg_decoder.head.weight, src.seg_decoder.head.weight)
    assert torch.equal(dst.cls_net.layer1[0].conv1.weight, src.cls_net.layer1[0].conv1.weight)
    assert torch.equal(dst.pixel_head[0].weight, head_before)                      # heads kept
    models.load_init(dst, src.state_dict(), heads=True)
    assert torch.equal(dst.pixel_head[0].weight, src.pixel_head[0].weight)
    state = src.state_dict()
    state.pop("seg_decoder.head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["cls_net.fc.weight"] = torch.zeros(3, 512)
    with pytest.raises(ValueError) as e:
        models.load_init(dst, state)
    msg = str(e.value)
    assert "missing seg_decoder.head.bias" in msg and "unexpected extra.weight" in msg
    assert "cls_net.fc.weight (3, 512) vs (2, 512)" in msg


def test_load_resnet_init_torchvision_files():
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None).state_dict()                  # ImageNet-format keys, fc 1000
    net = HermesNet(seg_encoder="resnet18")
    fc_before = net.cls_net.fc.weight.clone()
    models.load_resnet_init(net, r18, "seg")
    assert torch.equal(net.seg_encoder.stem[0].weight, r18["conv1.weight"])
    assert torch.equal(net.seg_encoder.stem[1].running_var, r18["bn1.running_var"])
    assert torch.equal(net.seg_encoder.layer4[1].conv2.weight, r18["layer4.1.conv2.weight"])
    models.load_resnet_init(net, r18, "cls")
    assert torch.equal(net.cls_net.layer2[0].downsample[0].weight, r18["layer2.0.downsample.0.weight"])
    assert torch.equal(net.cls_net.fc.weight, fc_before)                           # 1000-class fc dropped
    r34 = torchvision.models.resnet34(weights=None).state_dict()
    with pytest.raises(ValueError, match="unexpected layer1.2"):
        models.load_resnet_init(net, r34, "cls")                                   # a ResNet-34 file is not ResNet-18


def test_residual_ita_adds_the_input():
    torch.manual_seed(0)
    paper, res = InterTaskAttention(8, 4), InterTaskAttention(8, 4, residual=True)
    res.load_state_dict(paper.state_dict())
    x_cls, x_seg = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5)
    out_p, M_c, M_s = paper(x_cls, x_seg)
    out_r, _, _ = res(x_cls, x_seg)
    torch.testing.assert_close(out_r, x_cls + out_p)                               # x_cls + M_s ⊗ M_c ⊗ x_cls
    with pytest.raises(ValueError, match="ita_form"):
        HermesNet(seg_encoder="resnet18", ita_form="gated")


@pytest.mark.parametrize("residual", [False, True])
def test_a_closed_spatial_gate_kills_the_papers_ita_and_not_the_residual_form(residual):
    """docs/classifier-study.md: a spatial gate saturated at 0 (M_s ≈ 0 at every pixel, seen in a collapsed run)
    zeroes eq. (5)'s x_out and every gradient through it, the gate's own included, so it cannot reopen;
    x_cls + M_s M_c x_cls (--ita-form residual) passes the features and their gradient unchanged."""
    torch.manual_seed(0)
    ita = InterTaskAttention(8, 4, residual=residual)
    with torch.no_grad():
        ita.W_s.bias.fill_(-60.0)
    x = torch.rand(2, 8, 5, 5, requires_grad=True)                      # post-ReLU features: nonnegative
    out, _, m_s = ita(x, torch.randn(2, 4, 5, 5))
    assert m_s.max().item() < 1e-20
    out.sum().backward()
    if residual:
        torch.testing.assert_close(out, x.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(x.grad, torch.ones_like(x), atol=1e-6, rtol=0)
    else:
        assert out.abs().max().item() < 1e-18 and float(x.grad.abs().max()) < 1e-18
        assert float(ita.W_s.weight.grad.abs().max()) < 1e-18 and float(ita.W_s.bias.grad.abs().max()) < 1e-18


@pytest.mark.parametrize("residual", [False, True])
def test_ias_scale_weights_the_attention(residual):
    """--ias-warmup: s = 0 passes x_cls unchanged, s = 1 is the unweighted form, s between: by hand."""
    torch.manual_seed(0)
    ita = InterTaskAttention(8, 4, residual=residual)
    x_cls, x_seg = torch.rand(2, 8, 5, 5), torch.randn(2, 4, 5, 5)
    full, M_c, M_s = ita(x_cls, x_seg)
    att = M_s * M_c * x_cls                                                        # eq. (5), by hand
    torch.testing.assert_close(full, x_cls + att if residual else att)
    assert torch.equal(ita(x_cls, x_seg, torch.tensor(0.0))[0], x_cls)
    torch.testing.assert_close(ita(x_cls, x_seg, torch.tensor(1.0))[0], full)
    half = x_cls + 0.25 * att if residual else 0.75 * x_cls + 0.25 * att
    torch.testing.assert_close(ita(x_cls, x_seg, torch.tensor(0.25))[0], half)


def test_ias_scale_zero_is_the_model_without_ias_and_between_weights_the_saliency():
    torch.manual_seed(0)
    net = HermesNet(seg_encoder="resnet18", ita_form="residual").eval()
    x = torch.randn(2, 3, 32, 32)
    off, full = net(x, ias=False), net(x)
    assert not torch.allclose(full["cls_logits"], off["cls_logits"])
    assert not torch.allclose(full["seg_logits"], off["seg_logits"])
    models.set_ias_scale(net, 0.0)
    assert not net.ias_full and float(net.ias_scale) == 0.0
    zero = net(x)
    for k in ("cls_logits", "seg_logits"):
        assert torch.equal(zero[k], off[k]), k
    models.set_ias_scale(net, 0.5)
    half = net(x)
    with torch.no_grad():
        torch.testing.assert_close(half["seg_logits"], net.forward_seg(x, 0.5 * full["saliency"])["seg_logits"])
    torch.testing.assert_close(half["saliency"], full["saliency"])                 # the map itself is not scaled
    models.set_ias_scale(net, 1.0)
    assert net.ias_full and "ias_scale" not in net.state_dict()                   # not saved: 1 when finished
    torch.testing.assert_close(net(x)["cls_logits"], full["cls_logits"])
