"""ShrinkMatch (Yang, Zhao, Qi, Qiao, Shi, Zhao, "Shrinking Class Space for Enhanced Certainty in
Semi-Supervised Learning", ICCV 2023; code: github.com/LiheYoung/ShrinkMatch, CIFAR/shrinkmatch.py): a Table 2
comparator, not part of Hermes.

FixMatch on the classification branch (labeled CE; the strong view's CE to the weak view's prediction where
its confidence reaches τ), plus a loss for the *uncertain* unlabeled images: for each, the class space is
shrunk by removing the classes ranked 2nd, 3rd, ... (the "confusion classes") until the top-1 class'
renormalised confidence reaches τ; an auxiliary head then learns, on the strong view, the top-1 class in that
shrunk space. That loss is reweighted by the weak view's confidence (principle 1) and by an EMA of the certain
fraction (principle 2). The segmentation branch trains as SupOnly's (Hermes eq. (1) on the labeled images).

Equation numbers: NOT verified against the paper. They are ShrinkMatch's §3 (arXiv 2308.06777) as
reconstructed from its abstract and code; a check was tried, but the search index within reach holds only the
head of https://ar5iv.labs.arxiv.org/html/2308.06777 (title, abstract, start of §1), not §3, so check the
numbers against the PDF before quoting them:
    ShrinkMatch eq. (1)  L_x = CE(f(x), y)
    ShrinkMatch eq. (2)  L_u = (1/B_u) Σ_i 1[max p^w_i >= τ] H(p^w_i, p^s_i)
    ShrinkMatch eq. (3)  shrunk confidence of sample i with classes 2..k-1 removed (sorted p^w, descending):
                         c_i(k) = p_(1) / (p_(1) + Σ_{j>=k} p_(j));
                         k_i = the smallest k in 3..C with c_i(k) >= τ
    ShrinkMatch eq. (4)  L_s = (1/B_u) Σ_{i uncertain} w_i H(onehot(1), softmax of the auxiliary head's strong
                         logits over the shrunk space {1} ∪ {k_i..C})
    ShrinkMatch eq. (5)  principle 1: w_i = max p^w_i · 1[c_i(k_i) >= τ]
    ShrinkMatch eq. (6)  principle 2: L_s × r, r = EMA (0.999) of the certain fraction of the unlabeled batch
    ShrinkMatch eq. (7)  L = L_x + λ_u L_u + λ_s L_s
(The code's loop: `for c in range(2, C)` on the 0-based sorted classes; a sample that never reaches τ takes
the last k with weight 0.)

Two classes (Hermes' benign / malignant): the only confusion class of an uncertain image is the other class;
removing it leaves the top-1 class alone, where the softmax is 1 and the loss is 0 (the code's loop is empty
for C = 2). ShrinkMatch on this problem is therefore FixMatch (soft targets, as the code) with the auxiliary
head idle; we keep the method as published rather than invent a binary variant, and test that the shrink term
is exactly 0 for C = 2.

Paper vs code, and what this module does:
  - L_u: the code uses the weak view's soft probabilities as target (Σ -p^w log p^s, masked); so do we.
  - principle 2: the code resets the EMA of the certain fraction at every epoch (train() sets it to None);
    the paper describes one EMA over training: we keep one EMA (a buffer of the extra module, resumable).
  - the code evaluates an EMA model beside the online one; evaluation here uses the online model (train.py).
  - distribution alignment (--DA, off for CIFAR-10): not used.
  - augmentation: the paper's strong view is RandAugment; here the weak / strong views of augment.py.
  - one BatchNorm batch of labeled, weak and strong images, as the code's single forward.
"""
import config
import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators.cls_common import cls_forward, finish, hi, img_pl_stats, seg_term, soft_ce, zero_parts
from losses import cls_supervised_loss

SETTINGS = config.comparator_settings("shrinkmatch")   # declared in config.py with every other setting


