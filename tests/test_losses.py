"""losses.py (eqs. (1), (2), (9)–(15)) and the pure parts of hermes.py (eqs. (7), (8), (16), (17)) against hand-worked numbers,
naive-loop twins of the vectorised contrastive losses, edge cases and autograd."""
import math

import pytest
import torch
import torch.nn.functional as F

import hermes
import losses

# The coefficients of eq. (15)'s seven terms with §4.1's weights (λ_seg 0.5, λ_cls 1, α 0.8, β 0.2, γ 0.1)
# multiplied out by hand, so that the computations below are checkable (seg_c: λ_seg α = 0.4, cls_c: λ_cls β).
PAPER = dict(seg_l=0.5, seg_u=0.5, seg_c=0.4, cls_l=1.0, cls_u=1.0, cls_c=0.2, itc=0.1)

LN3 = math.log(3.0)
E = math.e
SM = 1e-5  # Dice smoothing of eq. (1)


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def seg_logits_from_diff(d):
    """(B,2,H,W) logits with channel 0 = 0 and channel 1 = d, so p_lesion = sigmoid(d)."""
    d = t64(d)
    return torch.stack([torch.zeros_like(d), d], dim=1)


# ---------------------------------------------------------------- eq. (1), (2)

def test_seg_supervised_loss_by_hand():
    # image 1: d = [[0, ln3], [ln3, -ln3]] -> p = [[.5, .75], [.75, .25]], mask [[0, 1], [1, 0]]
    #   CE_1 = (ln2 + 3 ln(4/3)) / 4                      (every pixel but (0,0) has p_true = .75)
    #   Dice_1 = 1 - (2*1.5 + 1e-5) / (2.25 + 2 + 1e-5)    (Σpg = .75+.75, Σp = 2.25, Σg = 2)
    # image 2 (empty mask): d = 0 -> p = .5 everywhere
    #   CE_2 = ln2, Dice_2 = 1 - 1e-5 / (2 + 0 + 1e-5)
    logits = seg_logits_from_diff([[[0, LN3], [LN3, -LN3]], [[0, 0], [0, 0]]])
    mask = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
    ce1 = (math.log(2) + 3 * math.log(4 / 3)) / 4
    d1 = 1 - (3 + SM) / (4.25 + SM)
    ce2 = math.log(2)
    d2 = 1 - SM / (2 + SM)
    expected = (0.5 * (ce1 + d1) + 0.5 * (ce2 + d2)) / 2
    assert losses.seg_supervised_loss(logits, mask).item() == pytest.approx(expected, abs=1e-10)


def test_cls_supervised_loss_by_hand():
    # logits [0,0], [ln3,0], [0,ln3]; labels 0, 0, 1 -> CE = ln2, ln(4/3), ln(4/3)
    logits = t64([[0, 0], [LN3, 0], [0, LN3]])
    expected = (math.log(2) + 2 * math.log(4 / 3)) / 3
    assert losses.cls_supervised_loss(logits, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, abs=1e-10)


# ---------------------------------------------------------------- eq. (8), (7)

def test_uncertainty_by_hand():
    # u([.75, .25]) = -(.75 ln .75 + .25 ln .25) nats; u([1, 0]) = 0; u([.5, .5]) = ln 2
    p = t64([[0.75, 0.25], [1.0, 0.0], [0.5, 0.5]])
    u = hermes.uncertainty(p, eps=0.0)
    assert u.shape == (3,)
    assert u[0].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-12)
    assert u[2].item() == pytest.approx(math.log(2), abs=1e-12)
    # p = 0 contributes 0 (not NaN) with eps; default eps 1e-8 moves the value by < 1e-7
    assert hermes.uncertainty(p)[1].item() == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(hermes.uncertainty(p)[[0, 2]], u[[0, 2]], atol=1e-7)
    # maps: (B,C,H,W) -> (B,H,W)
    assert hermes.uncertainty(torch.rand(2, 2, 3, 4).softmax(1)).shape == (2, 3, 4)


