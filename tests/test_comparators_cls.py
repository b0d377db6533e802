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
        results.append((float(loss), {k: float(v) for k, v in stats.items()}))
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
    assert float(loss2) == results[1][0]
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
    f, logits = cls_common.cls_forward(model, torch.cat([x, batch_u[0], batch_u[1]]))
    p_w = logits[2:4].softmax(1)
    want_u = -(p_w * logits[4:].log_softmax(1)).sum(1).mean()           # soft target, all kept
    assert float(stats["cls_u"]) == pytest.approx(float(want_u), rel=1e-5)
    assert float(stats["cls_l"]) == pytest.approx(float(F.cross_entropy(logits[:2], z)), rel=1e-5)
    assert float(stats["cls_c"]) == 0.0 and float(stats["kept_img"]) == 1.0
    assert float(extra.ratio) == 1.0 and bool(extra.ratio_set)
    want = 0.5 * float(stats["seg_l"]) + float(stats["cls_l"]) + float(stats["cls_u"])
    assert float(loss) == pytest.approx(want, rel=1e-6)
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
