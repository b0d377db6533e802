"""Helpers shared by the classification comparators of Table 2 (shrinkmatch, interlude, infomatch, pefat).

In all four the segmentation branch trains as SupOnly's (eq. (1) on the labeled images, `seg_term`) and the
classification branch is the model's ResNet-18 without inter-task attention (`cls_forward`: the same layers
and the same logits as HermesNet.forward_cls(x) without seg features, plus the 512-d pooled feature and an
optional hook on the layer3 map that InterLUDE's embedding fusion uses). `finish` adds the terms as eq. (15)
does (λ_seg on seg_l; λ_cls on cls_l, cls_u, cls_c; a method's own weights are inside its terms) and returns
the statistics cps.cps_step returns (log.csv's columns). `strong_view` draws one more strong photometric view
of a normalised batch (augment.py's ops) from torch's global RNG, for methods that need a second strong view.
"""
import math

import torch
import torch.nn.functional as F

import augment
import hermes
from losses import cls_supervised_loss, seg_supervised_loss, total_loss
from models import check_input


def cls_forward(model, x, mix=None):
    """The model's classification ResNet-18 alone (no ITA, as forward_cls(x) without seg features).

    x (B,3,S,S); mix: None or a function (B,256,S/16,S/16) -> same shape, applied to the layer3 map before
    layer4
    -> (f (B,512) pooled feature, logits (B,2) = cls_net.fc(f))."""
    check_input(x)
    r = model.cls_net
    h = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))))
    if mix is not None:
        h = mix(h)
    f = torch.flatten(r.avgpool(r.layer4(h)), 1)
    return f, r.fc(f)


def seg_term(model, x, y):
    """eq. (1) on the labeled images, the model's U-Net without saliency (SupOnly's segmentation branch)."""
    return seg_supervised_loss(model.forward_seg(x)["seg_logits"], y.long())


def zero_parts(ref):
    """{part: exact 0 of ref's graph}: the seven terms of eq. (15), none switched on yet."""
    zero = ref.sum() * 0.0
    return dict.fromkeys(hermes.PARTS, zero)


@torch.no_grad()
def img_pl_stats(probs, pl, w, z_gt, tau):
    """Image pseudo-label statistics as hermes logs them: kept fraction, accuracy over all / kept ones, and
    the same for a plain confidence rule max p >= tau. Ground truth outside {0, 1} (data.NO_LABEL) is not
    counted; without any, the accuracies are NaN (blank in log.csv).
    probs (B,C), pl (B,) int, w (B,) 0/1, z_gt (B,)."""
    w = w.float()
    right = (pl == z_gt.long()).float()
    has = ((z_gt == 0) | (z_gt == 1)).float()
    n_gt = has.sum()
    known = lambda acc: torch.where(n_gt > 0, acc, torch.nan)
    w_conf = (probs.amax(1) >= tau).float()
    return {"kept_img": w.mean(), "n_kept_img": w.sum(), "pl_acc_img_all": known((right * has).sum() / n_gt),
            "pl_acc_img_kept": known((right * w * has).sum() / (w * has).sum().clamp_min(1)),
            "kept_img_conf": w_conf.mean(),
            "pl_acc_img_conf": known((right * w_conf * has).sum() / (w_conf * has).sum().clamp_min(1))}


def suponly_step(model, x, z, seg, cfg, tau=math.nan):
    """The burn-in step (it < cfg.burn_in) of every classification comparator: SupOnly, eq. (1) + eq. (2)."""
    _, logits = cls_forward(model, x)
    L = zero_parts(logits)
    L["seg_l"], L["cls_l"] = seg, cls_supervised_loss(logits, z)
    return finish(L, cfg, tau=tau)


def finish(L, cfg, tau=math.nan, kappa=math.nan, img_stats=None):
    """loss = λ_seg L^l_seg + λ_cls (cls_l + cls_u + cls_c) (eq. (15) with the method's terms) and the
    statistics of cps.cps_step: the seven parts, PL_STAT_KEYS, n_kept_pix, n_kept_img, loss, kappa, tau,
    n_anchors, bank_pix, bank_img. tau / kappa: the method's thresholds (NaN, blank in log.csv, where it has
    none)."""
    coefficients = {**dict.fromkeys(hermes.PARTS, 0.0), "seg_l": cfg.lambda_seg, "cls_l": cfg.lambda_cls,
                    "cls_u": cfg.lambda_cls, "cls_c": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    zero = loss.detach().float() * 0.0
    stats = {k: v.detach().float() for k, v in L.items()}
    stats.update({k: zero for k in hermes.PL_STAT_KEYS + ("n_kept_pix", "n_kept_img")})
    if img_stats:
        stats.update({k: v.detach().float() for k, v in img_stats.items()})
    as_t = lambda v: v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v))
    stats.update(loss=loss.detach().float(), kappa=as_t(kappa), tau=as_t(tau), n_anchors=zero, bank_pix=zero,
                 bank_img=zero)
    return loss, stats


def strong_view(x):
    """One more strong view (augment.draw_strong / strong_views: colour jitter, blur) of a normalised batch
    x (B,3,S,S), drawn from torch's global RNG; geometry unchanged."""
    mean, std = augment._imagenet_stats(x.device)
    raw = ((x * std + mean) * 255).clamp(0, 255)
    p = {k: v.to(x.device) for k, v in augment.draw_strong(x.shape[0], None).items()}
    return augment.normalise_batch(augment.strong_views(raw, p, augment.blur_kernel(x.shape[-1]))).to(x.dtype)


def hi(t):
    """float16 / bfloat16 (autocast) -> float32; float32 and float64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def soft_ce(logits, target_probs):
    """Σ_c -q_c log softmax(logits)_c per row: logits (B,C), target_probs (B,C) -> (B,)."""
    return -(target_probs * F.log_softmax(hi(logits), 1)).sum(1)