def test_dual_threshold_mask_by_hand():
    # max p:   .5     .9     .97    .8
    # u (nats) .693   .325   .135   .500
    q = t64([[0.5, 0.9], [0.97, 0.8]])
    probs = torch.stack([1 - q, q])[None]                          # (1,2,2,2)
    # kappa .4, tau .85: .9 and .97 pass both; .8 fails confidence; .5 fails both
    w = hermes.dual_threshold_mask(probs, kappa=0.4, tau=0.85)
    assert w.shape == (1, 2, 2) and w.dtype == torch.float64
    assert w.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    # kappa .3: .9 (u = .325) now fails the uncertainty bound although it is confident
    assert hermes.dual_threshold_mask(probs, kappa=0.3, tau=0.85).tolist() == [[[0.0, 0.0], [1.0, 0.0]]]
    # classification shape (B,C) -> (B,)
    assert hermes.dual_threshold_mask(t64([[0.05, 0.95], [0.6, 0.4]]), 0.4, 0.85).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- eq. (16), (17)

def test_uncertainty_threshold_schedule():
    assert hermes.uncertainty_threshold(0, 3000) == pytest.approx(0.75, abs=1e-12)
    assert hermes.uncertainty_threshold(3000, 3000) == pytest.approx(0.25, abs=1e-12)
    assert hermes.uncertainty_threshold(1500, 3000) == pytest.approx(0.5, abs=1e-12)   # cos(π/2) = 0
    assert hermes.uncertainty_threshold(0, 10, eta_max=0.6, eta_min=0.1) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        hermes.uncertainty_threshold(0, 0)


def test_confidence_threshold_schedule():
    # 0.75 + 0.25 e^{-0.5} ln2 = 0.8551 ; 0.75 + 0.25 ln2 = 0.9233 (eq. (17) read literally)
    assert hermes.confidence_threshold(0, 3000) == pytest.approx(0.8551, abs=1e-3)
    assert hermes.confidence_threshold(3000, 3000) == pytest.approx(0.9233, abs=1e-3)
    assert hermes.confidence_threshold(0, 3000) == pytest.approx(0.75 + 0.25 * math.exp(-0.5) * math.log(2), abs=1e-12)
    taus = [hermes.confidence_threshold(i, 100) for i in range(101)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))


# ---------------------------------------------------------------- eq. (9), (10)

def test_seg_unsupervised_loss_by_hand():
    # image 1: strong p = [[.5, .75], [.75, .25]]; weak argmax = [[0, 1], [1, 1]]; w = [[1, 1], [0, 1]]
    #   kept pixels: (p, g) = (.5, 0), (.75, 1), (.25, 1)
    #   Σwpg = 1.0, Σwp = 1.5, Σwg = 2 -> Dice_1 = 1 - (2 + 1e-5) / (3.5 + 1e-5)
    # image 2: w = 0 everywhere -> adds 0;  loss = Dice_1 / 2 (divided by all B = 2 images)
    logits_s = seg_logits_from_diff([[[0, LN3], [LN3, -LN3]], [[1, 2], [3, 4]]])
    logits_w = seg_logits_from_diff([[[-1, 1], [1, 2]], [[1, 1], [1, 1]]])
    w = t64([[[1, 1], [0, 1]], [[0, 0], [0, 0]]])
    expected = (1 - (2 + SM) / (3.5 + SM)) / 2
    assert losses.seg_unsupervised_loss(logits_s, logits_w, w).item() == pytest.approx(expected, abs=1e-10)


def test_cls_unsupervised_loss_by_hand():
    # strong logits [0,0], [ln3,0], [0,ln3]; weak argmax 0, 1, 1; w = 1, 1, 0
    #   CE = ln2 (p = .5), ln4 (p_1 = 1/4), excluded -> (ln2 + ln4) / 3 = ln2
    logits_s = t64([[0, 0], [LN3, 0], [0, LN3]])
    logits_w = t64([[1, 0], [0, 2], [0, 1]])
    out = losses.cls_unsupervised_loss(logits_s, logits_w, t64([1, 1, 0]))
    assert out.item() == pytest.approx(math.log(2), abs=1e-12)


