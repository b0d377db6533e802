"""ABD: Adaptive Bidirectional Displacement (Chi, Pang, Zhang, Liu; CVPR 2024; code: github.com/chy-upc/ABD).

Not part of Hermes; a comparator of the paper's Table 1. ABD sits on a two-network cross-teaching baseline:
network 1 (the model's U-Net) sees weak views, network 2 (a second U-Net, `build_extra`) strong views; both
learn the labels (ABD eq. (1)) and each other's hard pseudo-labels with a Dice loss (ABD eq. (2)). ABD adds
two patch displacements that build new training images from the two views of an image, cut into a g x g grid:
  ABD-R (unlabeled, reliable confidence): in each view the least confident patch is replaced by a patch of the
    other view chosen among that view's k most confident patches, the one whose mean output distribution is
    closest (KL) to the replaced patch's; both networks then cross-teach on the two new images.
  ABD-I (labeled, inverse confidence): in each view the most confident patch is replaced by the other view's
    least confident patch, labels moved along; both networks learn the new images' labels.
Patch confidence = the mean over the patch of the pixels' max softmax probability (ABD eq. (3)).
The classification branch trains as SupOnly's (Hermes eq. (2)). Evaluation uses the model's own U-Net.

Equation numbers: NOT verified against the paper. A check was tried, but the search index within reach holds
only the head of https://ar5iv.labs.arxiv.org/html/2405.00378 (title, abstract, start of §1), not the method
section, so each "ABD eq. (n)" here is still the writer's reading of the paper's layout: check it against the
PDF (CVPR 2024 or arXiv 2405.00378) before quoting it. Where the paper is silent, the authors'
train_ACDC_Cross_Teaching.py decides (SETTINGS).
"""
import config
import torch
import torch.nn.functional as F

from comparators import common
from losses import cls_supervised_loss, seg_supervised_loss, total_loss

SETTINGS = config.comparator_settings("abd")   # declared in config.py with every other setting


def build_extra(model, cfg_dict):
    """Network 2 of the cross-teaching baseline: a second U-Net of the model's architecture, initialised apart
    (its parameters are trained by the segmentation optimizer, Adam, as CPS's peer)."""
    return common.SegNet(cfg_dict.get("seg_encoder", "resnet34"), cfg_dict.get("pretrained", False))


# ---------------------------------------------------------------------------------------------------------
# patches

def to_patches(t, g):
    """(B,C,S,S) -> (B,C,g*g,P*P), P = S/g, patch n = row n // g, column n % g."""
    B, C, H, W = t.shape
    P = H // g
    if H % g or W != H:
        raise ValueError(f"abd: image {H}x{W} cannot be cut into {g}x{g} equal square patches")
    return t.reshape(B, C, g, P, g, P).permute(0, 1, 2, 4, 3, 5).reshape(B, C, g * g, P * P)


def from_patches(p, g):
    """Inverse of to_patches: (B,C,g*g,P*P) -> (B,C,S,S)."""
    B, C, _, PP = p.shape
    P = int(round(PP ** 0.5))
    return p.reshape(B, C, g, g, P, P).permute(0, 1, 2, 4, 3, 5).reshape(B, C, g * P, g * P)


def patch_confidence(probs, g):
    """ABD eq. (3): mean over each patch of max_c p_c.  probs (B,C,S,S) -> (B,g*g)."""
    return to_patches(probs.amax(1, keepdim=True), g)[:, 0].mean(-1)


def patch_mean_logits(logits, g):
    """Each patch's mean logits (the code's output summary of a patch): (B,C,S,S) -> (B,g*g,C)."""
    return to_patches(logits, g).mean(-1).transpose(1, 2)


