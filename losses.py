"""Hermes losses: eq. (1), (2), (9), (10), (11), (12)-(13), (14), (15) as plain functions.

All functions take float32 or float64 tensors (half / bfloat16 inputs, e.g. under autocast, are promoted to
float32), are vectorised, return differentiable 0-d tensors, and stay finite on the edge cases (no kept pixel,
an anchor without positive, an empty batch, all weights zero): an empty term is an exact 0 that still carries
a grad_fn when its inputs require grad.

Example:
    >>> logits, mask = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    >>> seg_supervised_loss(logits, mask)   # eq. (1)
"""
import torch
import torch.nn.functional as F

DICE_SMOOTH = 1e-5  # the Dice smoothing of eq. (1) and (9) (README "Paper ↔ code", eq. (1))
# The seven terms of eq. (15): L^l_seg, L^u_seg, L^seg_c, L^l_cls, L^u_cls, L^cls_c, L^u_itc
# (log.csv's order).
PARTS = ("seg_l", "seg_u", "seg_c", "cls_l", "cls_u", "cls_c", "itc")

# Device types on which eq. (11)'s per-class sums are one-hot matmuls (pixel_contrastive_loss): they read the
# number of classes from the labels, a host read that costs nothing on CPU and would make CUDA wait.
ONE_HOT_DEVICES = ("cpu",)