# ---------------------------------------------------------------- eq. (11)

def naive_pixel_loss(a, la, k, lk, T):
    total, n = 0.0, 0
    for i in range(a.shape[0]):
        P = [j for j in range(k.shape[0]) if lk[j] == la[i]]
        N = [j for j in range(k.shape[0]) if lk[j] != la[i]]
        if not P:
            continue
        neg = sum(math.exp(float(a[i] @ k[j]) / T) for j in N)
        L = 0.0
        for p in P:
            e = math.exp(float(a[i] @ k[p]) / T)
            L -= math.log(e / (e + neg))
        total += L / len(P)
        n += 1
    return total / n if n else 0.0


def test_pixel_contrastive_loss_by_hand():
    # T = 1. a1 = (1,0) label 0: P = {k1 (s=1), k2 (s=0)}, N = {k3 (s=0)}
    #   L1 = -½ [ (1 - ln(e + 1)) + (0 - ln(1 + 1)) ]
    # a2 = (0,1) label 1: P = {k3 (s=1)}, N = {k1 (s=0), k2 (s=1)}
    #   L2 = -(1 - ln(e + 1 + e))
    # a3 label 2 has no positive: skipped.  loss = (L1 + L2) / 2
    a = t64([[1, 0], [0, 1], [1, 0]])
    k = t64([[1, 0], [0, 1], [0, 1]])
    L1 = -0.5 * ((1 - math.log(E + 1)) + (0 - math.log(2)))
    L2 = -(1 - math.log(2 * E + 1))
    out = losses.pixel_contrastive_loss(a, torch.tensor([0, 1, 2]), k, torch.tensor([0, 0, 1]), temperature=1.0)
    assert out.item() == pytest.approx((L1 + L2) / 2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_contrastive_loss_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(13, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(21, 8, generator=g, dtype=torch.float64), dim=1)
    la, lk = torch.randint(0, 2, (13,), generator=g), torch.randint(0, 2, (21,), generator=g)
    for T in (0.07, 0.5):
        out = losses.pixel_contrastive_loss(a, la, k, lk, T)
        assert out.item() == pytest.approx(naive_pixel_loss(a, la, k, lk, T), rel=1e-9, abs=1e-9)



@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_contrastive_loss_masks_equal_the_selected_rows(seed):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(13, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(21, 8, generator=g, dtype=torch.float64), dim=1)
    la, lk = torch.randint(0, 2, (13,), generator=g), torch.randint(0, 2, (21,), generator=g)
    ma, mk = torch.rand(13, generator=g) > 0.3, torch.rand(21, generator=g) > 0.5
    a.requires_grad_(True)
    out = losses.pixel_contrastive_loss(a, la, k, lk, 0.1, anchor_mask=ma, key_mask=mk)
    assert out.item() == pytest.approx(naive_pixel_loss(a.detach()[ma], la[ma], k[mk], lk[mk], 0.1), rel=1e-12)
    (grad,) = torch.autograd.grad(out, a)
    assert torch.isfinite(grad).all() and (grad[~ma] == 0).all()
    mk_one = torch.zeros(21, dtype=torch.bool)
    mk_one[lk == 0] = True                                          # only label-0 keys: no negatives at all
    out = losses.pixel_contrastive_loss(a, la, k, lk, 0.1, key_mask=mk_one)
    assert out.item() == pytest.approx(naive_pixel_loss(a.detach(), la, k[mk_one], lk[mk_one], 0.1), rel=1e-12)
    none = losses.pixel_contrastive_loss(a, la, k, lk, 0.1, anchor_mask=torch.zeros(13, dtype=torch.bool))
    assert none.item() == 0

def masked_form_pixel_loss(anchors, anchor_labels, keys, key_labels, temperature, anchor_mask=None, key_mask=None):
    """The earlier losses.pixel_contrastive_loss (before the per-class sums): eq. (11) with (K,M) masks,
    a masked log-sum-exp over N_i and log(e^s / (e^s + e^nlse)) = s - logaddexp(s, nlse) on every pair."""
    s = (anchors @ keys.T) / temperature
    same = anchor_labels.reshape(-1, 1) == key_labels.reshape(1, -1)
    present = key_mask.reshape(1, -1) if key_mask is not None else torch.ones_like(same[:1])
    pos, neg = same & present, ~same & present
    neg_lse = s.masked_fill(~neg, torch.finfo(s.dtype).min).logsumexp(1, keepdim=True)
    neg_lse = torch.where(neg.any(1, keepdim=True), neg_lse, torch.full_like(neg_lse, float("-inf")))
    log_ratio = s - torch.logaddexp(s, neg_lse)
    n_pos = pos.sum(1)
    L = -(log_ratio * pos).sum(1) / n_pos.clamp_min(1)
    has_pos = n_pos > 0
    if anchor_mask is not None:
        has_pos = has_pos & anchor_mask.reshape(-1)
    has_pos = has_pos.to(L.dtype)
    return (L * has_pos).sum() / has_pos.sum().clamp_min(1)


@pytest.mark.parametrize("one_hot", [True, False], ids=["one-hot sums (CPU)", "masks (CUDA)"])
def test_pixel_contrastive_loss_equals_the_masked_form(monkeypatch, one_hot):
    """Per-class sums + softplus give eq. (11) as the earlier masked log-sum-exp form did, value and gradient,
    in float64 on random anchors and keys with masks, 1-3 classes, anchors without positives or negatives,
    τ = 1, 0.07 and 0.01 and vectors of norm 1 and 5 (similarities spanning up to 5000)."""
    monkeypatch.setattr(losses, "ONE_HOT_DEVICES", ("cpu",) if one_hot else ())
    worst = 0.0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        K, M = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        n_cls = 1 + seed % 3
        la, lk = torch.randint(0, n_cls, (K,), generator=g), torch.randint(0, n_cls, (M,), generator=g)
        ma, mk = torch.rand(K, generator=g) > 0.3, torch.rand(M, generator=g) > 0.3
        for T in (1.0, 0.07, 0.01):
            for norm in (1.0, 5.0):
                a = norm * F.normalize(torch.randn(K, 6, generator=g, dtype=torch.float64), dim=1)
                k = norm * F.normalize(torch.randn(M, 6, generator=g, dtype=torch.float64), dim=1)
                out, grads = [], []
                for fn in (losses.pixel_contrastive_loss, masked_form_pixel_loss):
                    x = a.clone().requires_grad_(True)
                    v = fn(x, la, k, lk, T, anchor_mask=ma, key_mask=mk)
                    (grad,) = torch.autograd.grad(v, x, allow_unused=True) if v.requires_grad else (None,)
                    out.append(v.item())
                    grads.append(torch.zeros_like(a) if grad is None else grad)
                assert out[0] == pytest.approx(out[1], rel=1e-12, abs=1e-12), (seed, T, norm)
                assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12), (seed, T, norm)
                worst = max(worst, abs(out[0] - out[1]) / max(abs(out[1]), 1e-300))
    assert worst < 1e-12


