"""hermes.py: anchor sampling, memory banks, the selection rules and hermes_step (ablation switches, statistics,
the switches that are not in the paper)."""
import math
import collections
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hermes
import losses
import models
from models import HermesNet

STAT_KEYS = list(hermes.STAT_KEYS) + ["n_kept_pix", "n_kept_img", "n_anchors", "bank_pix", "bank_img"]
# eq. (15)'s coefficients with §4.1's weights, multiplied out by hand (seg_c: λ_seg α = 0.5 * 0.8, cls_c: λ_cls β)
PAPER = dict(seg_l=0.5, seg_u=0.5, seg_c=0.4, cls_l=1.0, cls_u=1.0, cls_c=0.2, itc=0.1)


BANKS = weakref.WeakKeyDictionary()  # model -> its MemoryBanks, as train.py's training state holds them


def step(model, bl, bu, it, total, cfg):
    """hermes_step with the model's banks, made on first use."""
    if model not in BANKS:
        BANKS[model] = hermes.make_banks(model, cfg)
    return hermes.hermes_step(model, BANKS[model], bl, bu, it, total, cfg)


# ---------------------------------------------------------------- anchor sampling

def random_maps(seed, B=2, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (B, h, w), generator=g)
    keep = (torch.rand(B, h, w, generator=g) > 0.3).float()
    pred = torch.where(torch.rand(B, h, w, generator=g) > 0.6, 1 - labels, labels)
    return labels, keep, pred