class ShrinkExtra(nn.Module):
    """ShrinkMatch's auxiliary head (512 -> 128 -> 128 -> C, BatchNorm, LeakyReLU 0.1, as the code's
    head_aux on the backbone feature) and the EMA of the certain fraction (buffers ratio, ratio_set).

    Its parameters belong to the classification branch: train them with the classification optimizer (SGD)."""

    def __init__(self, dim=512, n_classes=2):
        super().__init__()
        h = dim // 4
        self.head = nn.Sequential(nn.Linear(dim, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.1),
                                  nn.Linear(h, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.1),
                                  nn.Linear(h, n_classes))
        self.register_buffer("ratio", torch.zeros(()))
        self.register_buffer("ratio_set", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update_ratio(self, certain_fraction, momentum):
        """Principle 2: r <- m r + (1 - m) fraction; the first value is the fraction itself (as the code)."""
        new = torch.where(self.ratio_set, momentum * self.ratio + (1 - momentum) * certain_fraction,
                          certain_fraction.float())
        self.ratio.copy_(new)
        self.ratio_set.fill_(True)


def build_extra(model, cfg_dict=None):
    """The auxiliary head and the certain-fraction EMA (ShrinkExtra); train its parameters with the
    classification optimizer (SGD), e.g. params = model.cls_parameters() + list(extra.parameters())."""
    n_classes = model.cls_net.fc.out_features
    return ShrinkExtra(model.cls_net.fc.in_features, n_classes).to(model.cls_net.fc.weight.device)


def shrunk_space(probs, tau):
    """ShrinkMatch eq. (3), vectorised: for each row of probs (B,C) (the weak view's probabilities), sorted
    descending, the first sorted position k in 2..C-1 (0-based) whose tail gives
    p_(0) / (p_(0) + Σ_{j>=k} p_(j)) >= τ, else C-1. -> (order (B,C) long: the sorting permutation, k (B,)
    long, reached (B,) bool, conf (B,) the shrunk confidence at k). For C <= 2 there is no such space: k = C,
    reached False, conf = p_(0)."""
    B, C = probs.shape
    p, order = probs.sort(1, descending=True)                                        # (B,C)
    if C <= 2:
        return order, torch.full((B,), C, dtype=torch.long, device=probs.device), \
            torch.zeros(B, dtype=torch.bool, device=probs.device), p[:, 0]
    tail = p.flip(1).cumsum(1).flip(1)                                  # tail[:, k] = Σ_{j>=k} p_(j)
    conf = p[:, :1] / (p[:, :1] + tail[:, 2:])                      # (B,C-2): k = 2..C-1  ShrinkMatch eq. (3)
    ok = conf >= tau
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], C - 3, dtype=torch.long))
    k = first + 2
    return order, k, ok.gather(1, first[:, None])[:, 0], conf.gather(1, first[:, None])[:, 0]


def shrink_loss(probs_w, logits_aux_s, tau):
    """ShrinkMatch eqs. (4)–(5): Σ over uncertain rows (max p^w < τ) of w_i · CE in the shrunk space, divided
    by B (principle 2's factor is applied by the caller). probs_w (B,C) detached weak probabilities,
    logits_aux_s (B,C) the auxiliary head on the strong view
    -> (loss 0-d, uncertain (B,) bool, reached (B,) bool)."""
    B, C = probs_w.shape
    probs_w = probs_w.detach()
    maxp = probs_w.amax(1)
    uncertain = maxp < tau
    order, k, reached, _ = shrunk_space(probs_w, tau)
    if C <= 2 or B == 0:                       # no confusion class can be removed without emptying the space
        return logits_aux_s.sum() * 0.0, uncertain, reached
    sorted_logits = hi(logits_aux_s).gather(1, order)                            # (B,C) in p^w's order
    pos = torch.arange(C, device=probs_w.device)[None]                               # (1,C)
    keep = (pos == 0) | (pos >= k[:, None])                                           # {top-1} ∪ {k..C-1}
    ce = -F.log_softmax(sorted_logits.masked_fill(~keep, float("-inf")), 1)[:, 0]   # target: the top-1 class
    w = maxp * reached.float() * uncertain.float()                          # ShrinkMatch eq. (5), principle 1
    return (w * ce).sum() / B, uncertain, reached                                     # ShrinkMatch eq. (4)


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One ShrinkMatch step; returns (loss, stats) like cps.cps_step. No backward. Updates extra's certain-
    fraction EMA (a buffer) when the unlabeled terms are on. Burn-in (it < cfg.burn_in): SupOnly."""
    x, y, z = batch_l
    x_w, x_s, _, z_gt = batch_u
    B_l, B_u = x.shape[0], x_w.shape[0]
    on = it >= cfg.burn_in
    seg = seg_term(model, x, y)
    f, logits = cls_forward(model, torch.cat([x, x_w, x_s]) if on else x)            # one BN batch
    L = zero_parts(logits)
    L["seg_l"] = seg                                                                  # Hermes eq. (1)
    L["cls_l"] = cls_supervised_loss(logits[:B_l], z)                                 # ShrinkMatch eq. (1)
    if not on:
        return finish(L, cfg, tau=cfg.shrinkmatch_tau)
    tau = cfg.shrinkmatch_tau
    lw, ls = logits[B_l:B_l + B_u], logits[B_l + B_u:]
    p_w = hi(lw.detach()).softmax(1)                                              # (B_u,C)
    certain = (p_w.amax(1) >= tau).float()
    L["cls_u"] = cfg.shrinkmatch_lambda_u * (soft_ce(ls, p_w) * certain).mean()      # ShrinkMatch eq. (2)
    l_shrink, _, _ = shrink_loss(p_w, extra.head(f[B_l + B_u:]), tau)               # ShrinkMatch eqs. (3)–(5)
    extra.update_ratio(certain.mean(), cfg.shrinkmatch_ratio_momentum)               # ShrinkMatch eq. (6)
    L["cls_c"] = cfg.shrinkmatch_lambda_shrink * extra.ratio * l_shrink             # ShrinkMatch eqs. (6)–(7)
    pl = p_w.argmax(1)
    return finish(L, cfg, tau=tau, img_stats=img_pl_stats(p_w, pl, certain, z_gt, tau))