# ---------------------------------------------------------------- eqs. (12)–(13)

def naive_image_loss(v, lab, wt, T, bank=None, bank_lab=None):
    n2 = v.shape[0]
    N = n2 // 2
    rows = [(v[j], int(lab[j]), float(wt[j]), j) for j in range(n2)]
    if bank is not None:
        rows += [(bank[j], int(bank_lab[j]), 1.0, None) for j in range(bank.shape[0])]
    total, n = 0.0, 0
    for i in range(n2):
        den = sum(math.exp(float(v[i] @ r[0]) / T) for j, r in enumerate(rows) if j != i)
        num, wsum = 0.0, 0.0
        for j, (vp, lp, wp, jj) in enumerate(rows):
            if j == i or lp != int(lab[i]):
                continue
            if jj is not None and jj == (i + N) % n2:
                w_ip = 1.0                                  # eq. (13), other view of the same image
            elif jj is None:
                w_ip = float(wt[i])                         # bank entry (its own weight is 1)
            else:
                w_ip = float(wt[i]) * wp
            num += w_ip * math.log(math.exp(float(v[i] @ vp) / T) / den)
            wsum += w_ip
        if wsum > 0:
            total += -num / wsum
            n += 1
    return total / n if n else 0.0


def test_image_contrastive_loss_by_hand():
    # T = 1, v0 = v2 = (1,0) (image 0), v1 = v3 = (0,1) (image 1); every denominator = e + 2
    v = t64([[1, 0], [0, 1], [1, 0], [0, 1]])
    # (a) one label, all weights 1: row 0 has positives v1 (s 0), v2 (s 1), v3 (s 0)
    #     L0 = -[(0 - ln(e+2)) + (1 - ln(e+2)) + (0 - ln(e+2))] / 3 = ln(e+2) - 1/3, same for every row
    out = losses.image_contrastive_loss(v, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.float64), 1.0)
    assert out.item() == pytest.approx(math.log(E + 2) - 1 / 3, abs=1e-12)
    # (b) weights (1, 0) per image: only the other view keeps weight 1 -> L_i = ln(e+2) - 1
    out = losses.image_contrastive_loss(v, torch.zeros(4, dtype=torch.long), t64([1, 0, 1, 0]), 1.0)
    assert out.item() == pytest.approx(math.log(E + 2) - 1, abs=1e-12)
    # (c) labels (0, 1) per image given as (N,) and weights as (N,): the same ln(e+2) - 1
    out = losses.image_contrastive_loss(v, torch.tensor([0, 1]), t64([1, 1]), 1.0)
    assert out.item() == pytest.approx(math.log(E + 2) - 1, abs=1e-12)
    # (d) case (b) plus a bank entry b = (1,0), label 0:
    #     rows 0, 2 (w 1): den = e + 2 + e; positives other view (s 1, w 1) and b (s 1, w 1) -> ln(2e+2) - 1
    #     rows 1, 3 (w 0): den = e + 2 + 1; positives other view (s 1, w 1), b has weight w_i = 0 -> ln(e+3) - 1
    out = losses.image_contrastive_loss(v, torch.zeros(4, dtype=torch.long), t64([1, 0, 1, 0]), 1.0,
                                        bank_feats=t64([[1, 0]]), bank_labels=torch.tensor([0]))
    assert out.item() == pytest.approx((math.log(2 * E + 2) + math.log(E + 3)) / 2 - 1, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_bank", [False, True])
def test_image_contrastive_loss_vs_loop(seed, with_bank):
    g = torch.Generator().manual_seed(seed)
    N = 5
    v = F.normalize(torch.randn(2 * N, 6, generator=g, dtype=torch.float64), dim=1)
    lab = torch.randint(0, 2, (N,), generator=g).repeat(2)
    wt = (torch.rand(N, generator=g) > 0.4).double().repeat(2)
    if seed == 2:   # labels need not agree across views for the function itself
        lab = torch.randint(0, 2, (2 * N,), generator=g)
        wt = (torch.rand(2 * N, generator=g) > 0.4).double()
    bank = bank_lab = None
    if with_bank:
        bank = F.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1)
        bank_lab = torch.randint(0, 2, (7,), generator=g)
    for T in (0.07, 0.5):
        out = losses.image_contrastive_loss(v, lab, wt, T, bank_feats=bank, bank_labels=bank_lab)
        assert out.item() == pytest.approx(naive_image_loss(v, lab, wt, T, bank, bank_lab), rel=1e-9, abs=1e-9)