def patch_kl(p_logits, q_logits):
    """KL(softmax p || softmax q) over the last dim (ABD eq. (4): the distance of a candidate patch's mean
    output to the replaced patch's).  p (..., C), q (..., C) -> (...)."""
    lp, lq = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def swap_patches(img1, img2, dst1, src2, dst2, src1, g, apply=None):
    """Bidirectional displacement: out1 = img1 with patch dst1 taken from img2's patch src2, out2 = img2 with
    patch dst2 taken from img1's patch src1 (both from the images as given). img (B,C,S,S) any dtype; indices
    (B,) long; apply (B,) bool (False: the image pair is left as it is) -> (out1, out2)."""
    B = img1.shape[0]
    p1, p2 = to_patches(img1, g), to_patches(img2, g)
    q1, q2 = p1.clone(), p2.clone()
    rows = torch.arange(B, device=img1.device)
    q1[rows, :, dst1] = p2[rows, :, src2]
    q2[rows, :, dst2] = p1[rows, :, src1]
    if apply is not None:
        keep = ~apply.view(-1, 1, 1, 1)
        q1, q2 = torch.where(keep, p1, q1), torch.where(keep, p2, q2)
    return from_patches(q1, g), from_patches(q2, g)


def abd_r_choice(logits1, logits2, g, k):
    """ABD-R's choice of patches (ABD eqs. (3)–(5)) for views 1 and 2 of the same images.

    b, d: the least confident patch of view 1, view 2 (replaced); c: among view 2's k most confident patches,
    the one with the smallest KL(output of view 1's patch b || its output) (moved into view 1 at b); a:
    likewise
    among view 1's k most confident patches against view 2's patch d (moved into view 2 at d).
    logits (B,C,S,S) -> (b, c, d, a) each (B,) long."""
    logits1, logits2 = common.hi(logits1.detach()), common.hi(logits2.detach())
    conf1, conf2 = patch_confidence(logits1.softmax(1), g), patch_confidence(logits2.softmax(1), g)
    m1, m2 = patch_mean_logits(logits1, g), patch_mean_logits(logits2, g)               # (B,g*g,C)
    rows = torch.arange(conf1.shape[0], device=conf1.device)
    b, d = conf1.argmin(1), conf2.argmin(1)                                             # (B,)
    top1, top2 = conf1.topk(k, 1).indices, conf2.topk(k, 1).indices                    # (B,k)
    kl_c = patch_kl(m1[rows, b].unsqueeze(1), m2[rows.unsqueeze(1), top2])              # (B,k)
    kl_a = patch_kl(m2[rows, d].unsqueeze(1), m1[rows.unsqueeze(1), top1])              # (B,k)
    c, a = top2[rows, kl_c.argmin(1)], top1[rows, kl_a.argmin(1)]
    return b, c, d, a


def abd_r(x1, x2, logits1, logits2, g, k):
    """ABD-R (ABD eq. (5)): the two displaced unlabeled images. x1, x2 (B,3,S,S) -> (x1', x2')."""
    b, c, d, a = abd_r_choice(logits1, logits2, g, k)
    return swap_patches(x1, x2, b, c, d, a, g)


def abd_i_choice(logits1, logits2, g):
    """ABD-I's choice (ABD eq. (6)): e, h: view 1's most confident patch gets view 2's least confident one;
    f, gg: view 2's most confident patch gets view 1's least confident one. -> (e, h, gg, f) each (B,)."""
    conf1 = patch_confidence(common.hi(logits1.detach()).softmax(1), g)
    conf2 = patch_confidence(common.hi(logits2.detach()).softmax(1), g)
    return conf1.argmax(1), conf2.argmin(1), conf2.argmax(1), conf1.argmin(1)


def abd_i(x1, x2, y1, y2, logits1, logits2, g, apply):
    """ABD-I (ABD eqs. (6)–(7)): displaced labeled images and their labels. x (B,3,S,S), y (B,S,S),
    apply (B,) bool -> (x1', x2', y1', y2')."""
    e, h, gg, f = abd_i_choice(logits1, logits2, g)
    x1n, x2n = swap_patches(x1, x2, e, h, gg, f, g, apply)
    y1n, y2n = swap_patches(y1.unsqueeze(1), y2.unsqueeze(1), e, h, gg, f, g, apply)
    return x1n, x2n, y1n[:, 0], y2n[:, 0]


# ---------------------------------------------------------------------------------------------------------
# losses

