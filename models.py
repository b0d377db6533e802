"""Hermes networks: segmentation U-Net, classification ResNet-18, inter-task attention (eqs. (3)–(5)),
saliency (eq. (6)) and the projection heads (paper Sec. 3.1-3.2, supplementary Tables 5-6).

    seg branch   x -> ResNet encoder (stem /2, layer1 /4, layer2 /8, layer3 /16, layer4 /32)
                   -> decoder up1 /16, up2 /8, up3 /4 (+ saliency, eq. (6)), up4 /2
                   -> full-resolution 2-class head
    cls branch   x -> ResNet-18: stem, layer1, ITA(up3), layer2, ITA(up2), layer3, ITA(up1), layer4
                   -> fc (2 classes)
    saliency     |d max_c f_c(x) / dx| of the cls ResNet *without* ITA, so there is no cycle
                 (saliency -> seg -> ITA -> cls)

Example:
    >>> net = HermesNet(seg_encoder="resnet18")
    >>> out = net(torch.randn(2, 3, 224, 224))
    >>> out["seg_logits"].shape, out["cls_logits"].shape, out["pixel_emb"].shape
    (torch.Size([2, 2, 224, 224]), torch.Size([2, 2]), torch.Size([2, 256, 14, 14]))

Parameter counts and timings: `python -m tools.bench --params`, `python -m tools.bench` (README: Speed).
"""
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import cli

DIVISOR = 32  # the encoder downsamples 5 times; skips only line up for sides divisible by 2^5
DECODER_CHANNELS = (256, 128, 64, 32, 16)  # up1, up2, up3, up4, full-resolution block (U-Net convention)
ENCODERS = {  # name -> (builder, weights enum, channels of stem, layer1..layer4)
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, (64, 64, 128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights, (64, 64, 128, 256, 512)),
}


class WeightsUnavailable(cli.MissingFileError):
    """ImageNet weights that could not be read or downloaded (offline compute node, corrupt file)."""


