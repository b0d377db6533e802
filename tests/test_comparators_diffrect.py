"""DiffRect (comparators/diffrect.py): its losses against values worked by hand on tiny tensors, its LCC (semantic
colouring, calibration guidance) and LFR (cosine schedule, forward noising, the detached x0 target, DDIM
sampling) against naive loops, each network trained only by its own terms, a 2-step run with finite losses and
cps_step's statistics, a state_dict round trip that gives the identical next step, and the burn-in."""
import copy
import math

import pytest
import torch

import hermes
from comparators import diffrect as dr
from models import HermesNet
from tests.test_comparators_seg import _batches, _cfg as _seg_cfg  # the shared tiny inputs

S, B = 32, 2
F64 = torch.float64


def _cfg(**kw):
    return _seg_cfg(dr, **kw)


def _probs(lesion):
    p = torch.tensor(lesion, dtype=F64).view(1, 1, 1, -1)
    return torch.cat([1 - p, p], 1)                                   # (1,2,1,N)


# ----------------------------------------------------------------------------------------------------------
# losses by hand

def test_pseudo_labels_threshold_the_min_max_normalised_probabilities():
    # (p_max - p_min) / p_max > 0.8 <=> p_max > 1/1.2; below it the pixel is labeled background (0)
    pl, kept = dr.pseudo_label(_probs([0.9, 0.84, 0.83, 0.5, 0.1, 0.17]), 0.8)
    assert pl.tolist() == [[[1, 1, 0, 0, 0, 0]]]
    assert kept.tolist() == [[[True, True, False, False, True, False]]]


def test_label_and_complementary_losses_by_hand():
    # label loss: CE + SSL4MIS Dice; logits (0, 1) and (0, -1) at two pixels, labels (1, 0)
    logits = torch.tensor([[[[0.0, 0.0]], [[1.0, -1.0]]]], dtype=F64)
    p = 1 / (1 + math.exp(-1))                                        # lesion prob. at pixel 0; 1 - p at 1
    ce = -(math.log(p) + math.log(p)) / 2
    e = 1e-5
    bg = 1 - (2 * p + e) / ((1 - p) ** 2 + p ** 2 + 1 + e)           # class 0: probs (1-p, p), target (0, 1)
    fg = 1 - (2 * p + e) / (p ** 2 + (1 - p) ** 2 + 1 + e)           # class 1: probs (p, 1-p), target (1, 0)
    got = dr.label_loss(logits, torch.tensor([[[1, 0]]]))
    assert float(got) == pytest.approx(ce + (bg + fg) / 2, rel=1e-12)
    # complementary: strong lesion probs (0.8, 0.3), weak (0.6, 0.1) -> least likely classes (0, 1)
    ps, pw = _probs([0.8, 0.3]), _probs([0.6, 0.1])
    H = lambda a, b: -(a / (a + b) * math.log(a / (a + b)) + b / (a + b) * math.log(b / (a + b)))
    w_as = ((1 - H(0.2, 0.7) / math.log(2)) + (1 - H(0.8, 0.3) / math.log(2))) / 2
    ce0 = -math.log(math.exp(0.8) / (math.exp(0.8) + math.exp(0.2)))      # logits 1 - p = (0.8, 0.2), label 0
    ce1 = -math.log(math.exp(0.7) / (math.exp(0.3) + math.exp(0.7)))      # logits (0.3, 0.7), label 1
    comp, w = dr.complementary_loss(pw, ps)
    assert float(w) == pytest.approx(w_as, rel=1e-12)
    assert float(comp) == pytest.approx(w_as * (ce0 + ce1) / 2, rel=1e-12)


def test_calibration_guidance_and_semantic_coloring_by_hand():
    pl, ref = torch.tensor([[[1, 1, 0, 0]]]), torch.tensor([[[1, 0, 0, 0]]])
    e = 1e-5
    fg = 1 - (2 * 1 + e) / (2 + 1 + e)                                # a = (1,1,0,0), b = (1,0,0,0)
    bg = 1 - (2 * 2 + e) / (2 + 3 + e)                                # a = (0,0,1,1), b = (0,1,1,1)
    assert float(dr.calibration_guidance(pl, ref)) == pytest.approx((fg + bg) / 2, rel=1e-6)
    assert float(dr.calibration_guidance(ref, ref)) == pytest.approx(0.0, abs=1e-6)
    col = dr.semantic_coloring(pl)
    assert col.shape == (1, 3, 1, 4) and col[0, :, 0].tolist() == [[1, 1, 0, 0]] * 3   # black / white


# ----------------------------------------------------------------------------------------------------------
# LCC and LFR against naive loops