def cross_teaching_loss(logits1, logits2):
    """ABD eq. (2) (the cross-teaching baseline's unsupervised term): each network learns the other's hard
    pseudo-labels with the SSL4MIS Dice (common.class_dice_loss), no gradient through the pseudo-labels:
        Dice(softmax f_1, argmax f_2) + Dice(softmax f_2, argmax f_1).
    logits (B,2,S,S) of the two networks on the same (or paired) images -> 0-d."""
    pl1, pl2 = logits1.detach().argmax(1), logits2.detach().argmax(1)
    return (common.class_dice_loss(common.hi(logits1).softmax(1), pl2)
            + common.class_dice_loss(common.hi(logits2).softmax(1), pl1))


def supervised_pair_loss(logits1, logits2, y):
    """ABD eq. (1) for both networks: L_s(f_1) + L_s(f_2), L_s = ½ (CE + Dice) (Hermes eq. (1))."""
    return seg_supervised_loss(logits1, y) + seg_supervised_loss(logits2, y)


def consistency_weight(it, total, cfg):
    return cfg.abd_cons_weight * common.sigmoid_rampup(it, cfg.abd_rampup * total)


# ---------------------------------------------------------------------------------------------------------
# step

def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One ABD step; returns (loss, stats) with cps_step's keys. Does not call backward.

    loss = λ_seg (seg_l + seg_u) + λ_cls cls_l (ABD eq. (8) on the seg side) with
      seg_l = ABD eq. (1) on the labeled images (weak view for network 1, a strong photometric view for
              network 2) + abd_i_weight · ABD eq. (1) on ABD-I's displaced labeled images (both networks;
              dropped after abd_i_stop of the run),
      seg_u = w(t) · [ABD eq. (2) on the unlabeled weak/strong pair + ABD eq. (2) on ABD-R's displaced
              images],
    w(t) = abd_cons_weight · sigmoid ramp. Burn-in drops seg_u and the unlabeled images (ABD-I stays).
    pl_acc_pix_*: accuracy of network 2's pseudo-labels on the unlabeled weak/strong pair.
    """
    x, y, z = batch_l
    x_w, x_s, y_gt, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    g, unlabeled_on = cfg.abd_grid, it >= cfg.burn_in
    x_ls = common.strong_view(x)                                                   # network 2's labeled view
    xx1, xx2 = (torch.cat([x, x_w]), torch.cat([x_ls, x_s])) if unlabeled_on else (x, x_ls)
    f1, f2 = common.seg_logits(model, xx1), extra(xx2)                             # (B,2,S,S) each
    L = common.parts(f1.new_zeros(()).float())
    L["seg_l"] = supervised_pair_loss(f1[:B_l], f2[:B_l], y)                       # ABD eq. (1)
    if cfg.abd_i_weight and it < cfg.abd_i_stop * total:                            # ABD-I
        apply = torch.rand(B_l, device=x.device) < cfg.abd_i_prob
        xi1, xi2, yi1, yi2 = abd_i(x, x_ls, y, y, f1[:B_l], f2[:B_l], g, apply)    # ABD eqs. (6)–(7)
        xi, yi = torch.cat([xi1, xi2]), torch.cat([yi1, yi2])
        L["seg_l"] = L["seg_l"] + cfg.abd_i_weight * supervised_pair_loss(
            common.seg_logits(model, xi), extra(xi), yi)                           # ABD eq. (7)
    pl = None
    if unlabeled_on:
        u1, u2 = f1[B_l:], f2[B_l:]
        xr1, xr2 = abd_r(x_w, x_s, u1, u2, g, cfg.abd_top_k)                      # ABD-R, ABD eq. (5)
        xr = torch.cat([xr1, xr2])
        L_r = cross_teaching_loss(common.seg_logits(model, xr), extra(xr))         # ABD eq. (2) on ABD-R
        L["seg_u"] = consistency_weight(it, total, cfg) * (cross_teaching_loss(u1, u2) + L_r)
        pl = u2.detach().argmax(1)
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)        # Hermes eq. (2), SupOnly
    coefficients = {**dict.fromkeys(L, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "cls_l": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    return loss, common.make_stats(L, loss, it, total, cfg, pl, y_gt)