def naive_pools(labels, keep, pred):
    """{(class, is_hard): [flat indices]} with Python loops over the pixels."""
    pools = collections.defaultdict(list)
    for i, (l, k, p) in enumerate(zip(labels.flatten().tolist(), keep.flatten().tolist(), pred.flatten().tolist())):
        if k == 1:
            pools[(l, p != l)].append(i)
    return pools


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, 4, 7, 40])
def test_sample_anchors_vs_naive_pools(seed, n):
    labels, keep, pred = random_maps(seed)
    idx, lab = hermes.sample_anchors(labels, keep, pred, n, generator=torch.Generator().manual_seed(seed))
    pools = naive_pools(labels, keep, pred)
    # the same random keys, consumed the same way: the k largest keys of each pool are taken
    r = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(seed)).tolist()
    assert idx.unique().numel() == idx.numel()
    for c in (0, 1):
        a_h, a_e = len(pools[(c, True)]), len(pools[(c, False)])
        n_h = min(n // 2, a_h)
        n_e = min(n - n_h, a_e)
        n_h = min(n - n_e, a_h)
        got = idx[lab == c].tolist()
        got_h = [i for i in got if i in pools[(c, True)]]
        got_e = [i for i in got if i in pools[(c, False)]]
        assert len(got_h) == n_h and len(got_e) == n_e and len(got) == n_h + n_e   # only w = 1 pixels of class c
        for pool, k, sel in ((pools[(c, True)], n_h, got_h), (pools[(c, False)], n_e, got_e)):
            assert set(sel) == set(sorted(pool, key=lambda i: -r[i])[:k])


def test_sample_anchors_split_and_fill():
    # one image, 4x4; class 0 = first 11 pixels (1 hard + 10 easy), class 1 = last 5 (4 hard + 1 easy)
    labels = torch.tensor([0] * 11 + [1] * 5).reshape(1, 4, 4)
    pred = labels.clone().flatten()
    pred[0] = 1                                     # class 0: pixel 0 is hard
    pred[11:15] = 0                                 # class 1: pixels 11..14 hard, 15 easy
    pred = pred.reshape(1, 4, 4)
    keep = torch.ones(1, 4, 4)
    idx, lab = hermes.sample_anchors(labels, keep, pred, 4, generator=torch.Generator().manual_seed(0))
    hard = (pred.flatten() != labels.flatten())[idx]
    # class 0: 2 hard wanted, 1 available -> 1 hard + 3 easy; class 1: 2 easy wanted, 1 available -> 3 hard + 1 easy
    assert lab.tolist() == [0] * 4 + [1] * 4
    assert hard.tolist() == [True, False, False, False, True, True, True, False]   # hard first within a class
    # a pool smaller than n in total gives what there is
    idx, lab = hermes.sample_anchors(labels, keep, pred, 20)
    assert (lab == 0).sum() == 11 and (lab == 1).sum() == 5
    # nothing kept -> empty
    idx, lab = hermes.sample_anchors(labels, torch.zeros(1, 4, 4), pred, 4)
    assert idx.numel() == 0 and lab.numel() == 0
    with pytest.raises(ValueError, match="sample_anchors: labels"):
        hermes.sample_anchors(labels, keep[:, :3], pred, 4)


@pytest.mark.parametrize("seed", range(6))
def test_anchor_slots_equal_sample_anchors(seed):
    """The fast path (training) against the reference, on random maps: the same anchors, from the same draws."""
    g = torch.Generator().manual_seed(100 + seed)
    B, h, w = [int(v) for v in torch.randint(1, 7, (3,), generator=g)]
    labels, keep, pred = random_maps(seed, B, h, w)
    keep *= (torch.rand((), generator=g) > 0.2).float()                            # now and then nothing kept
    for n in (0, 1, 2, 5, 16, 200):
        ref_idx, ref_lab = hermes.sample_anchors(labels, keep, pred, n, generator=torch.Generator().manual_seed(n))
        idx, lab, valid = hermes.sample_anchor_slots(labels, keep, pred, n, generator=torch.Generator().manual_seed(n))
        assert idx.shape == lab.shape == valid.shape == (2 * n,)
        assert lab.tolist() == [0] * n + [1] * n
        for c in (0, 1):                                       # used slots first within each class block
            v = valid[c * n:(c + 1) * n].int()
            assert (v[:-1] >= v[1:]).all()
        assert torch.equal(idx[valid], ref_idx) and torch.equal(lab[valid], ref_lab), (seed, n)
        assert torch.equal(hermes.sample_anchor_indices(labels, keep, pred, n, torch.Generator().manual_seed(n))[0],
                           ref_idx)
    # with the global RNG (as training draws): the same anchors, and the same RNG state afterwards
    torch.manual_seed(seed)
    ref_idx, _ = hermes.sample_anchors(labels, keep, pred, 8)
    after_ref = torch.rand(1)
    torch.manual_seed(seed)
    idx, _, valid = hermes.sample_anchor_slots(labels, keep, pred, 8)
    assert torch.equal(idx[valid], ref_idx) and torch.equal(torch.rand(1), after_ref)


def test_anchors_gathered_from_the_feature_map():
    labels, keep, pred = random_maps(5, B=3, h=8, w=8)
    feats = torch.randn(3, 16, 8, 8, requires_grad=True)
    idx, lab = hermes.sample_anchors(labels, keep, pred, 6, generator=torch.Generator().manual_seed(7))
    anchors = hermes.flatten_map(feats)[idx]
    assert anchors.shape == (12, 16) and lab.shape == (12,)
    # every anchor is the feature vector of a kept pixel with that label; gradients reach only those pixels
    b, rem = idx // 64, idx % 64
    yy, xx = rem // 8, rem % 8
    assert torch.equal(anchors, feats[b, :, yy, xx]) and torch.equal(lab, labels[b, yy, xx])
    assert (keep[b, yy, xx] == 1).all()
    anchors.sum().backward()
    touched = feats.grad.abs().sum(1) > 0                                          # (3,8,8)
    assert touched.sum() == 12 and touched[b, yy, xx].all()
    other, _ = hermes.sample_anchors(labels, keep, pred, 6, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(idx, other)                                             # the draw depends on the RNG


def test_downsample_nearest():
    y = torch.arange(16).reshape(1, 4, 4)
    assert hermes.downsample_nearest(y, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert hermes.downsample_nearest(y, (2, 2)).dtype == y.dtype
    assert hermes.downsample_nearest(torch.ones(2, 8, 8), (4, 4)).shape == (2, 4, 4)


# ---------------------------------------------------------------- memory bank

@pytest.mark.parametrize("push", ["push_one_by_one", "push"])
def test_memory_bank_fifo_and_wrap(push):
    bank = hermes.MemoryBank(4, 1)
    v = torch.arange(1.0, 11.0)[:, None]                                           # vectors 1..10
    zeros = torch.zeros(10, dtype=torch.long)
    getattr(bank, push)(v[:3], zeros[:3])                                          # 1 2 3 .
    f, l = bank.keys()
    assert f.flatten().tolist() == [1, 2, 3] and l.tolist() == [0, 0, 0] and bank.ptr.tolist() == [3, 0]
    getattr(bank, push)(v[3:6], zeros[:3])                                         # 5 6 3 4: 1, 2 evicted
    assert bank.feats[0].flatten().tolist() == [5, 6, 3, 4]
    assert bank.ptr.tolist() == [2, 0] and bank.filled.tolist() == [4, 0]
    getattr(bank, push)(v[6:7], zeros[:1], torch.tensor([True]))                   # 5 6 7 4: 3 evicted
    getattr(bank, push)(v[7:8], zeros[:1], torch.tensor([False]))                  # masked: nothing
    assert bank.feats[0].flatten().tolist() == [5, 6, 7, 4] and bank.ptr.tolist() == [3, 0]
    # more than the size at once keeps the newest 4, in ring order: 10 evicts last
    fresh = hermes.MemoryBank(4, 1)
    getattr(fresh, push)(v, zeros)
    assert fresh.feats[0].flatten().tolist() == [9, 10, 7, 8]
    assert fresh.ptr.tolist() == [2, 0] and fresh.filled.tolist() == [4, 0]


@pytest.mark.parametrize("size", [1, 5, 6])
def test_memory_bank_push_equals_one_by_one(size):
    """The masked ring write (training) against the row-by-row enqueue: the same state after random pushes,
    with masks, empty pushes and wrap-around (pushes longer than the ring included)."""
    g = torch.Generator().manual_seed(size)
    bank, ref = hermes.MemoryBank(size, 3), hermes.MemoryBank(size, 3)
    for k in (5, 0, 17, 3, 9, 1, 2, 13, 0, 7, 4):
        feats, labels = torch.randn(k, 3, generator=g), torch.randint(0, 2, (k,), generator=g)
        mask = torch.rand(k, generator=g) > 0.4 if k % 2 else None
        bank.push(feats, labels, mask)
        ref.push_one_by_one(feats, labels, mask)
        for key, want in ref.state_dict().items():
            assert torch.equal(bank.state_dict()[key], want), (k, key)
    f, lab, filled = bank.slots()
    assert f.shape == (2 * size, 3) and lab.tolist() == [0] * size + [1] * size and filled.sum() == bank.filled.sum()
    assert torch.equal(f[filled], bank.keys()[0])
    with pytest.raises(ValueError, match="MemoryBank.push"):
        ref.push_one_by_one(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([True]))


def test_memory_bank_classes_detach_and_state_dict():
    bank = hermes.MemoryBank(3, 2)
    x = torch.tensor([[1.0, 0], [0, 1], [2, 0], [0, 2]], requires_grad=True)
    bank.push(x * 1, torch.tensor([0, 1, 0, 1]))
    assert not bank.feats.requires_grad
    assert bank.feats[0, :2].tolist() == [[1, 0], [2, 0]] and bank.feats[1, :2].tolist() == [[0, 1], [0, 2]]
    sd = bank.state_dict()
    assert set(sd) == {"feats", "ptr", "filled"}
    other = hermes.MemoryBank(3, 2)
    other.load_state_dict(sd)
    for a, b in zip(bank.keys(), other.keys()):
        assert torch.equal(a, b)
    more = torch.randn(5, 2)
    lab = torch.tensor([0, 0, 1, 0, 1])
    bank.push(more, lab)
    other.push(more, lab)
    assert all(torch.equal(bank.state_dict()[k], other.state_dict()[k]) for k in sd)
    with pytest.raises(ValueError, match="MemoryBank.push"):
        bank.push(torch.randn(2, 5), torch.tensor([0, 1]))


# ---------------------------------------------------------------- hermes_step on a stand-in (call pattern, stats)

class StandIn(nn.Module):
    """Tiny deterministic model with HermesNet's output dict (no BN); records every forward call."""

    def __init__(self):
        super().__init__()
        self.seg = nn.Conv2d(3, 2, 1)
        self.pixel_head = nn.Conv2d(3, 8, 1)
        self.cls = nn.Linear(3, 2)
        self.image_head = nn.Linear(3, 4)
        self.itc_c, self.itc_s = nn.Linear(3, 4), nn.Linear(3, 4)
        self.calls = []

    def forward_seg(self, x):
        self.calls.append(("seg", x.shape[0], torch.is_grad_enabled()))
        return {"seg_logits": self.seg(x), "pixel_emb": F.normalize(F.avg_pool2d(self.pixel_head(x), 4), dim=1),
                "itc_seg": self.itc_s(x.mean((2, 3))), "feats": {}}

    def forward_cls(self, x):
        self.calls.append(("cls", x.shape[0], torch.is_grad_enabled()))
        f = x.mean((2, 3))
        return {"cls_logits": self.cls(f), "image_emb": F.normalize(self.image_head(f), dim=1),
                "itc_cls": self.itc_c(f)}

    def forward(self, x, ias=None):
        self.calls.append(("joint", x.shape[0], torch.is_grad_enabled(), ias))
        s, c = self.forward_seg(x), self.forward_cls(x)
        self.calls = self.calls[:-2]
        return {**s, **c, "saliency": None, "M_c": [], "M_s": []}


def make_batches(seed, B_l=2, B_u=3, S=8):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(B_l, S, S, dtype=torch.long)
    y[:, :, S // 2:] = 1
    x_w = torch.randn(B_u, 3, S, S, generator=g)
    return ((torch.randn(B_l, 3, S, S, generator=g), y, torch.tensor([0, 1] * (B_l // 2) + [0] * (B_l % 2))),
            (x_w, x_w + 0.3 * torch.randn(B_u, 3, S, S, generator=g), torch.randint(0, 2, (B_u, S, S), generator=g),
             torch.randint(0, 2, (B_u,), generator=g)))


def test_step_call_pattern_and_banks():
    m = StandIn()
    bl, bu = make_batches(0)
    step(m, bl, bu, 0, 10, hermes.HermesConfig(threshold="none"))
    # teacher (weak view, no grad) then ONE batched student forward of labeled + strong
    assert m.calls == [("joint", 3, False, True), ("joint", 5, True, True)]
    banks = BANKS[m]
    assert banks.pixel.dim == 8 and banks.image.dim == 4                           # widths read from the heads
    assert "pixel.feats" in banks.state_dict() and "image.ptr" in banks.state_dict()
    assert not any("bank" in k for k in m.state_dict())                            # the model holds no bank
    assert banks.pixel.filled.sum() > 0
    m.calls = []
    step(m, bl, bu, 0, 10, hermes.HermesConfig(dtcl=False, itcl=False, ias=False))
    assert m.calls == [("joint", 2, True, False)]                                  # SupOnly: labeled only
    m.calls = []
    step(m, bl, bu, 0, 10, hermes.HermesConfig(dtcl=False))
    assert m.calls == [("joint", 5, True, True)]                                   # itc alone needs no teacher
    m.calls = []
    step(m, bl, bu, 0, 10, hermes.HermesConfig(task="seg"))
    assert m.calls == [("seg", 3, False), ("seg", 5, True)]
    m.calls = []
    step(m, bl, bu, 0, 10, hermes.HermesConfig(task="cls", itcl=False, dtcl=False))
    assert m.calls == [("cls", 2, True)]


def test_step_image_bank_receives_kept_and_labeled():
    m = StandIn()
    bl, bu = make_batches(1)
    step(m, bl, bu, 0, 10, hermes.HermesConfig(threshold="none"))
    # 3 unlabeled (all kept) + 2 labeled images
    assert BANKS[m].image.filled.sum().item() == 5
    step(m, bl, bu, 0, 10, hermes.HermesConfig(threshold="dual", eta_max=-1.0, eta_min=-1.0))
    assert BANKS[m].image.filled.sum().item() == 7                                   # nothing kept: labeled only


def test_step_stats_and_gt_unused():
    m = StandIn()
    bl, bu = make_batches(2)
    torch.manual_seed(0)
    loss, st = step(m, bl, bu, 3, 10, hermes.HermesConfig(threshold="none"))
    assert set(STAT_KEYS) <= set(st)
    for k, v in st.items():
        assert torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad and torch.isfinite(v), k
    assert st["kappa"].item() == pytest.approx(hermes.uncertainty_threshold(3, 10))
    assert st["tau"].item() == pytest.approx(hermes.confidence_threshold(3, 10))
    assert st["kept_pix"].item() == 1.0 and st["kept_img"].item() == 1.0
    with torch.no_grad():
        out_w = m(bu[0])
    acc_pix = (out_w["seg_logits"].argmax(1) == bu[2]).float().mean().item()
    acc_img = (out_w["cls_logits"].argmax(1) == bu[3]).float().mean().item()
    assert st["pl_acc_pix_all"].item() == pytest.approx(acc_pix) == pytest.approx(st["pl_acc_pix_kept"].item())
    assert st["pl_acc_img_all"].item() == pytest.approx(acc_img) == pytest.approx(st["pl_acc_img_kept"].item())
    parts = {k: st[k] for k in hermes.PARTS}
    assert loss.item() == pytest.approx(losses.total_loss(parts, PAPER).item(), rel=1e-6)
    # the unlabeled ground truth only feeds statistics: other GT, same loss (same anchors via the seed)
    m2 = StandIn()
    m2.load_state_dict(StandIn().state_dict())
    m3 = StandIn()
    m3.load_state_dict(m2.state_dict())
    torch.manual_seed(0)
    l2, _ = step(m2, bl, bu, 3, 10, hermes.HermesConfig())
    torch.manual_seed(0)
    l3, s3 = step(m3, bl, (bu[0], bu[1], 1 - bu[2], 1 - bu[3]), 3, 10, hermes.HermesConfig())
    assert l2.item() == l3.item()
    # nothing kept: kept accuracies are 0, not NaN
    _, st = step(m, bl, bu, 3, 10, hermes.HermesConfig(eta_max=-1.0, eta_min=-1.0))
    assert st["n_kept_pix"].item() == 0 and st["pl_acc_pix_kept"].item() == 0.0 and st["seg_u"].item() == 0.0
    # the confidence-only statistics (Fig. 1) do not depend on kappa: by hand from the teacher probabilities
    tau = hermes.confidence_threshold(3, 10)
    for kind, logits, gt in (("pix", out_w["seg_logits"], bu[2]), ("img", out_w["cls_logits"], bu[3])):
        p = logits.softmax(1)
        keep = p.amax(1) >= tau
        right = p.argmax(1) == gt
        assert st[f"kept_{kind}_conf"].item() == pytest.approx(keep.float().mean().item())
        expected = (right & keep).sum().item() / max(keep.sum().item(), 1)
        assert st[f"pl_acc_{kind}_conf"].item() == pytest.approx(expected)


# ---------------------------------------------------------------- hermes_step on HermesNet (gradients per switch)

GROUPS = ("seg_encoder", "seg_decoder", "pixel_head", "itc_seg_head", "cls_net", "ita", "image_head", "itc_cls_head")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HermesNet(seg_encoder="resnet18", pretrained=False).train()


def step_grads(model, cfg, steps=1, S=32):
    """Run `steps` steps (the earlier ones fill the banks), backward the last; -> (stats, {group: has grad})."""
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, S, S, dtype=torch.long)
    y[:, :, S // 2:] = 1                                                           # both classes on the 2x2 grid
    bl = (torch.randn(2, 3, S, S, generator=g), y, torch.tensor([0, 1]))
    x_w = torch.randn(2, 3, S, S, generator=g)
    bu = (x_w, x_w + 0.2 * torch.randn(2, 3, S, S, generator=g), y.clone(), torch.tensor([1, 0]))
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        loss, stats = step(model, bl, bu, 1, 10, cfg)
    assert torch.isfinite(loss)
    loss.backward()
    has = {}
    for name in GROUPS:
        ps = list(getattr(model, name).parameters())
        if all(p.grad is None for p in ps):
            has[name] = False
        else:
            assert all(torch.isfinite(p.grad).all() for p in ps if p.grad is not None), name
            has[name] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)
    for k in STAT_KEYS:
        assert torch.isfinite(stats[k]), k
    return stats, has


def test_step_full_reaches_everything(net):
    st, has = step_grads(net, hermes.HermesConfig(threshold="none"), steps=2)
    assert all(has.values()), has
    assert all(st[k].item() > 0 for k in hermes.PARTS), {k: st[k].item() for k in hermes.PARTS}


@pytest.mark.parametrize("switch, off_terms, no_grad", [
    (dict(itcl=False), ["itc"], ["itc_seg_head", "itc_cls_head"]),
    (dict(dtcl=False), ["seg_u", "seg_c", "cls_u", "cls_c"], ["pixel_head", "image_head"]),
    (dict(ias=False), [], ["ita"]),
    (dict(dtcl=False, itcl=False, ias=False), ["seg_u", "seg_c", "cls_u", "cls_c", "itc"],
     ["pixel_head", "image_head", "itc_seg_head", "itc_cls_head", "ita"]),
    (dict(task="seg"), ["cls_l", "cls_u", "cls_c", "itc"],
     ["cls_net", "ita", "image_head", "itc_cls_head", "itc_seg_head"]),
    (dict(task="cls"), ["seg_l", "seg_u", "seg_c", "itc"],
     ["seg_encoder", "seg_decoder", "pixel_head", "itc_seg_head", "ita", "itc_cls_head"]),
])
def test_step_switches(net, switch, off_terms, no_grad):
    st, has = step_grads(net, hermes.HermesConfig(threshold="none", **switch), steps=1)
    for k in off_terms:
        assert st[k].item() == 0.0, k
    for name in GROUPS:
        assert has[name] == (name not in no_grad), (name, has)


class Logits(StandIn):
    """StandIn whose logits are read off the input: seg_logits = (0, x[:, 0]) per pixel, cls_logits =
    (0, mean of x[:, 1]) per image, so that p(class 1) = sigmoid of what the test writes there."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.seg.weight.zero_(), self.seg.bias.zero_(), self.cls.weight.zero_(), self.cls.bias.zero_()
            self.seg.weight[1, 0] = 1.0
            self.cls.weight[1, 1] = 1.0


@pytest.mark.parametrize("threshold", ["none", "confidence", "dual"])
def test_step_keeps_the_pixels_and_images_of_its_rule(threshold):
    # max p of each pseudo-label: 0.6 (kept by "none" only), 0.95 (also by "confidence": tau = 0.855 at step 0),
    # 0.99 (by all three: u(0.99) = 0.056 <= kappa = 0.1, while u(0.95) = 0.199 > 0.1); both classes
    q = torch.tensor([0.6, 0.95, 0.99])
    logit = torch.log(q / (1 - q))
    pattern = torch.tensor([0, 1, 2, 0, 2, 1, 1, 0])                              # which q, per pixel column
    sign = torch.tensor([1.0, -1.0])                                               # row parity: class 1 / class 0
    B_u, S = 3, 8
    x_w = torch.zeros(B_u, 3, S, S)
    for b in range(B_u):
        x_w[b, 0] = sign[(torch.arange(S)[:, None] + b) % 2] * logit[(pattern[None] + b) % 3]
        x_w[b, 1] = -sign[b % 2] * logit[b]                                        # image b: max p = q[b]
    which = (pattern[None, None] + torch.arange(B_u)[:, None, None]) % 3 * torch.ones(B_u, S, S, dtype=torch.long)
    rule_keeps = {"none": (0, 1, 2), "confidence": (1, 2), "dual": (2,)}[threshold]
    want_pix = sum(which == i for i in rule_keeps).float()                         # (B_u,S,S)
    want_img = torch.tensor([float(b in rule_keeps) for b in range(B_u)])
    want_pl = ((torch.arange(S)[:, None] + torch.arange(B_u)[:, None, None]) % 2 == 0).long().expand(B_u, S, S)

    cfg = hermes.HermesConfig(threshold=threshold, eta_max=0.1, eta_min=0.1)       # kappa = 0.1 throughout
    kappa, tau = hermes.uncertainty_threshold(0, 10, 0.1, 0.1), hermes.confidence_threshold(0, 10)
    assert kappa == pytest.approx(0.1) and tau == pytest.approx(0.8551, abs=1e-4)
    m = Logits()
    t = hermes._teacher(m, x_w, kappa, tau, cfg)
    assert torch.equal(t.pl_pix, want_pl) and t.pl_img.tolist() == [0, 1, 0]
    assert torch.equal(t.w_pix, want_pix) and torch.equal(t.w_img, want_img)
    # the step's unlabeled losses use exactly those pixels and images (StandIn has no BN: rows independent)
    x_s = x_w + 0.5 * torch.randn(B_u, 3, S, S, generator=torch.Generator().manual_seed(0))
    bl, (_, _, y_gt, z_gt) = make_batches(7, B_u=B_u, S=S)
    _, st = step(m, bl, (x_w, x_s, y_gt, z_gt), 0, 10, cfg)
    with torch.no_grad():
        out_s = m(x_s)
    want_seg_u = losses.seg_unsupervised_loss(out_s["seg_logits"], t.seg_logits, want_pix)
    want_cls_u = losses.cls_unsupervised_loss(out_s["cls_logits"], t.cls_logits, want_img)
    assert st["seg_u"].item() == pytest.approx(want_seg_u.item(), rel=1e-6)
    assert st["cls_u"].item() == pytest.approx(want_cls_u.item(), rel=1e-6)
    assert st["kept_pix"].item() == pytest.approx(want_pix.mean().item())
    assert st["kept_img"].item() == pytest.approx(len(rule_keeps) / 3)
    # and the loss would differ under another rule's selection: the test can tell the rules apart
    for other in ({(0, 1, 2), (1, 2), (2,)} - {rule_keeps}):
        w_other = sum(which == i for i in other).float()
        assert losses.seg_unsupervised_loss(out_s["seg_logits"], t.seg_logits, w_other).item() != \
            pytest.approx(want_seg_u.item(), rel=1e-4)


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="task"):
        hermes.HermesConfig(task="both")
    with pytest.raises(ValueError, match="threshold"):
        hermes.HermesConfig(threshold="entropy")


def test_step_under_bf16_autocast():
    m = StandIn()
    bl, bu = make_batches(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            loss, st = step(m, bl, bu, 0, 10, hermes.HermesConfig(threshold="none"))
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert BANKS[m].pixel.feats.dtype == torch.float32 and BANKS[m].pixel.filled.sum() > 0
    assert all(torch.isfinite(v) for v in st.values())


# ---------------------------------------------------------------- selection rules at their boundaries

def test_select_rules_keep_the_boundary_and_drop_beyond():
    # two classes: max p = q; at q = tau exactly the confidence test passes (>=); u(q) = kappa passes (<=)
    q = torch.tensor([0.80, 0.85, 0.90, 0.99], dtype=torch.float64)
    p = torch.stack([1 - q, q], dim=1)                                             # (4,2)
    u = hermes.uncertainty(p)
    tau, kappa = 0.85, u[2].item()                                                 # kappa = u(0.90) exactly
    assert hermes._select(p, kappa, tau, "confidence").tolist() == [0.0, 1.0, 1.0, 1.0]
    assert hermes._select(p, kappa, tau, "dual").tolist() == [0.0, 0.0, 1.0, 1.0]  # 0.85 too uncertain
    assert hermes._select(p, kappa, tau, "none").tolist() == [1.0, 1.0, 1.0, 1.0]
    # a flipped comparison would keep the low-confidence / high-entropy rows instead
    assert hermes._select(p, 10.0, 0.0, "dual").tolist() == [1.0] * 4
    assert hermes._select(p, -1.0, 0.0, "dual").tolist() == [0.0] * 4


@pytest.mark.parametrize("threshold", ["confidence", "dual"])
def test_step_kept_fraction_follows_the_rule(threshold):
    m = StandIn()
    bl, bu = make_batches(4)
    it, total = 9, 10                                                              # kappa 0.256, tau 0.923
    cfg = hermes.HermesConfig(threshold=threshold)
    _, st = step(m, bl, bu, it, total, cfg)
    with torch.no_grad():
        out_w = m(bu[0])
    kappa, tau = hermes.uncertainty_threshold(it, total), hermes.confidence_threshold(it, total)
    for kind, logits in (("pix", out_w["seg_logits"]), ("img", out_w["cls_logits"])):
        p = logits.softmax(1)
        keep = p.amax(1) >= tau
        if threshold == "dual":
            keep &= -(p * torch.log(p + 1e-8)).sum(1) <= kappa
        assert st[f"kept_{kind}"].item() == pytest.approx(keep.float().mean().item())


# ---------------------------------------------------------------- switches that are not in the paper

def test_eq15_coefficients_warmup_ramp_and_unlabeled_factor():
    assert hermes.eq15_coefficients(hermes.HermesConfig(), 0) == pytest.approx(PAPER)   # the paper's constants
    cfg = hermes.HermesConfig(contrast_warmup=5, gamma_ramp=100, unsup_weight=0.1)
    c = hermes.eq15_coefficients(cfg, 4)
    assert c["seg_c"] == 0 and c["cls_c"] == 0                                     # contrast still warming up
    assert c["seg_u"] == pytest.approx(0.05) and c["cls_u"] == pytest.approx(0.1)  # λ · unsup_weight
    assert c["seg_l"] == 0.5 and c["cls_l"] == 1.0
    assert c["itc"] == pytest.approx(0.1 * math.exp(-5 * 0.96 ** 2))
    c = hermes.eq15_coefficients(cfg, 5)
    assert c["seg_c"] == pytest.approx(0.4) and c["cls_c"] == pytest.approx(0.2)
    assert hermes.eq15_coefficients(cfg, 100)["itc"] == pytest.approx(0.1)
    assert hermes.eq15_coefficients(cfg, 250)["itc"] == pytest.approx(0.1)
    cfg = hermes.HermesConfig(unsup_weight=0.1, unsup_weight_cls=0.0)          # μ on L^u_cls alone
    c = hermes.eq15_coefficients(cfg, 0)
    assert c["cls_u"] == 0.0 and c["seg_u"] == pytest.approx(0.05) and c["cls_l"] == 1.0
    assert hermes.eq15_coefficients(hermes.HermesConfig(unsup_weight_cls=0.3), 0)["cls_u"] == pytest.approx(0.3)


def test_step_coefficients_enter_the_total():
    bl, bu = make_batches(5)
    cfg = hermes.HermesConfig(threshold="none", unsup_weight=0.1, contrast_warmup=5)
    torch.manual_seed(0)
    loss, st = step(StandIn(), bl, bu, 2, 10, cfg)
    parts = {k: st[k] for k in hermes.PARTS}
    expected = losses.total_loss(parts, {**PAPER, "seg_u": 0.05, "cls_u": 0.1, "seg_c": 0.0, "cls_c": 0.0})
    assert st["seg_u"].item() > 0 and st["seg_c"].item() > 0                       # logged unweighted
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_step_unsup_seg_loss_variants():
    bl, bu = make_batches(6)
    m = StandIn()
    with torch.no_grad():
        out_w = m(bu[0])
        out_s = m(bu[1])
    w = torch.ones(bu[0].shape[0], *bu[0].shape[2:])
    dice = losses.seg_unsupervised_loss(out_s["seg_logits"], out_w["seg_logits"], w)
    ce = losses.seg_unsupervised_ce_loss(out_s["seg_logits"], out_w["seg_logits"], w)
    for kind, expected in (("dice", dice), ("ce", ce), ("dice+ce", 0.5 * (dice + ce))):
        m2 = StandIn()
        m2.load_state_dict(m.state_dict())
        _, st = step(m2, bl, bu, 0, 10, hermes.HermesConfig(threshold="none", unsup_seg_loss=kind))
        # StandIn has no BN: the strong rows of the batched student forward equal a forward of x_s alone
        assert st["seg_u"].item() == pytest.approx(expected.item(), rel=1e-5), kind
    with pytest.raises(ValueError, match="unsup_seg_loss"):
        hermes.HermesConfig(unsup_seg_loss="focal")


def test_separate_bn_leaves_running_stats_to_labeled_images():
    torch.manual_seed(0)
    net = HermesNet(seg_encoder="resnet18", pretrained=False).train()
    S = 32
    g = torch.Generator().manual_seed(1)
    y = torch.zeros(2, S, S, dtype=torch.long)
    y[:, :, S // 2:] = 1
    x = torch.randn(2, 3, S, S, generator=g)
    bl = (x, y, torch.tensor([0, 1]))
    x_w = 5 + 3 * torch.randn(2, 3, S, S, generator=g)                             # far from the labeled stats
    bu = (x_w, x_w + 0.1, y.clone(), torch.tensor([1, 0]))
    bn = net.seg_encoder.net.bn1 if hasattr(net.seg_encoder, "net") else next(
        m for m in net.seg_encoder.modules() if isinstance(m, nn.BatchNorm2d))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = hermes.HermesConfig(threshold="none", unlabeled_bn="separate")
    hermes.hermes_step(net, hermes.make_banks(net, cfg), bl, bu, 0, 10, cfg)
    after_sep = bn.running_mean.clone()
    net.load_state_dict(state)
    with torch.no_grad():
        net(x)                                                                     # labeled images alone, train mode
    assert torch.allclose(after_sep, bn.running_mean, atol=1e-6)
    net.load_state_dict(state)
    cfg = hermes.HermesConfig(threshold="none")
    hermes.hermes_step(net, hermes.make_banks(net, cfg), bl, bu, 0, 10, cfg)
    assert not torch.allclose(after_sep, bn.running_mean, atol=1e-3)               # shared: the unlabeled move it
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))  # restored


def test_ema_teacher_makes_the_pseudo_labels_and_the_model_the_rest():
    model, teacher = StandIn(), StandIn()
    bl, bu = make_batches(3)
    cfg = hermes.HermesConfig(threshold="none")
    banks = hermes.make_banks(model, cfg)
    hermes.hermes_step(model, banks, bl, bu, 0, 10, cfg, teacher=teacher)
    assert teacher.calls == [("joint", 3, False, True)]                            # the weak view, no grad
    assert model.calls == [("joint", 5, True, True)]                               # labeled + strong only
    # a teacher equal to the model gives the paper's step exactly
    twin = StandIn()
    twin.load_state_dict(model.state_dict())
    run = lambda t: (torch.manual_seed(0), hermes.hermes_step(model, hermes.make_banks(model, cfg), bl, bu, 0, 10,
                                                              cfg, teacher=t)[0].item())[1]   # same anchors
    a = run(None)
    assert run(twin) == pytest.approx(a, rel=1e-6)
    # and a different teacher changes it: its pseudo-labels and keys enter eqs. (9)-(13)
    assert abs(run(teacher) - a) > 1e-3


def test_ema_teacher_update_against_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(5, 2))
    teacher = hermes.make_ema_teacher(model)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert [hermes.ema_decay(t, 0.99) for t in (0, 1, 3, 99, 100, 5000)] == [0.0, 0.5, 0.75, 0.99, 0.99, 0.99]
    with torch.no_grad():
        model(torch.randn(2, 3, 7, 7))                                             # moves the BN statistics
    for q in model.parameters():
        q.data.add_(torch.randn_like(q))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    hermes.update_ema_teacher(teacher, model, 3, 0.99)                             # a = 0.75
    for k, v in teacher.state_dict().items():
        m = model.state_dict()[k]
        if k.endswith("num_batches_tracked"):
            assert v.item() == m.item() == 1                                       # copied
        else:
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * m, msg=k)
    hermes.update_ema_teacher(teacher, model, 0, 0.99)                             # a = 0: a copy
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_config_from_mapping():
    cfg = hermes.config_from({"alpha": 0.5, "lr": 1.0, "unlabeled_bn": "separate"})
    assert cfg.alpha == 0.5 and cfg.unlabeled_bn == "separate" and cfg.beta == hermes.HermesConfig().beta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_step_never_waits_for_the_device():
    """train.py's iteration (on-device batch, hermes_step, backward, optimizers, finiteness record) makes no
    host-device synchronisation once warm."""
    import augment
    import data
    import runner
    import train
    ds = data.load_dataset("demo", image_size=64, demo_size=24, seed=0)
    model = HermesNet(seg_encoder="resnet18").cuda().train()
    cfg = hermes.HermesConfig(n_anchors=16, pixel_bank_size=64, image_bank_size=8)
    banks, opts = hermes.make_banks(model, cfg), train.make_optimizers(model, vars(train.build_parser().parse_args([])))
    batches, watch = augment.DeviceBatches(ds, range(8), range(8, 24), 2, seed=0, device="cuda"), runner.FiniteWatch("cuda")
    for it in range(3):
        torch.cuda.set_sync_debug_mode("error" if it == 2 else "default")
        try:
            loss, _ = train.train_step(model, banks, opts, *batches(it), it, 10, cfg)
            watch.update(loss, it)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    watch.check({k: torch.zeros(()) for k in hermes.STAT_KEYS})


def test_ias_warmup_weight_and_step(net):
    """--ias-warmup N: s = 0 before step N, linear to 1 at 2N; hermes_step sets it on the model."""
    assert [hermes.ias_weight(it, 4) for it in (0, 3, 4, 5, 6, 8, 20)] == [0, 0, 0, 0.25, 0.5, 1, 1]
    S = 32
    y = torch.zeros(2, S, S, dtype=torch.long)
    bl = (torch.randn(2, 3, S, S), y, torch.tensor([0, 1]))
    bu = (torch.randn(2, 3, S, S),) * 2 + (y, torch.tensor([1, 0]))
    try:
        for it, s in ((2, 0.0), (6, 0.5), (9, 1.0)):
            step(net, bl, bu, it, 10, hermes.HermesConfig(ias_warmup=4))
            assert float(net.ias_scale) == s and net.ias_full == (s == 1)
        with pytest.raises(ValueError, match="ias_warmup"):
            hermes.HermesConfig(ias_warmup=-1)
    finally:
        models.set_ias_scale(net, 1.0)


# ------------------------------------------------- --pseudo-label-prior unlabeled (not in the paper)

def test_class_share_tracker_ring_and_em_against_evaluate():
    """The tracker's buffer holds the newest `size` scores (a naive list) and its warm-started EM reaches
    evaluate.estimate_prior's estimate on them; δ = logit(π̂_u) - logit(π_l)."""
    import evaluate
    tr = hermes.ClassShareTracker(size=8, min_scores=4, em_iters=20)
    g = torch.Generator().manual_seed(0)
    seen = []
    for k in (3, 5, 11, 2):
        s = torch.rand(k, generator=g) * 0.6
        tr.push(s, torch.tensor([1, 1, 0]))
        seen += s.tolist()
    assert sorted(tr.scores.tolist()) == pytest.approx(sorted(seen[-8:]))
    assert tr.filled.item() == 8 and tr.n_labeled.tolist() == [4.0, 8.0]
    for _ in range(50):
        delta = tr.shift()
    pi_l = 8 / 12
    want = evaluate.estimate_prior(seen[-8:], pi_l)
    assert tr.pi_u.item() == pytest.approx(want, abs=1e-5)
    assert delta.item() == pytest.approx(math.log(want / (1 - want)) - math.log(pi_l / (1 - pi_l)), abs=1e-4)


def test_class_share_tracker_no_shift_before_min_scores():
    tr = hermes.ClassShareTracker(size=16, min_scores=4)
    tr.push(torch.full((3,), 0.05), torch.tensor([0, 1]))
    assert tr.shift().item() == 0.0 and tr.pi_u.item() == 0.5
    tr.push(torch.full((1,), 0.05), torch.tensor([0, 1]))
    assert tr.shift().item() < -0.5                                                # mostly benign: δ < 0


def test_teacher_and_unlabeled_loss_at_the_moved_share_by_hand():
    """δ moves the malignant logit: teacher logits (0.3, 0) and (0, 1) with δ = -0.5 give pseudo-labels 0, 1,
    with δ = -1.5 both 0; the score stays at the labeled share; L^u_cls of student logits (0, 0) and pseudo-label
    0 at δ = -0.5 is log(1 + e^-0.5)."""
    t_logits = torch.tensor([[0.3, 0.0], [0.0, 1.0]])
    for delta, want in ((-0.5, [0, 1]), (-1.5, [0, 0]), (0.0, [0, 1])):
        moved = hermes._malignant_shift(t_logits, torch.tensor(delta))
        assert moved.argmax(1).tolist() == want
    moved = hermes._malignant_shift(torch.zeros(1, 2), torch.tensor(-0.5))
    assert moved.tolist() == [[0.0, -0.5]]
    loss = losses.cls_unsupervised_loss(moved, torch.tensor([[0.3, -0.5]]), torch.ones(1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), rel=1e-6)


def test_step_with_pseudo_label_prior_unlabeled():
    """The banks carry a tracker only with the switch; the step pushes the teacher's scores and the labeled
    labels, and L^u_cls is eq. (10) on logits moved by the tracker's δ, computed here from the stand-in's
    linear classifier."""
    m = StandIn()
    bl, bu = make_batches(4, B_l=2, B_u=3)
    assert not any("class_share" in k for k in hermes.make_banks(m, hermes.HermesConfig()).state_dict())
    cfg = hermes.HermesConfig(threshold="none", pseudo_label_prior="unlabeled")
    banks = hermes.make_banks(m, cfg)
    tr = banks.class_share
    tr.push(torch.full((40,), 0.1), torch.tensor([0, 1]))                          # ready, mostly benign
    twin = hermes.ClassShareTracker()
    twin.load_state_dict(tr.state_dict())
    delta = twin.shift()
    assert delta.item() < -1.0
    _, stats = hermes.hermes_step(m, banks, bl, bu, 0, 10, cfg)
    assert tr.filled.item() == 43 and tr.n_labeled.tolist() == [2.0, 2.0]
    with torch.no_grad():
        logit_w = m.cls(bu[0].mean((2, 3)))
        logit_s = m.cls(bu[1].mean((2, 3)))
    shift = torch.stack([torch.zeros(()), delta])
    want = F.cross_entropy(logit_s + shift, (logit_w + shift).argmax(1))
    assert stats["cls_u"].item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(tr.scores[40:43], logit_w.softmax(1)[:, 1], atol=1e-6)
