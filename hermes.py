"""The Hermes method (paper Sec. 3.3-3.6, supplementary Sec. 6): pseudo-label selection (eqs. (7)–(8)),
threshold schedules (eqs. (16)–(17)), anchor sampling, memory banks and `hermes_step`, one training step
that returns the total loss of eq. (15) and its statistics. Where training runs a fast form
(sample_anchor_slots, MemoryBank.push: no host sync), the readable one the paper describes stands beside it as
the reference (sample_anchors, MemoryBank.push_one_by_one), and tests/test_hermes.py checks that both give the
same result.

Example:
    >>> model = HermesNet(seg_encoder="resnet18"); cfg = HermesConfig()
    >>> banks = make_banks(model, cfg)
    >>> loss, stats = hermes_step(model, banks, (x, y, z), (x_w, x_s, y_gt, z_gt), it=0, total=3000, cfg=cfg)
    >>> loss.backward()   # then both optimizers step (train.py)
"""
import contextlib
import copy
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import HermesConfig  # the step's settings, declared with every other setting
from losses import (PARTS, cls_supervised_loss, cls_unsupervised_loss, image_contrastive_loss,
                    inter_task_consistency_loss, pixel_contrastive_loss, seg_supervised_loss,
                    seg_unsupervised_ce_loss, seg_unsupervised_loss, total_loss, weighted_terms)
from models import set_ias_scale

# The statistics hermes_step returns, in log.csv's column order (PARTS: the seven terms of eq. (15)).
PL_STAT_KEYS = ("kept_pix", "kept_img", "pl_acc_pix_all", "pl_acc_pix_kept", "pl_acc_img_all",
                "pl_acc_img_kept", "kept_pix_conf", "pl_acc_pix_conf", "kept_img_conf", "pl_acc_img_conf")
STAT_KEYS = ("loss",) + PARTS + ("kappa", "tau") + PL_STAT_KEYS


# ----------------------------------------------------------------------------------------------------------
# Pseudo-label selection (eqs. (7), (8)) and threshold schedules (eqs. (16), (17))

def uncertainty(probs, eps=1e-8):
    """eq. (8): u(p) = -Σ_c p_c log(p_c + eps), in nats; the paper's Σ_{j=1..M} is read as a sum over
    classes.

    probs (B,C,...) -> (B,...) (dim 1 summed out).
    """
    return -(probs * torch.log(probs + eps)).sum(1)                               # eq. (8)


@torch.no_grad()
def dual_threshold_mask(probs, kappa, tau):
    """eq. (7): w = 1[u(p) <= kappa] · 1[max_c p_c >= tau].

    probs (B,C,...) float -> w (B,...) float 0/1 of probs' dtype (no gradient).
    """
    w = (uncertainty(probs) <= kappa) & (probs.amax(1) >= tau)                     # eq. (7)
    return w.to(probs.dtype if probs.is_floating_point() else torch.float32)


def _progress(it, total):
    if total <= 0:
        raise ValueError(f"hermes.py: total iterations must be > 0, got {total}")
    return float(it) / float(total)


def uncertainty_threshold(it, total, eta_max=HermesConfig.eta_max, eta_min=HermesConfig.eta_min):
    """eq. (16): kappa = eta_min + ½ (eta_max - eta_min)(cos(π it/total) + 1); 0.75 -> 0.25 nats.
    -> float"""
    return eta_min + 0.5 * (eta_max - eta_min) * (math.cos(math.pi * _progress(it, total)) + 1.0)  # eq. (16)


def confidence_threshold(it, total):
    """eq. (17), literally: tau = 0.75 + 0.25 exp(-½ (1 - it/total)²) ln 2, i.e. 0.8551 -> 0.9233.
    -> float"""
    return 0.75 + 0.25 * math.exp(-0.5 * (1.0 - _progress(it, total)) ** 2) * math.log(2.0)  # eq. (17)


# ----------------------------------------------------------------------------------------------------------
# Anchor sampling (§3.4). `sample_anchors` states the rule as the paper does and is the reference; training
# calls `sample_anchor_slots`, the same selection from the same random draws in fixed-size slots (no host
# sync), tested equal to it (tests/test_hermes.py).

def downsample_nearest(t, size):
    """Nearest-neighbour resize of a label-like map: t (B,H,W) (int, bool or float) -> (B,*size), same
    dtype."""
    out = F.interpolate(t[:, None].float(), size=tuple(size), mode="nearest")[:, 0]  # (B,h,w)
    return out.to(t.dtype)


def flatten_map(feats):
    """(B,D,h,w) -> (B*h*w, D), row b*h*w + y*w + x: the pixel order of the anchor indices."""
    B, D = feats.shape[:2]
    return feats.permute(0, 2, 3, 1).reshape(-1, D)                                # (B*h*w,D)


