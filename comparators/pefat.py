"""PEFAT (Zeng, Xie, Lu, Wang, Xia, "PEFAT: Boosting Semi-supervised Medical Image Classification via
Pseudo-loss Estimation and Feature Adversarial Training", CVPR 2023; code: github.com/maxwell0027/PEFAT,
code/train.py): a Table 2 comparator, not part of Hermes.

Two stages. Warm-up: labeled CE plus an InfoNCE between the two views of each image. Then pseudo-loss
estimation: a two-component Gaussian mixture fitted on the (min-max normalised) losses of labeled images
separates "clean" from "noisy" losses; each unlabeled image gets a cross pseudo-loss (CE of one view's logits
to the other view's prediction, both ways, normalised over the batch) and is *trustworthy* when the mixture's
posterior of the low-loss component exceeds 0.7. Trustworthy images join the labeled ones under CE with their
cross pseudo-labels; the rest are *uncertain*. Feature adversarial training (FAT) perturbs the pooled features
(VAT-style power iteration on the classifier head): CE of the perturbed features to the labels for the
trustworthy set, KL between the clean prediction of one view and the perturbed prediction of the other for the
uncertain set. The segmentation branch trains as SupOnly's (Hermes eq. (1) on the labeled images).

Equation numbers: NOT verified against the paper. They are PEFAT's §3 (CVPR 2023) as reconstructed from its
abstract and code; a check was tried, but the search index within reach holds only abstract pages (the CVF
open-access page of the paper, https://cvpr.thecvf.com/virtual/2023/poster/21228), not §3, and the authors'
code/train.py names no equation numbers, so check the numbers against the PDF before quoting them:
    PEFAT eq. (1)  warm-up: L_w = CE(labeled) + L_nce(f(v1), f(v2)), InfoNCE with cosine / T (T = 0.05)
    PEFAT eq. (2)  pseudo-loss: ℓ_i = ½ (norm CE(f(v2_i), ŷ1_i) + norm CE(f(v1_i), ŷ2_i)),
                   norm = min-max over the batch
    PEFAT eq. (3)  GMM on the normalised labeled losses; trust_i = P(low-mean component | ℓ_i) > δ (δ = 0.7)
    PEFAT eq. (4)  L_t = CE over labeled ∪ trustworthy (view 1 to ŷ2, view 2 to ŷ1), one mean
    PEFAT eq. (5)  r_adv = ε g/||g||, g = ∇_r D(h(f + ξ d)) from a random unit d, K power iterations
    PEFAT eq. (6)  L_fat^t = CE(h(f + r_adv), labels) on the trustworthy set
    PEFAT eq. (7)  L_fat^u = KL(p(v1) || h(f(v2) + r_adv)) + KL(p(v2) || h(f(v1) + r_adv)), uncertain set
    PEFAT eq. (8)  L = L_t + λ_t L_fat^t + λ_u L_fat^u (code: λ_t = 0.3, λ_u = 0.1)

Paper vs code, and what this module does:
  - stages: the code warms up 30 epochs, then fits the GMM once on the whole labeled set's losses (both views)
    and keeps it. Here the warm-up is the first `pefat_warmup` fraction of the steps; each step's labeled
    losses go into a queue (a buffer) and the GMM is fitted once, on the queue, at the first step after the
    warm-up.
  - FAT on trustworthy images: the code sets the perturbation to the raw gradient (not normalised, no ε); on
    uncertain images it uses ξ = 1e-3 steps and a unit-norm result (ε = 1). We use the latter, VAT's form, for
    both. The code perturbs *detached* features (FAT then trains only the classifier layer); we perturb the
    features with r_adv held constant, so FAT also trains the backbone (the usual VAT reading of the paper).
    The code's uncertain loop perturbs view 1's features for both views (a slip); we use each view's own.
  - the KL targets (the clean predictions) are detached, as in VAT; the code lets the gradient reach them.
  - views: the code's two views are two draws of one augmentation; here the weak and strong views of
    augment.py. The labeled images enter once (the code: two views each); the warm-up InfoNCE is over the
    unlabeled pairs (the code: all images).
  - subsets as masks (no host sync): per-image weights on the whole unlabeled batch give the same sums.
"""
import config
import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators.cls_common import cls_forward, finish, hi, img_pl_stats, seg_term, zero_parts

SETTINGS = config.comparator_settings("pefat")   # declared in config.py with every other setting


