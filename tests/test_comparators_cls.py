"""The classification comparators of Table 2 (comparators/shrinkmatch.py, pefat.py, interlude.py,
infomatch.py): each loss by hand on tiny tensors, each method's distinctive mechanism against a naive loop, a
2-step run of step() + backward (+ after_step) on a tiny HermesNet, and an exact next step after a state_dict
round-trip."""
import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F

import hermes
from comparators import cls_common
from models import HermesNet

STAT_KEYS = set(hermes.PARTS) | set(hermes.PL_STAT_KEYS) | {
    "n_kept_pix", "n_kept_img", "loss", "kappa", "tau", "n_anchors", "bank_pix", "bank_img"}


def settings_cfg(module, **over):
    base = {name: default for name, default, _help, _src in module.SETTINGS}
    base.update(lambda_seg=0.5, lambda_cls=1.0, burn_in=0)
    base.update(over)
    return types.SimpleNamespace(**base)


def tiny_batches(seed, B=2, S=32, z_gt=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, S, S, generator=g)
    y = (torch.rand(B, S, S, generator=g) > 0.7).long()
    z = torch.arange(B) % 2
    x_w = torch.randn(B, 3, S, S, generator=g)
    x_s = x_w + 0.3 * torch.randn(B, 3, S, S, generator=g)
    zg = (1 - z) if z_gt is None else z_gt
    return (x, y, z), (x_w, x_s, (torch.rand(B, S, S, generator=g) > 0.7).long(), zg)


def run_two_steps_and_resume(module, **over):
    """Two steps with backward and optimizers (SGD for the classification branch and extra, Adam for seg),
    then the state after step 0 restored into fresh objects: step 1 again must give the same loss and
    statistics."""
    torch.manual_seed(0)
    cfg = settings_cfg(module, **over)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    extra = module.build_extra(model, vars(cfg))
    extra_params = list(extra.parameters()) if extra is not None else []
    opt_c = torch.optim.SGD(model.cls_parameters() + extra_params, lr=0.01, momentum=0.9)
    opt_s = torch.optim.Adam(model.seg_parameters(), lr=1e-3)
    model.train()
    if extra is not None:
        extra.train()
    snapshot = None
    results = []
    for it in range(2):
        if it == 1:
            snapshot = (copy.deepcopy(model.state_dict()),
                        copy.deepcopy(extra.state_dict()) if extra is not None else None,
                        torch.get_rng_state())
        batch_l, batch_u = tiny_batches(it)
        loss, stats = module.step(model, extra, batch_l, batch_u, it, 10, cfg)
        assert set(stats) == STAT_KEYS
        assert torch.isfinite(loss)
        opt_c.zero_grad()
        opt_s.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.cls_net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt_c.step()
        opt_s.step()
        if hasattr(module, "after_step"):
            module.after_step(model, extra, it, 10, cfg)
        results.append((float(loss.detach()), {k: float(v) for k, v in stats.items()}))
    # resume from the state before step 1
    torch.manual_seed(123)                     # a different RNG state until restored
    model2 = HermesNet(seg_encoder="resnet18", ias=False)
    model2.load_state_dict(snapshot[0])
    extra2 = module.build_extra(model2, vars(cfg))
    if extra2 is not None:
        extra2.load_state_dict(snapshot[1])
        extra2.train()
    model2.train()
    torch.set_rng_state(snapshot[2])
    batch_l, batch_u = tiny_batches(1)
    loss2, stats2 = module.step(model2, extra2, batch_l, batch_u, 1, 10, cfg)
    assert float(loss2.detach()) == results[1][0]
    for k, v in stats2.items():
        a, b = float(v), results[1][1][k]
        assert (a == b) or (math.isnan(a) and math.isnan(b)), k
    return results, model, extra


def test_cls_forward_is_forward_cls_without_ita():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False).eval()
    x = torch.randn(2, 3, 32, 32)
    f, logits = cls_common.cls_forward(model, x)
    assert f.shape == (2, 512)
    torch.testing.assert_close(logits, model.forward_cls(x)["cls_logits"])
    # the mixing hook sees the layer3 map
    seen = []
    cls_common.cls_forward(model, x, mix=lambda h: seen.append(h.shape) or h)
    assert seen == [torch.Size([2, 256, 2, 2])]