def test_image_contrastive_loss_bank_mask_equals_the_filled_slots():
    g = torch.Generator().manual_seed(3)
    v = F.normalize(torch.randn(8, 6, generator=g, dtype=torch.float64), dim=1)
    lab, wt = torch.randint(0, 2, (4,), generator=g).repeat(2), (torch.rand(4, generator=g) > 0.4).double().repeat(2)
    bank = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=1)
    bank_lab, filled = torch.randint(0, 2, (9,), generator=g), torch.rand(9, generator=g) > 0.5
    out = losses.image_contrastive_loss(v, lab, wt, 0.2, bank_feats=bank, bank_labels=bank_lab, bank_mask=filled)
    assert out.item() == pytest.approx(naive_image_loss(v, lab, wt, 0.2, bank[filled], bank_lab[filled]), rel=1e-12)
    empty = losses.image_contrastive_loss(v, lab, wt, 0.2, bank_feats=bank, bank_labels=bank_lab,
                                          bank_mask=torch.zeros(9, dtype=torch.bool))
    assert empty.item() == pytest.approx(naive_image_loss(v, lab, wt, 0.2), rel=1e-12)

def test_image_contrastive_loss_rejects_odd_rows():
    with pytest.raises(ValueError, match="2N"):
        losses.image_contrastive_loss(torch.randn(3, 4), torch.zeros(3), torch.ones(3), 0.07)