def _check_maps(who, labels, w, pred_strong):
    if not (labels.shape == w.shape == pred_strong.shape):
        raise ValueError(f"{who}: labels {tuple(labels.shape)}, w {tuple(w.shape)} and pred_strong "
                         f"{tuple(pred_strong.shape)} must have the same shape")


def _random_keys(P, generator, device):
    """One uniform key per pixel, (P,) on `device`, from `generator` (or the global RNG). The k pixels of a
    pool with the largest keys are k pixels drawn uniformly without replacement."""
    if generator is not None and generator.device != device:
        return torch.rand(P, generator=generator, device=generator.device).to(device)
    return torch.rand(P, generator=generator, device=device)


def sample_anchors(labels, w, pred_strong, n, generator=None, num_classes=2):
    """Anchor sampling of §3.4, as the paper states it (the reference; training uses sample_anchor_slots).

    Per class c, among the certain pixels (w = 1) labelled c: the hard ones (the student's prediction on the
    strong view differs from the label) and the easy ones (it agrees). n/2 are drawn at random from each
    (n//2 hard, n - n//2 easy); a pool with too few pixels gives all it has and the other one fills the rest.

    labels (B,h,w) int, w (B,h,w) 0/1, pred_strong (B,h,w) int
    -> (idx (K,) long rows of the flattened map (flatten_map), anchor_labels (K,) long), K <= num_classes * n,
       ordered class 0 hard, class 0 easy, class 1 hard, ...; within a pool by decreasing random key.
    """
    _check_maps("sample_anchors", labels, w, pred_strong)
    lab = labels.reshape(-1).long()                                                # (P,) P = B*h*w
    certain = w.reshape(-1) > 0.5                                                  # (P,) eq. (7)'s w
    hard = pred_strong.reshape(-1).long() != lab                                   # (P,)
    if lab.numel() == 0 or n == 0:
        return lab.new_zeros(0), lab.new_zeros(0)
    keys = _random_keys(lab.numel(), generator, lab.device)                        # (P,)
    idx = []
    for c in range(num_classes):
        pool_hard = torch.nonzero(certain & (lab == c) & hard)[:, 0]               # pixel indices
        pool_easy = torch.nonzero(certain & (lab == c) & ~hard)[:, 0]
        n_hard = min(n // 2, len(pool_hard))
        n_easy = min(n - n_hard, len(pool_easy))
        n_hard = min(n - n_easy, len(pool_hard))                                   # few easy ones: more hard
        for pool, k in ((pool_hard, n_hard), (pool_easy, n_easy)):
            idx.append(pool[keys[pool].argsort(descending=True)[:k]])             # k drawn at random
    idx = torch.cat(idx)                                                           # (K,)
    return idx, lab[idx]


def sample_anchor_slots(labels, w, pred_strong, n, generator=None, num_classes=2):
    """sample_anchors in fixed-size slots, without a host sync (what training calls; tested equal to it).

    The same random keys (`_random_keys`, drawn in the same call) choose the same pixels: per class, a top-k
    of the keys masked to each pool, counts kept as 0-d tensors. Class c owns slots c*n .. c*n+n-1: its
    hard anchors, then its easy ones, then unused slots (valid False) when its pools hold fewer than n
    pixels.

    labels (B,h,w) int, w (B,h,w) 0/1, pred_strong (B,h,w) int
    -> (idx (C*n,) long, anchor_labels (C*n,) long, valid (C*n,) bool); idx[valid], anchor_labels[valid] are
       sample_anchors' output.
    """
    _check_maps("sample_anchor_slots", labels, w, pred_strong)
    dev = labels.device
    lab = labels.reshape(-1).long()                                                # (P,)
    keep = w.reshape(-1) > 0.5                                                     # (P,)
    hard = pred_strong.reshape(-1).long() != lab                                   # (P,)
    P = lab.numel()
    slot = torch.arange(n, device=dev)                                             # (n,)
    if P == 0 or n == 0:
        z = torch.zeros(num_classes * n, dtype=torch.long, device=dev)
        return z, z.clone(), torch.zeros(num_classes * n, dtype=torch.bool, device=dev)
    r = _random_keys(P, generator, dev)                                            # (P,) random keys
    m = min(n, P)
    idx, valid = [], []
    for c in range(num_classes):
        in_c = keep & (lab == c)
        pool_h, pool_e = in_c & hard, in_c & ~hard
        a_h, a_e = pool_h.sum(), pool_e.sum()                                      # 0-d tensors, no sync
        n_h = torch.clamp(a_h, max=n // 2)
        n_e = torch.minimum(n - n_h, a_e)
        n_h = torch.minimum(n - n_e, a_h)                                          # fill from the other pool
        top_h = torch.where(pool_h, r, torch.full_like(r, -1.0)).topk(m).indices   # (m,) largest keys first
        top_e = torch.where(pool_e, r, torch.full_like(r, -1.0)).topk(m).indices
        from_e = (slot - n_h).clamp(0, m - 1)
        idx.append(torch.where(slot < n_h, top_h[slot.clamp(max=m - 1)], top_e[from_e]))
        valid.append(slot < n_h + n_e)
    anchor_labels = torch.arange(num_classes, device=dev).repeat_interleave(n)
    return torch.cat(idx), anchor_labels, torch.cat(valid)


def sample_anchor_indices(labels, w, pred_strong, n, generator=None, num_classes=2):
    """sample_anchor_slots without the unused slots (one host sync): sample_anchors' output, from the fast
    path (the course kit's checks call it)."""
    idx, anchor_labels, valid = sample_anchor_slots(labels, w, pred_strong, n, generator, num_classes)
    return idx[valid], anchor_labels[valid]


# ----------------------------------------------------------------------------------------------------------
# Memory bank (§3.4)

class MemoryBank(nn.Module):
    """Per-class first-in-first-out ring buffers of detached embeddings (buffers, so they live in state_dict).

    feats (num_classes,size,dim), ptr (num_classes,) next slot, filled (num_classes,) entries in use.
    push_one_by_one(feats (K,D), labels (K,), mask=None): the enqueue as §3.4 describes it, row by row (the
    reference). push(...): the same final state in one masked write per class without a host sync (what
    training calls; tested equal). Rows with mask False are skipped. slots() -> every slot and whether it is
    filled (no host sync); keys() -> (feats (M,D), labels (M,)) of the filled slots, class 0 first.
    """

    def __init__(self, size_per_class, dim, num_classes=2):
        super().__init__()
        if size_per_class < 1 or dim < 1:
            raise ValueError(f"MemoryBank: size_per_class and dim must be >= 1, got {size_per_class}, {dim}")
        self.size, self.dim, self.num_classes = size_per_class, dim, num_classes
        self.register_buffer("feats", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    def _checked(self, feats, labels, mask):
        """-> (feats (K,D) detached in the bank's dtype, labels (K,), mask (K,) bool), on the bank's
        device."""
        if feats.dim() != 2 or feats.shape[1] != self.dim or labels.numel() != feats.shape[0] or (
                mask is not None and mask.numel() != feats.shape[0]):
            raise ValueError(f"MemoryBank.push: expected feats (K,{self.dim}), labels (K,) and mask (K,), "
                             f"got {tuple(feats.shape)}, {tuple(labels.shape)} and "
                             f"{None if mask is None else tuple(mask.shape)}")
        dev = self.ptr.device
        mask = (torch.ones(feats.shape[0], dtype=torch.bool, device=dev) if mask is None
                else mask.reshape(-1).to(dev))
        return feats.detach().to(self.feats), labels.reshape(-1).to(dev), mask

    @torch.no_grad()
    def push_one_by_one(self, feats, labels, mask=None):
        """First-in-first-out enqueue, the reference: each row (with mask True), in order, overwrites slot ptr
        of its class's ring, and ptr moves on (mod size). One host sync per row."""
        feats, labels, mask = self._checked(feats, labels, mask)
        for f, c, keep in zip(feats, labels.tolist(), mask.tolist()):
            if keep:
                p = int(self.ptr[c])
                self.feats[c, p] = f
                self.ptr[c] = (p + 1) % self.size
                self.filled[c] = min(int(self.filled[c]) + 1, self.size)

    @torch.no_grad()
    def push(self, feats, labels, mask=None):
        """push_one_by_one's final state in one write per class, without a host sync: slot j of class c
        receives the newest row whose rank r among the class's pushed rows has (ptr + r) mod size = j (more
        than `size` rows at once: the newest `size` stay)."""
        K, S = feats.shape[0], self.size
        feats, labels, mask = self._checked(feats, labels, mask)
        if K == 0:
            return
        dev = self.ptr.device
        j = torch.arange(S, device=dev)                                            # ring slots
        for c in range(self.num_classes):
            ranks = torch.cumsum((mask & (labels == c)).long(), 0)                 # (K,) rows of c so far
            k = ranks[-1]                                                          # rows pushed to c
            o = (j - self.ptr[c]) % S                                              # (S,) slot offset from ptr
            r = o + S * torch.div(k - 1 - o, S, rounding_mode="floor")             # (S,) newest rank landing
            row = torch.searchsorted(ranks, r + 1).clamp(max=K - 1)                # (S,) its row in feats
            self.feats[c] = torch.where((o < k)[:, None], feats[row], self.feats[c])
            self.ptr[c] = (self.ptr[c] + k) % S
            self.filled[c] = torch.clamp(self.filled[c] + k, max=S)

    def slots(self):
        """Every slot, without a host sync: (feats (C*size,D), labels (C*size,), filled (C*size,) bool)."""
        C, S = self.num_classes, self.size
        labels = torch.arange(C, device=self.feats.device).repeat_interleave(S)                  # (C*S,)
        filled = (torch.arange(S, device=self.feats.device)[None] < self.filled[:, None]).reshape(-1)
        return self.feats.reshape(C * S, self.dim), labels, filled

    def keys(self):
        """The filled slots (one host sync): (feats (M,D), labels (M,)), class 0 first."""
        feats, labels, filled = self.slots()
        return feats[filled], labels[filled]

    def extra_repr(self):
        return f"size_per_class={self.size}, dim={self.dim}, num_classes={self.num_classes}"


def prior_adjusted(s, prior, prior_train):
    """p(malignant | x) under malignant share `prior` from scores s = p(malignant | x) of a classifier trained at
    share prior_train (Bayes' rule, Saerens et al. 2002; = adding logit(prior) - logit(prior_train) to the
    malignant logit). Arrays or tensors alike (evaluate.adjust_scores, ClassShareTracker)."""
    a, b = s * (prior / prior_train), (1 - s) * ((1 - prior) / (1 - prior_train))
    return a / (a + b)


class ClassShareTracker(nn.Module):
    """--pseudo-label-prior unlabeled (not in the paper): the unlabeled images' malignant share π̂_u, estimated
    as evaluate.estimate_prior does (EM of Saerens et al. 2002) from the teacher's last `size` scores
    p(malignant | weak view), and the labeled share π_l from the labeled labels seen. Saved with the banks.
    No host sync: fixed-size buffers, a warm-started EM of `em_iters` iterations per call."""

    def __init__(self, size=256, min_scores=32, em_iters=20, bounds=(1e-3, 1 - 1e-3)):
        super().__init__()
        self.size, self.min_scores, self.em_iters, self.bounds = size, min_scores, em_iters, bounds
        self.ring = MemoryBank(size, 1, num_classes=1)                             # the scores, first in first out
        self.register_buffer("pi_u", torch.tensor(0.5))
        self.register_buffer("n_labeled", torch.zeros(2))                          # (benign, malignant)

    @property
    def scores(self):
        return self.ring.feats[0, :, 0]                                            # (size,) ring slots

    @property
    def filled(self):
        return self.ring.filled[0]

    @torch.no_grad()
    def push(self, scores, z):
        """scores (K,) the teacher's p(malignant) on unlabeled images; z (B_l,) labeled labels."""
        scores = scores.detach().float().reshape(-1, 1)                            # (K,1)
        self.ring.push(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
        self.n_labeled += torch.bincount(z.reshape(-1).long(), minlength=2)[:2].float().to(self.n_labeled)

    def pi_l(self):
        return (self.n_labeled[1] / self.n_labeled.sum().clamp_min(1)).clamp(*self.bounds)

    @torch.no_grad()
    def shift(self):
        """One warm-started EM update of π̂_u, then δ = logit(π̂_u) − logit(π_l), the log-odds to add to the
        malignant logit (0-d; 0 while fewer than min_scores scores are in)."""
        pi_l = self.pi_l()
        m = (torch.arange(self.size, device=self.scores.device) < self.filled).float()   # (size,) filled slots
        pi = self.pi_u.clone()
        for _ in range(self.em_iters):
            pi = (prior_adjusted(self.scores, pi, pi_l) * m).sum().div(m.sum().clamp_min(1)).clamp(*self.bounds)
        ready = self.filled >= self.min_scores
        self.pi_u.copy_(torch.where(ready, pi, self.pi_u))
        return torch.where(ready, torch.logit(self.pi_u) - torch.logit(pi_l), torch.zeros_like(pi))


class MemoryBanks(nn.Module):
    """The two memory banks of §3.4, owned by the training state (saved in the checkpoint under "banks"):
    `pixel` (pixel-head width) and `image` (image-head width); with class_share also `class_share`, the
    ClassShareTracker of --pseudo-label-prior unlabeled."""

    def __init__(self, pixel_size, pixel_dim, image_size, image_dim, class_share=False):
        super().__init__()
        self.pixel = MemoryBank(pixel_size, pixel_dim)
        self.image = MemoryBank(image_size, image_dim)
        if class_share:
            self.class_share = ClassShareTracker()


def _out_dim(module, default):
    """Output width of a head (last Linear/Conv), or `default` if the model has no such head."""
    dims = [m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for m in (module.modules() if module is not None else [])
            if isinstance(m, (nn.Linear, nn.Conv2d))]
    return dims[-1] if dims else default


def make_banks(model, cfg):
    """MemoryBanks sized by cfg (entries per class) and by the model's pixel / image heads (256 / 128 by
    default), on the model's device."""
    dev = next(iter(model.parameters()), torch.zeros(())).device
    return MemoryBanks(cfg.pixel_bank_size, _out_dim(getattr(model, "pixel_head", None), 256),
                       cfg.image_bank_size, _out_dim(getattr(model, "image_head", None), 128),
                       class_share=cfg.pseudo_label_prior == "unlabeled").to(dev)


def config_from(mapping):
    """HermesConfig from any mapping holding its field names (e.g. train.py's resolved arguments)."""
    return HermesConfig(**{f.name: mapping[f.name] for f in fields(HermesConfig) if f.name in mapping})


# ----------------------------------------------------------------------------------------------------------
# One training step (eq. (15))

def _forward(model, x, cfg):
    if cfg.task == "seg":
        return model.forward_seg(x)
    if cfg.task == "cls":
        return model.forward_cls(x)
    return model(x, ias=cfg.ias)


@contextlib.contextmanager
def _frozen_bn_stats(model, on=True):
    """BatchNorm keeps normalising with the batch's own statistics but leaves its running statistics alone
    (momentum 0), so evaluation uses statistics of labeled images only. Not in the paper."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if on else []
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def _select(p, kappa, tau, rule):
    """w for probs p (B,C,...) under the configured rule (eq. (7) for "dual")."""
    if rule == "dual":
        return dual_threshold_mask(p, kappa, tau)                                  # eq. (7)
    if rule == "confidence":
        return (p.amax(1) >= tau).to(p.dtype)
    return torch.ones_like(p[:, 0])


@dataclass
class TeacherOutputs:
    """The weak view's outputs (no gradient) and its pseudo-labels (§3.3). The pixel fields are None for
    task="cls", the image fields None for task="seg".

    seg_logits (B_u,2,S,S), pixel_emb (B_u,D,h,w); p_pix (B_u,2,S,S) softmax, pl_pix (B_u,S,S) pseudo-labels
    (argmax), w_pix (B_u,S,S) 0/1 selection (eq. (7) under the "dual" rule).
    cls_logits (B_u,2), image_emb (B_u,D'); p_img (B_u,2), pl_img (B_u,), w_img (B_u,): the same per image;
    with --pseudo-label-prior unlabeled cls_logits and what follows are at the unlabeled share (δ added),
    score (B_u,) p(malignant) before it (None without the switch).
    """
    seg_logits: torch.Tensor = None
    pixel_emb: torch.Tensor = None
    p_pix: torch.Tensor = None
    pl_pix: torch.Tensor = None
    w_pix: torch.Tensor = None
    cls_logits: torch.Tensor = None
    image_emb: torch.Tensor = None
    p_img: torch.Tensor = None
    score: torch.Tensor = None
    pl_img: torch.Tensor = None
    w_img: torch.Tensor = None


def _pseudo_labels(logits, kappa, tau, rule):
    """logits (B,C,...) -> (p softmax (B,C,...), pseudo-label (B,...) argmax, w (B,...) the rule's
    selection)."""
    p = logits.float().softmax(1)
    # max().indices: argmax, 15x faster on CPU
    return p, p.max(1).indices, _select(p, kappa, tau, rule)


def ias_weight(it, warmup):
    """--ias-warmup N (not in the paper): weight s of the IAS module (models.set_ias_scale) at step `it`, 0 for
    it < N, then rising linearly to 1 at it = 2N."""
    return min(max((it - warmup) / warmup, 0.0), 1.0)


def make_ema_teacher(model):
    """--teacher ema (not in the paper): a frozen copy of the model that update_ema_teacher moves."""
    return copy.deepcopy(model).requires_grad_(False)


def ema_decay(it, decay):
    """a = min(1 - 1/(it + 1), decay): the teacher averages every step so far until 1/(1 - decay) of them
    (Tarvainen & Valpola 2017)."""
    return min(1.0 - 1.0 / (it + 1), decay)


@torch.no_grad()
def ema_(teacher, model, a):
    """teacher <- a teacher + (1 - a) model on the parameters and the floating buffers (BatchNorm
    statistics); integer buffers (num_batches_tracked) are copied. Modules of the same structure."""
    for pt, ps in zip(teacher.parameters(), model.parameters()):
        pt.mul_(a).add_(ps.detach(), alpha=1 - a)
    for bt, bs in zip(teacher.buffers(), model.buffers()):
        if bt.dtype.is_floating_point:
            bt.mul_(a).add_(bs, alpha=1 - a)
        else:
            bt.copy_(bs)


def update_ema_teacher(teacher, model, it, decay):
    """--teacher ema, after step `it`: ema_ with a = ema_decay(it, decay)."""
    ema_(teacher, model, ema_decay(it, decay))


def _malignant_shift(logits, delta):
    """logits (B,2) with δ added to the malignant logit (--pseudo-label-prior unlabeled)."""
    return logits + torch.stack([torch.zeros_like(delta), delta]).to(logits.dtype)


def _teacher(model, x_w, kappa, tau, cfg, delta=None):
    """Weak view through the model (the paper has no EMA teacher; with --teacher ema, `model` is the
    moving average), in train mode -> TeacherOutputs.

    No gradient reaches the parameters, but with ias the forward still runs one backward pass: the saliency
    map of eq. (6) is the input gradient of the classifier (models.saliency: torch.autograd.grad under
    torch.enable_grad, inside this no_grad)."""
    with torch.no_grad(), _frozen_bn_stats(model, cfg.unlabeled_bn == "separate"):
        out = _forward(model, x_w, cfg)                      # with ias: + saliency's backward through cls_net
    t = TeacherOutputs()
    if "seg_logits" in out:
        t.seg_logits, t.pixel_emb = out["seg_logits"], out["pixel_emb"]
        t.p_pix, t.pl_pix, t.w_pix = _pseudo_labels(t.seg_logits, kappa, tau, cfg.threshold)   # eq. (7)
    if "cls_logits" in out:
        t.cls_logits, t.image_emb = out["cls_logits"], out["image_emb"]
        if delta is not None:                                                      # decided at the unlabeled share
            t.score = t.cls_logits.detach().float().softmax(1)[:, 1]               # (B_u,) at the labeled share
            t.cls_logits = _malignant_shift(t.cls_logits, delta)
        t.p_img, t.pl_img, t.w_img = _pseudo_labels(t.cls_logits, kappa, tau, cfg.threshold)   # eq. (7)
    return t


def _student(model, x, x_s, cfg):
    """Labeled (+ strong unlabeled) images with gradient -> the model's outputs, labeled rows first (B_l, then
    B_u). "shared": ONE forward of cat([x, x_s]), so BatchNorm normalises both sets together (FixMatch
    practice); "separate": two forwards, the strong one with frozen running statistics, concatenated."""
    if x_s is None:
        return _forward(model, x, cfg)
    if cfg.unlabeled_bn == "shared":
        return _forward(model, torch.cat([x, x_s]), cfg)
    out_l = _forward(model, x, cfg)
    with _frozen_bn_stats(model):
        out_u = _forward(model, x_s, cfg)
    return {k: torch.cat([v, out_u[k]]) for k, v in out_l.items() if torch.is_tensor(v)}


def _split_rows(out, B_l):
    """The student's outputs by rows -> (out_l: the B_l labeled images, out_u: the strong views after them),
    {key: tensor} views of the tensors in `out`."""
    tensors = {k: v for k, v in out.items() if torch.is_tensor(v)}
    return {k: v[:B_l] for k, v in tensors.items()}, {k: v[B_l:] for k, v in tensors.items()}


def _pixel_contrast(out, t, y, bank, cfg):
    """eq. (11) on the pixel_emb grid with §3.4's anchors, then the bank update.

    Anchors: labeled (ground truth, w = 1) and strong unlabeled (pseudo-labels, w) student embeddings, drawn
    from one map of all the student's rows (`out`, labeled first). Keys: the pixel bank + the weak-view
    (teacher) embeddings of this step's unlabeled anchors (a labeled anchor has no teacher view and its own
    embedding would be a self-pair). Afterwards the weak-view keys and the detached labeled anchors are
    pushed.
    """
    emb, B_l = out["pixel_emb"], y.shape[0]                                        # (B_l+B_u,D,h,w)
    hw = emb.shape[-2:]
    lab = downsample_nearest(torch.cat([y, t.pl_pix]), hw)                         # (B_l+B_u,h,w)
    w = downsample_nearest(torch.cat([torch.ones_like(y, dtype=t.w_pix.dtype), t.w_pix]), hw)
    pred = downsample_nearest(out["seg_logits"].detach().max(1).indices, hw)       # student prediction
    # the fast form of sample_anchors: fixed-size slots and masks instead of boolean selections, no host sync
    idx, a_lab, valid = sample_anchor_slots(lab, w, pred, cfg.n_anchors)           # (2n,) each
    anchors = flatten_map(emb)[idx]                                                # (2n,D)
    n_l = B_l * hw[0] * hw[1]                       # flattened rows: the labeled images' pixels come first
    unlabeled = idx >= n_l                          # (2n,) anchor on a strong view
    weak_row = (idx - n_l).clamp(min=0)             # (2n,) its pixel in the teacher's map (labeled: masked)
    key_now = flatten_map(t.pixel_emb)[weak_row].detach()                          # (2n,D) weak view
    bank_f, bank_l, filled = bank.slots()
    loss = pixel_contrastive_loss(anchors, a_lab, torch.cat([bank_f.to(key_now.dtype), key_now]),
                                  torch.cat([bank_l, a_lab]), cfg.temperature, anchor_mask=valid,
                                  key_mask=torch.cat([filled, valid & unlabeled]))  # eq. (11)
    bank.push(torch.cat([key_now, anchors.detach()]), torch.cat([a_lab, a_lab]),
              torch.cat([valid & unlabeled, valid & ~unlabeled]))
    return loss, valid.sum()


def _image_contrast(out_l, out_u, t, z, bank, cfg):
    """eqs. (12)–(13): rows i and i+B_u are the strong (student) and weak (teacher) views of unlabeled
    image i, with the image bank; afterwards the kept weak embeddings (pseudo-label) and the labeled ones
    are pushed."""
    emb_s, emb_w = out_u["image_emb"], t.image_emb.detach()                        # (B_u,D) each
    bank_f, bank_l, filled = bank.slots()
    loss = image_contrastive_loss(torch.cat([emb_s, emb_w]), t.pl_img.repeat(2), t.w_img.repeat(2),
                                  cfg.temperature, bank_feats=bank_f, bank_labels=bank_l,
                                  bank_mask=filled)                                # eqs. (12)–(13)
    bank.push(torch.cat([emb_w, out_l["image_emb"].detach()]), torch.cat([t.pl_img, z]),
              torch.cat([t.w_img > 0.5, torch.ones_like(z, dtype=torch.bool)]))  # kept weak + labeled
    return loss


def _unsup_seg_loss(logits_s, logits_w, w, kind):
    if kind == "dice":
        return seg_unsupervised_loss(logits_s, logits_w, w)                        # eq. (9)
    ce = seg_unsupervised_ce_loss(logits_s, logits_w, w)                           # not in the paper
    return ce if kind == "ce" else 0.5 * (ce + seg_unsupervised_loss(logits_s, logits_w, w))


def eq15_coefficients(cfg, it):
    """The coefficient of each of eq. (15)'s seven terms at step `it`, {part: float} (losses.total_loss sums):

        λ_seg (L^l_seg + μ L^u_seg + α L^seg_c) + λ_cls (L^l_cls + μ L^u_cls + β L^cls_c) + γ L^u_itc

    λ_seg, λ_cls, α, β, γ: the paper's constants (cfg, §4.1). Not in the paper, and 1 with the defaults:
    μ = cfg.unsup_weight (on L^u_cls cfg.unsup_weight_cls when that is set); α and β count from step
    cfg.contrast_warmup on (0 before); γ is ramped up as γ exp(-5 (1 - it/R)²) until step R = cfg.gamma_ramp
    (HermesConfig says where each comes from)."""
    mu = cfg.unsup_weight
    mu_cls = mu if cfg.unsup_weight_cls is None else cfg.unsup_weight_cls
    warm = 1.0 if it >= cfg.contrast_warmup else 0.0
    ramp = math.exp(-5.0 * (1.0 - min(it / cfg.gamma_ramp, 1.0)) ** 2) if cfg.gamma_ramp > 0 else 1.0
    return {"seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg * mu, "seg_c": cfg.lambda_seg * cfg.alpha * warm,
            "cls_l": cfg.lambda_cls, "cls_u": cfg.lambda_cls * mu_cls, "cls_c": cfg.lambda_cls * cfg.beta * warm,
            "itc": cfg.gamma * ramp}


def _pseudo_label_stats(p, pl, w, gt, tau, kind):
    """Fraction kept and accuracy of the teacher's pseudo-labels pl of `kind` ("pix" or "img") with
    probabilities p and selection w (TeacherOutputs' fields), over all of them, over those the run's rule
    keeps, and over those confidence alone (max p >= τ) would keep (Fig. 1's comparison, logged whatever rule
    trains the model). Accuracies over an empty kept set are 0. They count only ground truth in {0, 1}: real
    unlabeled images carry data.NO_LABEL / NO_MASK; with none in the batch they are NaN (blank in log.csv),
    and n_gt_<kind> says how many were counted. -> {stat name (PL_STAT_KEYS, n_kept_*, n_gt_*): 0-d}"""
    right = (pl == gt.long()).float()                   # 0 where the ground truth is unknown
    w_conf = (p.amax(1) >= tau).float()
    has = ((gt == 0) | (gt == 1)).float()
    n_gt = has.sum()
    known = lambda acc: torch.where(n_gt > 0, acc, torch.nan)
    return {f"kept_{kind}": w.mean(), f"n_kept_{kind}": w.sum(), f"n_gt_{kind}": n_gt,
            f"pl_acc_{kind}_all": right.sum() / n_gt,
            f"pl_acc_{kind}_kept": known((right * w).sum() / (w * has).sum().clamp_min(1)),
            f"kept_{kind}_conf": w_conf.mean(),
            f"pl_acc_{kind}_conf": known((right * w_conf).sum() / (w_conf * has).sum().clamp_min(1))}


def hermes_step(model, banks, batch_l, batch_u, it, total, cfg, keep_terms=False, teacher=None):
    """All losses of one Hermes step; returns (loss (eq. (15)), stats). Does not call backward.

    batch_l = (x (B_l,3,S,S), y (B_l,S,S) int, z (B_l,) int)
    batch_u = (x_w, x_s (B_u,3,S,S), y_gt (B_u,S,S), z_gt (B_u,)): weak and strong views (pixel aligned);
              y_gt / z_gt only measure pseudo-label accuracy, they never enter a loss.
    banks: MemoryBanks (make_banks); pushed to in place.
    teacher: the network of the weak-view pass; None = `model` itself (the paper), else --teacher ema's copy.

    Teacher (weak view, no gradient; skipped without dtcl) -> pseudo-labels and w (eqs. (7), (16), (17));
    student (labeled + strong unlabeled; labeled only for SupOnly) -> one line per term of eq. (15).
    task="seg"/"cls" use one branch (no ITA, no saliency, itc = 0). A switched-off term is an exact 0
    without gradient.

    stats: 0-d detached tensors (no host sync): STAT_KEYS, n_kept_pix, n_kept_img, n_anchors, bank_pix,
    bank_img. Pseudo-label statistics are 0 when the teacher pass is skipped. keep_terms: also stats["terms"],
    the weighted summands of eq. (15) with their graphs (losses.weighted_terms; tools/diagnose.py).
    """
    x, y, z = batch_l
    x_w, x_s, y_gt, z_gt = batch_u
    if x_w.shape != x_s.shape or x_w.shape[1:] != x.shape[1:]:
        raise ValueError(f"hermes_step: labeled {tuple(x.shape)}, weak {tuple(x_w.shape)} and strong "
                         f"{tuple(x_s.shape)} batches must share channel and spatial sizes (weak = strong)")
    y, z, B_l = y.long(), z.long(), x.shape[0]
    seg_on, cls_on = cfg.task in ("joint", "seg"), cfg.task in ("joint", "cls")
    itc_on = cfg.itcl and cfg.task == "joint"
    kappa = uncertainty_threshold(it, total, cfg.eta_max, cfg.eta_min)            # eq. (16)
    tau = confidence_threshold(it, total)                                          # eq. (17)

    if it < cfg.burn_in:   # burn-in: SupOnly's losses (not in the paper); IAS stays on unless --ias-warmup
        itc_on = False
    if cfg.ias_warmup:
        for m in (model, teacher):
            if m is not None:
                set_ias_scale(m, ias_weight(it, cfg.ias_warmup))
    dtcl_on = cfg.dtcl and it >= cfg.burn_in
    share = getattr(banks, "class_share", None) if cls_on else None               # --pseudo-label-prior unlabeled
    delta = share.shift() if share is not None and dtcl_on else None              # 0-d log-odds, or None
    t = _teacher(model if teacher is None else teacher, x_w, kappa, tau, cfg, delta) if dtcl_on else None
    out = _student(model, x, x_s if (dtcl_on or itc_on) else None, cfg)
    out_l, out_u = _split_rows(out, B_l)
    zero = out["seg_logits" if seg_on else "cls_logits"].new_zeros(()).float()
    L, n_anchors = dict.fromkeys(PARTS, zero), 0
    if seg_on:
        L["seg_l"] = seg_supervised_loss(out_l["seg_logits"], y)                   # eq. (1)
    if cls_on:
        L["cls_l"] = cls_supervised_loss(out_l["cls_logits"], z)                   # eq. (2)
    if t is not None and seg_on:
        L["seg_u"] = _unsup_seg_loss(out_u["seg_logits"], t.seg_logits, t.w_pix,
                                     cfg.unsup_seg_loss)                           # eq. (9)
        L["seg_c"], n_anchors = _pixel_contrast(out, t, y, banks.pixel, cfg)       # eq. (11)
    if t is not None and cls_on:
        logits_s = out_u["cls_logits"] if delta is None else _malignant_shift(out_u["cls_logits"], delta)
        L["cls_u"] = cls_unsupervised_loss(logits_s, t.cls_logits, t.w_img)        # eq. (10)
        if share is not None:
            share.push(t.score, z)
        L["cls_c"] = _image_contrast(out_l, out_u, t, z, banks.image, cfg)         # eqs. (12)–(13)
    if itc_on:
        L["itc"] = inter_task_consistency_loss(out_u["itc_cls"], out_u["itc_seg"])  # eq. (14)

    coefficients = eq15_coefficients(cfg, it)
    loss = total_loss(L, coefficients)                                             # eq. (15)

    stats = {k: v.detach().float() for k, v in L.items()}
    stats.update({k: zero for k in PL_STAT_KEYS + ("n_kept_pix", "n_kept_img")})
    if t is not None and seg_on:
        stats.update(_pseudo_label_stats(t.p_pix, t.pl_pix, t.w_pix, y_gt, tau, "pix"))
    if t is not None and cls_on:
        stats.update(_pseudo_label_stats(t.p_img, t.pl_img, t.w_img, z_gt, tau, "img"))
    stats.update(loss=loss.detach().float(), kappa=torch.tensor(kappa), tau=torch.tensor(tau),
                 n_anchors=zero + n_anchors, bank_pix=banks.pixel.filled.sum().float(),
                 bank_img=banks.image.filled.sum().float())
    if keep_terms:
        stats["terms"] = weighted_terms(L, coefficients)
    return loss, stats