class PefatExtra(nn.Module):
    """PEFAT's state, all buffers: a FIFO queue of labeled per-image losses (losses, n_seen) and the fitted
    two-component GMM (gmm_mean, gmm_var, gmm_weight, fitted). No parameters (nothing to optimise)."""

    def __init__(self, queue=256):
        super().__init__()
        self.register_buffer("losses", torch.zeros(queue))
        self.register_buffer("n_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("gmm_mean", torch.zeros(2))
        self.register_buffer("gmm_var", torch.ones(2))
        self.register_buffer("gmm_weight", torch.full((2,), 0.5))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def push(self, values):
        """Append per-image losses (n,) to the FIFO queue (oldest overwritten)."""
        Q = self.losses.numel()
        values = values.detach().float().reshape(-1)[-Q:]
        idx = (self.n_seen + torch.arange(values.numel(), device=values.device)) % Q
        self.losses[idx] = values
        self.n_seen += values.numel()

    def queued(self):
        """The losses in the queue (host read of the count)."""
        return self.losses[:min(int(self.n_seen), self.losses.numel())]


def build_extra(model, cfg_dict=None):
    """PEFAT's loss queue and GMM (PefatExtra, buffers only: no optimizer)."""
    q = int((cfg_dict or {}).get("pefat_queue", 256))
    return PefatExtra(q).to(model.cls_net.fc.weight.device)


def minmax(v, eps=1e-12):
    """(v - min) / (max - min) over a 1-d tensor (the code's normalisation; 0 where all values are equal)."""
    return (v - v.min()) / (v.max() - v.min()).clamp_min(eps)


@torch.no_grad()
def fit_gmm(v, iters=50, reg=5e-4):
    """Two-component 1-d Gaussian mixture by EM (as sklearn's GaussianMixture(2, max_iter=50, reg_covar=5e-4)
    on the code's normalised losses), initialised at the lower / upper quartile. v (n,) -> (mean, var, weight)
    each (2,), float64 math, returned in v's dtype."""
    x = v.double().reshape(-1)
    mean = torch.stack([x.quantile(0.25), x.quantile(0.75)])
    var = (x.var(unbiased=False) + reg).repeat(2) if x.numel() > 1 else x.new_ones(2)
    weight = x.new_full((2,), 0.5)
    for _ in range(iters):
        logp = (-0.5 * (x[:, None] - mean) ** 2 / var - 0.5 * torch.log(2 * torch.pi * var)
                + torch.log(weight))                                                 # (n,2)
        r = logp.softmax(1)                                                         # E step
        nk = r.sum(0) + 1e-10                                                       # M step
        weight = nk / nk.sum()
        mean = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mean) ** 2).sum(0) / nk + reg
    return mean.to(v.dtype), var.to(v.dtype), weight.to(v.dtype)


def clean_posterior(v, mean, var, weight):
    """PEFAT eq. (3): P(component with the smaller mean | v) for each v (n,)."""
    logp = -0.5 * (v[:, None] - mean) ** 2 / var - 0.5 * torch.log(2 * torch.pi * var) + torch.log(weight)
    return logp.softmax(1)[:, int(mean.argmin())]


def pseudo_loss(logits1, logits2):
    """PEFAT eq. (2): ½ (minmax CE(logits2, argmax logits1) + minmax CE(logits1, argmax logits2)) per row,
    no gradient. -> (loss (B,), ŷ1 (B,), ŷ2 (B,))."""
    logits1, logits2 = hi(logits1.detach()), hi(logits2.detach())
    y1, y2 = logits1.argmax(1), logits2.argmax(1)
    l12 = F.cross_entropy(logits2, y1, reduction="none")
    l21 = F.cross_entropy(logits1, y2, reduction="none")
    return 0.5 * minmax(l12) + 0.5 * minmax(l21), y1, y2


def info_nce(f1, f2, temperature):
    """PEFAT eq. (1)'s contrastive term (the code's contrastive_loss):
    -mean_i log(exp(s_ii/T) / Σ_j exp(s_ij/T)), s = cosine similarity of f1 (B,D) rows with f2 (B,D) rows (the
    positive stays in the denominator)."""
    s = F.normalize(hi(f1), dim=1) @ F.normalize(hi(f2), dim=1).T / temperature
    return F.cross_entropy(s, torch.arange(s.shape[0], device=s.device))


