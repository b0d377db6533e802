"""The comparator plug-ins (comparators/): each method's losses against values worked by hand on tiny tensors,
its distinctive mechanism against a naive loop, a 2-step run (step + backward + optimizers + after_step) with
finite losses and cps_step's statistics, and a state_dict round trip that gives the identical next step."""
import copy
import importlib
import math
import types

import pytest
import torch

import hermes
from comparators import common
from models import HermesNet

METHODS = ("abd", "admt", "ssnet")
# run-test overrides: random networks are never 95 % sure, so AD-MT's threshold would leave no pixel
RUN_CFG = {"admt": {"admt_threshold": 0.0}}
S, B = 32, 2


def _cfg(mod, **kw):
    base = {name: default for name, default, *_ in mod.SETTINGS}
    base.update(lambda_seg=0.5, lambda_cls=1.0, burn_in=0, eta_max=0.75, eta_min=0.25)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, S, S, generator=g)
    y = (torch.rand(B, S, S, generator=g) > 0.6).long()
    x_w = torch.randn(B, 3, S, S, generator=g)
    y_gt = (torch.rand(B, S, S, generator=g) > 0.6).long()
    return (x, y, torch.tensor([0, 1])), (x_w, x_w + 0.2 * torch.randn(B, 3, S, S, generator=g), y_gt,
                                          torch.tensor([1, 0]))


# ----------------------------------------------------------------------------------------------------------
# shared pieces

def test_class_dice_loss_by_hand():
    # one image, 2 pixels; p_lesion = (0.8, 0.3), target (1, 0), weight (1, 1) then (1, 0)
    p1 = torch.tensor([0.8, 0.3], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1]).view(1, 2, 1, 2)
    t = torch.tensor([[[1, 0]]])
    e = 1e-5
    bg = 1 - (2 * (0.7 * 1) + e) / (0.2 ** 2 + 0.7 ** 2 + 1 + e)      # class 0: p = (0.2, 0.7), t = (0, 1)
    fg = 1 - (2 * (0.8 * 1) + e) / (0.8 ** 2 + 0.3 ** 2 + 1 + e)      # class 1: p = (0.8, 0.3), t = (1, 0)
    assert float(common.class_dice_loss(probs, t)) == pytest.approx((bg + fg) / 2, rel=1e-12)
    w = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    bg = 1 - e / (0.2 ** 2 + e)
    fg = 1 - (2 * 0.8 + e) / (0.8 ** 2 + 1 + e)
    assert float(common.class_dice_loss(probs, t, w)) == pytest.approx((bg + fg) / 2, rel=1e-12)


def test_sigmoid_rampup_and_ema_by_hand():
    assert common.sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert common.sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))
    assert common.sigmoid_rampup(20, 10) == 1.0 and common.sigmoid_rampup(3, 0) == 1.0


# ----------------------------------------------------------------------------------------------------------
# ABD

def test_abd_patch_confidence_and_kl_by_hand():
    from comparators import abd
    # 4x4 image, 2x2 grid of 2x2 patches; lesion probability per pixel
    p = torch.tensor([[0.9, 0.8, 0.5, 0.4],
                      [0.7, 0.6, 0.5, 0.5],
                      [0.1, 0.2, 0.3, 0.6],
                      [0.0, 0.3, 0.9, 0.9]], dtype=torch.float64)
    probs = torch.stack([1 - p, p]).unsqueeze(0)
    conf = abd.patch_confidence(probs, 2)[0]
    want = [(0.9 + 0.8 + 0.7 + 0.6) / 4, (0.5 + 0.6 + 0.5 + 0.5) / 4, (0.9 + 0.8 + 1.0 + 0.7) / 4,
            (0.7 + 0.6 + 0.9 + 0.9) / 4]                             # max(p, 1-p) per pixel, mean per patch
    torch.testing.assert_close(conf, torch.tensor(want, dtype=torch.float64))
    # KL(softmax(a) || softmax(b)) for a = (0, 1), b = (0, -1)
    pa = [1 / (1 + math.e), math.e / (1 + math.e)]
    pb = [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))]
    want = sum(u * math.log(u / v) for u, v in zip(pa, pb))
    f64 = torch.float64
    got = abd.patch_kl(torch.tensor([0.0, 1.0], dtype=f64), torch.tensor([0.0, -1.0], dtype=f64))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_abd_cross_teaching_loss_is_its_equation():
    from comparators import abd
    torch.manual_seed(0)
    a, b = torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    dice = common.class_dice_loss
    want = dice(a.softmax(1), b.argmax(1)) + dice(b.softmax(1), a.argmax(1))
    assert float(abd.cross_teaching_loss(a, b)) == pytest.approx(float(want), rel=1e-12)
    a.requires_grad_(True)
    abd.cross_teaching_loss(a, b).backward()   # no gradient through the pseudo-labels
    a2 = a.detach().clone().requires_grad_(True)
    common.class_dice_loss(a2.softmax(1), b.argmax(1)).backward()
    torch.testing.assert_close(a.grad, a2.grad)