def test_lcc_coloring_and_guidance_against_loops():
    torch.manual_seed(1)
    a, b = torch.randint(0, 2, (3, 5, 6)), torch.randint(0, 2, (3, 5, 6))
    colors = ((10, 20, 30), (200, 100, 0))
    col = dr.semantic_coloring(a, colors)
    for i in range(3):
        for r in range(5):
            for c in range(6):
                want = [v / 255 for v in colors[int(a[i, r, c])]]
                assert col[i, :, r, c].tolist() == pytest.approx(want)
    terms = []
    for k in range(2):
        inter = sa = sb = 0
        for i, r, c in ((i, r, c) for i in range(3) for r in range(5) for c in range(6)):
            u, v = int(a[i, r, c] == k), int(b[i, r, c] == k)
            inter, sa, sb = inter + u * v, sa + u * u, sb + v * v
        terms.append(1 - (2 * inter + 1e-5) / (sa + sb + 1e-5))
    assert float(dr.calibration_guidance(a, b)) == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_cosine_schedule_and_forward_noising_against_loops():
    T = 10
    abar = dr.cosine_alphas_cumprod(T)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    prod = 1.0
    for i in range(T):
        prod *= 1 - min(1 - f((i + 1) / T) / f(i / T), 0.999)
        assert float(abar[i]) == pytest.approx(prod, rel=1e-12)
    torch.manual_seed(2)
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 3, 9, 5])
    got = dr.q_sample(x0, t, noise, abar)
    for i in range(4):
        a = float(abar[int(t[i])])
        for idx in range(12):
            want = math.sqrt(a) * x0[i].flatten()[idx] + math.sqrt(1 - a) * noise[i].flatten()[idx]
            assert float(got[i].flatten()[idx]) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    assert dr.sampling_steps(10, 2) == [0, 9] and dr.sampling_steps(10, 1) == [0]
    assert dr.sampling_steps(10, 10) == list(range(10)) and dr.sampling_steps(10, 4) == [0, 3, 6, 9]


def test_ddim_sampler_against_a_loop():
    abar = dr.cosine_alphas_cumprod(10)
    steps = [0, 4, 9]
    denoise = lambda x, t: 0.5 * x + 0.1 * t.view(-1, 1).to(x.dtype) - 0.3     # any x0-predictor
    noise = torch.tensor([[1.5, -0.2], [0.3, 2.5]], dtype=F64)
    got = dr.ddim_sample(denoise, noise, abar, steps)
    for row in range(2):
        x = [float(v) for v in noise[row]]
        for j in (2, 1, 0):
            s = steps[j]
            x0 = [min(max(0.5 * v + 0.1 * s - 0.3, -1.0), 1.0) for v in x]   # clipped to [-1, 1]
            a, ap = float(abar[s]), float(abar[steps[j - 1]]) if j else 1.0
            eps = [(v / math.sqrt(a) - u) / math.sqrt(1 / a - 1) for v, u in zip(x, x0)]
            x = [u * math.sqrt(ap) + math.sqrt(1 - ap) * ee for u, ee in zip(x0, eps)]
        assert got[row].tolist() == pytest.approx(x0, rel=1e-12)


def _rectifier():
    torch.manual_seed(3)
    net = dr.Rectifier(width=4).double().eval()        # eval: no dropout, BN by running statistics
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, 3, 32, 32, generator=g, dtype=F64)
    lab_in = torch.randint(0, 2, (2, 32, 32), generator=g)
    lab_tg = torch.randint(0, 2, (2, 32, 32), generator=g)
    return net, img, dr.semantic_coloring(lab_in).double(), dr.semantic_coloring(lab_tg).double()


def test_rectifier_denoises_the_detached_latent_of_the_better_labels():
    net, img, c_in, c_tg = _rectifier()
    tau = torch.tensor(0.3)
    torch.manual_seed(5)
    logits, lat = net.forward_train(img, c_in, c_tg, tau)
    lat.backward()
    got_grad = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    # by hand: τ -> t = 999 τ -> embedding; x0 = the target labels' latent (no gradient); t ~ U{0..9}, then ε
    emb = net.guidance(torch.full((2,), 0.3 * 999.0))
    inj = net.embedder(img, emb)
    feats = net.encoder(torch.cat([img, c_in], 1), emb, inj)
    x0 = net.encoder(torch.cat([img, c_tg], 1), emb, inj)[-1].detach()
    assert x0.shape == (2, 32, 4, 4)                                  # 8 · width channels at 1/8 of the side
    torch.manual_seed(5)
    t = torch.randint(0, 10, (2,))
    noise = torch.randn(x0.shape, dtype=torch.float32).double()
    abar = dr.cosine_alphas_cumprod(10).float().double()
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise                      # forward noising of the target latent
    pred = net.denoiser(x_t, t, feats[-1])
    want_lat = ((pred - x0) ** 2).mean()                              # the x0-prediction target
    torch.testing.assert_close(lat, want_lat)
    torch.testing.assert_close(logits, net.decoder(feats[:-1] + [pred], emb))   # the latent replaced
    want_lat.backward()
    for n, p in net.named_parameters():
        if n in got_grad:
            torch.testing.assert_close(got_grad[n], p.grad, msg=n)
        else:
            assert p.grad is None or not p.grad.any(), n
    # the target enters only as a value: the guidance/embedding layers get gradient through the input path
    assert any(n.startswith("denoiser.") for n in got_grad) and any(n.startswith("encoder.") for n in got_grad)