# ---------------------------------------------------------------- eq. (14), (15)

def test_inter_task_consistency_by_hand():
    # cos = 1, 0, 24/25 -> mean(0, 1, 1/25)
    f_cls = t64([[1, 0], [1, 0], [3, 4]])
    f_seg = t64([[1, 0], [0, 2], [4, 3]])
    assert losses.inter_task_consistency_loss(f_cls, f_seg).item() == pytest.approx((1 + 0.04) / 3, abs=1e-12)


def test_total_loss():
    parts = dict(seg_l=1.0, seg_u=2.0, seg_c=3.0, cls_l=4.0, cls_u=5.0, cls_c=6.0, itc=7.0)
    # 0.5 (1 + 2 + 0.8*3) + 1.0 (4 + 5 + 0.2*6) + 0.1*7 = 2.7 + 10.2 + 0.7
    assert losses.total_loss(parts, PAPER).item() == pytest.approx(13.6, abs=1e-5)
    terms = losses.weighted_terms(parts, PAPER)
    assert terms == pytest.approx(dict(seg_l=0.5, seg_u=1.0, seg_c=1.2, cls_l=4.0, cls_u=5.0, cls_c=1.2, itc=0.7))
    # missing keys (and None) count as 0: 0.5*1 + 1.0*4
    assert losses.total_loss({"seg_l": t64(1.0), "cls_l": t64(4.0), "itc": None}, PAPER).item() == pytest.approx(4.5)
    assert losses.total_loss({}, PAPER).item() == 0.0
    seg_only = {**dict.fromkeys(losses.PARTS, 0.0), "seg_l": 1.0, "seg_u": 1.0, "seg_c": 1.0}
    assert losses.total_loss(parts, seg_only).item() == pytest.approx(6.0)
    with pytest.raises(KeyError, match="seg_x"):
        losses.total_loss({"seg_x": 1.0}, PAPER)
    with pytest.raises(KeyError):                                                  # every coefficient is given
        losses.total_loss(parts, {"seg_l": 1.0})


# ---------------------------------------------------------------- edge cases and autograd