def _naive_patch_stats(logits, g):
    """Per image: list of (confidence, mean logits) per patch, by loops over the grid."""
    Bn, C, H, _ = logits.shape
    P = H // g
    out = []
    for i in range(Bn):
        prob = logits[i].softmax(0)
        rows = []
        for r in range(g):
            for c in range(g):
                sl = (slice(r * P, (r + 1) * P), slice(c * P, (c + 1) * P))
                conf = float(prob[(slice(None),) + sl].max(0).values.mean())
                mean = [float(logits[i, k][sl].mean()) for k in range(C)]
                rows.append((conf, mean))
        out.append(rows)
    return out


def _kl(p, q):
    sp = [math.exp(v) / sum(math.exp(u) for u in p) for v in p]
    sq = [math.exp(v) / sum(math.exp(u) for u in q) for v in q]
    return sum(a * math.log(a / b) for a, b in zip(sp, sq))


def _put(img, n, src, m, g):
    P = img.shape[-1] // g
    r, c, rs, cs = n // g, n % g, m // g, m % g
    img[..., r * P:(r + 1) * P, c * P:(c + 1) * P] = src[..., rs * P:(rs + 1) * P, cs * P:(cs + 1) * P]


def test_abd_r_displaces_exactly_the_patches_its_rule_picks_both_ways():
    from comparators import abd
    torch.manual_seed(1)
    g, k, Bn = 4, 3, 3
    x1, x2 = torch.randn(Bn, 3, 16, 16), torch.randn(Bn, 3, 16, 16)
    l1, l2 = 2 * torch.randn(Bn, 2, 16, 16), 2 * torch.randn(Bn, 2, 16, 16)
    got1, got2 = abd.abd_r(x1, x2, l1, l2, g, k)
    s1, s2 = _naive_patch_stats(l1, g), _naive_patch_stats(l2, g)
    for i in range(Bn):
        conf1, conf2 = [c for c, _ in s1[i]], [c for c, _ in s2[i]]
        b, d = conf1.index(min(conf1)), conf2.index(min(conf2))
        top1 = sorted(range(g * g), key=lambda n: -conf1[n])[:k]
        top2 = sorted(range(g * g), key=lambda n: -conf2[n])[:k]
        c = min(top2, key=lambda n: _kl(s1[i][b][1], s2[i][n][1]))   # into view 1 at b
        a = min(top1, key=lambda n: _kl(s2[i][d][1], s1[i][n][1]))   # into view 2 at d
        want1, want2 = x1[i].clone(), x2[i].clone()
        _put(want1, b, x2[i], c, g)
        _put(want2, d, x1[i], a, g)
        assert torch.equal(got1[i], want1) and torch.equal(got2[i], want2)
        # exactly one patch changed per view (the least confident one), and it came from the other view
        assert (got1[i] != x1[i]).any() and (got2[i] != x2[i]).any()
        assert int(((got1[i] != x1[i]).any(0)).sum()) == (16 // g) ** 2


def test_abd_i_inverse_confidence_moves_images_and_labels():
    from comparators import abd
    torch.manual_seed(2)
    g, Bn = 4, 3
    x1, x2 = torch.randn(Bn, 3, 16, 16), torch.randn(Bn, 3, 16, 16)
    y1 = (torch.rand(Bn, 16, 16) > 0.5).long()
    y2 = (torch.rand(Bn, 16, 16) > 0.5).long()
    l1, l2 = 2 * torch.randn(Bn, 2, 16, 16), 2 * torch.randn(Bn, 2, 16, 16)
    apply = torch.tensor([True, False, True])
    gx1, gx2, gy1, gy2 = abd.abd_i(x1, x2, y1, y2, l1, l2, g, apply)
    s1, s2 = _naive_patch_stats(l1, g), _naive_patch_stats(l2, g)
    for i in range(Bn):
        want = [x1[i].clone(), x2[i].clone(), y1[i].clone(), y2[i].clone()]
        if apply[i]:
            conf1, conf2 = [c for c, _ in s1[i]], [c for c, _ in s2[i]]
            e, f = conf1.index(max(conf1)), conf1.index(min(conf1))
            gg, h = conf2.index(max(conf2)), conf2.index(min(conf2))
            _put(want[0], e, x2[i], h, g)          # view 1's most confident <- view 2's least confident
            _put(want[1], gg, x1[i], f, g)         # view 2's most confident <- view 1's least confident
            _put(want[2], e, y2[i], h, g)
            _put(want[3], gg, y1[i], f, g)
        for got, w in zip((gx1, gx2, gy1, gy2), want):
            assert torch.equal(got[i], w)


# ----------------------------------------------------------------------------------------------------------
# AD-MT

def test_admt_ensemble_compromise_and_loss_by_hand():
    from comparators import admt
    p1 = torch.tensor([0.9, 0.4], dtype=torch.float64).view(1, 1, 1, 2)
    p2 = torch.tensor([0.3, 0.2], dtype=torch.float64).view(1, 1, 1, 2)
    P1, P2 = torch.cat([1 - p1, p1], 1), torch.cat([1 - p2, p2], 1)          # (1,2,1,2)
    torch.testing.assert_close(admt.ensemble(P1, P2, "mean"), (P1 + P2) / 2)
    H = lambda q: -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
    w1, w2 = math.exp(-H(0.9)), math.exp(-H(0.3))
    fg = (w1 * 0.9 + w2 * 0.3) / (w1 + w2)                                     # pixel 0, lesion channel
    assert float(admt.ensemble(P1, P2, "entropy")[0, 1, 0, 0]) == pytest.approx(fg, rel=1e-9)
    # compromise: pixel 0 teachers disagree, student disagrees with the ensemble and is surer -> student's
    pl_t, conf_t = torch.tensor([[[1, 0, 1]]]), torch.tensor([[[0.6, 0.7, 0.6]]], dtype=torch.float64)
    pl_s, conf_s = torch.tensor([[[0, 1, 0]]]), torch.tensor([[[0.9, 0.9, 0.5]]], dtype=torch.float64)
    dis = torch.tensor([[[True, False, True]]])
    pl, conf = admt.compromise(pl_t, conf_t, pl_s, conf_s, dis)
    assert pl.tolist() == [[[0, 0, 1]]] and conf.tolist() == [[[0.9, 0.7, 0.6]]]
    # the unlabeled Dice counts only the pixels with conf >= τ
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[1.0, -1.0, 2.0]]]], dtype=torch.float64)
    got = admt.unlabeled_loss(logits, torch.tensor([[[1, 0, 0]]]), torch.tensor([[[0.96, 0.5, 0.99]]]), 0.95)
    want = common.class_dice_loss(logits[..., [0, 2]].softmax(1), torch.tensor([[[1, 0]]]))
    assert float(got) == pytest.approx(float(want), rel=1e-12)


