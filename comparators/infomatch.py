"""InfoMatch (Han, Tian, Xia, Zhan, "InfoMatch: Entropy Neural Estimation for Semi-Supervised Image
Classification", IJCAI 2024; code: github.com/kunzhan/InfoMatch, infoMatch_c10.py): a Table 2 comparator, not
part of Hermes.

Two entropy views of the unlabeled images. The posterior's entropy is bounded by the likelihood of the softmax
predictions: pseudo supervision, the strong views and a CutMix of the weak views learn the weak view's
prediction where it passes a self-adaptive threshold (an EMA of the confidence, scaled per class by an EMA of
the class probabilities, as FreeMatch). The data entropy is bounded below by the mutual information between
two strongly augmented views, estimated contrastively (InfoNCE across the batch): maximising that estimate is
the "entropy neural estimation". The segmentation branch trains as SupOnly's (Hermes eq. (1) on the labeled
images).

Equation numbers: NOT verified against the paper. They are InfoMatch's §3 (arXiv 2404.11003) as reconstructed
from its abstract and code; a check was tried, but the search index within reach holds only the head of
https://arxiv.org/html/2404.11003v3 (title, abstract, start of §1), not §3, so check the numbers against the
PDF before quoting them:
    InfoMatch eq. (1)  L_x = CE(f(x), y)
    InfoMatch eq. (2)  self-adaptive threshold τ(c) = τ_t · p̃_t(c) / max_c' p̃_t(c'),
                       τ_t = EMA of mean max p^w, p̃_t = EMA of mean p^w (momentum 0.999)
    InfoMatch eq. (3)  L_u = ½ L_mix + ¼ CE(f(s1), ŷ)·m + ¼ CE(f(s2), ŷ)·m, L_mix = λ CE(f(mix), ŷ)·m
                       + (1 - λ) CE(f(mix), ŷ_perm)·m_perm on a CutMix of the weak views
    InfoMatch eq. (4)  entropy estimate Ĥ >= I_NCE(s1; s2) = log N - L_nce,
                       L_nce = ½ [CE(S/T, I) + CE(S^T/T, I)], S_ij = cos(p(s1_i), p(s2_j))
    InfoMatch eq. (5)  L = L_x + λ_u L_u + λ_mi L_nce (code: λ_u = 2)

Paper vs code, and what this module does:
  - the entropy estimate: the code's term is 0.001 · MSE between the z-scored logits of the two strong views
    (the alignment half of a contrastive bound, no negatives). With two classes a z-scored logit vector is
    ±(1/√2)(1, -1): piecewise constant, so that term has zero gradient on Hermes' problem. We use the paper's
    contrastive (InfoNCE) lower bound on the softmax predictions of the two strong views, which is defined for
    two classes; its temperature and weight (T = 0.5, λ_mi = 0.1) are ours: the paper's values were not found.
  - the code evaluates an EMA model; evaluation here uses the online model.
  - views: the code's strong views are RandAugment (+ its CutMix boxes come from the data loader); here the
    batch's strong view is s1, s2 is one more draw of augment.py's strong ops (cls_common.strong_view) and the
    CutMix boxes / permutation are drawn in the step (per image, λ ~ U(0, 1) as Beta(1, 1); torch's RNG).
  - one BatchNorm batch of labeled, weak, CutMix and both strong views, as the code's single forward.
"""
import config
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators.cls_common import suponly_step, cls_forward, finish, hi, img_pl_stats, seg_term, strong_view, zero_parts
from losses import cls_supervised_loss

SETTINGS = config.comparator_settings("infomatch")   # declared in config.py with every other setting


class InfoExtra(nn.Module):
    """InfoMatch's self-adaptive threshold state, buffers: time_p (EMA of the mean confidence) and p_model
    (EMA of the mean class probabilities), both starting at 1/C as the code. No parameters (no optimizer)."""

    def __init__(self, n_classes=2):
        super().__init__()
        self.register_buffer("time_p", torch.full((), 1.0 / n_classes))
        self.register_buffer("p_model", torch.full((n_classes,), 1.0 / n_classes))

    @torch.no_grad()
    def update(self, probs, momentum):
        """InfoMatch eq. (2)'s EMAs from the weak view's probabilities probs (B,C)."""
        self.time_p.mul_(momentum).add_((1 - momentum) * probs.amax(1).mean().to(self.time_p.dtype))
        self.p_model.mul_(momentum).add_((1 - momentum) * probs.mean(0).to(self.p_model.dtype))

    def thresholds(self, pl):
        """InfoMatch eq. (2): τ_t · p̃(ŷ) / max p̃ for pseudo-labels pl (B,) -> (B,)."""
        return self.time_p * self.p_model[pl] / self.p_model.max()