def weights_dir():
    """Where torchvision reads (and downloads) the ImageNet files: the torch hub cache's checkpoints
    folder."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def imagenet_files(encoders):
    """{file name: URL} of the ImageNet weights the given encoders need, e.g. ["resnet34", "resnet18"]."""
    return {os.path.basename(ENCODERS[n][1].IMAGENET1K_V1.url): ENCODERS[n][1].IMAGENET1K_V1.url
            for n in dict.fromkeys(encoders)}


def missing_weights_message(encoders, cause=None):
    """One line: every ImageNet file the networks need that is not in the hub cache, where to put it, and the
    offline alternatives (train.py's --init-seg-encoder / --init-cls-encoder, or --no-pretrained)."""
    folder = weights_dir()
    files = imagenet_files(encoders)
    missing = {f: u for f, u in files.items() if not os.path.isfile(os.path.join(folder, f))} or files
    return (f"--pretrained needs the ImageNet weights {' and '.join(missing)}, which could not be loaded"
            + (f" ({cause})" if cause else "") + f": download {' and '.join(missing.values())} into {folder} "
            f"(or set TORCH_HOME to a folder whose hub/checkpoints holds them), or pass the files with "
            f"--init-seg-encoder FILE --init-cls-encoder FILE --no-pretrained, or train from scratch with "
            f"--no-pretrained")


def build_resnet(name, pretrained):
    """A torchvision ResNet (`resnet18`/`resnet34`), with ImageNet weights (IMAGENET1K_V1) when `pretrained`.

    Weights come through torchvision's weights API and the torch hub cache. Any failure to obtain them
    (offline, corrupt file) raises WeightsUnavailable (a user error naming the file) instead of silently
    keeping random weights; HermesNet names every file its two branches need.
    """
    if name not in ENCODERS:
        raise ValueError(f"models.py: unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    builder, weights_enum, _ = ENCODERS[name]
    net = builder(weights=None)
    if pretrained:
        weights = weights_enum.IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # URLError offline, hash mismatch, truncated file, ...
            err = WeightsUnavailable(missing_weights_message([name], cli.cause(e)))
            err.cause = cli.cause(e)
            raise err from e
        net.load_state_dict(state)  # strict: a wrong file fails loudly
    return net


def check_input(x):
    """Raise a ValueError unless x is (B,3,H,W) with H and W divisible by 32."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"models.py: expected an image batch (B,3,H,W), got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % DIVISOR or W % DIVISOR:
        raise ValueError(
            f"models.py: input size {H}x{W} is not divisible by {DIVISOR} (the U-Net downsamples 5 times); "
            f"resize images to a multiple of {DIVISOR}, e.g. 224"
        )


class SegEncoder(nn.Module):
    """ResNet encoder without avgpool/fc.

    forward: x (B,3,H,W) -> [stem (B,64,H/2,W/2), layer1 (B,64,H/4,W/4), layer2 (B,128,H/8,W/8),
                             layer3 (B,256,H/16,W/16), layer4 (B,512,H/32,W/32)]
    The paper's Conv1..Conv4 (Table 5) are layer1..layer4.
    """

    def __init__(self, name="resnet34", pretrained=False):
        super().__init__()
        r = build_resnet(name, pretrained)
        self.channels = ENCODERS[name][2]
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.maxpool = r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.layer1(self.maxpool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return [s0, s1, s2, s3, s4]


def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear), concatenate the skip features, two conv3x3-BN-ReLU.

    forward: x (B,c_in,h,w), skip (B,c_skip,2h,2w) or None -> (B,c_out,2h,2w)
    """

    def __init__(self, c_in, c_skip, c_out):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(c_in + c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x, skip=None):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class SegDecoder(nn.Module):
    """U-Net decoder with the saliency map fused at up3 (eq. (6), Table 6's best: 56 px at 224).

    forward: encoder features (see SegEncoder), sal (B,1,H/4,W/4) saliency at up3's resolution
        -> logits (B,n_classes,H,W), {"up1": (B,256,H/16,W/16), "up2": (B,128,H/8,W/8),
                                      "up3": (B,64,H/4,W/4), "up4": (B,32,H/2,W/2)}
    """

    def __init__(self, enc_channels, n_classes=2, channels=DECODER_CHANNELS):
        super().__init__()
        c0, c1, c2, c3, c4 = enc_channels
        d1, d2, d3, d4, d5 = channels
        self.up1 = DecoderBlock(c4, c3, d1)      # /32 -> /16, + layer3
        self.up2 = DecoderBlock(d1, c2, d2)      # /16 -> /8, + layer2
        self.up3 = DecoderBlock(d2, c1 + 1, d3)  # /8 -> /4, + layer1 and the saliency map (eq. (6))
        self.up4 = DecoderBlock(d3, c0, d4)      # /4 -> /2, + stem
        self.up5 = DecoderBlock(d4, 0, d5)       # /2 -> /1, no skip
        self.head = nn.Conv2d(d5, n_classes, 1)

    def forward(self, feats, sal):
        s0, s1, s2, s3, s4 = feats
        u1 = self.up1(s4, s3)
        u2 = self.up2(u1, s2)
        u3 = self.up3(u2, torch.cat([s1, sal], dim=1))  # delta = D(x, f_c(x)) (+) x_seg   (6)
        u4 = self.up4(u3, s0)
        logits = self.head(self.up5(u4))
        return logits, {"up1": u1, "up2": u2, "up3": u3, "up4": u4}


class InterTaskAttention(nn.Module):
    """Inter-task attention, eqs. (3)–(5) (channel attention, then spatial attention, on the cls feature).

    x_seg is first brought to c_cls channels by a 1x1 conv (adapter). Then
        M_c   = sigma(W_1 ReLU(W_0 AvgPool(W_c * [x_cls; x_seg] + b_c)))       eq. (3)
        x_m   = M_c (x) x_cls                                                   eq. (5)
        M_s   = sigma(W_s * [AvgPool_c(x_m); MaxPool_c(x_m)] + b_s)             eq. (4)
        x_out = M_s (x) x_m                                                     eq. (5)
    W_c: 3x3 conv 2C -> C with bias b_c; W_0: C -> max(1, C/4), W_1: back to C (no biases, as eq. (3)
    writes them); W_s: 3x3 conv 2 -> 1 with bias b_s; AvgPool_c / MaxPool_c are over channels; padding 1
    keeps h x w.

    forward: x_cls (B,C,h,w), x_seg (B,c_seg_in,h,w), scale s (0-d tensor in [0,1] or None = 1)
        -> x_out (B,C,h,w), M_c (B,C,1,1), M_s (B,1,h,w); with s: residual x_cls + s·eq. (5),
        paper (1 - s)·x_cls + s·eq. (5), so s = 0 is the classifier without attention.
    """

    def __init__(self, c_cls, c_seg_in, reduction=4, residual=False):
        super().__init__()
        # not in the paper: x_out = x_cls + M_s (x) x_m (docs/when-does-hermes-help.md)
        self.residual = residual
        self.adapter = nn.Conv2d(c_seg_in, c_cls, 1)
        self.W_c = nn.Conv2d(2 * c_cls, c_cls, 3, padding=1, bias=True)
        self.W_0 = nn.Linear(c_cls, max(1, c_cls // reduction), bias=False)
        self.W_1 = nn.Linear(max(1, c_cls // reduction), c_cls, bias=False)
        self.W_s = nn.Conv2d(2, 1, 3, padding=1, bias=True)

    def forward(self, x_cls, x_seg, scale=None):
        if x_cls.shape[-2:] != x_seg.shape[-2:]:
            raise ValueError(f"models.py InterTaskAttention: x_cls {tuple(x_cls.shape)} and x_seg "
                             f"{tuple(x_seg.shape)} differ in spatial size")
        x_seg = self.adapter(x_seg)                                        # (B,C,h,w)
        a = self.W_c(torch.cat([x_cls, x_seg], dim=1)).mean(dim=(2, 3))   # (B,C)
        M_c = torch.sigmoid(self.W_1(F.relu(self.W_0(a))))[:, :, None, None]  # (B,C,1,1)   eq. (3)
        x_m = M_c * x_cls                                                   # eq. (5)
        pooled = torch.cat([x_m.mean(dim=1, keepdim=True), x_m.amax(dim=1, keepdim=True)], dim=1)  # (B,2,h,w)
        M_s = torch.sigmoid(self.W_s(pooled))                              # (B,1,h,w)   eq. (4)
        x_out = M_s * x_m                                                   # eq. (5)
        if scale is not None:   # --ias-warmup: s in [0,1] weights the attention (not in the paper)
            x_out = x_cls + scale * x_out if self.residual else torch.lerp(x_cls, x_out, scale)
        elif self.residual:
            x_out = x_cls + x_out
        return x_out, M_c, M_s


def saliency(cls_net, x):
    """Saliency map D(x, f_c(x)) of eq. (6): |d max_c f_c(x) / dx|, max over RGB, min-max normalised per
    image.

    cls_net: any module mapping (B,3,H,W) -> logits (B,K); in HermesNet the plain classification ResNet
    (no inter-task attention). It runs in eval mode (BN running statistics, so images do not interact);
    the train/eval mode of every submodule is restored afterwards. The gradient is taken w.r.t. the input
    only (torch.autograd.grad), so no parameter .grad is touched; works under torch.no_grad().
    The per-image max logits are summed, so each image receives its own gradient.

    x: (B,3,H,W) -> (B,1,H,W) in [0,1], detached (a constant map gives zeros).
    """
    modes = [(m, m.training) for m in cls_net.modules()]
    cls_net.eval()
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = cls_net(x).amax(dim=1).sum()  # sum_i max_c f_c(x_i)
            (g,) = torch.autograd.grad(score, x)
    finally:
        for m, training in modes:
            m.training = training
    D = g.abs().amax(dim=1, keepdim=True)                 # (B,1,H,W)
    lo = D.amin(dim=(2, 3), keepdim=True)                 # (B,1,1,1)
    span = D.amax(dim=(2, 3), keepdim=True) - lo
    D = torch.where(span > 0, (D - lo) / span.clamp_min(torch.finfo(D.dtype).tiny), torch.zeros_like(D))
    return D.detach()


def mlp(c_in, c_hidden, c_out):
    return nn.Sequential(nn.Linear(c_in, c_hidden), nn.ReLU(inplace=True), nn.Linear(c_hidden, c_out))


class HermesNet(nn.Module):
    """The joint Hermes model: two backbones (Sec. 3.1) linked by the IAS module (Sec. 3.2).

    Args:
        seg_encoder: "resnet34" (default) or "resnet18", the U-Net encoder.
        pretrained: ImageNet weights for both backbones (offline: RuntimeError naming --no-pretrained).
        ias: default of forward's `ias` (saliency into seg at up3 + inter-task attention in cls).
        cross_grad: if False (default), seg features entering ITA are detached, so the cls loss does not
            reach the seg branch. The saliency map is always detached.
        contrast_level: seg-encoder level (1..4 = layer1..layer4, Table 5's Conv1..Conv4) of the pixel head.
        pixel_dim, image_dim, itc_dim: output sizes of the pixel, image and inter-task consistency heads.
        ita_form: "paper" (eq. (5): x_out = M_s ⊗ M_c ⊗ x_cls) or "residual" (x_cls + that; not in the
            paper).

    ias_scale s (set_ias_scale, --ias-warmup; 1 unless set): the seg decoder receives s·saliency and ITA is
    weighted by s (InterTaskAttention), so s = 0 is the model with ias off.
    ias off: the seg decoder receives an all-zero saliency map (same parameter shapes) and ITA is skipped;
    ITA modules exist either way, so a model built with ias can be run with ias=False and vice versa
    (a model trained without ias has untrained ITA modules).

    forward(x (B,3,H,W), ias=None) -> dict, H and W divisible by 32, level = contrast_level:
        "seg_logits" (B,2,H,W), "cls_logits" (B,2),
        "pixel_emb" (B,pixel_dim,H/2^(level+1),W/2^(level+1)) unit vectors over dim 1,
        "image_emb" (B,image_dim) unit vectors, "itc_seg" (B,itc_dim), "itc_cls" (B,itc_dim) (not normalised),
        "saliency" (B,1,H,W) in [0,1] or None,
        "M_c" [(B,64,1,1), (B,128,1,1), (B,256,1,1)], "M_s" [(B,1,H/4,W/4), (B,1,H/8,W/8), (B,1,H/16,W/16)]
        (empty lists when ias is off).
    """

    SEG_PARTS = ("seg_encoder", "seg_decoder", "pixel_head", "itc_seg_head")
    CLS_PARTS = ("cls_net", "ita", "image_head", "itc_cls_head")

    def __init__(self, seg_encoder="resnet34", pretrained=False, ias=True, cross_grad=False, contrast_level=3,
                 pixel_dim=256, image_dim=128, itc_dim=128, ita_form="paper"):
        super().__init__()
        if contrast_level not in (1, 2, 3, 4):
            raise ValueError(f"models.py: contrast_level must be 1..4 (layer1..layer4), got {contrast_level}")
        if ita_form not in ("paper", "residual"):
            raise ValueError(f"models.py: ita_form must be paper or residual, got {ita_form!r}")
        self.ias, self.cross_grad, self.contrast_level = ias, cross_grad, contrast_level
        # segmentation branch
        self.seg_encoder = SegEncoder(seg_encoder, pretrained)
        enc = self.seg_encoder.channels
        self.seg_decoder = SegDecoder(enc)
        c = enc[contrast_level]
        self.pixel_head = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                        nn.ReLU(inplace=True), nn.Conv2d(c, pixel_dim, 1))
        self.itc_seg_head = mlp(enc[4], enc[4], itc_dim)
        # classification branch
        self.cls_net = build_resnet("resnet18", pretrained)
        self.cls_net.fc = nn.Linear(self.cls_net.fc.in_features, 2)
        d = DECODER_CHANNELS
        res = ita_form == "residual"
        self.ita = nn.ModuleList([InterTaskAttention(64, d[2], residual=res),    # after layer1 (/4), fed up3
                                  InterTaskAttention(128, d[1], residual=res),   # after layer2 (/8), fed up2
                                  InterTaskAttention(256, d[0], residual=res)])  # after layer3 (/16), fed up1
        self.image_head = mlp(512, 512, image_dim)
        self.itc_cls_head = mlp(512, 512, itc_dim)
        # weight s of the IAS module (saliency into seg, ITA into cls), set by training (--ias-warmup); not
        # saved: 1 in a finished run. ias_full: s = 1, the paper's forward exactly, without the weighting ops
        self.register_buffer("ias_scale", torch.ones(()), persistent=False)
        self.ias_full = True
        names = {n for n, _ in self.named_children()}
        assert names == set(self.SEG_PARTS) | set(self.CLS_PARTS), names

    def seg_parameters(self):
        """Parameters of the seg branch: encoder, decoder (incl. saliency fusion and head), pixel and itc_seg
        heads."""
        return [p for n in self.SEG_PARTS for p in getattr(self, n).parameters()]

    def cls_parameters(self):
        """Parameters of the cls branch: ResNet-18, ITA modules (incl. adapters), image and itc_cls heads."""
        return [p for n in self.CLS_PARTS for p in getattr(self, n).parameters()]

    def forward_seg(self, x, saliency=None):
        """Segmentation branch alone.

        x (B,3,H,W), saliency (B,1,H,W) or None (zeros) -> {"seg_logits" (B,2,H,W), "pixel_emb",
        "itc_seg" (B,itc_dim), "feats": {"stem","layer1".."layer4" encoder features, "up1".."up4" decoder
        features}} (shapes: SegEncoder, SegDecoder)
        """
        check_input(x)
        B, _, H, W = x.shape
        feats = self.seg_encoder(x)
        if saliency is None:
            sal = x.new_zeros(B, 1, H // 4, W // 4)
        else:
            sal = F.interpolate(saliency, size=(H // 4, W // 4), mode="area")  # mean over each 4x4 block
        seg_logits, up = self.seg_decoder(feats, sal)
        pixel_emb = F.normalize(self.pixel_head(feats[self.contrast_level]), dim=1)
        itc_seg = self.itc_seg_head(feats[4].mean(dim=(2, 3)))  # (B,512) -> (B,itc_dim)
        names = ("stem", "layer1", "layer2", "layer3", "layer4")
        return {"seg_logits": seg_logits, "pixel_emb": pixel_emb, "itc_seg": itc_seg,
                "feats": {**dict(zip(names, feats)), **up}}

    def forward_cls(self, x, seg_feats=None):
        """Classification branch alone, with inter-task attention when seg_feats is given.

        x (B,3,H,W), seg_feats: forward_seg's "feats" (uses up3, up2, up1) or None (no ITA)
        -> {"cls_logits" (B,2), "image_emb" (B,image_dim) unit vectors, "itc_cls" (B,itc_dim),
            "M_c": list of 3 (B,C,1,1), "M_s": list of 3 (B,1,h,w)} (empty lists without ITA)
        """
        check_input(x)
        r = self.cls_net
        x_cls = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        M_c, M_s = [], []
        for layer, ita, key in ((r.layer1, self.ita[0], "up3"), (r.layer2, self.ita[1], "up2"),
                                (r.layer3, self.ita[2], "up1")):
            x_cls = layer(x_cls)
            if seg_feats is not None:
                x_seg = seg_feats[key] if self.cross_grad else seg_feats[key].detach()
                x_cls, m_c, m_s = ita(x_cls, x_seg, None if self.ias_full else self.ias_scale)
                M_c.append(m_c)
                M_s.append(m_s)
        f = torch.flatten(r.avgpool(r.layer4(x_cls)), 1)  # (B,512)
        return {"cls_logits": r.fc(f), "image_emb": F.normalize(self.image_head(f), dim=1),
                "itc_cls": self.itc_cls_head(f), "M_c": M_c, "M_s": M_s}

    def forward(self, x, ias=None):
        """Joint forward: saliency (eq. (6)) -> seg (saliency at up3) -> cls with ITA (eqs. (3)–(5)).
        See class docstring."""
        check_input(x)
        ias = self.ias if ias is None else ias
        sal = saliency(self.cls_net, x) if ias else None
        seg = self.forward_seg(x, sal if sal is None or self.ias_full else self.ias_scale * sal)
        cls = self.forward_cls(x, seg["feats"] if ias else None)
        return {"seg_logits": seg["seg_logits"], "cls_logits": cls["cls_logits"],
                "pixel_emb": seg["pixel_emb"], "image_emb": cls["image_emb"],
                "itc_seg": seg["itc_seg"], "itc_cls": cls["itc_cls"],
                "saliency": sal, "M_c": cls["M_c"], "M_s": cls["M_s"]}


def set_ias_scale(model, s):
    """Set the IAS weight s in [0, 1] (forward: s·saliency into the seg decoder, s-weighted inter-task
    attention) of every HermesNet inside `model` (a wrapper, a compiled module or the net itself), in place."""
    for m in model.modules():
        if isinstance(m, HermesNet):
            m.ias_scale.fill_(s)
            m.ias_full = s >= 1


HEADS = ("pixel_head", "image_head", "itc_seg_head", "itc_cls_head")  # projection heads (optional in --init)


def _check_state(own, state, what):
    """Raise a ValueError naming every missing, unexpected and mis-shaped key of `state` against `own`."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in set(own) & set(state)
                 if own[k].shape != state[k].shape)
    if missing or unexpected or bad:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"
        raise ValueError(f"{what} does not fit this model: missing {show(missing)}; "
                         f"unexpected {show(unexpected)}; shape mismatch {show(bad)}")


def load_init(model, state, heads=False, what="--init"):
    """Start `model` (HermesNet) from an earlier run's weights: state = that checkpoint's "model" state_dict.

    Both branches (encoders, decoder, ITA, classifier) are loaded; the projection heads (HEADS) only when
    `heads`. Strict: every missing, unexpected or mis-shaped key is named in the error."""
    state = {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in state.items()}
    keep = lambda k: heads or k.split(".")[0] not in HEADS
    state = {k: v for k, v in state.items() if keep(k) and not k.startswith(("pixel_bank.", "image_bank."))}
    own = {k: v for k, v in model.state_dict().items() if keep(k)}
    _check_state(own, state, what)
    model.load_state_dict(state, strict=False)
    return sorted(state)


def load_resnet_init(model, state, branch, what="ResNet file"):
    """Load a torchvision-format ResNet state_dict (e.g. the ImageNet file resnet34-b627a593.pth) into the
    seg encoder (branch "seg"; conv1/bn1 become stem.0/stem.1) or the classification ResNet-18 ("cls").
    The file's fc (ImageNet's 1000 classes) is dropped, and so is the model's own fc (it stays as it is)."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if branch == "seg":
        state = {re.sub(r"^conv1\.", "stem.0.", re.sub(r"^bn1\.", "stem.1.", k)): v for k, v in state.items()}
        target = model.seg_encoder
    elif branch == "cls":
        target = model.cls_net
    else:
        raise ValueError(f"models.py: branch must be seg or cls, got {branch!r}")
    own = {k: v for k, v in target.state_dict().items() if not k.startswith("fc.")}
    _check_state(own, state, what)
    target.load_state_dict(state, strict=False)
    return sorted(state)
