"""Cross pseudo supervision (CPS; Chen, Yuan, Zeng, Wang, CVPR 2021): the control method beside Hermes.

Not part of Hermes. The paper compares Hermes with CPS in Table 1; this module trains CPS with the same
networks, data path and optimisers, so that "does any semi-supervised method beat SupOnly here?" has an
answer.

Two segmentation networks of different initialisation (the model's U-Net and a `PeerSegNet` of the same
architecture) see the same images (labeled and weak unlabeled views); each is supervised by eq. (1) on the
labeled images and by the other's hard pseudo-labels on all images (`losses.cross_pseudo_supervision_loss`,
weight λ_cps, no threshold). The classification branch is trained as SupOnly's (eq. (2), no ITA, no saliency).
Evaluation uses the model's own U-Net, as the CPS paper infers with one network.

    >>> peer = PeerSegNet("resnet18"); cfg = HermesConfig(method="cps", dtcl=False, ias=False, itcl=False)
    >>> loss, stats = cps_step(model, peer, (x, y, z), (x_w, x_s, y_gt, z_gt), it=0, total=3000, cfg=cfg)
"""
import torch

import hermes
from comparators import common
from losses import cls_supervised_loss, cross_pseudo_supervision_loss, seg_supervised_loss, total_loss


PeerSegNet = common.SegNet   # the second network of CPS: the model's U-Net, initialised apart


def build_extra(model, cfg):
    """The plug-in contract (train.plugin_of): CPS's second U-Net, trained by the segmentation Adam."""
    return PeerSegNet(cfg["seg_encoder"], cfg["pretrained"])


def cps_step(model, peer, batch_l, batch_u, it, total, cfg):
    """One CPS step; returns (loss, stats) like hermes.hermes_step (log.csv's columns). Does not call
    backward.

    loss = λ_seg (L_s(f_1) + L_s(f_2) + λ_cps L_cps) + λ_cls L^l_cls, with L_s = eq. (1) on the labeled
    images and L_cps over labeled + unlabeled images (Chen et al. eq. (4)); burn-in (cfg.burn_in) drops L_cps
    and the unlabeled images. Logged as seg_l (both L_s), seg_u (L_cps), cls_l; pl_acc_pix_all = accuracy of
    the peer's pseudo-labels on the unlabeled images (ground truth held aside), kept_pix = 1 (no threshold).
    """
    x, y, z = batch_l
    x_w, _, y_gt, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    unlabeled_on = it >= cfg.burn_in
    # (B_l+B_u,3,S,S): labeled first
    xx = torch.cat([x, x_w]) if unlabeled_on else x
    f1, f2 = model.forward_seg(xx)["seg_logits"], peer(xx)                          # (B,2,S,S) each
    L = dict.fromkeys(hermes.PARTS, f1.new_zeros(()).float())
    L["seg_l"] = seg_supervised_loss(f1[:B_l], y) + seg_supervised_loss(f2[:B_l], y)  # eq. (1), both networks
    if unlabeled_on:
        L["seg_u"] = cfg.cps_weight * cross_pseudo_supervision_loss(f1, f2)         # Chen et al. eqs. (2)–(4)
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)  # eq. (2), SupOnly's branch
    coefficients = {**dict.fromkeys(hermes.PARTS, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "cls_l": cfg.lambda_cls}  # eq. (15) with CPS's terms
    loss = total_loss(L, coefficients)

    zero = L["cls_u"]
    stats = {k: v.detach().float() for k, v in L.items()}
    stats.update({k: zero for k in hermes.PL_STAT_KEYS + ("n_kept_pix", "n_kept_img")})
    if unlabeled_on:
        pl = f2[B_l:].detach().argmax(1)                                             # (B_u,S,S) peer's labels
        has = (y_gt == 0) | (y_gt == 1)                  # real unlabeled images have no mask (data.NO_MASK)
        # NaN without ground truth
        acc = ((pl == y_gt.long()) & has).sum() / has.sum()
        stats.update(kept_pix=zero + 1.0, pl_acc_pix_all=acc, pl_acc_pix_kept=acc)
    stats.update(loss=loss.detach().float(),
                 kappa=torch.tensor(hermes.uncertainty_threshold(it, total, cfg.eta_max, cfg.eta_min)),
                 tau=torch.tensor(hermes.confidence_threshold(it, total)), n_anchors=zero, bank_pix=zero,
                 bank_img=zero)
    return loss, stats


step = cps_step   # the plug-in contract's name
