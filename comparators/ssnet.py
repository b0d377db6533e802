"""SS-Net: Smoothness and class-Separation (Wu, Wu, Wu, Ge, Cai; MICCAI 2022;
code: github.com/ycwu1997/SS-Net).

Not part of Hermes; a comparator of the paper's Table 1. One U-Net (the model's) and two regularisers:
  smoothness (SS-Net eqs. (2)–(3)): virtual adversarial training. From a random unit direction d, one power
    step gives the direction that most changes the prediction, d = ∇_d D(p(x + ξ d), p(x)) / ||·||, and the
    network learns D(p(x + ε d), p(x)) = 0 on all images (D: a soft Dice between softmax maps);
  class separation (SS-Net eqs. (4)–(5)): pixel features (the decoder's last map, projected) of confidently
    right labeled pixels of each foreground class fill a per-class memory of prototypes, chosen by a learned
    ranking; labeled pixels (by label) and unlabeled pixels (by pseudo-label) are pulled towards their class's
    prototypes, 1 - cos, weighted by learned per-feature and per-prototype weights.
Total (SS-Net eq. (6)): L_seg + w(t) (L_vat + 0.1 (L_c^l + L_c^u)). The classification branch trains as
SupOnly's. Evaluation uses the model's U-Net. The heads and the memory live in `build_extra`.

Equation numbers: NOT verified against the paper. A check was tried, but the search index within reach holds
only the head of https://ar5iv.labs.arxiv.org/html/2203.01324 (title, abstract, start of §1), not the method
section, so each "SS-Net eq. (n)" here is still the writer's reading of the paper's layout: check it against
the PDF (MICCAI 2022 or arXiv 2203.01324) before quoting it. The authors' train_ss_2d.py and utils/losses.py
decide the details (SETTINGS).
"""
import config
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators import common
from losses import cls_supervised_loss, seg_supervised_loss, total_loss
from models import DECODER_CHANNELS

SETTINGS = config.comparator_settings("ssnet")   # declared in config.py with every other setting
N_CLASSES = 2


class SSNetHeads(nn.Module):
    """SS-Net's extra state: projection and prediction heads on the decoder's last features, the learned
    rankers (per class, for features and for prototypes), and the prototype memory (buffers). The heads are
    trained by the segmentation optimizer (Adam)."""

    def __init__(self, c_in, dim, memory):
        super().__init__()
        mlp = lambda a, b: nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True),
                                         nn.Linear(b, b))
        self.projection = mlp(c_in, dim)
        self.prediction = mlp(dim, dim)
        rank = lambda: nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, 1))
        self.rank_feature = nn.ModuleList([rank() for _ in range(N_CLASSES)])
        self.rank_memory = nn.ModuleList([rank() for _ in range(N_CLASSES)])
        self.register_buffer("memory", torch.zeros(N_CLASSES, memory, dim))
        self.register_buffer("filled", torch.zeros(N_CLASSES, dtype=torch.long))


def build_extra(model, cfg_dict):
    get = lambda k: cfg_dict.get(k, dict((n, d) for n, d, *_ in SETTINGS)[k])
    return SSNetHeads(DECODER_CHANNELS[-1], int(get("ssnet_dim")), int(get("ssnet_memory")))


# ---------------------------------------------------------------------------------------------------------
# the network's logits and last features

