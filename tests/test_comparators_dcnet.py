"""DCNet plug-in (comparators/dcnet.py): its losses against values worked by hand on tiny tensors, the
decoupled predictions (which elements go to the CE part and which to the MSE part, and the MSE's direction)
against a naive per-pixel loop, the dynamic threshold against a hand computation, a 2-step run (step +
backward + optimizers) with finite losses and cps_step's statistics, and a state_dict round trip that gives
the identical next step."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import hermes
from comparators import dcnet
from models import HermesNet
from tests.test_comparators_seg import _batches, _cfg as _seg_cfg  # the shared tiny inputs

S, B = 32, 2
sig = lambda v: 1.0 / (1.0 + math.exp(-v))


def _cfg(**kw):
    return _seg_cfg(dcnet, **kw)


def _two_pixels(a, b):
    """Logits (1,2,1,2) with lesion-minus-background margins a (pixel 0) and b (pixel 1), background 0."""
    return torch.tensor([[[[0.0, 0.0]], [[a, b]]]], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# pieces by hand

def test_attention_transfer_by_hand():
    # level 1: student channels (1, 2) and (3, 0) -> mean of squares (5, 2); teacher one channel (1, 1)
    s1 = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    t1 = torch.tensor([[[[1.0, 1.0]]]], dtype=torch.float64, requires_grad=True)
    # level 2: one position per image, so every map is 1 after normalisation: loss 0
    s2 = torch.tensor([[[[2.0]]], [[[0.5]]]], dtype=torch.float64)
    t2 = torch.tensor([[[[7.0]]], [[[3.0]]]], dtype=torch.float64)
    n = math.sqrt(29)
    want = ((5 / n - 1 / math.sqrt(2)) ** 2 + (2 / n - 1 / math.sqrt(2)) ** 2) / 2
    got = dcnet.attention_loss([s1, s2], [t1, t2])
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    got.backward()
    assert t1.grad is None and s1.grad is not None and s1.grad.abs().sum() > 0   # the teacher is detached


def test_threshold_update_by_hand():
    p1 = _two_pixels(math.log(0.9 / 0.1), math.log(0.4 / 0.6)).softmax(1)        # max probs 0.9, 0.6
    p2 = _two_pixels(math.log(0.2 / 0.8), 0.0).softmax(1)                         # max probs 0.8, 0.5
    prev = torch.tensor(0.5)
    # step it = 1 of 4: rate (1 + 1) / 4; t_k = ½ 0.5 + ½ m_k with m = 0.75, 0.65 -> min 0.575
    t, conf = dcnet.next_threshold(prev, p1, p2, 1, 4)
    assert float(t) == pytest.approx(0.575, abs=1e-6) and float(conf) == pytest.approx(0.65, abs=1e-6)
    # clipped below: 0.9 · 0.2 + 0.1 · 0.65 = 0.245 -> 0.25
    t, _ = dcnet.next_threshold(torch.tensor(0.2), p1, p2, 0, 10)
    assert float(t) == pytest.approx(0.25, abs=1e-7)
    t, _ = dcnet.next_threshold(torch.tensor(0.2), p1, p2, 0, 10, lo=0.1)
    assert float(t) == pytest.approx(0.245, abs=1e-6)
    # clipped above: both decoders sure (0.99) and prev 0.97 -> 0.95; past the end the rate stays 1
    sure = _two_pixels(math.log(99), math.log(99)).softmax(1)
    assert float(dcnet.next_threshold(torch.tensor(0.97), sure, sure, 3, 10)[0]) == pytest.approx(0.95)
    assert float(dcnet.next_threshold(prev, p1, p2, 99, 10, hi=1.0)[0]) == pytest.approx(0.65, abs=1e-6)


def test_mse_and_ce_by_hand():
    # pixel 0: decoder 1 lesion margin 2, decoder 2 margin 1 (both sure of lesion, > 0.6 in channel 1)
    # pixel 1: decoder 1 margin 0.5 (lesion 0.62), decoder 2 margin -1 (background 0.73): they disagree
    l1, l2, t = _two_pixels(2.0, 0.5), _two_pixels(1.0, -1.0), 0.6
    p1, p2 = l1.softmax(1), l2.softmax(1)
    T = 0.5
    q = lambda v: sig(v / T)                                                       # lesion prob. at T
    none_ = torch.tensor(False)
    # 'code': per channel. high: (pixel 0, ch 1). m1 (decoder 1 the target): (pixel 1, ch 1);
    # m2 (decoder 2 the target): (pixel 0, ch 0) and (pixel 1, ch 0). Means over 4 elements.
    high, m1, m2 = dcnet.decouple(p1, p2, t, "code")
    assert high[0, :, 0].tolist() == [[False, False], [True, False]]
    assert m1[0, :, 0].tolist() == [[False, False], [False, True]]
    assert m2[0, :, 0].tolist() == [[True, True], [False, False]]
    want_mse = ((q(0.5) - q(-1.0)) ** 2 + ((1 - q(1.0)) - (1 - q(2.0))) ** 2
                + ((1 - q(-1.0)) - (1 - q(0.5))) ** 2) / 4
    assert float(dcnet.mse_loss(l1, l2, m1, m2, T)) == pytest.approx(want_mse, rel=1e-12)
    # code CE: masked logits: pixel 0 -> (0, 2) / (0, 1) with label 1; pixel 1 -> (0, 0) with label 0 (log 2)
    want_ce = (-math.log(sig(2.0)) + math.log(2)) / 2 + (-math.log(sig(1.0)) + math.log(2)) / 2
    assert float(dcnet.ce_loss(l1, l2, p1, p2, high, none_, "code")) == pytest.approx(want_ce, rel=1e-12)
    # 'pixel': pixel 0 consistent (same class, both > 0.6); pixel 1 not, decoder 2 surer (0.73 > 0.62)
    high, m1, m2 = dcnet.decouple(p1, p2, t, "pixel")
    assert high[0, :, 0].tolist() == [[True, False], [True, False]]
    assert not m1.any() and m2[0, :, 0].tolist() == [[False, True], [False, True]]
    want_mse = 2 * (q(-1.0) - q(0.5)) ** 2 / 4
    assert float(dcnet.mse_loss(l1, l2, m1, m2, T)) == pytest.approx(want_mse, rel=1e-12)
    want_ce = (-math.log(sig(2.0)) - math.log(sig(1.0))) / 2
    assert float(dcnet.ce_loss(l1, l2, p1, p2, high, none_, "pixel")) == pytest.approx(want_ce, rel=1e-12)
    # all pixels (mean confidence >= 0.95): each decoder learns the other's argmax everywhere
    want_all = ((-math.log(sig(2.0)) - math.log(sig(-0.5))) / 2
                + (-math.log(sig(1.0)) - math.log(sig(-1.0))) / 2)
    for mode in ("code", "pixel"):
        got = dcnet.ce_loss(l1, l2, p1, p2, high, torch.tensor(True), mode)
        assert float(got) == pytest.approx(want_all, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# the decoupled predictions against a naive per-pixel loop

def _naive(l1, l2, t, mode, T):
    """Per pixel, per channel: the sets, and the MSE and CE built term by term with the teacher detached."""
    Bn, C, H, W = l1.shape
    p1, p2 = l1.softmax(1), l2.softmax(1)
    q1, q2 = (l1 / T).softmax(1), (l2 / T).softmax(1)
    high = torch.zeros(Bn, C, H, W, dtype=torch.bool)
    m1, m2 = high.clone(), high.clone()
    mse, ce = l1.sum() * 0, l1.sum() * 0
    for b in range(Bn):
        for i in range(H):
            for j in range(W):
                a, c = p1[b, :, i, j].tolist(), p2[b, :, i, j].tolist()
                for k in range(C):
                    if mode == "code":
                        hi_ = a[k] > t and c[k] > t
                        d1 = not hi_ and a[k] > c[k]                   # decoder 1 teaches decoder 2 here
                        d2 = not hi_ and c[k] > a[k]
                    else:
                        hi_ = a.index(max(a)) == c.index(max(c)) and max(a) > t and max(c) > t
                        d1 = not hi_ and max(a) > max(c)
                        d2 = not hi_ and max(c) > max(a)
                    high[b, k, i, j], m1[b, k, i, j], m2[b, k, i, j] = hi_, d1, d2
                    if d1:
                        mse = mse + (q1[b, k, i, j].detach() - q2[b, k, i, j]) ** 2
                    if d2:
                        mse = mse + (q2[b, k, i, j].detach() - q1[b, k, i, j]) ** 2
                # CE of this pixel
                y2, y1 = c.index(max(c)), a.index(max(a))
                if mode == "code":
                    h = high[b, :, i, j].to(l1.dtype)
                    m_p2, m_p1 = (h * p2[b, :, i, j]).tolist(), (h * p1[b, :, i, j]).tolist()
                    ce = ce - F.log_softmax(h * l1[b, :, i, j], 0)[m_p2.index(max(m_p2))]
                    ce = ce - F.log_softmax(h * l2[b, :, i, j], 0)[m_p1.index(max(m_p1))]
                elif high[b, 0, i, j]:
                    ce = ce - F.log_softmax(l1[b, :, i, j], 0)[y2] - F.log_softmax(l2[b, :, i, j], 0)[y1]
    return high, m1, m2, mse / l1.numel(), ce / (Bn * H * W)


@pytest.mark.parametrize("mode", ["code", "pixel"])
@pytest.mark.parametrize("C", [2, 3])
def test_decoupled_predictions_against_a_loop(mode, C):
    torch.manual_seed(10 + C)
    T = 0.5
    for t in (0.3 if C == 3 else 0.5, 0.7):
        base1 = 2.5 * torch.randn(2, C, 5, 4, dtype=torch.float64)
        base2 = 2.5 * torch.randn(2, C, 5, 4, dtype=torch.float64)
        base2[:, :, :2] = base1[:, :, :2] + 0.3 * torch.randn(2, C, 2, 4, dtype=torch.float64)   # some agree
        l1, l2 = base1.clone().requires_grad_(True), base2.clone().requires_grad_(True)
        n1, n2 = base1.clone().requires_grad_(True), base2.clone().requires_grad_(True)
        high, m1, m2 = dcnet.decouple(l1.detach().softmax(1), l2.detach().softmax(1), t, mode)
        w_high, w_m1, w_m2, w_mse, w_ce = _naive(n1, n2, t, mode, T)
        assert torch.equal(high, w_high) and torch.equal(m1, w_m1) and torch.equal(m2, w_m2)
        assert high.any() and (m1.any() and m2.any())              # every branch is exercised
        assert not (high & (m1 | m2)).any() and not (m1 & m2).any()
        p1, p2 = l1.softmax(1), l2.softmax(1)
        mse = dcnet.mse_loss(l1, l2, m1, m2, T)
        ce = dcnet.ce_loss(l1, l2, p1, p2, high, torch.tensor(False), mode)
        assert float(mse.detach()) == pytest.approx(float(w_mse.detach()), rel=1e-10)
        assert float(ce.detach()) == pytest.approx(float(w_ce.detach()), rel=1e-10)
        # the direction: the same gradients as the loop's, whose teacher terms are detached one by one
        (mse + ce).backward()
        (w_mse + w_ce).backward()
        torch.testing.assert_close(l1.grad, n1.grad)
        torch.testing.assert_close(l2.grad, n2.grad)


def test_mse_pulls_only_the_less_confident_decoder():
    # 'pixel': where decoder 1 is surer and the pixel inconsistent, the MSE moves decoder 2 only, and back
    l1, l2 = _two_pixels(3.0, -0.2).requires_grad_(True), _two_pixels(-0.5, 2.0).requires_grad_(True)
    high, m1, m2 = dcnet.decouple(l1.detach().softmax(1), l2.detach().softmax(1), 0.6, "pixel")
    dcnet.mse_loss(l1, l2, m1, m2, 0.5).backward()
    assert (l1.grad[..., 0] == 0).all() and (l2.grad[..., 0] != 0).all()      # pixel 0: decoder 1 teaches
    assert (l2.grad[..., 1] == 0).all() and (l1.grad[..., 1] != 0).all()      # pixel 1: decoder 2 teaches
    # decoder 2 moves towards decoder 1 at pixel 0: its lesion margin grows (gradient descent)
    assert float(l2.grad[0, 1, 0, 0] - l2.grad[0, 0, 0, 0]) < 0


# ----------------------------------------------------------------------------------------------------------
# the network

def test_second_decoder_and_attention_gradient_path():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    extra = dcnet.build_extra(model, {"seg_encoder": "resnet18"})
    assert float(extra.threshold) == 0.5
    n_t = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in extra.decoder2.modules())
    assert n_t == 5
    bil = dcnet.build_extra(model, {"dcnet_decoder2_up": "bilinear"})
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in bil.decoder2.modules())
    with pytest.raises(ValueError):
        dcnet.build_extra(model, {"dcnet_decoder2_up": "nearest"})
    x = torch.randn(2, 3, S, S)
    l1, l2, enc, d1, d2 = dcnet.forward_two(model, extra, x)
    assert l1.shape == l2.shape == (2, 2, S, S)
    assert [f.shape[-1] for f in enc] == [f.shape[-1] for f in d2] == [S // 2, S // 4, S // 8, S // 16]
    torch.testing.assert_close(l1, model.forward_seg(x)["seg_logits"])       # decoder 1 is the model's U-Net
    dcnet.attention_loss(enc, d2).backward()                                 # only the encoder learns from it
    assert all(p.grad is None for p in extra.decoder2.parameters())
    assert all(p.grad is None for p in model.seg_decoder.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.seg_encoder.layer1.parameters()) > 0


# ----------------------------------------------------------------------------------------------------------
# 2 steps, finite, cps_step's statistics; state_dict round trip gives the identical next step

def _optimizers(model, extra):
    seg = model.seg_parameters() + [p for p in extra.parameters() if p.requires_grad]
    return (torch.optim.Adam(seg, lr=1e-3),
            torch.optim.SGD(model.cls_parameters(), lr=1e-3, momentum=0.9))


def _train_step(model, extra, opts, batches, it, total, cfg):
    loss, stats = dcnet.step(model, extra, *batches, it, total, cfg)
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
    return loss, stats


@pytest.mark.parametrize("mode", ["code", "pixel"])
def test_two_steps_finite_and_resume_exact(mode):
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    extra = dcnet.build_extra(model, {"seg_encoder": "resnet18"})
    cfg, total = _cfg(dcnet_decouple=mode), 10
    opts = _optimizers(model, extra)
    want_keys = set(hermes.STAT_KEYS) | {"n_kept_pix", "n_kept_img", "n_anchors", "bank_pix", "bank_img"}
    loss, stats = _train_step(model, extra, opts, _batches(0), 0, total, cfg)
    assert set(stats) == want_keys and torch.isfinite(loss)
    assert all(v.dim() == 0 and torch.isfinite(v) for k, v in stats.items() if not k.startswith("pl_acc_img"))
    assert float(stats["seg_u"]) > 0 and float(stats["seg_c"]) > 0
    # the threshold moved from 1/2 by a tenth of the way towards the lower mean confidence, and is logged
    assert 0.5 < float(extra.threshold) < 0.55 and float(stats["tau"]) == float(extra.threshold)
    snap = {"model": copy.deepcopy(model.state_dict()), "extra": copy.deepcopy(extra.state_dict()),
            "opts": [copy.deepcopy(o.state_dict()) for o in opts], "rng": torch.get_rng_state()}
    loss1, stats1 = _train_step(model, extra, opts, _batches(1), 1, total, cfg)
    assert torch.isfinite(loss1) and float(stats1["seg_u"]) > 0.0
    after = {k: v.clone() for k, v in extra.state_dict().items()}
    torch.manual_seed(123)          # fresh networks: only the files carry over
    model2 = HermesNet(seg_encoder="resnet18")
    extra2 = dcnet.build_extra(model2, {"seg_encoder": "resnet18"})
    model2.load_state_dict(snap["model"])
    extra2.load_state_dict(snap["extra"])
    opts2 = _optimizers(model2, extra2)
    for o, s in zip(opts2, snap["opts"]):
        o.load_state_dict(s)
    torch.set_rng_state(snap["rng"])
    loss2, stats2 = _train_step(model2, extra2, opts2, _batches(1), 1, total, cfg)
    assert float(loss2.detach()) == float(loss1.detach())
    for k in stats1:
        assert torch.equal(stats1[k], stats2[k]) or (stats1[k].isnan() and stats2[k].isnan()), k
    for k, v in extra2.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_burn_in_drops_the_unlabeled_terms_and_keeps_the_threshold():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    extra = dcnet.build_extra(model, {"seg_encoder": "resnet18"})
    _, stats = dcnet.step(model, extra, *_batches(0), 1, 10, _cfg(burn_in=2))
    assert float(stats["seg_u"]) == 0.0 and float(stats["seg_c"]) == 0.0 and float(stats["kept_pix"]) == 0.0
    assert float(extra.threshold) == 0.5 and float(stats["seg_l"]) > 0