def test_admt_cutmix_against_a_loop():
    from comparators import admt
    torch.manual_seed(3)
    x = torch.randn(3, 3, 16, 16)
    lab = torch.randint(0, 2, (3, 16, 16))
    perm = torch.tensor([2, 0, 1])
    boxes = admt.rand_boxes(3, 16)
    gx, gl = admt.cutmix([x, lab], perm, boxes)
    for i in range(3):
        wx, wl = x[i].clone(), lab[i].clone()
        x1, y1, x2, y2 = (int(v[i]) for v in boxes)
        wx[:, x1:x2, y1:y2] = x[perm[i], :, x1:x2, y1:y2]
        wl[x1:x2, y1:y2] = lab[perm[i], x1:x2, y1:y2]
        assert torch.equal(gx[i], wx) and torch.equal(gl[i], wl)


def test_admt_teachers_alternate_on_their_schedule_and_update_as_emas():
    from comparators import admt
    torch.manual_seed(4)
    model = HermesNet(seg_encoder="resnet18")
    extra = admt.build_extra(model, {"seg_encoder": "resnet18"})
    cfg = _cfg(admt, admt_period=4, admt_ema_copy=0)
    extra.flag.fill_(True), extra.counter.zero_(), extra.period.fill_(2)
    # the naive clock: count steps, switch at the end of each period, draw the next ~ U{1..4}
    torch.manual_seed(5)
    flag, counter, period, active = True, 0, 2, []
    for _ in range(40):
        active.append(1 if flag else 2)
        counter += 1
        if counter >= period:
            flag, counter, period = not flag, 0, int(torch.randint(1, 5, ()))
    torch.manual_seed(5)
    runs, got = [], []
    p = next(model.seg_decoder.parameters())
    for it in range(40):
        got.append(1 if bool(extra.flag) else 2)
        t1, t2 = (next(t.decoder.parameters()).detach().clone() for t in (extra.teacher1, extra.teacher2))
        with torch.no_grad():
            p.add_(0.01)                                   # the student moves
        admt.after_step(model, extra, it + 100, 1000, cfg)
        a = admt.ema_alpha(it + 100, cfg)
        n1, n2 = (next(t.decoder.parameters()).detach() for t in (extra.teacher1, extra.teacher2))
        moved, still = (n1, n2) if got[-1] == 1 else (n2, n1)
        old_moved, old_still = (t1, t2) if got[-1] == 1 else (t2, t1)
        torch.testing.assert_close(moved, a * old_moved + (1 - a) * p.detach())
        assert torch.equal(still, old_still)
    assert got == active
    # every period lasts 1..4 steps and both teachers take turns
    for v in got:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    assert all(1 <= n <= 4 for _, n in runs[1:-1]) and len(runs) >= 8
    assert admt.ema_alpha(10, _cfg(admt)) == 0.0                       # the code's copy phase
    assert admt.ema_alpha(2 * 60, _cfg(admt)) == pytest.approx(1 - 1 / 11)
    assert admt.ema_alpha(10 ** 6, _cfg(admt)) == 0.99


