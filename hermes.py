"""The Hermes method (paper Sec. 3.3-3.6, supplementary Sec. 6; SPEC §4): pseudo-label selection (eq. 7-8),
threshold schedules (eq. 16-17), anchor sampling, memory banks and `hermes_step`, one training step that
returns the total loss of eq. (15) and its statistics.

Example:
    >>> model = HermesNet(seg_encoder="resnet18"); cfg = HermesConfig()
    >>> attach_banks(model, cfg)
    >>> loss, stats = hermes_step(model, (x, y, z), (x_w, x_s, y_gt, z_gt), it=0, total=3000, cfg=cfg)
    >>> loss.backward()   # then both optimizers step (train.py)
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import (cls_supervised_loss, cls_unsupervised_loss, image_contrastive_loss,
                    inter_task_consistency_loss, pixel_contrastive_loss, seg_supervised_loss,
                    seg_unsupervised_loss, total_loss)

PARTS = ("seg_l", "seg_u", "seg_c", "cls_l", "cls_u", "cls_c", "itc")


@dataclass
class HermesConfig:
    """Switches and weights of one Hermes step (defaults: paper §4.1, supplementary §6, SPEC §4)."""
    dtcl: bool = True            # dual-threshold contrastive learning + unlabeled losses (Table 3)
    ias: bool = True             # inter-task attention + saliency (Table 3)
    itcl: bool = True            # inter-task consistency learning, eq. (14) (Table 3)
    task: str = "joint"          # "joint" | "seg" | "cls"
    threshold: str = "dual"      # "dual" (eq. 7) | "confidence" (max p >= tau) | "none" (keep all)
    lambda_seg: float = 0.5      # eq. (15), §4.1
    lambda_cls: float = 1.0      # eq. (15), §4.1
    alpha: float = 0.8           # eq. (15), §4.1 (pixel contrast weight)
    beta: float = 0.2            # eq. (15), §4.1 (image contrast weight)
    gamma: float = 0.1           # eq. (15), §4.1 (consistency weight)
    temperature: float = 0.07    # eq. (11)-(12), §3.4
    n_anchors: int = 256         # anchors per class per step (n of §3.4's anchor sampling)
    pixel_bank_size: int = 4096  # pixel memory bank entries per class (§3.4; size not given in the paper)
    image_bank_size: int = 256   # image memory bank entries per class (§3.4; size not given in the paper)
    eta_max: float = 0.75        # eq. (16), supplementary §6
    eta_min: float = 0.25        # eq. (16), supplementary §6

    def __post_init__(self):
        if self.task not in ("joint", "seg", "cls"):
            raise ValueError(f"HermesConfig.task must be joint, seg or cls, got {self.task!r}")
        if self.threshold not in ("dual", "confidence", "none"):
            raise ValueError(f"HermesConfig.threshold must be dual, confidence or none, got {self.threshold!r}")


# ----------------------------------------------------------------------------------------------------------
# Pseudo-label selection (eq. 7, 8) and threshold schedules (eq. 16, 17)

def uncertainty(probs, eps=1e-8):
    """Eq. (8): u(p) = -Σ_c p_c log(p_c + eps), in nats; the paper's Σ_{j=1..M} is read as a sum over classes.

    probs (B,C,...) -> (B,...) (dim 1 summed out).
    """
    return -(probs * torch.log(probs + eps)).sum(1)                               # eq. (8)


@torch.no_grad()
def dual_threshold_mask(probs, kappa, tau):
    """Eq. (7): w = 1[u(p) <= kappa] · 1[max_c p_c >= tau].

    probs (B,C,...) float -> w (B,...) float 0/1 of probs' dtype (no gradient).
    """
    w = (uncertainty(probs) <= kappa) & (probs.amax(1) >= tau)                     # eq. (7)
    return w.to(probs.dtype if probs.is_floating_point() else torch.float32)


def _progress(it, total):
    if total <= 0:
        raise ValueError(f"hermes.py: total iterations must be > 0, got {total}")
    return float(it) / float(total)


def uncertainty_threshold(it, total, eta_max=0.75, eta_min=0.25):
    """Eq. (16): kappa = eta_min + ½ (eta_max - eta_min)(cos(π it/total) + 1); 0.75 -> 0.25 nats. -> float"""
    return eta_min + 0.5 * (eta_max - eta_min) * (math.cos(math.pi * _progress(it, total)) + 1.0)  # eq. (16)


def confidence_threshold(it, total):
    """Eq. (17), literally: tau = 0.75 + 0.25 exp(-½ (1 - it/total)²) ln 2, i.e. 0.8551 -> 0.9233. -> float"""
    return 0.75 + 0.25 * math.exp(-0.5 * (1.0 - _progress(it, total)) ** 2) * math.log(2.0)  # eq. (17)


# ----------------------------------------------------------------------------------------------------------
# Anchor sampling (§3.4)

def downsample_nearest(t, size):
    """Nearest-neighbour resize of a label-like map: t (B,H,W) (int, bool or float) -> (B,*size), same dtype."""
    out = F.interpolate(t[:, None].float(), size=tuple(size), mode="nearest")[:, 0]  # (B,h,w)
    return out.to(t.dtype)


def sample_anchor_indices(labels, w, pred_strong, n, generator=None, num_classes=2):
    """Indices of the anchors of §3.4 into the flattened (B*h*w) map.

    Per class c, among the pixels with w = 1 and label c: hard = pred_strong != label, easy = equal; n//2
    hard and n - n//2 easy are drawn uniformly without replacement (random keys + top-k), a short pool
    being filled from the other one. Keys come from `generator` (or the global RNG).

    labels (B,h,w) int, w (B,h,w) 0/1, pred_strong (B,h,w) int -> (idx (K,) long, anchor_labels (K,) long),
    K <= num_classes * n, ordered class 0 hard, class 0 easy, class 1 hard, ...
    """
    if not (labels.shape == w.shape == pred_strong.shape):
        raise ValueError(f"sample_anchors: labels {tuple(labels.shape)}, w {tuple(w.shape)} and pred_strong "
                         f"{tuple(pred_strong.shape)} must have the same shape")
    dev = labels.device
    lab = labels.reshape(-1).long()                                                # (P,)
    keep = w.reshape(-1) > 0.5                                                     # (P,)
    hard = pred_strong.reshape(-1).long() != lab                                   # (P,)
    P = lab.numel()
    if generator is not None and generator.device != dev:
        r = torch.rand(P, generator=generator, device=generator.device).to(dev)
    else:
        r = torch.rand(P, generator=generator, device=dev)                         # random keys
    pools = []
    for c in range(num_classes):
        m = keep & (lab == c)
        pools += [m & hard, m & ~hard]
    avail = torch.stack([p.sum() for p in pools]).tolist() if P else [0] * len(pools)  # one host sync
    idx, out_labels = [], []
    for c in range(num_classes):
        a_h, a_e = avail[2 * c], avail[2 * c + 1]
        n_h = min(n // 2, a_h)
        n_e = min(n - n_h, a_e)
        n_h = min(n - n_e, a_h)                                                    # fill from the other pool
        for pool, k in ((pools[2 * c], n_h), (pools[2 * c + 1], n_e)):
            if k > 0:
                idx.append(torch.where(pool, r, torch.full_like(r, -1.0)).topk(k).indices)
                out_labels.append(torch.full((k,), c, dtype=torch.long, device=dev))
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    return torch.cat(idx), torch.cat(out_labels)


def flatten_map(feats):
    """(B,D,h,w) -> (B*h*w, D), row b*h*w + y*w + x (the order of sample_anchor_indices)."""
    B, D = feats.shape[:2]
    return feats.permute(0, 2, 3, 1).reshape(-1, D)                                # (B*h*w,D)


def sample_anchors(feats, labels, w, pred_strong, n, generator=None):
    """Anchor sampling of §3.4 on a feature map; gradients flow into the selected rows.

    feats (B,D,h,w), labels (B,h,w) int, w (B,h,w) 0/1, pred_strong (B,h,w) int, n anchors per class
    -> (anchors (K,D), anchor_labels (K,)), K <= 2n. See sample_anchor_indices for the selection rule.
    """
    if feats.shape[0:1] + feats.shape[2:] != labels.shape:
        raise ValueError(f"sample_anchors: feats {tuple(feats.shape)} and labels {tuple(labels.shape)} differ "
                         f"in batch or spatial size")
    idx, anchor_labels = sample_anchor_indices(labels, w, pred_strong, n, generator)
    return flatten_map(feats)[idx], anchor_labels


# ----------------------------------------------------------------------------------------------------------
# Memory bank (§3.4)

class MemoryBank(nn.Module):
    """Per-class first-in-first-out ring buffers of detached embeddings (buffers, so they live in state_dict).

    feats (num_classes,size,dim), ptr (num_classes,) next slot, filled (num_classes,) entries in use.
    push(feats (K,D), labels (K,)): each class's vectors are written in order at ptr, ptr+1, ... (mod size),
    exactly as K one-by-one pushes would leave the ring (more than `size` at once keeps the newest `size`).
    keys() -> (feats (M,D), labels (M,)) of the filled slots, class 0 first.
    """

    def __init__(self, size_per_class, dim, num_classes=2):
        super().__init__()
        if size_per_class < 1 or dim < 1:
            raise ValueError(f"MemoryBank: size_per_class and dim must be >= 1, got {size_per_class}, {dim}")
        self.size, self.dim, self.num_classes = size_per_class, dim, num_classes
        self.register_buffer("feats", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, feats, labels):
        if feats.dim() != 2 or feats.shape[1] != self.dim or labels.numel() != feats.shape[0]:
            raise ValueError(f"MemoryBank.push: expected feats (K,{self.dim}) and labels (K,), got "
                             f"{tuple(feats.shape)} and {tuple(labels.shape)}")
        feats, labels = feats.detach().to(self.feats), labels.reshape(-1).to(self.ptr.device)
        S = self.size
        for c in range(self.num_classes):
            f = feats[labels == c]                                                 # (k,D)
            k = f.shape[0]
            if k == 0:
                continue
            j = torch.arange(max(k - S, 0), k, device=self.ptr.device)             # newest min(k,S) vectors
            self.feats[c, (self.ptr[c] + j) % S] = f[j]                            # ring positions
            self.ptr[c] = (self.ptr[c] + k) % S
            self.filled[c] = torch.clamp(self.filled[c] + k, max=S)

    def keys(self):
        filled = self.filled.tolist()
        feats = torch.cat([self.feats[c, :filled[c]] for c in range(self.num_classes)])          # (M,D)
        labels = torch.cat([torch.full((filled[c],), c, dtype=torch.long, device=self.feats.device)
                            for c in range(self.num_classes)])                                   # (M,)
        return feats, labels

    def extra_repr(self):
        return f"size_per_class={self.size}, dim={self.dim}, num_classes={self.num_classes}"


def _out_dim(module, default):
    """Output width of a head (last Linear/Conv), or `default` if the model has no such head."""
    dims = [m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for m in (module.modules() if module is not None else []) if isinstance(m, (nn.Linear, nn.Conv2d))]
    return dims[-1] if dims else default


def attach_banks(model, cfg):
    """Add model.pixel_bank (cfg.pixel_bank_size per class, pixel-head width, 256 by default) and
    model.image_bank (cfg.image_bank_size, image-head width, 128 by default) if missing, on the model's
    device, so that they are saved and restored with model.state_dict(). Returns the model."""
    dev = next(iter(model.parameters()), torch.zeros(())).device
    if not hasattr(model, "pixel_bank"):
        model.pixel_bank = MemoryBank(cfg.pixel_bank_size, _out_dim(getattr(model, "pixel_head", None), 256)).to(dev)
    if not hasattr(model, "image_bank"):
        model.image_bank = MemoryBank(cfg.image_bank_size, _out_dim(getattr(model, "image_head", None), 128)).to(dev)
    return model


# ----------------------------------------------------------------------------------------------------------
# One training step (eq. 15)

def _forward(model, x, cfg):
    if cfg.task == "seg":
        return model.forward_seg(x)
    if cfg.task == "cls":
        return model.forward_cls(x)
    return model(x, ias=cfg.ias)


def _select(p, kappa, tau, rule):
    """w for probs p (B,C,...) under the configured rule (eq. 7 for "dual")."""
    if rule == "dual":
        return dual_threshold_mask(p, kappa, tau)                                  # eq. (7)
    if rule == "confidence":
        return (p.amax(1) >= tau).to(p.dtype)
    return torch.ones_like(p[:, 0])


def _confidence_only_stats(p_w, right, tau, kind):
    """Fraction kept and accuracy of the pseudo-labels that confidence alone (max p >= tau) would keep,
    whatever rule trains the model: the paper's Fig. 1 compares it with the dual threshold."""
    w_conf = (p_w.amax(1) >= tau).to(right.dtype)
    return {f"kept_{kind}_conf": w_conf.mean(),
            f"pl_acc_{kind}_conf": (right * w_conf).sum() / w_conf.sum().clamp_min(1)}