def test_rectifier_samples_from_noise_by_ddim_conditioned_on_the_input_latent():
    net, img, c_in, _ = _rectifier()
    with torch.no_grad():
        torch.manual_seed(6)
        got = net.sample(img, c_in, torch.tensor(0.5))
        emb = net.guidance(torch.full((2,), 0.5 * 999.0))
        feats = net.encoder(torch.cat([img, c_in], 1), emb, net.embedder(img, emb))
        torch.manual_seed(6)
        x = torch.randn(feats[-1].shape, dtype=torch.float32).double()
        abar = dr.cosine_alphas_cumprod(10).float()
        for j in (1, 0):                                              # kept steps [0, 9]
            s = [0, 9][j]
            x0 = net.denoiser(x, torch.full((2,), s), feats[-1]).clamp(-1, 1)
            a, ap = float(abar[s]), (float(abar[0]) if j else 1.0)
            x = x0 * math.sqrt(ap) + math.sqrt(1 - ap) * (x / math.sqrt(a) - x0) / math.sqrt(1 / a - 1)
        torch.testing.assert_close(got, net.decoder(feats[:-1] + [x0], emb))


# ----------------------------------------------------------------------------------------------------------
# the step

def _setup():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    return model, dr.build_extra(model, {"seg_encoder": "resnet18"})


def test_each_network_learns_only_from_its_own_terms():
    model, extra = _setup()
    L, info = dr.losses(model, extra, *_batches(0), 1, 10, _cfg())
    assert info["pl"].shape == (B, S, S) and all(torch.isfinite(v) for v in L.values() if torch.is_tensor(v))
    L["seg_c"].backward(retain_graph=True)                           # the rectifier's loss
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in extra.parameters())
    extra.zero_grad(set_to_none=True)
    (L["seg_l"] + L["seg_u"]).backward()                             # the segmentation network's
    assert all(p.grad is None for p in extra.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.seg_parameters())


def _optimizers(model, extra):
    return (torch.optim.Adam(model.seg_parameters() + list(extra.parameters()), lr=1e-3),
            torch.optim.SGD(model.cls_parameters(), lr=1e-3, momentum=0.9))


def _train_step(model, extra, opts, batches, it, total, cfg):
    loss, stats = dr.step(model, extra, *batches, it, total, cfg)
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
    return loss, stats


def test_two_steps_finite_and_resume_exact():
    model, extra = _setup()
    cfg, total = _cfg(), 10                       # rectification from step 1 (> 1/30 of 10)
    opts = _optimizers(model, extra)
    want_keys = set(hermes.STAT_KEYS) | {"n_kept_pix", "n_kept_img", "n_anchors", "bank_pix", "bank_img"}
    loss, stats = _train_step(model, extra, opts, _batches(0), 0, total, cfg)
    assert set(stats) == want_keys and torch.isfinite(loss) and all(v.dim() == 0 for v in stats.values())
    want = 0.5 * (stats["seg_l"] + stats["seg_u"] + stats["seg_c"]) + stats["cls_l"]
    assert float(stats["loss"]) == pytest.approx(float(want), rel=1e-5)
    snap = {"model": copy.deepcopy(model.state_dict()), "extra": copy.deepcopy(extra.state_dict()),
            "opts": [copy.deepcopy(o.state_dict()) for o in opts], "rng": torch.get_rng_state()}
    loss1, stats1 = _train_step(model, extra, opts, _batches(1), 1, total, cfg)
    assert torch.isfinite(loss1) and float(stats1["seg_u"]) > 0.0 and float(stats1["seg_c"]) > 0.0
    after = {k: v.clone() for k, v in extra.state_dict().items()}
    torch.manual_seed(123)                        # fresh networks: only the files carry over
    model2 = HermesNet(seg_encoder="resnet18")
    extra2 = dr.build_extra(model2, {"seg_encoder": "resnet18"})
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


def test_burn_in_uses_no_unlabeled_image_and_warms_the_rectifier():
    model, extra = _setup()
    bl, (x_w, x_s, y_gt, z_gt) = _batches(0)
    nan = torch.full_like(x_w, float("nan"))                          # never read during the burn-in
    loss, stats = dr.step(model, extra, bl, (nan, nan, y_gt, z_gt), 1, 10, _cfg(burn_in=2))
    assert torch.isfinite(loss) and float(stats["seg_u"]) == 0.0 and float(stats["kept_pix"]) == 0.0
    assert float(stats["seg_c"]) > 0.0                                # transport 1 on the labeled images
    assert not dr.rectifies(1, 10, _cfg(burn_in=2)) and dr.rectifies(2, 10, _cfg(burn_in=2))
    assert not dr.rectifies(0, 30000, _cfg()) and dr.rectifies(1001, 30000, _cfg())   # refine_start 1000