# ----------------------------------------------------------------------------------------------------------
# SS-Net

def test_ssnet_soft_dice_by_hand():
    from comparators import ssnet
    p = torch.tensor([0.8, 0.3], dtype=torch.float64)
    q = torch.tensor([0.6, 0.1], dtype=torch.float64)
    P, Q = torch.stack([1 - p, p]).view(1, 2, 1, 2), torch.stack([1 - q, q]).view(1, 2, 1, 2)
    bg = 1 - 2 * (0.2 * 0.4 + 0.7 * 0.9) / (0.2 ** 2 + 0.7 ** 2 + 0.4 ** 2 + 0.9 ** 2)
    fg = 1 - 2 * (0.8 * 0.6 + 0.3 * 0.1) / (0.8 ** 2 + 0.3 ** 2 + 0.6 ** 2 + 0.1 ** 2)
    assert float(ssnet.soft_dice(P, Q)) == pytest.approx((bg + fg) / 2, rel=1e-9)


def test_ssnet_perturbation_is_the_normalised_gradient_of_the_distance():
    from comparators import ssnet
    torch.manual_seed(6)
    net = torch.nn.Conv2d(3, 2, 3, padding=1).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        p = net(x).softmax(1)
    xi = 0.5
    torch.manual_seed(7)
    d = ssnet.adversarial_direction(net, x, p, xi)
    torch.manual_seed(7)
    d0 = ssnet.l2_normalize(torch.rand(x.shape, dtype=torch.float64) - 0.5)
    dist = lambda dd: float(ssnet.soft_dice(net(x + xi * dd).softmax(1), p))
    g = torch.zeros_like(d0)
    h = 1e-6
    with torch.no_grad():
        for idx in range(d0.numel()):           # central differences, one coordinate at a time
            e = torch.zeros(d0.numel(), dtype=torch.float64)
            e[idx] = h
            e = e.view_as(d0)
            g.view(-1)[idx] = (dist(d0 + e) - dist(d0 - e)) / (2 * h)
    want = g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)
    torch.testing.assert_close(d, want, rtol=1e-4, atol=1e-6)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64), atol=1e-3)
    assert all(p_.grad is None for p_ in net.parameters())           # only the input was differentiated


