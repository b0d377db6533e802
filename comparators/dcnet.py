"""DCNet: Decoupled Consistency (Chen, Fei, Chen, Huang; MICCAI 2023; code: github.com/wxfaaaaa/DCNet).

Not part of Hermes; a comparator of the paper's Table 1. An MC-Net-style U-Net: one shared encoder (the
model's seg encoder) and two decoders, decoder 1 the model's own (bilinear upsampling), decoder 2 a second one
in `build_extra` (learned transposed-convolution upsampling, as MC-Net's second decoder). Both learn the
labels (Hermes eq. (1)). On every image of the batch the two decoders' predictions are *decoupled* by a
dynamic threshold t (starting at 1/C, moved each step towards the decoders' mean max-probability with the
run's progress as rate, clipped to [0.25, 0.95]):
  consistent part (both decoders above t for a class): each decoder learns the other's hard pseudo-labels
    with cross-entropy, weight 0.3; once the mean confidence reaches 0.95, on all pixels;
  inconsistent part (the rest): an MSE between the two decoders' softmax at temperature 0.5, the larger of the
    two probabilities (detached) the target of the smaller, weight 1000 w(t);
and an attention-transfer term (Zagoruyko & Komodakis) pulls each encoder level's spatial attention map
towards that of decoder 2's block at the same resolution (detached), weight 1000 (1 - w(t)); w(t) = 0.1 ·
sigmoid ramp.
The classification branch trains as SupOnly's (Hermes eq. (2)). Evaluation uses the model's U-Net (decoder 1).

Equation numbers: NOT checked against the paper, whose full text was out of reach (the search index within
reach holds only abstract pages, e.g. https://zhixidata.com/details/1/847516943, the MICCAI 2023 record with
doi 10.1007/978-3-031-43907-0_53, and no arXiv copy turned up), so no line here carries a "DCNet eq. (n)";
each names the line of the authors' code/train_dcnet_acdc.py (ACDC recipe, "train:") or code/utils/losses.py
("losses:") it follows. Where we differ from that code, or read it closely (SETTINGS, `decouple`, `ce_loss`):
  - labeled loss: the code's Dice only (DiceLoss, mean over classes); here Hermes eq. (1), ½ (CE + Dice), as
    for every comparator;
  - the CE on the consistent part: the code multiplies the *logits* by the channel mask (so the other classes'
    logits become 0, not absent) and averages over all pixels (the masked-out ones add the constant log C);
    "code" (default) does exactly that, "pixel" is the plain reading (see dcnet_decouple);
  - the MSE's direction is decided per class channel in the code, not per pixel: with two classes, in the
    channel of the class a decoder favours more it is the target, in the other channel the student, so both
    decoders move towards each other (each through one channel); "pixel" makes the more confident decoder
    the target on all channels. The code's losses.mse_loss is not in its repository; MC-Net's (a mean over
    all elements), which DCNet adapts, is used;
  - the attention pairs: the code's encoder has a full-resolution level (full, /2, /4, /8 with decoder 2's
    blocks there); a ResNet's first level is /2, so ours are /2, /4, /8, /16 (stem, layer1..3 with up4..up1);
  - decoder 2's transposed convolutions keep the channels (c -> c) so that its blocks match SegDecoder's;
    MC-Net's map c_in -> c_skip;
  - burn-in (cfg.burn_in) drops the unlabeled images and all three unlabeled terms, and the threshold stays;
  - weights are resolution dependent in the code: the attention loss is a mean over the h·w positions of
    unit-norm maps, so it scales like 1/(h w); at 64 px our four levels have 64x fewer positions than the
    code's at 256 px, so 1000 weighs the attention term relatively more here (kept, as the recipe's number).
"""
import config
import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators import common
from losses import cls_supervised_loss, seg_supervised_loss, total_loss
from models import DECODER_CHANNELS, SegDecoder

SETTINGS = config.comparator_settings("dcnet")   # declared in config.py with every other setting
DEFAULTS = {name: default for name, default, *_ in SETTINGS}
DECODER_BLOCKS = ("up1", "up2", "up3", "up4", "up5")