def test_img_pl_stats_by_hand_and_without_ground_truth():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    pl = probs.argmax(1)                                          # 0, 1, 1
    w = torch.tensor([1.0, 0.0, 1.0])
    s = cls_common.img_pl_stats(probs, pl, w, torch.tensor([0, 0, -1]), tau=0.85)
    assert float(s["kept_img"]) == pytest.approx(2 / 3)
    assert float(s["pl_acc_img_all"]) == pytest.approx(0.5)       # 1 right of 2 with ground truth
    assert float(s["pl_acc_img_kept"]) == pytest.approx(1.0)      # kept with gt: row 0 only, right
    assert float(s["kept_img_conf"]) == pytest.approx(1 / 3)
    s = cls_common.img_pl_stats(probs, pl, w, torch.tensor([-1, -1, -1]), tau=0.85)
    assert math.isnan(float(s["pl_acc_img_all"])) and math.isnan(float(s["pl_acc_img_kept"]))


# ---------------------------------------------------------------------------------------------- ShrinkMatch
from comparators import shrinkmatch  # noqa: E402


def naive_shrink_loss(probs, logits_aux, tau):
    """The authors' per-sample loop (CIFAR/shrinkmatch.py's shrink_loss), written out again."""
    B, C = probs.shape
    total = 0.0
    for b in range(B):
        p = probs[b].tolist()
        if max(p) >= tau:
            continue
        order = sorted(range(C), key=lambda c: -p[c])
        for c in range(2, C):
            sub = p[order[0]] / (p[order[0]] + sum(p[order[j]] for j in range(c, C)))
            if sub >= tau or c == C - 1:
                kept = [order[0]] + order[c:]
                lg = [float(logits_aux[b, j]) for j in kept]
                ce = -(lg[0] - math.log(sum(math.exp(v) for v in lg)))
                total += ce * max(p) * (1.0 if sub >= tau else 0.0)
                break
    return total / B


def test_shrunk_space_by_hand():
    # sorted p = .5, .3, .15, .05: removing class 2 -> .5/(.5+.15+.05) = .714; removing 2,3 -> .5/.55 = .909
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    order, k, reached, conf = shrinkmatch.shrunk_space(probs, 0.9)
    assert order.tolist() == [[1, 3, 0, 2]] and int(k) == 3 and bool(reached)
    assert float(conf) == pytest.approx(0.5 / 0.55)
    _, k, reached, conf = shrinkmatch.shrunk_space(probs, 0.95)   # never reaches .95: last space, weight 0
    assert int(k) == 3 and not bool(reached)
    # the loss on that row: CE of the aux logits over {class 1, class 2} (sorted positions 0 and 3), target 1
    aux = torch.tensor([[0.3, 1.0, -0.5, 2.0]])
    want = 0.5 * -(1.0 - math.log(math.exp(1.0) + math.exp(-0.5)))          # w = max p = .5
    loss, uncertain, _ = shrinkmatch.shrink_loss(probs, aux, 0.9)
    assert bool(uncertain) and float(loss) == pytest.approx(want, rel=1e-6)
    assert float(shrinkmatch.shrink_loss(probs, aux, 0.95)[0]) == 0.0


def test_shrink_loss_matches_the_authors_loop():
    g = torch.Generator().manual_seed(1)
    for C in (3, 5, 10):
        logits = 3 * torch.randn(64, C, generator=g, dtype=torch.float64)
        probs = logits.softmax(1)
        aux = torch.randn(64, C, generator=g, dtype=torch.float64)
        for tau in (0.6, 0.8, 0.95):
            got = float(shrinkmatch.shrink_loss(probs, aux, tau)[0])
            assert got == pytest.approx(naive_shrink_loss(probs, aux, tau), rel=1e-9, abs=1e-12)


def test_two_classes_leave_nothing_to_shrink():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.99, 0.01]])
    aux = torch.randn(3, 2, requires_grad=True)
    loss, uncertain, reached = shrinkmatch.shrink_loss(probs, aux, 0.95)
    assert float(loss.detach()) == 0.0 and naive_shrink_loss(probs, aux.detach(), 0.95) == 0.0
    assert uncertain.tolist() == [True, True, False] and not reached.any()
    loss.backward()                                              # an exact 0 that keeps the graph
    assert float(aux.grad.abs().sum()) == 0.0