def logits_and_features(model, x):
    """The model's U-Net (zero saliency, as forward_seg without one): x -> (logits (B,2,H,W), the decoder's
    last feature map (B,16,H,W), SS-Net's `embedding`)."""
    B, _, H, W = x.shape
    dec = model.seg_decoder
    s0, s1, s2, s3, s4 = model.seg_encoder(x)
    u = dec.up2(dec.up1(s4, s3), s2)
    u = dec.up4(dec.up3(u, torch.cat([s1, x.new_zeros(B, 1, H // 4, W // 4)], 1)), s0)
    f = dec.up5(u)
    return dec.head(f), f


@contextlib.contextmanager
def frozen_bn_stats(module):
    """BatchNorm keeps normalising by the batch but leaves its running statistics alone (the code's
    _disable_tracking_bn_stats)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


# ---------------------------------------------------------------------------------------------------------
# smoothness: VAT

def soft_dice(p, q, smooth=1e-10):
    """VAT's distance D (the code's softDiceLoss): (1/C) Σ_c [1 - (2 Σ p_c q_c + s) / (Σ p_c² + Σ q_c² + s)],
    sums over the batch. p, q (B,C,H,W) -> 0-d."""
    inter = (p * q).sum((0, 2, 3))
    den = (p * p).sum((0, 2, 3)) + (q * q).sum((0, 2, 3))
    return (1 - (2 * inter + smooth) / (den + smooth)).mean()


def l2_normalize(d):
    """Each image's tensor to unit L2 norm (+1e-8), as the code's _l2_normalize."""
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-8)


def adversarial_direction(net, x, p, xi):
    """SS-Net eq. (2): one power-iteration step from a random direction (U(-0.5, 0.5), torch's global RNG):
    d = normalise(∇_d D(softmax(net(x + ξ d)), p)). Only the input is differentiated (no parameter .grad).
    net: x -> logits; x (B,...), p (B,C,...) the clean prediction -> d (B,...) unit per image."""
    d = l2_normalize(torch.rand(x.shape, device=x.device, dtype=x.dtype) - 0.5).requires_grad_(True)
    with torch.enable_grad():
        dist = soft_dice(common.hi(net(x + xi * d)).softmax(1), p)
        (g,) = torch.autograd.grad(dist, d)
    return l2_normalize(g.detach())


def vat_loss(net, x, xi, eps):
    """SS-Net eq. (3): L_vat = D(softmax(net(x + ε d_adv)), softmax(net(x))), the clean prediction fixed."""
    with torch.no_grad():
        p = common.hi(net(x)).softmax(1)
    d = adversarial_direction(net, x, p, xi)
    return soft_dice(common.hi(net(x + eps * d)).softmax(1), p)


# ---------------------------------------------------------------------------------------------------------
# class separation: prototypes

@torch.no_grad()
def update_memory(extra, feats, labels):
    """SS-Net eq. (4): for each foreground class c with pixels, the memory of c becomes its (at most M)
    features ranked highest by the learned ranker of c (all of them when fewer). feats (N,D) projected,
    labels (N,) of the confidently right labeled pixels."""
    M = extra.memory.shape[1]
    for c in range(1, N_CLASSES):                 # the code keeps only prediction_label > 0 (no background)
        f = feats[labels == c]
        if f.shape[0] == 0:
            continue
        if f.shape[0] > M:
            score = extra.rank_feature[c](f).view(-1)
            f = f[score.topk(M).indices]
        extra.memory[c].zero_()
        extra.memory[c, :f.shape[0]] = f
        extra.filled[c] = f.shape[0]


def class_separation_loss(extra, feats, labels):
    """SS-Net eq. (5): (1/C) Σ_c over classes with prototypes and >1 pixels, mean_{i,j} w_i v_j (1 - cos(f_i,
    m_j)), with w = sigmoid(rank_feature_c(f_i)) (features detached) and v = sigmoid(rank_memory_c(m_j)), each
    rescaled to mean 1. feats (N,D) predicted features, labels (N,) -> 0-d."""
    loss = feats.sum() * 0.0
    for c in range(N_CLASSES):
        n_mem = int(extra.filled[c])
        f = feats[labels == c]
        if n_mem < 2 or f.shape[0] < 2:
            continue
        m = extra.memory[c, :n_mem]
        dist = 1 - F.normalize(f, dim=1) @ F.normalize(m, dim=1).T                   # (N_c,M)
        w = torch.sigmoid(extra.rank_feature[c](f.detach()))                          # (N_c,1)
        v = torch.sigmoid(extra.rank_memory[c](m)).T                                   # (1,M)
        w, v = w * (w.shape[0] / w.sum()), v * (v.shape[1] / v.sum())
        loss = loss + (dist * w * v).mean()
    return loss / N_CLASSES


def _pixels(f):
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


# ---------------------------------------------------------------------------------------------------------
# step

def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One SS-Net step; returns (loss, stats) with cps_step's keys. Does not call backward.

    loss = λ_seg (seg_l + seg_u + seg_c) + λ_cls cls_l with seg_l = Hermes eq. (1) on the labeled images,
    seg_u = w(t) L_vat over labeled + weak unlabeled images (SS-Net eq. (3)), seg_c = w(t) · 0.1 (L_c^l +
    L_c^u) (SS-Net eq. (5)); w(t) = ssnet_cons_weight · sigmoid ramp. Burn-in drops the unlabeled images and
    both regularisers. pl_acc_pix_*: accuracy of the pseudo-labels on the unlabeled images.
    """
    x, y, z = batch_l
    x_w, _, y_gt, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    on = it >= cfg.burn_in
    xx = torch.cat([x, x_w]) if on else x
    logits, emb = logits_and_features(model, xx)
    L = common.parts(logits.new_zeros(()).float())
    L["seg_l"] = seg_supervised_loss(logits[:B_l], y)                               # SS-Net eq. (1)
    pl = None
    if on:
        w = cfg.ssnet_cons_weight * common.sigmoid_rampup(it, cfg.ssnet_rampup * total)
        net = lambda v: logits_and_features(model, v)[0]
        with frozen_bn_stats(model.seg_encoder), frozen_bn_stats(model.seg_decoder):
            L["seg_u"] = w * vat_loss(net, xx, cfg.ssnet_xi, cfg.ssnet_epsilon)     # SS-Net eqs. (2)–(3)
        pred = logits.detach().argmax(1)                                             # (B,S,S)
        right = (pred[:B_l] == y) & (pred[:B_l] > 0)
        f_l = _pixels(emb[:B_l])
        with torch.no_grad():
            mode = extra.projection.training
            extra.projection.eval()
            proj = extra.projection(f_l[right.reshape(-1)])
            extra.projection.train(mode)
        update_memory(extra, proj, y.reshape(-1)[right.reshape(-1)])                # SS-Net eq. (4)
        q = extra.prediction(extra.projection(_pixels(emb)))                         # (N,D)
        n_l = f_l.shape[0]
        pl = pred[B_l:]
        L_c = (class_separation_loss(extra, q[:n_l], y.reshape(-1))
               + class_separation_loss(extra, q[n_l:], pl.reshape(-1)))             # SS-Net eq. (5)
        L["seg_c"] = w * cfg.ssnet_contrast_weight * L_c
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)        # Hermes eq. (2), SupOnly
    coefficients = {**dict.fromkeys(L, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "seg_c": cfg.lambda_seg, "cls_l": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    return loss, common.make_stats(L, loss, it, total, cfg, pl, y_gt)