def test_ssnet_prototypes_and_class_separation_against_loops():
    from comparators import ssnet
    torch.manual_seed(8)
    extra = ssnet.SSNetHeads(16, 8, memory=3).double()
    feats = torch.randn(7, 8, dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 1, 1, 0, 1])
    ssnet.update_memory(extra, feats, labels)
    rank = lambda head, t: float(head(t).detach())
    fg = [i for i in range(7) if labels[i] == 1]
    score = {i: rank(extra.rank_feature[1], feats[i:i + 1]) for i in fg}
    keep = sorted(fg, key=lambda i: -score[i])[:3]
    assert int(extra.filled[1]) == 3 and int(extra.filled[0]) == 0    # no background prototypes
    assert {tuple(r.tolist()) for r in extra.memory[1]} == {tuple(feats[i].tolist()) for i in keep}
    # the loss: class 1 only (class 0 has no prototypes)
    q = torch.randn(5, 8, dtype=torch.float64)
    ql = torch.tensor([1, 1, 0, 1, 0])
    got = float(ssnet.class_separation_loss(extra, q, ql).detach())
    mem = extra.memory[1]
    rows = [i for i in range(5) if ql[i] == 1]
    sig = lambda t: 1 / (1 + math.exp(-t))
    w = [sig(rank(extra.rank_feature[1], q[i:i + 1])) for i in rows]
    v = [sig(rank(extra.rank_memory[1], mem[j:j + 1])) for j in range(3)]
    w = [u * len(w) / sum(w) for u in w]
    v = [u * len(v) / sum(v) for u in v]
    tot = 0.0
    for a, i in enumerate(rows):
        for j in range(3):
            cos = float(torch.dot(q[i], mem[j]) / (q[i].norm() * mem[j].norm()))
            tot += w[a] * v[j] * (1 - cos)
    assert got == pytest.approx(tot / (len(rows) * 3) / 2, rel=1e-9)


# ----------------------------------------------------------------------------------------------------------
# every method: 2 steps, finite, cps_step's statistics; state_dict round trip gives the identical next step

def _optimizers(model, extra):
    seg = model.seg_parameters() + ([p for p in extra.parameters() if p.requires_grad] if extra else [])
    return (torch.optim.Adam(seg, lr=1e-3),
            torch.optim.SGD(model.cls_parameters(), lr=1e-3, momentum=0.9))


def _train_step(mod, model, extra, opts, batches, it, total, cfg):
    loss, stats = mod.step(model, extra, *batches, it, total, cfg)
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
    if hasattr(mod, "after_step"):
        mod.after_step(model, extra, it, total, cfg)
    return loss, stats


@pytest.mark.parametrize("name", METHODS)
def test_two_steps_finite_and_resume_exact(name):
    mod = importlib.import_module(f"comparators.{name}")
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    extra = mod.build_extra(model, {"seg_encoder": "resnet18"})
    cfg, total = _cfg(mod, **RUN_CFG.get(name, {})), 10
    opts = _optimizers(model, extra)
    want_keys = set(hermes.STAT_KEYS) | {"n_kept_pix", "n_kept_img", "n_anchors", "bank_pix", "bank_img"}
    loss, stats = _train_step(mod, model, extra, opts, _batches(0), 0, total, cfg)
    assert set(stats) == want_keys and torch.isfinite(loss)
    assert all(v.dim() == 0 for v in stats.values())
    # snapshot after step 0 (a killed run's checkpoint), then step 1 twice: on, and from the snapshot
    snap = {"model": copy.deepcopy(model.state_dict()), "extra": copy.deepcopy(extra.state_dict()),
            "opts": [copy.deepcopy(o.state_dict()) for o in opts], "rng": torch.get_rng_state()}
    loss1, stats1 = _train_step(mod, model, extra, opts, _batches(1), 1, total, cfg)
    assert torch.isfinite(loss1) and float(stats1["seg_u"]) > 0.0
    after = {k: v.clone() for k, v in extra.state_dict().items()}
    torch.manual_seed(123)          # fresh networks: only the files carry over
    model2 = HermesNet(seg_encoder="resnet18")
    extra2 = mod.build_extra(model2, {"seg_encoder": "resnet18"})
    model2.load_state_dict(snap["model"])
    extra2.load_state_dict(snap["extra"])
    opts2 = _optimizers(model2, extra2)
    for o, s in zip(opts2, snap["opts"]):
        o.load_state_dict(s)
    torch.set_rng_state(snap["rng"])
    loss2, stats2 = _train_step(mod, model2, extra2, opts2, _batches(1), 1, total, cfg)
    assert float(loss2.detach()) == float(loss1.detach())
    for k in stats1:
        assert torch.equal(stats1[k], stats2[k]) or (stats1[k].isnan() and stats2[k].isnan()), k
    for k, v in extra2.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("name", METHODS)
def test_burn_in_drops_the_unlabeled_term(name):
    mod = importlib.import_module(f"comparators.{name}")
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    extra = mod.build_extra(model, {"seg_encoder": "resnet18"})
    _, stats = mod.step(model, extra, *_batches(0), 1, 10, _cfg(mod, burn_in=2))
    assert float(stats["seg_u"]) == 0.0 and float(stats["kept_pix"]) == 0.0