def test_shrinkmatch_fixmatch_term_and_ratio_by_hand():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    extra = shrinkmatch.build_extra(model)
    cfg = settings_cfg(shrinkmatch, shrinkmatch_tau=0.0)     # every image certain
    batch_l, batch_u = tiny_batches(0)
    loss, stats = shrinkmatch.step(model, extra, batch_l, batch_u, 0, 10, cfg)
    x, y, z = batch_l
    with torch.no_grad():
        f, logits = cls_common.cls_forward(model, torch.cat([x, batch_u[0], batch_u[1]]))
    p_w = logits[2:4].softmax(1)
    want_u = -(p_w * logits[4:].log_softmax(1)).sum(1).mean()           # soft target, all kept
    assert float(stats["cls_u"]) == pytest.approx(float(want_u), rel=1e-5)
    assert float(stats["cls_l"]) == pytest.approx(float(F.cross_entropy(logits[:2], z)), rel=1e-5)
    assert float(stats["cls_c"]) == 0.0 and float(stats["kept_img"]) == 1.0
    assert float(extra.ratio) == 1.0 and bool(extra.ratio_set)
    want = 0.5 * float(stats["seg_l"]) + float(stats["cls_l"]) + float(stats["cls_u"])
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    # principle 2: r <- .999 r + .001 fraction
    extra.update_ratio(torch.tensor(0.0), 0.999)
    assert float(extra.ratio) == pytest.approx(0.999)
    # pseudo-label accuracy against z_gt = 1 - z
    pl = p_w.argmax(1)
    assert float(stats["pl_acc_img_all"]) == pytest.approx(float((pl == 1 - z).float().mean()))


def test_shrinkmatch_burn_in_is_suponly():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    extra = shrinkmatch.build_extra(model)
    cfg = settings_cfg(shrinkmatch, burn_in=5)
    _, stats = shrinkmatch.step(model, extra, *tiny_batches(0), 4, 10, cfg)
    assert float(stats["cls_u"]) == 0.0 and float(stats["kept_img"]) == 0.0 and not bool(extra.ratio_set)


def test_shrinkmatch_two_steps_and_exact_resume():
    results, _, extra = run_two_steps_and_resume(shrinkmatch)
    assert bool(extra.ratio_set)


# ---------------------------------------------------------------------------------------------- PEFAT
from comparators import pefat  # noqa: E402


def naive_gmm(xs, iters=50, reg=5e-4):
    xs = sorted(xs)
    n = len(xs)
    q = lambda a: xs[int(math.floor(a * (n - 1)))] + (a * (n - 1) % 1) * (
        xs[min(int(math.floor(a * (n - 1))) + 1, n - 1)] - xs[int(math.floor(a * (n - 1)))])
    mu = [q(0.25), q(0.75)]
    m = sum(xs) / n
    v = [sum((x - m) ** 2 for x in xs) / n + reg] * 2
    w = [0.5, 0.5]
    for _ in range(iters):
        R = []
        for x in xs:
            a = [w[k] * math.exp(-0.5 * (x - mu[k]) ** 2 / v[k]) / math.sqrt(2 * math.pi * v[k])
                 for k in (0, 1)]
            R.append([a[0] / sum(a), a[1] / sum(a)])
        nk = [sum(r[k] for r in R) + 1e-10 for k in (0, 1)]
        w = [nk[k] / sum(nk) for k in (0, 1)]
        mu = [sum(r[k] * x for r, x in zip(R, xs)) / nk[k] for k in (0, 1)]
        v = [sum(r[k] * (x - mu[k]) ** 2 for r, x in zip(R, xs)) / nk[k] + reg for k in (0, 1)]
    return mu, v, w