def build_extra(model, cfg_dict=None):
    """The self-adaptive threshold state (InfoExtra, buffers only: no optimizer)."""
    return InfoExtra(model.cls_net.fc.out_features).to(model.cls_net.fc.weight.device)


def cutmix_boxes(n, S, device=None):
    """Per-image CutMix boxes (torch's global RNG): λ0 ~ U(0,1), side √(1-λ0)·S, centre uniform, clipped.
    -> (inside (n,S,S) bool: pixels taken from the partner, lam (n,) the fraction kept)."""
    lam0, cy, cx = torch.rand(3, n)
    half = torch.sqrt(1 - lam0) * S / 2
    y0, y1 = (cy * S - half).round().clamp(0, S), (cy * S + half).round().clamp(0, S)
    x0, x1 = (cx * S - half).round().clamp(0, S), (cx * S + half).round().clamp(0, S)
    r = torch.arange(S)
    inside = (((r[None, :, None] >= y0[:, None, None]) & (r[None, :, None] < y1[:, None, None]))
              & ((r[None, None, :] >= x0[:, None, None]) & (r[None, None, :] < x1[:, None, None])))
    lam = 1 - inside.flatten(1).float().mean(1)
    return inside.to(device), lam.to(device)


def cutmix(x, perm, inside):
    """x (B,3,S,S) with each image's box replaced by the same box of x[perm]."""
    return torch.where(inside[:, None], x[perm], x)


def info_nce_entropy(p1, p2, temperature):
    """InfoMatch eq. (4): L_nce = ½ [CE(S/T, I) + CE(Sᵀ/T, I)], S_ij = cosine of p1_i (B,C) and p2_j (B,C).
    -> (L_nce 0-d, entropy estimate log B - L_nce 0-d, no gradient)."""
    s = F.normalize(hi(p1), dim=1) @ F.normalize(hi(p2), dim=1).T / temperature
    target = torch.arange(s.shape[0], device=s.device)
    loss = 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))
    return loss, (math.log(max(s.shape[0], 1)) - loss).detach()


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One InfoMatch step; returns (loss, stats) like cps.cps_step. No backward. Updates extra's threshold
    EMAs when the unlabeled terms are on. Burn-in (it < cfg.burn_in): SupOnly."""
    x, y, z = batch_l
    x_w, x_s, _, z_gt = batch_u
    B_l, B_u = x.shape[0], x_w.shape[0]
    seg = seg_term(model, x, y)
    if it < cfg.burn_in:
        return suponly_step(model, x, z, seg, cfg)
    x_s2 = strong_view(x_w)
    perm = torch.randperm(B_u).to(x.device)
    inside, lam = cutmix_boxes(B_u, x.shape[-1], x.device)
    x_mix = cutmix(x_w, perm, inside)
    _, logits = cls_forward(model, torch.cat([x, x_w, x_mix, x_s, x_s2]))           # one BN batch
    lw, lm, l1, l2 = logits[B_l:].split(B_u)
    L = zero_parts(logits)
    L["seg_l"] = seg
    L["cls_l"] = cls_supervised_loss(logits[:B_l], z)                                # InfoMatch eq. (1)
    p_w = hi(lw.detach()).softmax(1)
    extra.update(p_w, cfg.infomatch_ema)                                             # InfoMatch eq. (2)
    conf, pl = p_w.max(1)
    thr = extra.thresholds(pl)
    m = (conf >= thr).to(p_w.dtype)
    ce = lambda lg, t: F.cross_entropy(hi(lg), t, reduction="none")
    l_mix = (lam * ce(lm, pl) * m + (1 - lam) * ce(lm, pl[perm]) * m[perm]).mean()
    l_u = 0.5 * l_mix + 0.25 * (ce(l1, pl) * m).mean() + 0.25 * (ce(l2, pl) * m).mean()  # InfoMatch eq. (3)
    L["cls_u"] = cfg.infomatch_lambda_u * l_u
    # InfoMatch eq. (4)
    l_nce, _ = info_nce_entropy(hi(l1).softmax(1), hi(l2).softmax(1), cfg.infomatch_mi_temperature)
    L["cls_c"] = cfg.infomatch_lambda_mi * l_nce                                     # InfoMatch eq. (5)
    return finish(L, cfg, tau=thr.mean(), img_stats=img_pl_stats(p_w, pl, m, z_gt, 0.95))
