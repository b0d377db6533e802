"""Helpers shared by the comparator plug-ins (not part of any one method).

SegNet: a second U-Net of the model's architecture (encoder + decoder, zero saliency), as cps.PeerSegNet.
seg_logits: the model's U-Net alone. ema_update: teacher <- α teacher + (1-α) student, parameters and floating
buffers. sigmoid_rampup: the ramp of Laine & Aila of the code bases. class_dice_loss: the SSL4MIS Dice
(mean over the two classes, squared denominators, over the whole batch) that ABD and AD-MT use for their
unlabeled terms. strong_view: the data path's strong photometric ops (augment.strong_views) on a normalised
batch, for methods that need a strong view of the labeled images. make_stats: the statistics cps_step returns.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import hermes
from models import SegDecoder, SegEncoder, check_input


class SegNet(nn.Module):
    """A U-Net like the model's seg branch: x (B,3,H,W) -> seg_logits (B,2,H,W); features() also gives the
    decoder's last feature map. Parameter names match model.seg_encoder / model.seg_decoder one to one."""

    def __init__(self, seg_encoder="resnet34", pretrained=False):
        super().__init__()
        self.encoder = SegEncoder(seg_encoder, pretrained)
        self.decoder = SegDecoder(self.encoder.channels)

    def forward(self, x):
        check_input(x)
        B, _, H, W = x.shape
        logits, _ = self.decoder(self.encoder(x), x.new_zeros(B, 1, H // 4, W // 4))
        return logits


def seg_pairs(model):
    """[(name, module)] of the model's U-Net in SegNet's order (encoder, decoder)."""
    return [("encoder", model.seg_encoder), ("decoder", model.seg_decoder)]


def seg_logits(model, x):
    """The model's U-Net (no saliency): x (B,3,H,W) -> (B,2,H,W)."""
    return model.forward_seg(x)["seg_logits"]


def copy_seg_(net, model):
    """net (SegNet) <- the model's U-Net weights and buffers."""
    net.encoder.load_state_dict(model.seg_encoder.state_dict())
    net.decoder.load_state_dict(model.seg_decoder.state_dict())


def ema_update(teacher, model, alpha):
    """teacher (SegNet) <- α teacher + (1-α) model's U-Net (hermes.ema_: parameters and floating buffers,
    integer buffers copied)."""
    for name, mod in seg_pairs(model):
        hermes.ema_(getattr(teacher, name), mod, alpha)


def sigmoid_rampup(current, length):
    """exp(-5 (1 - t)²), t = clip(current / length, 0, 1); 1 when length is 0 (Laine & Aila 2017)."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def class_dice_loss(probs, target, weight=None, smooth=1e-5):
    """SSL4MIS's Dice loss: (1/C) Σ_c [1 - (2 Σ w p_c t_c + ε) / (Σ w p_c² + Σ w t_c² + ε)], sums over all
    batch. probs (B,C,H,W) softmax, target (B,H,W) int, weight (B,H,W) 0/1 (w = 0: ignored) -> 0-d."""
    C = probs.shape[1]
    t = F.one_hot(target.long(), C).permute(0, 3, 1, 2).to(probs.dtype)        # (B,C,H,W)
    w = probs.new_ones(()) if weight is None else weight.to(probs.dtype).unsqueeze(1)
    inter = (w * probs * t).sum((0, 2, 3))                                      # (C,)
    den = (w * probs * probs).sum((0, 2, 3)) + (w * t * t).sum((0, 2, 3))     # (C,)
    return (1.0 - (2.0 * inter + smooth) / (den + smooth)).mean()


def strong_view(x):
    """A strong photometric view (augment.draw_strong / strong_views: jitter, blur) of a normalised batch
    x (B,3,S,S), drawn from torch's global RNG; geometry unchanged, so masks stay aligned."""
    mean, std = augment._imagenet_stats(x.device)
    raw = ((x * std + mean) * 255).clamp(0, 255)
    p = augment.draw_strong(x.shape[0], None)
    p = {k: v.to(x.device) for k, v in p.items()}
    return augment.normalise_batch(augment.strong_views(raw, p, augment.blur_kernel(x.shape[-1])))


def make_stats(L, loss, it, total, cfg, pl=None, y_gt=None, kept=None):
    """The statistics cps_step returns (log.csv's columns): the seven parts, PL_STAT_KEYS, n_kept_*, loss,
    kappa,
    tau, n_anchors, bank_pix, bank_img. pl (B_u,S,S): the pseudo-labels the method trains on, scored against
    y_gt where it is 0/1 (NaN without ground truth); kept: fraction of pixels they cover (1 if None)."""
    zero = L["cls_l"].detach().float() * 0.0
    stats = {k: (v.detach().float() if torch.is_tensor(v) else zero + float(v)) for k, v in L.items()}
    stats.update({k: zero for k in hermes.PL_STAT_KEYS + ("n_kept_pix", "n_kept_img")})
    if pl is not None:
        has = (y_gt == 0) | (y_gt == 1)
        acc = ((pl == y_gt.long()) & has).sum() / has.sum()
        k = zero + (1.0 if kept is None else float(kept))
        stats.update(kept_pix=k, pl_acc_pix_all=acc.float(), pl_acc_pix_kept=acc.float())
    stats.update(loss=loss.detach().float(),
                 kappa=torch.tensor(hermes.uncertainty_threshold(it, total, cfg.eta_max, cfg.eta_min)),
                 tau=torch.tensor(hermes.confidence_threshold(it, total)), n_anchors=zero, bank_pix=zero,
                 bank_img=zero)
    return stats


def hi(t):
    """Half / bfloat16 promoted to float32 (autocast outputs); float32 and float64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def parts(zero):
    """{part: zero} for the seven terms of eq. (15)."""
    return dict.fromkeys(hermes.PARTS, zero)