def hermes_step(model, batch_l, batch_u, it, total, cfg):
    """All losses of one Hermes step; returns (loss (eq. 15), stats). Does not call backward.

    batch_l = (x (B_l,3,S,S), y (B_l,S,S) int, z (B_l,) int)
    batch_u = (x_w, x_s (B_u,3,S,S), y_gt (B_u,S,S), z_gt (B_u,)): weak and strong views (pixel aligned);
              y_gt / z_gt only measure pseudo-label accuracy, they never enter a loss.

    - Teacher: the weak view through the same model under torch.no_grad() (the model stays in train mode);
      skipped when dtcl is off (no term uses pseudo-labels). Pseudo-labels = argmax, w from cfg.threshold
      with kappa (eq. 16) and tau (eq. 17).
    - Student: ONE forward of cat([x, x_s]), so BatchNorm normalises labeled and strong unlabeled images
      together; only x when dtcl and itcl are both off (SupOnly).
    - Pixel contrast (eq. 11) on the pixel_emb grid: anchors sampled from labeled (GT, w = 1) and strong
      unlabeled (pseudo-labels, w) student embeddings; keys = pixel bank + the weak-view (teacher) embeddings
      of this step's unlabeled anchors (a labeled anchor has no teacher view and its own embedding would be a
      self-pair, so labeled anchors meet this step's unlabeled keys and the bank). Afterwards the weak-view
      keys and the detached labeled anchors are pushed to the pixel bank.
    - Image contrast (eq. 12-13) on [strong student; weak teacher] embeddings of the unlabeled batch with the
      image bank; afterwards the weak embeddings with w = 1 and the labeled embeddings are pushed.
    - Consistency (eq. 14) on the strong unlabeled views. task="seg"/"cls" use one branch only (no ITA,
      no saliency, itc = 0). Switched-off terms are an exact 0 without gradient.

    stats: 0-d detached tensors (no host sync): the seven parts, loss, kappa, tau, kept_pix, kept_img
    (fraction kept), n_kept_pix, n_kept_img, pl_acc_pix_all / pl_acc_img_all (pseudo-label accuracy over
    all unlabeled pixels / images), pl_acc_pix_kept / pl_acc_img_kept (over the kept ones; 0 if none),
    kept_*_conf / pl_acc_*_conf (the same for confidence alone, max p >= tau: Fig. 1's comparison),
    n_anchors, bank_pix, bank_img. Pseudo-label statistics are 0 when the teacher pass is skipped.
    """
    if not hasattr(model, "pixel_bank") or not hasattr(model, "image_bank"):
        attach_banks(model, cfg)
    x, y, z = batch_l
    x_w, x_s, y_gt, z_gt = batch_u
    if x_w.shape != x_s.shape or x_w.shape[1:] != x.shape[1:]:
        raise ValueError(f"hermes_step: labeled {tuple(x.shape)}, weak {tuple(x_w.shape)} and strong "
                         f"{tuple(x_s.shape)} batches must share channel and spatial sizes (weak = strong)")
    y, z = y.long(), z.long()
    B_l = x.shape[0]
    seg_on, cls_on = cfg.task in ("joint", "seg"), cfg.task in ("joint", "cls")
    use_u = cfg.dtcl or (cfg.itcl and cfg.task == "joint")
    kappa = uncertainty_threshold(it, total, cfg.eta_max, cfg.eta_min)            # eq. (16)
    tau = confidence_threshold(it, total)                                          # eq. (17)

    # teacher: weak view, no gradient
    out_w = None
    if cfg.dtcl:
        with torch.no_grad():
            out_w = _forward(model, x_w, cfg)

    # student: labeled + strong unlabeled in one batch
    out = _forward(model, torch.cat([x, x_s]) if use_u else x, cfg)
    dev = out["seg_logits" if seg_on else "cls_logits"].device
    zero = torch.zeros((), device=dev)
    parts = {k: zero for k in PARTS}
    st = {k: zero for k in ("kept_pix", "kept_img", "n_kept_pix", "n_kept_img", "pl_acc_pix_all",
                            "pl_acc_pix_kept", "pl_acc_img_all", "pl_acc_img_kept", "n_anchors",
                            "kept_pix_conf", "pl_acc_pix_conf", "kept_img_conf", "pl_acc_img_conf")}

    if seg_on:
        seg_logits = out["seg_logits"]                                             # (B_l[+B_u],2,S,S)
        parts["seg_l"] = seg_supervised_loss(seg_logits[:B_l], y)                  # eq. (1)
    if cls_on:
        cls_logits = out["cls_logits"]                                             # (B_l[+B_u],2)
        parts["cls_l"] = cls_supervised_loss(cls_logits[:B_l], z)                  # eq. (2)

    if cfg.dtcl and seg_on:
        logits_w = out_w["seg_logits"]                                             # (B_u,2,S,S)
        p_w = logits_w.float().softmax(1)
        w_pix = _select(p_w, kappa, tau, cfg.threshold)                            # (B_u,S,S)
        pl_pix = p_w.argmax(1)                                                     # (B_u,S,S)
        parts["seg_u"] = seg_unsupervised_loss(seg_logits[B_l:], logits_w, w_pix)  # eq. (9)

        # pixel contrast (eq. 11) on the pixel_emb grid
        emb = out["pixel_emb"]                                                     # (B_l+B_u,D,h,w)
        hw = emb.shape[-2:]
        lab = downsample_nearest(torch.cat([y, pl_pix]), hw)                       # (B_l+B_u,h,w)
        w_c = downsample_nearest(torch.cat([torch.ones_like(y, dtype=w_pix.dtype), w_pix]), hw)
        pred = downsample_nearest(seg_logits.detach().argmax(1), hw)               # strong/labeled prediction
        idx, a_lab = sample_anchor_indices(lab, w_c, pred, cfg.n_anchors)
        anchors = flatten_map(emb)[idx]                                            # (K,D)
        n_l = B_l * hw[0] * hw[1]
        is_u = idx >= n_l
        key_now = flatten_map(out_w["pixel_emb"])[idx[is_u] - n_l].detach()       # (K_u,D) weak view
        key_now_lab = a_lab[is_u]
        bank_f, bank_l = model.pixel_bank.keys()
        keys = torch.cat([bank_f.to(key_now.dtype), key_now])
        key_labels = torch.cat([bank_l, key_now_lab])
        parts["seg_c"] = pixel_contrastive_loss(anchors, a_lab, keys, key_labels, cfg.temperature)  # eq. (11)
        model.pixel_bank.push(torch.cat([key_now, anchors[~is_u].detach()]),
                              torch.cat([key_now_lab, a_lab[~is_u]]))

        kept = w_pix.sum()
        right = (pl_pix == y_gt.long()).to(w_pix.dtype)
        st.update(kept_pix=w_pix.mean(), n_kept_pix=kept, pl_acc_pix_all=right.mean(),
                  pl_acc_pix_kept=(right * w_pix).sum() / kept.clamp_min(1), n_anchors=zero + idx.numel())
        st.update(_confidence_only_stats(p_w, right, tau, "pix"))  # Fig. 1's middle curve, logged alongside

    if cfg.dtcl and cls_on:
        logits_w = out_w["cls_logits"]                                             # (B_u,2)
        p_w = logits_w.float().softmax(1)
        w_img = _select(p_w, kappa, tau, cfg.threshold)                            # (B_u,)
        pl_img = p_w.argmax(1)                                                     # (B_u,)
        parts["cls_u"] = cls_unsupervised_loss(cls_logits[B_l:], logits_w, w_img)  # eq. (10)

        # image contrast (eq. 12-13): rows i and i+B_u are the strong (student) and weak (teacher) views
        emb_s, emb_w = out["image_emb"][B_l:], out_w["image_emb"].detach()         # (B_u,D) each
        bank_f, bank_l = model.image_bank.keys()
        parts["cls_c"] = image_contrastive_loss(torch.cat([emb_s, emb_w]), pl_img.repeat(2), w_img.repeat(2),
                                                cfg.temperature, bank_feats=bank_f, bank_labels=bank_l)
        sel = w_img > 0.5
        model.image_bank.push(torch.cat([emb_w[sel], out["image_emb"][:B_l].detach()]),
                              torch.cat([pl_img[sel], z]))

        kept = w_img.sum()
        right = (pl_img == z_gt.long()).to(w_img.dtype)
        st.update(kept_img=w_img.mean(), n_kept_img=kept, pl_acc_img_all=right.mean(),
                  pl_acc_img_kept=(right * w_img).sum() / kept.clamp_min(1))
        st.update(_confidence_only_stats(p_w, right, tau, "img"))

    if cfg.itcl and cfg.task == "joint":
        parts["itc"] = inter_task_consistency_loss(out["itc_cls"][B_l:], out["itc_seg"][B_l:])  # eq. (14)

    loss = total_loss(parts, cfg.lambda_seg, cfg.lambda_cls, cfg.alpha, cfg.beta, cfg.gamma)  # eq. (15)
    stats = {k: v.detach().float() for k, v in parts.items()}
    stats.update({k: v.detach().float() for k, v in st.items()})
    stats.update(loss=loss.detach().float(), kappa=torch.tensor(kappa), tau=torch.tensor(tau),
                 bank_pix=model.pixel_bank.filled.sum().float(), bank_img=model.image_bank.filled.sum().float())
    return loss, stats
