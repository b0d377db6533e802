"""AD-MT: Alternate Diverse Teaching (Zhao, Wang, Wang, Yuan, Zhou; ECCV 2024;
code: github.com/ZhenZHAO/AD-MT).

Not part of Hermes; a comparator of the paper's Table 1. One student (the model's U-Net) and two mean teachers
(EMA copies of it, `build_extra`). Random Periodic Alternate (RPA) updating: only one teacher is updated by
EMA at a time (AD-MT eq. (2)), for a period drawn uniformly from 1..P steps, then the other (AD-MT eq. (3));
the data path alternates with it: while teacher 1 is active the student sees the strong view of the unlabeled
images, while teacher 2 is active a CutMix of the weak views (diverse teaching). Conflict Combating (CC): the
teachers' softmax outputs on the weak view are ensembled (AD-MT eq. (4)); where the teachers disagree and the
student is more confident and also disagrees, the student's own weak-view prediction is the pseudo-label
(AD-MT eq. (5)). The unlabeled loss is a Dice on the pixels with confidence >= τ (AD-MT eq. (6)); the total is
L_s + w(t) L_u (AD-MT eq. (7)). The classification branch trains as SupOnly's. Evaluation: the student.

Equation numbers: NOT verified against the paper. A check was tried, but the search index within reach holds
only the heads of https://ar5iv.labs.arxiv.org/html/2311.17325 and https://arxiv.org/html/2311.17325v2 (title,
abstract, start of §1), not the method section, so each "AD-MT eq. (n)" here is still the writer's reading of
the paper's layout: check it against the PDF (ECCV 2024 or arXiv 2311.17325) before quoting it. Where the
paper is silent, the authors' code (train_post_2d_aut.py with cfgs/config_2d_aut.yml, the ACDC recipe) decides
(SETTINGS).
"""
import config
import torch
import torch.nn as nn

from comparators import common
from losses import cls_supervised_loss, seg_supervised_loss, total_loss

SETTINGS = config.comparator_settings("admt")   # declared in config.py with every other setting


class Teachers(nn.Module):
    """AD-MT's state: two EMA teachers and the alternation (flag: teacher 1 is active; counter; period)."""

    def __init__(self, seg_encoder, pretrained, period):
        super().__init__()
        self.teacher1 = common.SegNet(seg_encoder, pretrained)
        self.teacher2 = common.SegNet(seg_encoder, pretrained)
        self.requires_grad_(False)
        self.register_buffer("flag", torch.tensor(True))
        self.register_buffer("counter", torch.tensor(0))
        self.register_buffer("period", torch.randint(1, period + 1, ()))

    def active(self):
        return self.teacher1 if bool(self.flag) else self.teacher2


def build_extra(model, cfg_dict):
    """The two teachers, both copies of the student at the start (the code's α = 0 steps make them so), and
    the
    alternation state. No parameter here is trained by an optimizer (requires_grad False): after_step moves
    them."""
    t = Teachers(cfg_dict.get("seg_encoder", "resnet34"), cfg_dict.get("pretrained", False),
                 int(cfg_dict.get("admt_period", SETTINGS[5][1])))
    common.copy_seg_(t.teacher1, model)
    common.copy_seg_(t.teacher2, model)
    return t


# ---------------------------------------------------------------------------------------------------------
# pieces

def entropy(p, eps=1e-10):
    """Pixel entropy in bits, -Σ_c p_c log2 p_c: (B,C,H,W) -> (B,H,W)."""
    return -(p * torch.log2(p + eps)).sum(1)


def ensemble(p1, p2, kind="mean"):
    """AD-MT eq. (4): the teachers' ensemble, normalised over classes.
    'entropy': exp(-H_1) p_1 + exp(-H_2) p_2;
    'mean': the code's exp(-(H_1 + H_2)) (p_1 + p_2), the same weight for both, i.e. (p_1 + p_2) / 2."""
    if kind == "entropy":
        q = torch.exp(-entropy(p1)).unsqueeze(1) * p1 + torch.exp(-entropy(p2)).unsqueeze(1) * p2
    elif kind == "mean":
        q = torch.exp(-(entropy(p1) + entropy(p2))).unsqueeze(1) * (p1 + p2)
    else:
        raise ValueError(f"admt: admt_ensemble must be mean or entropy, got {kind!r}")
    return q / q.sum(1, keepdim=True)


def compromise(pl_t, conf_t, pl_s, conf_s, teachers_disagree):
    """AD-MT eq. (5) (conflict mode pixel_confidence): where the teachers disagree, the student disagrees with
    their ensemble and is more confident, the student's label and confidence replace the ensemble's.
    (B,H,W) each -> (pl, conf)."""
    take = (pl_t != pl_s) & teachers_disagree & (conf_s > conf_t)
    return torch.where(take, pl_s, pl_t), torch.where(take, conf_s, conf_t)