def _hi(x):
    """Promote half / bfloat16 to float32; float32 and float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _zero_like(*tensors):
    """An exact 0 of the tensors' dtype/device that keeps their autograd graph (grad 0) when they require
    grad."""
    t = tensors[0]
    z = t.new_zeros(())
    for t in tensors:
        if t.requires_grad:
            z = z + t.sum() * 0.0
    return z


def _matmul_fp(a, b):
    """a @ b.T in the inputs' (promoted) precision even under autocast (bf16 similarities / 0.07 lose
    digits)."""
    dt = torch.promote_types(_hi(a).dtype, _hi(b).dtype)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return a.to(dt) @ b.to(dt).T


def _dice_loss(p, g, w=None):
    """Per image 1 - (2 Σ w p g + 1e-5) / (Σ w p + Σ w g + 1e-5).  p, g, w (B,H,W) -> (B,)"""
    if w is not None:
        p, g = p * w, g * w
    inter = (p * g).flatten(1).sum(1)                                              # (B,)
    den = p.flatten(1).sum(1) + g.flatten(1).sum(1)                                # (B,)
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (den + DICE_SMOOTH)


def seg_supervised_loss(logits, mask):
    """eq. (1): L^l_seg = mean_i ½ (CE_i + Dice_i).

    CE_i is the pixel-mean cross-entropy of image i; Dice_i = 1 - (2Σpg + 1e-5)/(Σp + Σg + 1e-5) on the
    lesion-channel softmax p = softmax(logits)[:, 1].

    logits (B,2,H,W) float, mask (B,H,W) in {0,1} (any int/float/bool dtype) -> 0-d tensor.
    """
    if logits.shape[0] == 0:
        return _zero_like(logits)
    logits = _hi(logits)
    mask = mask.long()
    ce = F.cross_entropy(logits, mask, reduction="none").flatten(1).mean(1)       # (B,)
    p = logits.softmax(1)[:, 1]                                                    # (B,H,W)
    dice = _dice_loss(p, mask.to(p.dtype))                                         # (B,)
    return (0.5 * (ce + dice)).mean()                                              # eq. (1)


def cls_supervised_loss(logits, labels):
    """eq. (2): L^l_cls = mean_i CE(logits_i, labels_i).  logits (B,C), labels (B,) int -> 0-d tensor."""
    if logits.shape[0] == 0:
        return _zero_like(logits)
    return F.cross_entropy(_hi(logits), labels.long())                             # eq. (2)


def seg_unsupervised_loss(logits_s, logits_w, w):
    """eq. (9): L^u_seg = (1/B) Σ_j Dice_w(strong_j, argmax weak_j).

    Per image j, Dice as in eq. (1) between the strong view's lesion probability and the pseudo-mask
    (argmax of the weak logits), over the pixels with w = 1 (w multiplies every sum); an image with no
    kept pixel adds exactly 0 (its Dice is 1 - 1e-5/1e-5); the sum is divided by all B images.

    logits_s, logits_w (B,2,H,W), w (B,H,W) float 0/1 -> 0-d tensor. No gradient reaches logits_w.
    """
    B = logits_s.shape[0]
    if B == 0:
        return _zero_like(logits_s)
    logits_s = _hi(logits_s)
    p = logits_s.softmax(1)[:, 1]                                                  # (B,H,W)
    g = logits_w.detach().max(1).indices.to(p.dtype)  # (B,H,W) pseudo-mask; = argmax(1), 15x faster on CPU
    w = w.detach().to(p.dtype)
    kept = (w.flatten(1).sum(1) > 0).to(p.dtype)                                   # (B,)
    return (kept * _dice_loss(p, g, w)).sum() / B                                  # eq. (9)


def seg_unsupervised_ce_loss(logits_s, logits_w, w):
    """Not in the paper (`--unsup-seg-loss ce`, docs/when-does-hermes-help.md): the pixel form of FixMatch's
    loss, Σ_pixels w · CE(strong, argmax weak) / (number of pixels), so few kept pixels give a small loss
    (eq. (9)'s Dice over the kept pixels weighs an image by its kept set, however small or lesion-free).

    logits_s, logits_w (B,2,H,W), w (B,H,W) float 0/1 -> 0-d tensor. No gradient reaches logits_w.
    """
    if logits_s.shape[0] == 0:
        return _zero_like(logits_s)
    logits_s = _hi(logits_s)
    pseudo = logits_w.detach().max(1).indices                                      # (B,H,W) argmax
    ce = F.cross_entropy(logits_s, pseudo, reduction="none")                       # (B,H,W)
    return (w.detach().to(ce.dtype) * ce).mean()


def cls_unsupervised_loss(logits_s, logits_w, w):
    """eq. (10): L^u_cls = (1/B) Σ_j w_j CE(strong_j, argmax weak_j).

    logits_s, logits_w (B,C), w (B,) float 0/1 -> 0-d tensor. No gradient reaches logits_w.
    """
    B = logits_s.shape[0]
    if B == 0:
        return _zero_like(logits_s)
    logits_s = _hi(logits_s)
    pseudo = logits_w.detach().argmax(1)                                           # (B,)
    ce = F.cross_entropy(logits_s, pseudo, reduction="none")                       # (B,)
    return (w.detach().to(ce.dtype) * ce).sum() / B                                # eq. (10)


def pixel_contrastive_loss(anchors, anchor_labels, keys, key_labels, temperature, anchor_mask=None,
                           key_mask=None):
    """eq. (11): pixel InfoNCE with one negative set per positive.

    For anchor i with positives P_i (keys of its label) and negatives N_i (keys of another label):
        L_i = -(1/|P_i|) Σ_{p∈P_i} log( e^{i·p/τ} / (e^{i·p/τ} + Σ_{n∈N_i} e^{i·n/τ}) )
    The loss is the mean of L_i over the anchors with P_i non-empty, 0 if there is none. The w of eq. (11)
    is realised by the caller, which passes only anchors and keys with w = 1 (w = 0 inside the log would be
    log 0), or fixed-size rows with anchor_mask / key_mask (bool, False = absent): the same value as passing
    only the rows marked True, without the host sync of a boolean selection. Vectors are used as given (the
    model L2-normalises them).

    anchors (K,D), anchor_labels (K,), keys (M,D), key_labels (M,), anchor_mask (K,), key_mask (M,)
    -> 0-d tensor.
    """
    K, M = anchors.shape[0], keys.shape[0]
    if K == 0 or M == 0:
        return _zero_like(anchors, keys)
    # -log( e^a / (e^a + e^b) ) = softplus(b - a), so with s_ij = i·j/τ and
    # nlse_i = log Σ_{n∈N_i} e^{s_in}:
    #     L_i = (1/|P_i|) Σ_{p∈P_i} softplus(nlse_i - s_ip)                                     eq. (11)
    # One exp per pair (for nlse) and one softplus; the sums over P_i and N_i are per-class sums.
    s = _matmul_fp(_hi(anchors) / temperature, keys)                               # (K,M) s_ij
    la, lk = anchor_labels.reshape(-1).long(), key_labels.reshape(-1).long()       # (K,), (M,)
    present = key_mask.reshape(-1) if key_mask is not None else torch.ones_like(lk, dtype=torch.bool)  # (M,)
    if s.device.type in ONE_HOT_DEVICES:   # one matmul with the keys' one-hot classes instead of (K,M) masks
        C = int(torch.maximum(la.max(), lk.max())) + 1
        key_cls = torch.where(present, lk, C)                                      # absent keys: class C
        key_1h = F.one_hot(key_cls, C + 1)[:, :C].to(s.dtype)                      # (M,C)
        own = F.one_hot(la, C).bool()                                              # (K,C) anchor i's class
        per_class = lambda x: _matmul_fp(x, key_1h.T)                             # (K,C) Σ_{j: class c} x_ij
        pos_sum = lambda x: per_class(x).masked_fill(~own, 0).sum(1)               # Σ_{p∈P_i} x_ip
        neg_sum = lambda x: per_class(x).masked_fill(own, 0).sum(1)                # Σ_{n∈N_i} x_in
        class_max = s.new_full((K, C + 1), float("-inf")).scatter_reduce_(
            1, key_cls.expand(K, M), s.detach(), "amax")[:, :C]                    # (K,C) max_j of class c
        neg_max = class_max.masked_fill(own, float("-inf")).amax(1)                # (K,)
        n_pos = key_1h.sum(0)[la]                                                  # (K,) |P_i|
        n_neg = present.sum() - n_pos                                              # (K,) |N_i|
    else:
        same = la.reshape(-1, 1) == lk.reshape(1, -1)                              # (K,M)
        pos, neg = same & present, ~same & present                                 # (K,M)
        pos_sum = lambda x: torch.where(pos, x, 0).sum(1)
        neg_sum = lambda x: torch.where(neg, x, 0).sum(1)
        neg_max = s.detach().masked_fill(~neg, float("-inf")).amax(1)              # (K,)
        n_pos, n_neg = pos.sum(1), neg.sum(1)
    has_neg = n_neg > 0
    m = torch.where(has_neg, neg_max, 0).reshape(-1, 1)      # (K,1) shift: e^{s_in - m_i} <= 1 on N_i
    z = s - m
    # Σ_{n∈N_i} e^{s_in - m_i}, >= 1 with a negative (its max gives e^0); z > 0 (keys outside N_i) set to 0
    # so that no exp overflows
    neg_exp = neg_sum(torch.exp(z.masked_fill(z > 0, 0)))                         # (K,)
    nlse = m + torch.log(neg_exp.clamp_min(torch.finfo(s.dtype).tiny)).reshape(-1, 1)  # (K,1)
    L = pos_sum(F.softplus(nlse - s, threshold=40)) / n_pos.clamp_min(1)           # (K,) eq. (11)
    L = torch.where(has_neg, L, 0)                           # no negative: log(e^s / e^s) = 0
    has_pos = n_pos > 0
    if anchor_mask is not None:
        has_pos = has_pos & anchor_mask.reshape(-1)
    has_pos = has_pos.to(L.dtype)
    return (L * has_pos).sum() / has_pos.sum().clamp_min(1)


def image_contrastive_loss(features, labels, weights, temperature, bank_feats=None, bank_labels=None,
                           bank_mask=None):
    """eqs. (12)–(13): class-aware image contrast with pair weights.

    features (2N,D) unit vectors, rows i and i+N the two views of image i; labels (2N,) (or (N,), repeated);
    weights (2N,) float 0/1 (or (N,), repeated). Positives P(i) = {p ≠ i with the same label}; pair weight
    w_ip = 1 for the other view of the same image (eq. (13), j = i), else weights_i · weights_p.
    With s = v·v/τ:
        L_i = -Σ_p w_ip log( e^{s_ip} / Σ_{j≠i} e^{s_ij} ) / Σ_p w_ip          (eq. (12))
    and the loss is the mean of L_i over the i with Σ_p w_ip > 0 (0 if none).

    bank_feats (Mb,D), bank_labels (Mb,): optional memory-bank entries (detached; only reliable entries are
    pushed, so their own weight is 1): extra denominator terms for every anchor, extra positives when the
    label matches, with pair weight weights_i. Without a bank this is exactly the formula above.
    bank_mask (Mb,) bool, False = empty slot: the same value as passing only the slots marked True.
    -> 0-d tensor.
    """
    n2 = features.shape[0]
    if n2 % 2:
        raise ValueError(f"image_contrastive_loss: features must hold 2N rows (two views), got {n2}")
    N = n2 // 2
    labels, weights = labels.reshape(-1), weights.reshape(-1)
    if labels.numel() == N and N > 0:
        labels = labels.repeat(2)
    if weights.numel() == N and N > 0:
        weights = weights.repeat(2)
    if labels.numel() != n2 or weights.numel() != n2:
        raise ValueError(f"image_contrastive_loss: labels {tuple(labels.shape)} / weights "
                         f"{tuple(weights.shape)} do not match features {tuple(features.shape)}")
    if N == 0:
        return _zero_like(features)
    has_bank = bank_feats is not None and bank_feats.shape[0] > 0
    v = _hi(features)
    if has_bank:
        v_all = torch.cat([v, _hi(bank_feats.detach()).to(v.dtype)])              # (2N+Mb,D)
        l_all = torch.cat([labels, bank_labels.reshape(-1).to(labels.dtype)])     # (2N+Mb,)
    else:
        v_all, l_all = v, labels
    s = _matmul_fp(v, v_all) / temperature                                         # (2N,2N+Mb)
    idx = torch.arange(n2, device=v.device)
    absent = torch.zeros_like(s, dtype=torch.bool)
    absent[idx, idx] = True                                                        # j = i excluded
    if has_bank and bank_mask is not None:
        absent[:, n2:] = ~bank_mask.reshape(1, -1)                                 # empty bank slots
    log_prob = s - s.masked_fill(absent, torch.finfo(s.dtype).min).logsumexp(1, keepdim=True)  # (2N,2N+Mb)
    pos = (labels.reshape(-1, 1) == l_all.reshape(1, -1)) & ~absent                # (2N,2N+Mb) P(i)
    wt = weights.to(s.dtype)
    w_all = torch.cat([wt, wt.new_ones(l_all.numel() - n2)])                       # (2N+Mb,) bank weight 1
    pair_w = wt.reshape(-1, 1) * w_all.reshape(1, -1)                              # (2N,2N+Mb) w_i w_p
    other = torch.zeros_like(absent)
    other[idx, (idx + N) % n2] = True                                              # other view of image i
    pair_w = torch.where(other, torch.ones_like(pair_w), pair_w) * pos             # eq. (13)
    w_sum = pair_w.sum(1)                                                          # (2N,)
    L = -(pair_w * log_prob).sum(1) / w_sum.clamp_min(torch.finfo(s.dtype).tiny)   # (2N,) eq. (12)
    valid = (w_sum > 0).to(L.dtype)
    return (L * valid).sum() / valid.sum().clamp_min(1)


def inter_task_consistency_loss(f_cls, f_seg):
    """eq. (14): L^u_itc = mean_j (1 - cos(F_cls_j, F_seg_j)).  f_cls, f_seg (B,D) -> 0-d tensor."""
    if f_cls.shape[0] == 0:
        return _zero_like(f_cls, f_seg)
    return (1.0 - F.cosine_similarity(_hi(f_cls), _hi(f_seg), dim=1, eps=1e-8)).mean()  # eq. (14)


def cross_pseudo_supervision_loss(logits_a, logits_b):
    """CPS (Chen et al., CVPR 2021, eqs. (2)–(3)), the control method, not Hermes: each network learns the
    other's hard pseudo-labels with pixel cross-entropy, no threshold, no gradient through the pseudo-labels:
        L_cps = 1/|D| Σ_x 1/(W·H) Σ_i [ CE(p_1i, argmax p_2i) + CE(p_2i, argmax p_1i) ].

    logits_a, logits_b (B,C,H,W) of the two networks on the same images -> 0-d tensor (mean over images).
    """
    if logits_a.shape[0] == 0:
        return _zero_like(logits_a, logits_b)
    logits_a, logits_b = _hi(logits_a), _hi(logits_b)
    y_a, y_b = logits_a.detach().argmax(1), logits_b.detach().argmax(1)            # (B,H,W) one-hot labels
    return F.cross_entropy(logits_a, y_b) + F.cross_entropy(logits_b, y_a)        # Chen et al. eqs. (2)–(3)


def weighted_terms(parts, coefficients):
    """The seven summands of eq. (15), {part: coefficients[part] · parts[part]} (a missing part, or None,
    counts as 0); total_loss adds them up."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise KeyError(f"total_loss: unknown parts {sorted(unknown)} (expected a subset of {list(PARTS)})")
    return {k: coefficients[k] * (parts[k] if parts.get(k) is not None else 0.0) for k in PARTS}


def total_loss(parts, coefficients):
    """eq. (15): L_total = λ_seg (L^l_seg + L^u_seg + α L^seg_c) + λ_cls (L^l_cls + L^u_cls + β L^cls_c)
    + γ L^u_itc, the weighted sum of its seven terms, added up in the equation's three groups.

    parts: {part: tensor or number} with part in PARTS; a missing part (or None) counts as 0.
    coefficients: {part: number} for all seven parts, the factor of each term once the brackets are
    multiplied out (seg_c: λ_seg α, ...): hermes.eq15_coefficients, which holds the paper's constants.
    -> 0-d tensor
    """
    t = weighted_terms(parts, coefficients)
    loss = ((t["seg_l"] + t["seg_u"] + t["seg_c"])                # λ_seg (L^l_seg + L^u_seg + α L^seg_c)
            + (t["cls_l"] + t["cls_u"] + t["cls_c"])              # + λ_cls (L^l_cls + L^u_cls + β L^cls_c)
            + t["itc"])                                            # + γ L^u_itc       eq. (15)
    return loss if torch.is_tensor(loss) else torch.tensor(float(loss))