def adversarial_direction(head, feats, divergence, xi, eps, iters):
    """PEFAT eq. (5): r_adv = ε g/||g|| per row, g the gradient of divergence(head(feats + ξ d)) at d, d a
    random unit vector refined by `iters` power iterations (torch's global RNG). feats (B,D) are detached
    here; divergence(logits (B,C)) -> per-row losses (B,) (rows independent, so each row's direction is its
    own). -> r_adv (B,D) without gradient."""
    f = feats.detach()
    d = F.normalize(torch.randn_like(f), dim=1)
    with torch.enable_grad():
        for _ in range(max(iters, 1)):
            d = (xi * d).requires_grad_(True)
            g, = torch.autograd.grad(divergence(head(f + d)).sum(), d)
            d = F.normalize(g, dim=1)
    return (eps * d).detach()


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One PEFAT step; returns (loss, stats) like cps.cps_step. No backward. Pushes the labeled losses to
    extra's queue, and fits its GMM at the first step after the warm-up. Burn-in (it < cfg.burn_in):
    SupOnly."""
    x, y, z = batch_l
    x_w, x_s, _, z_gt = batch_u
    z = z.long()
    B_l, B_u = x.shape[0], x_w.shape[0]
    on = it >= cfg.burn_in
    warm = it < round(cfg.pefat_warmup * total)
    seg = seg_term(model, x, y)
    f, logits = cls_forward(model, torch.cat([x, x_w, x_s]) if on else x)            # one BN batch
    L = zero_parts(logits)
    L["seg_l"] = seg
    ce_l = F.cross_entropy(hi(logits[:B_l]), z, reduction="none")                   # (B_l,)
    extra.push(ce_l.detach())
    if not on or warm:
        L["cls_l"] = ce_l.mean()                                                     # PEFAT eq. (1): CE part
        if on:                                                                   # PEFAT eq. (1): InfoNCE part
            L["cls_c"] = info_nce(f[B_l:B_l + B_u], f[B_l + B_u:], cfg.pefat_nce_temperature)
        return finish(L, cfg)
    if not bool(extra.fitted):                                                       # once, after the warm-up
        mean, var, weight = fit_gmm(minmax(extra.queued()))
        extra.gmm_mean.copy_(mean), extra.gmm_var.copy_(var), extra.gmm_weight.copy_(weight)
        extra.fitted.fill_(True)
    head = model.cls_net.fc
    f1, f2, lg1, lg2 = f[B_l:B_l + B_u], f[B_l + B_u:], logits[B_l:B_l + B_u], logits[B_l + B_u:]
    ell, y1, y2 = pseudo_loss(lg1, lg2)                                              # PEFAT eq. (2)
    with torch.no_grad():
        p_clean = clean_posterior(ell.to(extra.gmm_mean.dtype), extra.gmm_mean, extra.gmm_var,
                                  extra.gmm_weight)
    trust = (p_clean > cfg.pefat_trust).to(ce_l.dtype)                               # PEFAT eq. (3)
    unc = 1.0 - trust
    # PEFAT eq. (4): one mean over labeled ∪ trustworthy (view 1 to ŷ2, view 2 to ŷ1)
    ce_t = F.cross_entropy(hi(lg1), y2, reduction="none") + F.cross_entropy(hi(lg2), y1, reduction="none")
    n = B_l + 2 * trust.sum()
    L["cls_l"] = ce_l.sum() / n
    L["cls_u"] = (trust * ce_t).sum() / n
    # PEFAT eqs. (5)–(6): FAT on the trustworthy set (labeled + trusted views with their labels)
    feats_t = torch.cat([f[:B_l], f1, f2])
    labels_t = torch.cat([z, y2, y1])
    w_t = torch.cat([trust.new_ones(B_l), trust, trust])
    ce_of = lambda lg: F.cross_entropy(hi(lg), labels_t, reduction="none")
    r_t = adversarial_direction(head, feats_t, ce_of, cfg.pefat_xi, cfg.pefat_eps, cfg.pefat_power_iters)
    fat_t = (w_t * ce_of(head(feats_t + r_t))).sum() / n
    # PEFAT eq. (5) with PEFAT eq. (7): FAT on the uncertain set, cross-view KL to the other view's clean
    # prediction
    p1, p2 = hi(lg1).softmax(1).detach(), hi(lg2).softmax(1).detach()
    tgt = torch.cat([p2, p1])                                                       # view 1 feats -> p2, ...
    kl_of = lambda lg: F.kl_div(F.log_softmax(hi(lg), 1), tgt, reduction="none").sum(1)
    feats_u = torch.cat([f1, f2])
    r_u = adversarial_direction(head, feats_u, kl_of, cfg.pefat_xi, cfg.pefat_eps, cfg.pefat_power_iters)
    w_u = torch.cat([unc, unc])
    fat_u = (w_u * kl_of(head(feats_u + r_u))).sum() / unc.sum().clamp_min(1)      # batchmean over the set
    L["cls_c"] = cfg.pefat_lambda_fat_t * fat_t + cfg.pefat_lambda_fat_u * fat_u   # PEFAT eq. (8)
    p_w = hi(lg1.detach()).softmax(1)
    return finish(L, cfg, tau=cfg.pefat_trust, img_stats=img_pl_stats(p_w, y1, trust, z_gt, cfg.pefat_trust))