def test_edge_cases_are_finite_zeros():
    zl = torch.randn(2, 2, 4, 4, requires_grad=True)
    # no reliable pixel / image
    out = losses.seg_unsupervised_loss(zl, torch.randn(2, 2, 4, 4), torch.zeros(2, 4, 4))
    assert out.item() == 0.0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(zl.grad).all()
    c = torch.randn(3, 2, requires_grad=True)
    assert losses.cls_unsupervised_loss(c, torch.randn(3, 2), torch.zeros(3)).item() == 0.0
    # empty mask image: finite
    assert torch.isfinite(losses.seg_supervised_loss(zl, torch.zeros(2, 4, 4, dtype=torch.long)))
    # no positive for any anchor -> 0, with a graph
    a = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    k = F.normalize(torch.randn(5, 3), dim=1)
    out = losses.pixel_contrastive_loss(a, torch.ones(4, dtype=torch.long), k, torch.zeros(5, dtype=torch.long), 0.07)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(a.grad).all()
    # anchors with positives but no negative at all: log(e/e) = 0, finite gradient
    a.grad = None
    out = losses.pixel_contrastive_loss(a, torch.zeros(4, dtype=torch.long), k, torch.zeros(5, dtype=torch.long), 0.07)
    out.backward()
    assert out.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(a.grad).all()
    # empty anchors / empty keys
    e = torch.zeros(0, 3, requires_grad=True)
    out = losses.pixel_contrastive_loss(e, torch.zeros(0, dtype=torch.long), k, torch.zeros(5, dtype=torch.long), 0.07)
    assert out.item() == 0.0 and out.requires_grad and out.dtype == torch.float32
    out = losses.pixel_contrastive_loss(a, torch.zeros(4, dtype=torch.long), k[:0], torch.zeros(0, dtype=torch.long), 0.07)
    assert out.item() == 0.0 and out.requires_grad
    # image contrast: all pair weights zero (views disagree in label, weights 0) -> 0
    v = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    out = losses.image_contrastive_loss(v, torch.tensor([0, 1, 1, 0]), torch.zeros(4), 0.07)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(v.grad).all()
    # empty image batch
    out = losses.image_contrastive_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0), torch.zeros(0), 0.07)
    assert out.item() == 0.0 and out.requires_grad
    # near-identical embeddings at a tiny temperature: log-sum-exp keeps it finite
    v = F.normalize(torch.ones(4, 3) + 1e-3 * torch.randn(4, 3), dim=1)
    assert torch.isfinite(losses.image_contrastive_loss(v, torch.tensor([0, 1]), torch.ones(2), 0.001))
    out = losses.pixel_contrastive_loss(v, torch.tensor([0, 1, 0, 1]), v, torch.tensor([1, 1, 0, 0]), 0.001)
    assert torch.isfinite(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_flow(dtype):
    g = torch.Generator().manual_seed(0)
    L = torch.randn(2, 2, 4, 4, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 2, (2, 4, 4), generator=g)
    c = torch.randn(3, 2, generator=g, dtype=dtype, requires_grad=True)
    f = torch.randn(6, 5, generator=g, dtype=dtype, requires_grad=True)
    fn = F.normalize(f, dim=1)
    w_pix = torch.ones(2, 4, 4, dtype=dtype)
    parts = {
        "seg_l": losses.seg_supervised_loss(L, y),
        "seg_u": losses.seg_unsupervised_loss(L, torch.randn(2, 2, 4, 4, generator=g, dtype=dtype), w_pix),
        "seg_c": losses.pixel_contrastive_loss(fn[:3], torch.tensor([0, 1, 0]), fn[3:].detach(),
                                               torch.tensor([0, 1, 1]), 0.07),
        "cls_l": losses.cls_supervised_loss(c, torch.tensor([0, 1, 1])),
        "cls_u": losses.cls_unsupervised_loss(c, torch.randn(3, 2, generator=g, dtype=dtype),
                                              torch.ones(3, dtype=dtype)),
        "cls_c": losses.image_contrastive_loss(fn, torch.tensor([0, 1, 1]), torch.ones(3, dtype=dtype), 0.07),
        "itc": losses.inter_task_consistency_loss(c, c.detach().flip(0)),
    }
    for k, v in parts.items():
        assert v.dim() == 0 and v.dtype == dtype and torch.isfinite(v), k
    losses.total_loss(parts, PAPER).backward()
    for t in (L, c, f):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_seg_unsupervised_ce_loss_by_hand():
    # one image, 1x2 pixels; strong logits give p = softmax([0, ln 3]) = (1/4, 3/4) at both pixels;
    # weak argmax: pixel 0 -> class 1, pixel 1 -> class 0; only pixel 0 kept.
    s = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]]]], dtype=torch.float64)   # (1,2,1,2)
    w_logits = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]], dtype=torch.float64)
    w = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    # Σ w CE / (number of pixels) = -ln(3/4) / 2
    assert losses.seg_unsupervised_ce_loss(s, w_logits, w).item() == pytest.approx(-math.log(0.75) / 2)
    w2 = torch.ones(1, 1, 2, dtype=torch.float64)                                  # both kept
    assert losses.seg_unsupervised_ce_loss(s, w_logits, w2).item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)
    assert losses.seg_unsupervised_ce_loss(s, w_logits, torch.zeros_like(w)).item() == 0.0