class TransposedUp(nn.Module):
    """A decoder block whose x2 bilinear upsampling is a learned ConvTranspose2d(c, c, 2, stride 2): same
    input, skip and output channels as the block it replaces (whose convolutions it keeps)."""

    def __init__(self, block, c_in):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in, 2, stride=2)
        self.conv = block.conv

    def forward(self, x, skip=None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


def second_decoder(enc_channels, up="transposed"):
    """Decoder 2: a models.SegDecoder (forward (feats, sal) -> logits, {"up1".."up4"}) whose blocks upsample
    with transposed convolutions ('transposed') or bilinearly as decoder 1 ('bilinear')."""
    dec = SegDecoder(enc_channels)
    if up == "transposed":
        c_in = (enc_channels[4],) + tuple(DECODER_CHANNELS[:4])     # up1 sees layer4, up_k sees up_{k-1}
        for name, c in zip(DECODER_BLOCKS, c_in):
            setattr(dec, name, TransposedUp(getattr(dec, name), c))
    elif up != "bilinear":
        raise ValueError(f"dcnet: dcnet_decoder2_up must be transposed or bilinear, got {up!r}")
    return dec


class DCNetExtra(nn.Module):
    """DCNet's extra state: decoder 2 (trained by the segmentation optimizer, Adam) and the dynamic threshold
    (a buffer, so that a resumed run continues it)."""

    def __init__(self, enc_channels, up="transposed", n_classes=2):
        super().__init__()
        self.decoder2 = second_decoder(enc_channels, up)
        self.register_buffer("threshold", torch.tensor(1.0 / n_classes))   # train: 1 / num_classes


def build_extra(model, cfg_dict):
    up = cfg_dict.get("dcnet_decoder2_up", DEFAULTS["dcnet_decoder2_up"])
    return DCNetExtra(model.seg_encoder.channels, up)


# ---------------------------------------------------------------------------------------------------------
# the two-decoder network

def forward_two(model, extra, x):
    """Shared encoder, two decoders (zero saliency, as forward_seg without one): x (B,3,S,S) ->
    (logits1, logits2 (B,2,S,S), encoder features [stem /2, layer1 /4, layer2 /8, layer3 /16],
    decoder 1's and decoder 2's features at the same resolutions [up4, up3, up2, up1])."""
    B, _, H, W = x.shape
    feats = model.seg_encoder(x)
    sal = x.new_zeros(B, 1, H // 4, W // 4)
    l1, u1 = model.seg_decoder(feats, sal)
    l2, u2 = extra.decoder2(feats, sal)
    same_res = ("up4", "up3", "up2", "up1")
    return l1, l2, feats[:4], [u1[k] for k in same_res], [u2[k] for k in same_res]


# ---------------------------------------------------------------------------------------------------------
# pieces

def attention_map(f, p=2):
    """Attention transfer's map (losses: Attention.at): the channel mean of f^p, flattened, unit L2 norm per
    image. f (B,C,h,w) -> (B,h*w)."""
    return F.normalize(common.hi(f).pow(p).mean(1).flatten(1), dim=1)


def attention_loss(students, teachers):
    """losses: Attention.forward: Σ_levels mean_{b,i} (at(s)_{b,i} - at(t)_{b,i})², teachers detached (only
    the students, the encoder's features, receive gradient). Lists of (B,C_k,h_k,w_k), paired by
    resolution."""
    return sum(((attention_map(s) - attention_map(t.detach())) ** 2).mean()
               for s, t in zip(students, teachers))


@torch.no_grad()
def next_threshold(prev, p1, p2, it, total, lo=0.25, hi=0.95):
    """train: the dynamic threshold. With r = min((it + 1) / total, 1) and m_k = mean max_c p_k (all pixels of
    the batch): t_k = (1 - r) prev + r m_k, t = clip(min(t_1, t_2), lo, hi). Returns (t, min(m_1, m_2)),
    both 0-d float tensors (the second decides whether the CE covers all pixels)."""
    r = min((it + 1) / total, 1.0)
    m1, m2 = p1.amax(1).mean().float(), p2.amax(1).mean().float()
    prev = prev.float()
    t = torch.minimum((1 - r) * prev + r * m1, (1 - r) * prev + r * m2)
    return t.clamp(lo, hi), torch.minimum(m1, m2)


def decouple(p1, p2, t, mode="code"):
    """The decoupling of the two decoders' softmax p1, p2 (B,C,H,W) by the threshold t -> (high, m1, m2), all
    (B,C,H,W) bool:
      high: the consistent part (CE); m1: the inconsistent elements where decoder 1 is the MSE target of
      decoder 2; m2: those where decoder 2 is the target of decoder 1.
    'code' (train: mask_high, max_output1_indices, max_output2_indices): per class channel, high = p1 > t and
      p2 > t; outside it the larger of p1_c, p2_c is the target (equal: neither). So a confident pixel is in
      both parts: its agreed class's channel in the CE part, the other channels in the MSE part.
    'pixel': per pixel, high = same argmax and both max-probabilities > t (all channels); outside it the
      decoder with the larger max-probability is the target on every channel (equal: neither)."""
    if mode == "code":
        high = (p1 > t) & (p2 > t)
        low = ~high
        return high, low & (p1 > p2), low & (p2 > p1)
    if mode == "pixel":
        c1, k1 = p1.max(1, keepdim=True)
        c2, k2 = p2.max(1, keepdim=True)
        hp = (k1 == k2) & (c1 > t) & (c2 > t)                                     # (B,1,H,W)
        shape = p1.shape
        return (hp.expand(shape), (~hp & (c1 > c2)).expand(shape), (~hp & (c2 > c1)).expand(shape))
    raise ValueError(f"dcnet: dcnet_decouple must be code or pixel, got {mode!r}")


def mse_loss(l1, l2, m1, m2, temperature):
    """train: loss_dc0. With q_k = softmax(l_k / T): mean((m1 (q1.detach() - q2))²) + mean((m2 (q2.detach() -
    q1))²), means over all B·C·H·W elements (MC-Net's losses.mse_loss) -> 0-d."""
    q1, q2 = (common.hi(l1) / temperature).softmax(1), (common.hi(l2) / temperature).softmax(1)
    m1, m2 = m1.to(q1.dtype), m2.to(q1.dtype)
    return (m1 * (q1.detach() - q2)).pow(2).mean() + (m2 * (q2.detach() - q1)).pow(2).mean()


def ce_loss(l1, l2, p1, p2, high, all_pixels, mode="code"):
    """train: loss_cer, each decoder learning the other's hard pseudo-labels (no gradient through them):
      all_pixels (0-d bool, mean confidence >= dcnet_all_pixels): CE(l1, argmax p2) + CE(l2, argmax p1), pixel
        means;
      'code': CE(high ⊙ l1, argmax(high ⊙ p2)) + CE(high ⊙ l2, argmax(high ⊙ p1)), pixel means, the
        logits multiplied by the channel mask as the code does (masked channels count as logit 0; a pixel
        with no high channel has all-zero logits and label 0, a constant log C without gradient);
      'pixel': Σ_{high pixels} [CE(l1, argmax p2) + CE(l2, argmax p1)] / (B·H·W).
    l (B,C,H,W) logits, p their softmax, high from `decouple` -> 0-d. Both branches are computed and one is
    chosen with torch.where (no host sync)."""
    l1, l2 = common.hi(l1), common.hi(l2)
    y1, y2 = p1.detach().argmax(1), p2.detach().argmax(1)
    full = F.cross_entropy(l1, y2) + F.cross_entropy(l2, y1)
    if mode == "code":
        h = high.to(l1.dtype)
        part = (F.cross_entropy(h * l1, (h * p2.detach()).argmax(1))
                + F.cross_entropy(h * l2, (h * p1.detach()).argmax(1)))
    elif mode == "pixel":
        hp = high.any(1).to(l1.dtype)                                              # (B,H,W)
        ce = F.cross_entropy(l1, y2, reduction="none") + F.cross_entropy(l2, y1, reduction="none")
        part = (hp * ce).mean()
    else:
        raise ValueError(f"dcnet: dcnet_decouple must be code or pixel, got {mode!r}")
    return torch.where(all_pixels, full, part)


def consistency_weight(it, total, cfg):
    """train: get_current_consistency_weight: w(t) = dcnet_cons_weight · sigmoid ramp over dcnet_rampup."""
    return cfg.dcnet_cons_weight * common.sigmoid_rampup(it, cfg.dcnet_rampup * total)


# ---------------------------------------------------------------------------------------------------------
# step

def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One DCNet step; returns (loss, stats) with cps_step's keys. Does not call backward. Moves the dynamic
    threshold (extra.threshold) once, as the code does before it uses it.

    loss = λ_seg (seg_l + seg_u + seg_c) + λ_cls cls_l over the labeled + weak unlabeled images, with
      seg_l = Hermes eq. (1) for decoder 1 + for decoder 2 on the labeled images (train: loss_seg_dice),
      seg_u = dcnet_ce_weight · CE (consistent part) + dcnet_mse_scale · w(t) · MSE (inconsistent part),
      seg_c = dcnet_at_scale · (1 - w(t)) · attention transfer (encoder <- decoder dcnet_at_decoder),
    w(t) = dcnet_cons_weight · sigmoid ramp. Burn-in drops the unlabeled images and seg_u, seg_c (the
    threshold stays). Statistics: pl_acc_pix_* = accuracy of decoder 2's labels (decoder 1's targets) on the
    unlabeled images; kept_pix = the fraction of their pixels in the CE part; tau = the dynamic threshold.
    """
    x, y, z = batch_l
    x_w, _, y_gt, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    on = it >= cfg.burn_in
    xx = torch.cat([x, x_w]) if on else x
    l1, l2, enc, dec1, dec2 = forward_two(model, extra, xx)
    L = common.parts(l1.new_zeros(()).float())
    L["seg_l"] = seg_supervised_loss(l1[:B_l], y) + seg_supervised_loss(l2[:B_l], y)   # train: loss_seg_dice
    pl = kept = None
    if on:
        p1, p2 = common.hi(l1).softmax(1), common.hi(l2).softmax(1)
        t, conf = next_threshold(extra.threshold, p1.detach(), p2.detach(), it, total,
                                 cfg.dcnet_thr_min, cfg.dcnet_thr_max)              # train: cur_threshold
        extra.threshold.copy_(t)
        all_pixels = conf >= cfg.dcnet_all_pixels                                   # train: mean_max_values
        high, m1, m2 = decouple(p1.detach(), p2.detach(), t, cfg.dcnet_decouple)   # train: mask_high, ...
        w = consistency_weight(it, total, cfg)
        L_ce = ce_loss(l1, l2, p1, p2, high, all_pixels, cfg.dcnet_decouple)        # train: loss_cer
        L_mse = mse_loss(l1, l2, m1, m2, cfg.dcnet_temperature)                     # train: loss_dc0
        teacher = {1: dec1, 2: dec2}[int(cfg.dcnet_at_decoder)]
        L["seg_u"] = cfg.dcnet_ce_weight * L_ce + cfg.dcnet_mse_scale * w * L_mse
        L["seg_c"] = cfg.dcnet_at_scale * (1 - w) * attention_loss(enc, teacher)   # train: loss_at_kd
        pl = p2[B_l:].detach().argmax(1)
        with torch.no_grad():
            hp = high[B_l:].any(1).float().mean()
            kept = torch.where(all_pixels, torch.ones_like(hp), hp)
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)        # Hermes eq. (2), SupOnly
    coefficients = {**dict.fromkeys(L, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "seg_c": cfg.lambda_seg, "cls_l": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    stats = common.make_stats(L, loss, it, total, cfg, pl, y_gt, kept)
    stats["tau"] = extra.threshold.detach().float().clone()
    return loss, stats