def test_pefat_gmm_matches_a_naive_em_and_separates_two_clusters():
    g = torch.Generator().manual_seed(0)
    v = torch.cat([0.1 + 0.05 * torch.randn(30, generator=g), 0.8 + 0.1 * torch.randn(10, generator=g)])
    v = v.double()
    mean, var, weight = pefat.fit_gmm(v)
    mu, vv, w = naive_gmm(v.tolist())
    torch.testing.assert_close(mean, torch.tensor(mu, dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor(vv, dtype=torch.float64))
    torch.testing.assert_close(weight, torch.tensor(w, dtype=torch.float64))
    assert abs(float(mean[0]) - 0.1) < 0.03 and abs(float(mean[1]) - 0.8) < 0.08
    assert float(weight[0]) == pytest.approx(0.75, abs=0.05)


def test_pefat_pseudo_loss_and_trust_selection_against_a_loop():
    # eq. (2) by hand on two rows
    lg1 = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
    lg2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    ell, y1, y2 = pefat.pseudo_loss(lg1, lg2)
    sp = lambda d: math.log1p(math.exp(d))              # CE of a 2-class row = softplus(other - own)
    l12 = [sp(-1.0), sp(1.0), sp(3.0)]                  # CE(lg2, y1 = [0, 1, 0])
    l21 = [sp(-2.0), sp(1.0), sp(0.5)]                  # CE(lg1, y2 = [0, 0, 1])
    mm = lambda v: [(a - min(v)) / (max(v) - min(v)) for a in v]
    want = [0.5 * a + 0.5 * b for a, b in zip(mm(l12), mm(l21))]
    torch.testing.assert_close(ell, torch.tensor(want))
    assert y1.tolist() == [0, 1, 0] and y2.tolist() == [0, 0, 1]
    # eq. (3): posterior of the low-mean component, > 0.7, against a loop
    mean, var, weight = torch.tensor([0.7, 0.1]), torch.tensor([0.02, 0.01]), torch.tensor([0.4, 0.6])
    post = pefat.clean_posterior(ell, mean, var, weight)
    for i, e in enumerate(ell.tolist()):
        a = [w * math.exp(-0.5 * (e - m) ** 2 / s) / math.sqrt(2 * math.pi * s)
             for m, s, w in zip(mean.tolist(), var.tolist(), weight.tolist())]
        assert float(post[i]) == pytest.approx(a[1] / sum(a), rel=1e-4)
    assert ((post > 0.7) == torch.tensor([a < 0.4 for a in ell.tolist()])).all()


def test_pefat_info_nce_by_hand():
    f1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    f2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    T = 0.5
    c = 1 / math.sqrt(2)
    s = [[c, 0.0], [c, 1.0]]                             # cosine(f1_i, f2_j)
    want = -0.5 * sum(math.log(math.exp(s[i][i] / T) / sum(math.exp(s[i][j] / T) for j in (0, 1)))
                      for i in (0, 1))
    assert float(pefat.info_nce(f1, f2, T)) == pytest.approx(want, rel=1e-6)


def test_pefat_adversarial_direction_is_a_per_image_power_iteration():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 2).double()
    feats = torch.randn(4, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    div = lambda lg: F.cross_entropy(lg, labels, reduction="none")
    torch.manual_seed(1)
    r = pefat.adversarial_direction(head, feats, div, xi=1e-3, eps=0.5, iters=3)
    # naive: the same random start, then each image alone
    torch.manual_seed(1)
    d0 = torch.randn(4, 6, dtype=torch.float64)
    for i in range(4):
        d = d0[i] / d0[i].norm()
        for _ in range(3):
            di = (1e-3 * d).requires_grad_(True)
            loss = F.cross_entropy(head(feats[i] + di)[None], labels[i:i + 1])
            g, = torch.autograd.grad(loss, di)
            d = g / g.norm()
        torch.testing.assert_close(r[i], 0.5 * d)
    assert torch.allclose(r.norm(dim=1), torch.full((4,), 0.5, dtype=torch.float64))
    # adversarial: a larger loss than any of 20 random perturbations of the same norm
    with torch.no_grad():
        adv = div(head(feats + r))
        for _ in range(20):
            rnd = 0.5 * F.normalize(torch.randn_like(feats), dim=1)
            assert (adv >= div(head(feats + rnd))).all()


def test_pefat_stages_and_gmm_fit_once():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    extra = pefat.build_extra(model, {"pefat_queue": 8})
    cfg = settings_cfg(pefat, pefat_warmup=0.2, pefat_queue=8)
    # warm-up (it < 0.2 * 10): labeled CE + InfoNCE of the unlabeled pairs, no pseudo-label
    batch_l, batch_u = tiny_batches(0)
    loss, stats = pefat.step(model, extra, batch_l, batch_u, 0, 10, cfg)
    with torch.no_grad():
        f, logits = cls_common.cls_forward(model, torch.cat([batch_l[0], batch_u[0], batch_u[1]]))
    assert float(stats["cls_c"]) == pytest.approx(float(pefat.info_nce(f[2:4], f[4:], 0.05)), rel=1e-5)
    assert float(stats["cls_u"]) == 0.0 and not bool(extra.fitted) and int(extra.n_seen) == 2
    # after it: the GMM is fitted once, on the queue, and kept
    pefat.step(model, extra, batch_l, batch_u, 2, 10, cfg)
    assert bool(extra.fitted)
    first = extra.gmm_mean.clone()
    pefat.step(model, extra, *tiny_batches(1), 3, 10, cfg)
    assert torch.equal(extra.gmm_mean, first) and int(extra.n_seen) == 6
    # burn-in: SupOnly
    _, stats = pefat.step(model, extra, batch_l, batch_u, 0, 10, settings_cfg(pefat, burn_in=1))
    assert float(stats["cls_c"]) == 0.0 and float(stats["cls_u"]) == 0.0


def test_pefat_loss_is_its_equation_when_all_are_trusted_or_uncertain():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    for trust, name in ((-1.0, "trusted"), (1.1, "uncertain")):
        extra = pefat.build_extra(model)
        cfg = settings_cfg(pefat, pefat_warmup=0.0, pefat_trust=trust)
        batch_l, batch_u = tiny_batches(0)
        torch.manual_seed(5)
        _, stats = pefat.step(model, extra, batch_l, batch_u, 0, 10, cfg)
        with torch.no_grad():
            f, lg = cls_common.cls_forward(model, torch.cat([batch_l[0], batch_u[0], batch_u[1]]))
        z = batch_l[2]
        y1, y2 = lg[2:4].argmax(1), lg[4:].argmax(1)
        if name == "trusted":
            n = 2 + 4
            ce_l = F.cross_entropy(lg[:2], z, reduction="sum")
            assert float(stats["cls_l"]) == pytest.approx(float(ce_l) / n, rel=1e-5)
            ce_u = (F.cross_entropy(lg[2:4], y2, reduction="sum")
                    + F.cross_entropy(lg[4:], y1, reduction="sum"))
            assert float(stats["cls_u"]) == pytest.approx(float(ce_u) / n, rel=1e-5)
            assert float(stats["kept_img"]) == 1.0
        else:
            assert float(stats["cls_u"]) == 0.0 and float(stats["kept_img"]) == 0.0
            assert float(stats["cls_l"]) == pytest.approx(float(F.cross_entropy(lg[:2], z)), rel=1e-5)
            assert float(stats["cls_c"]) > 0.0


def test_pefat_two_steps_and_exact_resume():
    _, _, extra = run_two_steps_and_resume(pefat, pefat_warmup=0.0)
    assert bool(extra.fitted)
    run_two_steps_and_resume(pefat, pefat_warmup=0.15)      # warm-up step 0, GMM fitted at step 1


# ---------------------------------------------------------------------------------------------- InterLUDE
from comparators import interlude  # noqa: E402


def test_interlude_interleave_and_fusion_against_a_loop():
    order, groups = interlude.interleave_order(2, 4)
    # rows: x^w 0..1, u^w 2..5, x^s 6..7, u^s 8..11
    assert order.tolist() == [0, 2, 3, 6, 8, 9, 1, 4, 5, 7, 10, 11]
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3]]
    h = torch.randn(12, 3, 2, 2, dtype=torch.float64)
    got = interlude.fuse(h, order, 0.1)
    seq = order.tolist()
    for pos, row in enumerate(seq):
        nxt = seq[(pos + 1) % len(seq)]
        torch.testing.assert_close(got[row], 0.9 * h[row] + 0.1 * h[nxt])
    # a labeled weak image is mixed with its first unlabeled weak partner; the last row wraps to the first
    torch.testing.assert_close(got[11], 0.9 * h[11] + 0.1 * h[0])


