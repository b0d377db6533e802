"""InterLUDE (Huang, Yu, Zhu, Hughes, "InterLUDE: Interactions between Labeled and Unlabeled Data to Enhance
Semi-Supervised Learning", ICML 2024; code: github.com/tufts-ml/InterLUDE, src/ClassicBenchmark/CNN/InterLUDE,
libml/utils_avg/misc.py and libml/models/wideresnet.py): a Table 2 comparator, not part of Hermes.

FixMatch on the classification branch, plus two interactions between labeled and unlabeled images:
embedding fusion (in the interleaved batch labeled-weak, unlabeled-weak, labeled-strong, unlabeled-strong, ...
each intermediate feature map is mixed with its neighbour's: h_i <- (1 - α) h_i + α h_{i+1}, cyclically) and
delta consistency (the change of the prediction from weak to strong view is asked to be the same on an
unlabeled image as on its paired labeled image: MSE between the two deltas, the labeled one detached).
The segmentation branch trains as SupOnly's (Hermes eq. (1) on the labeled images).

Equation numbers: NOT verified against the paper. They are InterLUDE's §3 (ICML 2024) as reconstructed from
its abstract and code; a check was tried, but the search index within reach holds only the heads of
https://arxiv.org/html/2403.10658v1 and https://openreview.net/forum?id=wilej5VnqL (title, abstract, start of
§1), not §3, so check the numbers against the PDF before quoting them:
    InterLUDE eq. (1)  L_l = CE(f(x^w), y)
    InterLUDE eq. (2)  L_u = (1/B_u) Σ_j 1[max q_j >= τ] CE(f(u^s_j), argmax q_j), q_j = softmax(f(u^w_j) / T)
    InterLUDE eq. (3)  embedding fusion: h̃_i = (1 - α) h_i + α h_{i+1} in the interleaved order (α = 0.1)
    InterLUDE eq. (4)  Δ^l_i = p(x^w_i) - p(x^s_i) (detached), Δ^u_i = mean over i's unlabeled images of
                       p(u^w_j) - p(u^s_j); L_δ = (1/(B_l C)) Σ_i ||Δ^u_i - Δ^l_i||²
    InterLUDE eq. (5)  L = L_l + λ_u L_u + λ_δ L_δ

Paper vs code, and what this module does:
  - where the fusion acts: the code mixes after block2 of its 3-block WideResNet (before the last stage); we
    mix the layer3 map of the ResNet-18, before its last stage (layer4).
  - fusion at test time: the code's network mixes in every forward, evaluation included (neighbouring test
    images); evaluation here is the plain network (train.py / evaluate.py call forward_cls), fusion is a
    training-time operation only.
  - the code evaluates an EMA model; evaluation here uses the online model.
  - pairing: the code draws μ unlabeled images per labeled one (μ = 7, TMED2: 5); here the unlabeled batch is
    split into B_l consecutive groups (torch.tensor_split), one per labeled image; a labeled image without an
    unlabeled partner is left out of L_δ.
  - weights: λ_u = 1 (the CIFAR default; the code's TMED2 run used 0.5), λ_δ = 1, T = 1, τ = 0.95.
  - views: the code's strong view is RandAugment; here augment.py's strong photometric ops, and the labeled
    images' strong view is one more draw of them (cls_common.strong_view, torch's global RNG).
  - the "avg" form of the delta (utils_avg) is used, not the class-dependent one (utils_cd).
"""
import config
import torch
import torch.nn.functional as F

from comparators.cls_common import suponly_step, cls_forward, finish, hi, img_pl_stats, seg_term, strong_view, zero_parts
from losses import cls_supervised_loss

SETTINGS = config.comparator_settings("interlude")   # declared in config.py with every other setting


def build_extra(model, cfg_dict=None):
    """InterLUDE keeps no state between steps (its EMA model only evaluates): None."""
    return None


def interleave_order(B_l, B_u, device=None):
    """The interleaved order of InterLUDE's batch: for labeled image i, [x^w_i, its unlabeled weak images,
    x^s_i, their strong views]; rows index the concatenation [x^w (B_l), u^w (B_u), x^s (B_l), u^s (B_u)].
    -> (order (2 B_l + 2 B_u,) long, groups: list of B_l index tensors into the unlabeled batch)."""
    groups = list(torch.arange(B_u, device=device).tensor_split(B_l))
    order = []
    for i, g in enumerate(groups):
        order += [torch.tensor([i], device=device), B_l + g,
                  torch.tensor([B_l + B_u + i], device=device), 2 * B_l + B_u + g]
    return torch.cat(order), groups


def fuse(h, order, alpha):
    """InterLUDE eq. (3): in the interleaved order, h_i <- (1 - α) h_i + α h_{next(i)} (the last row takes the
    first's). h (N,...) in concatenation order, order (N,) -> (N,...) in concatenation order."""
    mixed = (1 - alpha) * h[order] + alpha * h[order].roll(-1, 0)                  # interleaved order
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return mixed[inverse]


def delta_consistency(p_lw, p_ls, p_uw, p_us, groups):
    """InterLUDE eq. (4): mean over labeled images with a partner and classes of (Δ^u_i - Δ^l_i)², Δ^l
    detached. p_* (B,C) softmax probabilities; groups: interleave_order's list."""
    d_l = (p_lw - p_ls).detach()                                                    # (B_l,C)
    has = torch.tensor([len(g) > 0 for g in groups], device=p_lw.device)
    d_u = torch.stack([(p_uw[g] - p_us[g]).mean(0) if len(g) else torch.zeros_like(d_l[0])
                       for g in groups])                                             # (B_l,C)
    se = ((d_u - d_l) ** 2).mean(1)                                                  # (B_l,)
    return (se * has).sum() / has.sum().clamp_min(1)


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One InterLUDE step; returns (loss, stats) like cps.cps_step. No backward. Burn-in (it < cfg.burn_in):
    SupOnly (no fusion, no unlabeled image)."""
    x, y, z = batch_l
    x_w, x_s, _, z_gt = batch_u
    B_l, B_u = x.shape[0], x_w.shape[0]
    seg = seg_term(model, x, y)
    if it < cfg.burn_in:
        return suponly_step(model, x, z, seg, cfg, tau=cfg.interlude_tau)
    x_ls = strong_view(x)                                                            # the labeled strong view
    order, groups = interleave_order(B_l, B_u, x.device)
    _, logits = cls_forward(model, torch.cat([x, x_w, x_ls, x_s]),
                            mix=lambda h: fuse(h, order, cfg.interlude_alpha))       # InterLUDE eq. (3)
    lw, uw = logits[:B_l], logits[B_l:B_l + B_u]
    ls, us = logits[B_l + B_u:2 * B_l + B_u], logits[2 * B_l + B_u:]
    L = zero_parts(logits)
    L["seg_l"] = seg
    L["cls_l"] = cls_supervised_loss(lw, z)                                          # InterLUDE eq. (1)
    q = (hi(uw.detach()) / cfg.interlude_T).softmax(1)
    conf, pl = q.max(1)
    mask = (conf >= cfg.interlude_tau).to(q.dtype)
    L["cls_u"] = cfg.interlude_lambda_u * (F.cross_entropy(hi(us), pl, reduction="none") * mask).mean()  # (2)
    P = lambda t: hi(t).softmax(1)
    L["cls_c"] = cfg.interlude_lambda_delta * delta_consistency(P(lw), P(ls), P(uw), P(us), groups)  # (4)
    return finish(L, cfg, tau=cfg.interlude_tau, img_stats=img_pl_stats(q, pl, mask, z_gt, cfg.interlude_tau))