def rand_boxes(n, S):
    """CutMix boxes as AD-MT's rand_bbox: λ ~ Beta(4, 4), side ⌊S √(1-λ)⌋, centre ~ U{S/8..S-1} per image,
    clipped. -> (x1, y1, x2, y2) each (n,) long (rows x1:x2, columns y1:y2)."""
    lam = torch.distributions.Beta(4.0, 4.0).sample()
    cut = int(S * float(torch.sqrt(1 - lam)))
    cx, cy = torch.randint(S // 8, S, (n,)), torch.randint(S // 8, S, (n,))
    c = lambda v: v.clamp(0, S)
    return c(cx - cut // 2), c(cy - cut // 2), c(cx + cut // 2), c(cy + cut // 2)


def cutmix(tensors, perm, boxes):
    """Paste, into image i, the box i of image perm[i]; the same boxes for every tensor (B,...,H,W)."""
    x1, y1, x2, y2 = boxes
    H, W = tensors[0].shape[-2:]
    r = torch.arange(H).view(1, -1, 1)
    c = torch.arange(W).view(1, 1, -1)
    inside = ((r >= x1.view(-1, 1, 1)) & (r < x2.view(-1, 1, 1))
              & (c >= y1.view(-1, 1, 1)) & (c < y2.view(-1, 1, 1))).to(tensors[0].device)   # (B,H,W)
    out = []
    for t in tensors:
        m = inside.view(inside.shape[:1] + (1,) * (t.dim() - 3) + inside.shape[1:])
        out.append(torch.where(m, t[perm], t))
    return out


def unlabeled_loss(logits_s, pl, conf, tau):
    """AD-MT eq. (6): SSL4MIS Dice between the student's prediction and the pseudo-labels over the pixels with
    confidence >= τ (the code's ignore mask).  logits_s (B,2,H,W), pl, conf (B,H,W) -> 0-d."""
    return common.class_dice_loss(common.hi(logits_s).softmax(1), pl, (conf >= tau).float())


def ema_alpha(it, cfg):
    """The active teacher's EMA factor at step it (AD-MT eqs. (2)–(3) with the code's start)."""
    gs = it // 2
    if gs < cfg.admt_ema_copy:
        return 0.0
    return min(1.0 - 1.0 / (gs - cfg.admt_ema_copy + 1), cfg.admt_ema_decay)


# ---------------------------------------------------------------------------------------------------------
# step

def _teacher_probs(teacher, x, train):
    mode = teacher.training
    teacher.train(train)
    try:
        return teacher(x).float().softmax(1)
    finally:
        teacher.train(mode)


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One AD-MT step; returns (loss, stats) with cps_step's keys. Does not call backward.

    loss = λ_seg (seg_l + seg_u) + λ_cls cls_l: seg_l = Hermes eq. (1) on the labeled images (the code's
    ½ (CE + Dice)); seg_u = w(t) · AD-MT eq. (6) on the strong view (teacher 1 active) or a CutMix of the weak
    views (teacher 2 active). The teachers run without gradient, the active one with batch statistics (train
    mode, as in the code), the other with its running ones. Burn-in drops seg_u and the unlabeled images.
    pl_acc_pix_*: accuracy of the teachers' ensemble on the weak view; kept_pix: the fraction with conf >= τ.
    """
    x, y, z = batch_l
    x_w, x_s, y_gt, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    L = common.parts(x.new_zeros(()).float())
    pl_stat = kept = None
    if it < cfg.burn_in:
        pred = common.seg_logits(model, x)
    else:
        t1_active = bool(extra.flag)
        with torch.no_grad():
            p1 = _teacher_probs(extra.teacher1, x_w, t1_active)
            p2 = _teacher_probs(extra.teacher2, x_w, not t1_active)
            q = ensemble(p1, p2, cfg.admt_ensemble)                                 # AD-MT eq. (4)
            conf, pl = q.max(1)
            disagree = p1.argmax(1) != p2.argmax(1)
        pl_stat, kept = pl, (conf >= cfg.admt_threshold).float().mean()
        mix = None
        if t1_active:
            x_u = x_s                                                               # strong view
        elif float(torch.rand(())) < cfg.admt_cutmix_prob:                # CutMix of the weak views
            mix = (torch.randperm(x_w.shape[0]).to(x.device), rand_boxes(x_w.shape[0], x_w.shape[-1]))
            x_u, pl, conf, disagree = cutmix([x_w, pl, conf, disagree], *mix)
        else:
            x_u = x_w
        pred = common.seg_logits(model, torch.cat([x, x_w, x_u]))
        pred_w, pred_u = pred[B_l:].chunk(2)
        with torch.no_grad():
            conf_s, pl_s = pred_w.float().softmax(1).max(1)
            if mix is not None:                    # the student's weak labels, mixed like the teachers'
                conf_s, pl_s = cutmix([conf_s, pl_s], *mix)
            pl, conf = compromise(pl, conf, pl_s, conf_s, disagree)                 # AD-MT eq. (5)
        w = cfg.admt_cons_weight * common.sigmoid_rampup(it, cfg.admt_rampup * total)
        L["seg_u"] = w * unlabeled_loss(pred_u, pl, conf, cfg.admt_threshold)       # AD-MT eqs. (6)–(7)
    L["seg_l"] = seg_supervised_loss(pred[:B_l], y)                                 # AD-MT eq. (1)
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)        # Hermes eq. (2), SupOnly
    coefficients = {**dict.fromkeys(L, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "cls_l": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    return loss, common.make_stats(L, loss, it, total, cfg, pl_stat, y_gt, kept)


def alternate(extra, period):
    """RPA's clock (the code's AlternateUpdate.update): count a step; at the end of the period switch the
    active teacher and draw the next period ~ U{1..period} from torch's global RNG."""
    extra.counter += 1
    if int(extra.counter) >= int(extra.period):
        extra.flag.logical_not_()
        extra.counter.zero_()
        extra.period.fill_(int(torch.randint(1, period + 1, ())))


def after_step(model, extra, it, total, cfg):
    """After the optimizers: EMA of the active teacher (AD-MT eqs. (2)–(3)), then the alternation clock."""
    common.ema_update(extra.active(), model, ema_alpha(it, cfg))
    alternate(extra, cfg.admt_period)