def test_interlude_delta_consistency_by_hand():
    p_lw = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    p_ls = torch.tensor([[0.7, 0.3], [0.6, 0.4]])          # Δ^l = (.1, -.1), (0, 0)
    p_uw = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]])
    p_us = torch.tensor([[0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    groups = [torch.tensor([0, 1]), torch.tensor([2])]     # Δ^u = mean((.1,-.1),(.3,-.3)) = (.2,-.2); (0, 0)
    want = ((0.2 - 0.1) ** 2 + (-0.2 + 0.1) ** 2) / 2 / 2  # image 0: .01, image 1: 0; mean over 2 images
    assert float(interlude.delta_consistency(p_lw, p_ls, p_uw, p_us, groups)) == pytest.approx(want)
    # an image without a partner is left out
    lonely = [torch.tensor([0, 1]), torch.tensor([], dtype=torch.long)]
    got = interlude.delta_consistency(p_lw, p_ls, p_uw, p_us, lonely)
    assert float(got) == pytest.approx(0.01)
    # the labeled delta is a target: no gradient reaches it
    a = p_lw.clone().requires_grad_(True)
    b = p_uw.clone().requires_grad_(True)
    interlude.delta_consistency(a, p_ls, b, p_us, groups).backward()
    assert a.grad is None or float(a.grad.abs().sum()) == 0.0
    assert float(b.grad.abs().sum()) > 0.0


def test_interlude_step_is_its_equation():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    cfg = settings_cfg(interlude, interlude_tau=0.0)
    (x, y, z), batch_u = tiny_batches(0)
    torch.manual_seed(7)
    loss, stats = interlude.step(model, None, (x, y, z), batch_u, 0, 10, cfg)
    torch.manual_seed(7)
    x_ls = cls_common.strong_view(x)
    order, groups = interlude.interleave_order(2, 2)
    with torch.no_grad():
        _, lg = cls_common.cls_forward(model, torch.cat([x, batch_u[0], x_ls, batch_u[1]]),
                                       mix=lambda h: interlude.fuse(h, order, 0.1))
        _, plain = cls_common.cls_forward(model, torch.cat([x, batch_u[0], x_ls, batch_u[1]]))
    assert not torch.allclose(lg, plain)                  # the fusion changes the logits
    lw, uw, ls, us = lg[:2], lg[2:4], lg[4:6], lg[6:]
    assert float(stats["cls_l"]) == pytest.approx(float(F.cross_entropy(lw, z)), rel=1e-5)
    want_u = F.cross_entropy(us, uw.argmax(1))           # τ = 0: all kept
    assert float(stats["cls_u"]) == pytest.approx(float(want_u), rel=1e-5)
    d_l, d_u = lw.softmax(1) - ls.softmax(1), uw.softmax(1) - us.softmax(1)   # one partner each
    assert float(stats["cls_c"]) == pytest.approx(float(((d_u - d_l) ** 2).mean()), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(
        0.5 * float(stats["seg_l"]) + float(stats["cls_l"] + stats["cls_u"] + stats["cls_c"]), rel=1e-6)
    _, stats = interlude.step(model, None, (x, y, z), batch_u, 0, 10, settings_cfg(interlude, burn_in=1))
    assert float(stats["cls_u"]) == 0.0 and float(stats["cls_c"]) == 0.0


def test_interlude_two_steps_and_exact_resume():
    run_two_steps_and_resume(interlude)


# ---------------------------------------------------------------------------------------------- InfoMatch
from comparators import infomatch  # noqa: E402


def test_infomatch_entropy_estimate_against_a_loop():
    g = torch.Generator().manual_seed(0)
    p1 = torch.randn(5, 2, generator=g, dtype=torch.float64).softmax(1)
    p2 = torch.randn(5, 2, generator=g, dtype=torch.float64).softmax(1)
    T = 0.5
    loss, h = infomatch.info_nce_entropy(p1, p2, T)
    cos = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))
    total = 0.0
    for i in range(5):
        for a, b in ((p1, p2), (p2, p1)):
            row = [cos(a[i], b[j]) / T for j in range(5)]
            total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
    want = total / 10
    assert float(loss) == pytest.approx(want, rel=1e-9)
    assert float(h) == pytest.approx(math.log(5) - want, rel=1e-9)
    # the bound: at most log N; near it when the two views agree and the images differ
    sharp = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    _, h = infomatch.info_nce_entropy(sharp, sharp, 0.05)
    assert float(h) <= math.log(2) and float(h) == pytest.approx(math.log(2), abs=1e-6)


def test_infomatch_code_form_is_flat_for_two_classes():
    # the code's entropy term, MSE of z-scored logits, has no gradient with 2 classes (why we use InfoNCE)
    a = torch.randn(6, 2, requires_grad=True)
    b = torch.randn(6, 2)
    z = lambda t: (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)
    F.mse_loss(z(a), z(b)).backward()
    assert float(a.grad.abs().max()) < 1e-6
    p = torch.randn(6, 2, requires_grad=True)
    infomatch.info_nce_entropy(p.softmax(1), b.softmax(1), 0.5)[0].backward()
    assert float(p.grad.abs().max()) > 1e-4


def test_infomatch_threshold_and_cutmix_by_hand():
    extra = infomatch.InfoExtra(2)
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    extra.update(probs, 0.9)
    assert float(extra.time_p) == pytest.approx(0.9 * 0.5 + 0.1 * 0.8)
    torch.testing.assert_close(extra.p_model, torch.tensor([0.9 * 0.5 + 0.1 * 0.6, 0.9 * 0.5 + 0.1 * 0.4]))
    thr = extra.thresholds(torch.tensor([0, 1]))
    pm = extra.p_model.tolist()
    assert thr.tolist() == pytest.approx([0.53 * pm[0] / max(pm), 0.53 * pm[1] / max(pm)])
    torch.manual_seed(3)
    inside, lam = infomatch.cutmix_boxes(4, 8)
    x = torch.randn(4, 3, 8, 8)
    perm = torch.tensor([1, 2, 3, 0])
    mixed = infomatch.cutmix(x, perm, inside)
    for i in range(4):
        n_in = 0
        for r in range(8):
            for c in range(8):
                src = x[perm[i]] if inside[i, r, c] else x[i]
                assert torch.equal(mixed[i, :, r, c], src[:, r, c])
                n_in += int(inside[i, r, c])
        assert float(lam[i]) == pytest.approx(1 - n_in / 64)
        rows, cols = inside[i].any(1), inside[i].any(0)       # a box: the inside set is rows x cols
        assert torch.equal(inside[i], rows[:, None] & cols[None, :])


def test_infomatch_step_is_its_equation():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", ias=False)
    extra = infomatch.build_extra(model)
    cfg = settings_cfg(infomatch)
    (x, y, z), batch_u = tiny_batches(0)
    x_w, x_s = batch_u[0], batch_u[1]
    torch.manual_seed(9)
    loss, stats = infomatch.step(model, extra, (x, y, z), batch_u, 0, 10, cfg)
    torch.manual_seed(9)
    x_s2 = cls_common.strong_view(x_w)
    perm = torch.randperm(2)
    inside, lam = infomatch.cutmix_boxes(2, 32)
    with torch.no_grad():
        x_mix = infomatch.cutmix(x_w, perm, inside)
        _, lg = cls_common.cls_forward(model, torch.cat([x, x_w, x_mix, x_s, x_s2]))
    lw, lm, l1, l2 = lg[2:].split(2)
    p = lw.softmax(1)
    conf, pl = p.max(1)
    time_p = 0.999 * 0.5 + 0.001 * float(conf.mean())
    p_model = 0.999 * 0.5 + 0.001 * p.mean(0)
    m = (conf >= time_p * p_model[pl] / p_model.max()).float()
    ce = lambda a, t: F.cross_entropy(a, t, reduction="none")
    l_mix = (lam * ce(lm, pl) * m + (1 - lam) * ce(lm, pl[perm]) * m[perm]).mean()
    want_u = 2.0 * (0.5 * l_mix + 0.25 * (ce(l1, pl) * m).mean() + 0.25 * (ce(l2, pl) * m).mean())
    assert float(stats["cls_u"]) == pytest.approx(float(want_u), rel=1e-4, abs=1e-7)
    want_c = 0.1 * infomatch.info_nce_entropy(l1.softmax(1), l2.softmax(1), 0.5)[0]
    assert float(stats["cls_c"]) == pytest.approx(float(want_c), rel=1e-4)
    assert float(stats["kept_img"]) == float(m.mean())
    assert float(loss.detach()) == pytest.approx(
        0.5 * float(stats["seg_l"]) + float(stats["cls_l"] + stats["cls_u"] + stats["cls_c"]), rel=1e-6)
    _, stats = infomatch.step(model, extra, (x, y, z), batch_u, 0, 10, settings_cfg(infomatch, burn_in=1))
    assert float(stats["cls_u"]) == 0.0 and float(stats["cls_c"]) == 0.0


def test_infomatch_two_steps_and_exact_resume():
    _, _, extra = run_two_steps_and_resume(infomatch)
    assert float(extra.time_p) != 0.5
