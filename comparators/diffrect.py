"""DiffRect: Latent Diffusion Label Rectification (Liu, Li, Yuan; MICCAI 2024; code:
github.com/CUHK-AIM-Group/DiffRect, train_diffrect_ACDC.py and networks/unet_de.py).

Not part of Hermes; a comparator of the paper's Table 1. DiffRect trains two networks, each with its own loss:
  the segmentation network f (the model's U-Net), FixMatch-style on itself, no teacher: pseudo-labels from its
    own weak-view softmax, kept where the min-max normalised probability (p_c - min p) / max p exceeds 0.8
    (a pixel with no class above it gets label 0, background: the code takes the argmax of the masked
    softmax); its strong view learns them with CE + Dice, plus a complementary CE (the least likely class of
    the weak view, on 1 - p of the strong view) weighted by an entropy-based sample weight; and, after
    refine_start, the rectified pseudo-labels (below) on its weak view;
  the rectifier g (`build_extra`, trained by the segmentation Adam), DiffRect's two modules:
    LCC, Label Context Calibration: a label map is painted in colour (semantic colouring scheme, SCS: one RGB
      colour per class, for two classes black and white) and, beside the image, embedded by a U-Net encoder
      (the semantic context embedding block B_sem; an image encoder's features are added level by level)
      whose every block is offset by an embedding of the calibration guidance τ, the SSL4MIS Dice loss
      between the pseudo-labels and their better reference (ground truth, or the refined weak labels),
      scaled by 999 as a diffusion time step: how wrong the labels are tells the encoder how much to correct;
    LFR, Latent Feature Rectification: a latent diffusion over the encoder's bottleneck. The latent of the
      better labels (encoded by the same encoder, detached) is noised to a random step t of a T = 10 step cosine
      schedule, and a small denoising U-Net, conditioned on the latent of the worse labels, predicts the clean
      latent (x0-prediction, MSE: the latent loss); the prediction replaces the bottleneck and the decoder turns
      it into label logits. Two transports ("coarse to fine, fine to precise"): weak pseudo-labels -> ground
      truth on the labeled images (supervised: CE + Dice + latent loss; on unlabeled images the weak labels
      are their own target), strong pseudo-labels -> weak pseudo-labels on all images (unsupervised: CE +
      Dice against the rectifier's own refined weak labels + complementary CE + latent loss).
    Rectification: from pure noise, 2 DDIM steps conditioned on the weak labels' latent give a rectified
      latent; decoded and thresholded as above, these rectified labels train f on its unlabeled weak view.
The classification branch trains as SupOnly's (Hermes eq. (2)). Evaluation uses the model's U-Net alone, as
the authors' validation (val_2D.test_single_volume_refinev2 calls the segmentation network only): the
rectifier needs a pseudo-label to rectify and is a training device, not a second predictor.

Equation numbers: the DiffRect paper's text was not at hand (its abstract, the README and a third-party summary
were), so lines carry "DiffRect eq. (n)" only for the two equations a third-party port of the code quotes by
number (eq. (6): the calibration guidance τ = Dice(y_s, y_w); eq. (12): sampling the rectified latent), and
those two are second-hand: check them against the PDF. Every other line names the line of the authors' code it
follows ("train:" train_diffrect_ACDC.py, "net:" networks/unet_de.py, "gd:" the guided-diffusion code it
imports). Where we differ from that code, or read it closely:
  - one backward: the code takes three optimizer steps per iteration (f on its loss; g on its loss; after
    refine_start f again on the rectification loss, with a fresh forward); here the three losses are summed
    and trained by one backward and one Adam step (the framework's contract). The losses do not share
    parameters (g sees only detached pseudo-labels and images, f only g's detached labels), so each network
    gets the gradient of its own loss; what changes is the order (g samples the rectified labels before, not
    after, its update, and f's rectification term uses this step's weak forward) and the optimizer (Adam with
    the run's poly schedule for both; the code: SGD 0.01, momentum 0.9, the rectifier's lr never decayed);
  - labeled loss of f: Hermes eq. (1), ½ (CE + Dice), as for every comparator (the code: CE + SSL4MIS Dice);
    all other CE + Dice terms are the code's (sum of CE and the SSL4MIS Dice, common.class_dice_loss);
  - strong views: the data path's strong unlabeled view; the labeled images (which the code also
    augments strongly: the complementary term and g's second transport run over the whole batch) get one
    from augment.py's photometric ops (common.strong_view), as in ABD;
  - the complementary weight is used twice, as the code does (comp_loss = w_as · CE, then + w_as · comp_loss),
    and its gradient flows (w_as is not detached);
  - the calibration guidance is the code's Dice *loss* (1 - Dice, so 0 = perfect labels), where the port
    quotes eq. (6) as a Dice score; one τ per transport (over its labeled, or unlabeled, images), shared by
    all the images of that pass, as the code;
  - the denoiser, as the code's DeUNet, runs its down path on the noisy latent alone and adds the condition
    only to the top skip connection; DDIM clips each predicted latent to [-1, 1] (guided-diffusion's default
    clip_denoised=True, kept although the latents are not bounded); the rectifier samples in training mode
    (batch statistics, dropout on), as the code's refine_model never leaves train();
  - burn-in (cfg.burn_in) trains f on the labeled images only and g on their first transport only (weak
    labels -> ground truth, no unlabeled image), so the rectifier is warm when the unlabeled terms start;
    rectification starts after max(burn-in, rect_start) steps.
Scaled down to train on a laptop CPU at 64 px (settings diffrect_width, diffrect_timesteps,
diffrect_sample_steps): the code's rectifier (UNet_LDMV2) has five levels of 16..256 channels, a 256-channel
latent at 1/16 of the side, a denoiser of 256/384/512 channels and 512-d time embeddings (≈ 18 M parameters,
14 M of them the denoiser); here four levels of 8..64 channels (width 8), a 64-channel latent at 1/8 of the
side (8x8 at 64 px), a denoiser of 64/96/128 channels and 64-d embeddings (≈ 1.1 M parameters, 0.86 M the
denoiser). T = 10 diffusion steps and 2 DDIM steps are the code's own.
"""
import math

import config
import torch
import torch.nn as nn
import torch.nn.functional as F

from comparators import common
from losses import cls_supervised_loss, seg_supervised_loss, total_loss

SETTINGS = config.comparator_settings("diffrect")   # declared in config.py with every other setting
DEFAULTS = {name: default for name, default, *_ in SETTINGS}
N_CLASSES = 2
COLORS = ((0, 0, 0), (255, 255, 255))   # train: color_map for num_classes == 2 (background black, lesion white)
GUIDANCE_SCALE = 999.0                   # train: t = dice_loss(...) * 999
SINUSOID_DIM, EMBED_DIM = 32, 64         # net: 128 and 512
DROPOUT = (0.05, 0.1, 0.2, 0.3)          # net: (0.05, 0.1, 0.2, 0.3, 0.5), one per level


# ---------------------------------------------------------------------------------------------------------
# pseudo-labels and losses of the segmentation network (train:)

def pseudo_label(probs, threshold):
    """train: argmax(p · 1[normalize(p) > thr]) with normalize = (p - min_c p) / max_c p. probs (B,C,H,W)
    -> (labels (B,H,W) long, kept (B,H,W) bool: some class passed). A pixel where none passes is labeled 0
    (argmax of all zeros), as in the code."""
    lo, hi_ = probs.min(1, keepdim=True).values, probs.max(1, keepdim=True).values
    mask = (probs - lo) / hi_ > threshold
    return (probs * mask).argmax(1), mask.any(1)


def label_loss(logits, labels):
    """train: ce_loss(out, pl) + dice_loss(softmax(out), pl): pixel-mean CE plus the SSL4MIS Dice (mean over
    the classes, over the whole batch). logits (B,C,H,W), labels (B,H,W) -> 0-d."""
    logits = common.hi(logits)
    return F.cross_entropy(logits, labels.long()) + common.class_dice_loss(logits.softmax(1), labels)


def spatial_certainty(probs):
    """train: get_comp_loss's as_weight: the mean over images and classes of 1 - H(π)/log(HW), π the class
    map normalised over the pixels (Categorical(probs=...) over H·W). probs (B,C,H,W) -> 0-d."""
    B, C, H, W = probs.shape
    pi = probs.reshape(B, C, H * W)
    pi = pi / pi.sum(-1, keepdim=True)
    ent = -(pi * torch.log(pi.clamp_min(torch.finfo(pi.dtype).tiny))).sum(-1)
    return (1 - ent / math.log(H * W)).mean()


def complementary_loss(p_weak, p_strong):
    """train: get_comp_loss: (w_as · CE(1 - p_strong as logits, argmin p_weak), w_as), w_as =
    spatial_certainty(p_strong); the least likely class of the weak view is the label the strong view learns
    to rule out. p (B,C,H,W) softmax -> (0-d, 0-d)."""
    w_as = spatial_certainty(p_strong)
    comp = p_weak.detach().argmin(1)
    return w_as * F.cross_entropy(1 - p_strong, comp), w_as


# ---------------------------------------------------------------------------------------------------------
# LCC: semantic colouring and calibration guidance

def semantic_coloring(labels, colors=COLORS):
    """SCS (train: pl_weak_embed, label_embed): class map (B,H,W) -> RGB (B,3,H,W) in [0,1], class c painted
    colors[c] / 255."""
    palette = torch.tensor(colors, dtype=torch.float32, device=labels.device) / 255.0
    return palette[labels.long()].permute(0, 3, 1, 2).contiguous()


def calibration_guidance(labels, reference):
    """DiffRect eq. (6) (second-hand; train: dice_loss(pl, ref, oh_input=True)): the SSL4MIS Dice loss between
    two hard label maps, both one-hot, over the whole batch: (1/C) Σ_c [1 - (2 Σ a_c b_c + ε) / (Σ a_c² +
    Σ b_c² + ε)]. 0 = the labels agree with their reference, 1 = they miss every class. (B,H,W) each -> 0-d."""
    a = F.one_hot(labels.long(), N_CLASSES).permute(0, 3, 1, 2).float()
    return common.class_dice_loss(a, reference)


def timestep_embedding(t, dim=SINUSOID_DIM):
    """net: get_timestep_embedding (DDPM's sinusoids): t (B,) -> (B, dim) [sin | cos]."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
    arg = t.float()[:, None] * freq[None]
    return torch.cat([arg.sin(), arg.cos()], 1)


class StepEmbedding(nn.Module):
    """net: temb.dense: sinusoids -> Linear -> swish -> Linear, (B,) -> (B, EMBED_DIM)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(SINUSOID_DIM, EMBED_DIM), nn.Linear(EMBED_DIM, EMBED_DIM)])

    def forward(self, t):
        return self.dense[1](F.silu(self.dense[0](timestep_embedding(t).to(self.dense[0].weight.dtype))))


class ConvBlock(nn.Module):
    """net: ConvBlock: conv3x3-BN-LeakyReLU, + Linear(swish(embedding)) per channel, dropout,
    conv3x3-BN-LeakyReLU."""

    def __init__(self, c_in, c_out, dropout):
        super().__init__()
        self.conv0 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU())
        self.conv1 = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1),
                                   nn.BatchNorm2d(c_out), nn.LeakyReLU())
        self.proj = nn.Linear(EMBED_DIM, c_out)

    def forward(self, x, emb):
        return self.conv1(self.conv0(x) + self.proj(F.silu(emb))[:, :, None, None])


class Down(nn.Module):
    """net: DownBlock: max-pool 2, ConvBlock."""

    def __init__(self, c_in, c_out, dropout):
        super().__init__()
        self.conv = ConvBlock(c_in, c_out, dropout)

    def forward(self, x, emb):
        return self.conv(F.max_pool2d(x, 2), emb)


class Up(nn.Module):
    """net: UpBlock (bilinear=False): ConvTranspose2d(c_in, c_skip, 2, stride 2), [skip, up], ConvBlock."""

    def __init__(self, c_in, c_skip, c_out):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_skip, 2, stride=2)
        self.conv = ConvBlock(2 * c_skip, c_out, 0.0)

    def forward(self, x, skip, emb):
        u = self.up(x)
        if u.shape[-2:] != skip.shape[-2:]:       # odd sizes (not at multiples of 32 px)
            u = F.interpolate(u, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([skip, u], 1), emb)


class Encoder(nn.Module):
    """net: Encoder: a ConvBlock and three Downs, channels (w, 2w, 4w, 8w); `inject` (another Encoder's
    features) is added after every level. -> [f_0 .. f_3], f_3 the latent (8w, S/8, S/8)."""

    def __init__(self, c_in, width):
        super().__init__()
        ch = [width * 2 ** i for i in range(4)]
        self.inc = ConvBlock(c_in, ch[0], DROPOUT[0])
        self.downs = nn.ModuleList([Down(ch[i], ch[i + 1], DROPOUT[i + 1]) for i in range(3)])

    def forward(self, x, emb, inject=None):
        feats = []
        for i, block in enumerate([self.inc, *self.downs]):
            f = block(feats[-1] if feats else x, emb)
            feats.append(f if inject is None else f + inject[i])    # the next level reads the sum
        return feats


class Decoder(nn.Module):
    """net: Decoder: three Ups with the encoder's skips, then a 3x3 conv to the class logits."""

    def __init__(self, width):
        super().__init__()
        ch = [width * 2 ** i for i in range(4)]
        self.ups = nn.ModuleList([Up(ch[i + 1], ch[i], ch[i]) for i in (2, 1, 0)])
        self.out = nn.Conv2d(ch[0], N_CLASSES, 3, padding=1)

    def forward(self, feats, emb):
        x = feats[-1]
        for up, skip in zip(self.ups, feats[-2::-1]):
            x = up(x, skip, emb)
        return self.out(x)


# ---------------------------------------------------------------------------------------------------------
# LFR: latent diffusion (gd: guided-diffusion's GaussianDiffusion / SpacedDiffusion, as the code uses them)

def cosine_alphas_cumprod(T, max_beta=0.999):
    """gd: get_named_beta_schedule('cosine', T): β_i = min(1 - ᾱ(i+1/T)/ᾱ(i/T), 0.999), ᾱ(s) =
    cos²((s + 0.008)/1.008 · π/2); returns the cumulative products ᾱ_t = Π_{i<=t} (1 - β_i), (T,) float64."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def q_sample(x0, t, noise, abar):
    """gd: q_sample, the forward noising: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε. x0, noise (B,...), t (B,)
    long, abar (T,) -> x_t."""
    a = abar.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def sampling_steps(T, k):
    """gd: space_timesteps(T, [k]): the k kept steps, round(i (T-1)/(k-1)), i < k ([0] for k = 1)."""
    stride = (T - 1) / (k - 1) if k > 1 else 1
    return sorted({round(i * stride) for i in range(k)})


def ddim_sample(denoise, noise, abar, steps, clip=True):
    """gd: ddim_sample_loop (η = 0) of an x0-predicting model over the kept steps s_0 < ... < s_{k-1}: from x =
    noise, for j = k-1 .. 0: x̂0 = clip(denoise(x, s_j)), ε̂ = (x / sqrt(ᾱ_j) - x̂0) / sqrt(1/ᾱ_j - 1), x <- x̂0
    sqrt(ᾱ_{j-1}) + sqrt(1 - ᾱ_{j-1}) ε̂ (ᾱ_{-1} = 1); returns the last x̂0 (the code's 'pred_xstart').
    denoise(x, t (B,) long) -> x̂0; abar (T,) the full schedule (a spaced schedule keeps ᾱ at its steps)."""
    x, x0 = noise, None
    for j in range(len(steps) - 1, -1, -1):
        t = torch.full((x.shape[0],), steps[j], dtype=torch.long, device=x.device)
        x0 = common.hi(denoise(x, t))
        if clip:
            x0 = x0.clamp(-1, 1)
        a = float(abar[steps[j]])
        a_prev = float(abar[steps[j - 1]]) if j > 0 else 1.0
        eps = (x / math.sqrt(a) - x0) / math.sqrt(1 / a - 1)
        x = x0 * math.sqrt(a_prev) + math.sqrt(1 - a_prev) * eps
    return x0


class Denoiser(nn.Module):
    """net: DeUNet, the denoising U-Net over the latent (c channels): its own step embedding, two Downs (c ->
    1.5c -> 2c) and two Ups; the condition (the worse labels' latent) is added to the top skip only (the
    code: x0 = x + embeddings[0], then down1(x)). (x_t, t, cond) -> x̂0 of x_t's shape."""

    def __init__(self, c):
        super().__init__()
        h1, h2 = c * 3 // 2, c * 2
        self.step = StepEmbedding()
        self.down1, self.down2 = Down(c, h1, 0.0), Down(h1, h2, 0.0)
        self.up1, self.up2 = Up(h2, h1, h1), Up(h1, c, c)

    def forward(self, x_t, t, cond):
        emb = self.step(t)
        x1 = self.down1(x_t, emb)
        x2 = self.down2(x1, emb)
        return self.up2(self.up1(x2, x1, emb), x_t + cond, emb)


class Rectifier(nn.Module):
    """net: UNet_LDMV2 (ldm_method 'replace'), DiffRect's LCC + LFR: the guidance embedding, the image encoder
    (`embedder`), the label encoder B_sem over [image, SCS(labels)], the decoder and the latent denoiser.
    abar: the T-step cosine schedule (a buffer derived from the settings, not saved; abar_host its CPU copy)."""

    def __init__(self, width=8, timesteps=10, sample_steps=2):
        super().__init__()
        self.guidance = StepEmbedding()
        self.embedder = Encoder(3, width)
        self.encoder = Encoder(3 + 3, width)
        self.decoder = Decoder(width)
        self.denoiser = Denoiser(8 * width)
        self.steps = sampling_steps(timesteps, sample_steps)
        self.register_buffer("abar", cosine_alphas_cumprod(timesteps).float(), persistent=False)
        self.abar_host = self.abar.clone()       # DDIM reads its numbers here (no device sync)

    def embed(self, tau, n):
        """The calibration guidance τ (0-d) as every image's step embedding (net: temb of t = 999 τ)."""
        return self.guidance((tau.detach().float() * GUIDANCE_SCALE).expand(n))

    def encode(self, image, colored, emb, inject):
        """B_sem: [image, SCS(labels)] -> the encoder's features, the image encoder's added level by level."""
        return self.encoder(torch.cat([image, colored.to(image.dtype)], 1), emb, inject)

    def forward_train(self, image, colored_in, colored_target, tau):
        """net: forward(training=True): the latent of the target labels (detached; the code encodes it second,
        after the input, through the same encoder and image features) is noised at t ~ U{0..T-1} (torch's
        global RNG: t, then ε), the denoiser predicts it back conditioned on the input labels' latent, the
        latent loss is their MSE, and the prediction replaces the bottleneck before decoding.
        -> (logits (B,2,S,S), latent loss 0-d)."""
        emb = self.embed(tau, image.shape[0])
        inject = self.embedder(image, emb)
        feats = self.encode(image, colored_in, emb, inject)
        with torch.no_grad():
            x0 = self.encode(image, colored_target, emb, inject)[-1].detach()
        x0 = common.hi(x0)
        t = torch.randint(0, self.abar.shape[0], (x0.shape[0],), device=x0.device)
        x_t = q_sample(x0, t, torch.randn(x0.shape, device=x0.device).to(x0.dtype), self.abar)
        pred = self.denoiser(x_t.to(feats[-1].dtype), t, feats[-1])
        lat = F.mse_loss(common.hi(pred), x0)
        return self.decoder(feats[:-1] + [pred], emb), lat

    def sample(self, image, colored_in, tau):
        """DiffRect eq. (12) (second-hand; net: forward(training=False)): a rectified latent sampled from pure
        noise (torch's global RNG) by DDIM over the kept steps, conditioned on the input labels' latent,
        decoded. -> logits (B,2,S,S)."""
        emb = self.embed(tau, image.shape[0])
        feats = self.encode(image, colored_in, emb, self.embedder(image, emb))
        cond = feats[-1]
        noise = torch.randn(cond.shape, device=cond.device, dtype=torch.float32)
        lat = ddim_sample(lambda x, t: self.denoiser(x.to(cond.dtype), t, cond), noise, self.abar_host,
                          self.steps)
        return self.decoder(feats[:-1] + [lat.to(cond.dtype)], emb)


def build_extra(model, cfg_dict):
    """The rectifier g, initialised apart, trained by the segmentation Adam (its own loss, seg_c)."""
    get = lambda k: int(cfg_dict.get(k, DEFAULTS[k]))
    return Rectifier(get("diffrect_width"), get("diffrect_timesteps"), get("diffrect_sample_steps"))


# ---------------------------------------------------------------------------------------------------------
# step

def consistency_weight(it, total, cfg):
    """train: get_current_consistency_weight: w(t) = diffrect_cons_weight · sigmoid ramp."""
    return cfg.diffrect_cons_weight * common.sigmoid_rampup(it, cfg.diffrect_rampup * total)


def rectifies(it, total, cfg):
    """train: iter_num > refine_start (and the burn-in over)."""
    return it >= cfg.burn_in and it > cfg.diffrect_rect_start * total


def losses(model, extra, batch_l, batch_u, it, total, cfg):
    """DiffRect's terms of one step -> (L {part: 0-d}, info). Parts:
      seg_l  f's labeled loss, Hermes eq. (1) on the weak labeled view;
      seg_u  w(t) [CE + Dice (strong unlabeled view, weak pseudo-labels) + w_as · comp] + after rect_start
             CE + Dice (weak unlabeled view, rectified pseudo-labels) (train: unsup_loss,
             unsup_label_rect_loss);
      seg_c  g's loss: [CE + Dice + latent loss] of transport 1 (weak labels -> ground truth; CE + Dice on the
             labeled images) + w(t) [CE + Dice (unlabeled, vs. g's refined weak labels) + w_as · comp +
             latent loss] of transport 2 (strong labels -> weak labels) (train: refine_loss);
      cls_l  Hermes eq. (2), SupOnly's classification branch.
    info: pl (B_u,S,S) the labels f's unlabeled term trains on (rectified once rectification runs, weak
    otherwise), kept (their fraction passing the threshold), tau (transport 1's calibration guidance)."""
    x, y, z = batch_l
    x_w, x_s, _, _ = batch_u
    y, z, B_l = y.long(), z.long(), x.shape[0]
    thr = cfg.diffrect_threshold
    L = common.parts(x.new_zeros(()).float())
    info = {"pl": None, "kept": None, "tau": None}
    L["cls_l"] = cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)        # Hermes eq. (2), SupOnly
    if it < cfg.burn_in:                              # labeled images only: f as SupOnly, g's transport 1
        f_w = common.seg_logits(model, x)
        L["seg_l"] = seg_supervised_loss(f_w, y)                                     # Hermes eq. (1)
        with torch.no_grad():
            pl_w, _ = pseudo_label(common.hi(f_w).softmax(1), thr)
        tau = calibration_guidance(pl_w, y)                                          # DiffRect eq. (6)
        r1, lat1 = extra.forward_train(x, semantic_coloring(pl_w), semantic_coloring(y), tau)
        L["seg_c"] = label_loss(r1, y) + lat1
        info["tau"] = tau
        return L, info
    xw, xs = torch.cat([x, x_w]), torch.cat([common.strong_view(x), x_s])           # train: lab + unlab
    f_w, f_s = common.seg_logits(model, xw), common.seg_logits(model, xs)
    p_w, p_s = common.hi(f_w).softmax(1), common.hi(f_s).softmax(1)
    with torch.no_grad():
        pl_w, kept_w = pseudo_label(p_w.detach(), thr)                               # train: pseudo_outputs
        pl_s, _ = pseudo_label(p_s.detach(), thr)                                    # pseudo_outputs_strong
    w = consistency_weight(it, total, cfg)
    L["seg_l"] = seg_supervised_loss(f_w[:B_l], y)                                   # Hermes eq. (1)
    comp, w_as = complementary_loss(p_w, p_s)                                        # train: get_comp_loss
    L_u = label_loss(f_s[B_l:], pl_w[B_l:]) + w_as * comp                            # train: unsup_loss
    # g, transport 1: weak pseudo-labels -> ground truth (unlabeled rows: their own weak labels)
    tau = calibration_guidance(pl_w[:B_l], y)                                        # DiffRect eq. (6)
    col_w = semantic_coloring(pl_w)
    r1, lat1 = extra.forward_train(xw, col_w, semantic_coloring(torch.cat([y, pl_w[B_l:]])), tau)
    p_r = common.hi(r1).softmax(1)
    with torch.no_grad():
        pl_r, _ = pseudo_label(p_r.detach(), thr)                                    # ref_pseudo_outputs
    # g, transport 2: strong pseudo-labels -> weak pseudo-labels, the refined weak labels the CE/Dice target
    tau2 = calibration_guidance(pl_s[B_l:], pl_r[B_l:])                              # DiffRect eq. (6)
    r2, lat2 = extra.forward_train(xs, semantic_coloring(pl_s), col_w, tau2)
    comp2, w_as2 = complementary_loss(p_r, common.hi(r2).softmax(1))
    L["seg_c"] = (label_loss(r1[:B_l], y) + lat1                                     # train: sup_loss_ref
                  + w * (label_loss(r2[B_l:], pl_r[B_l:]) + w_as2 * comp2 + lat2))   # + w unsup_loss_ref
    pl, kept = pl_w[B_l:], kept_w[B_l:].float().mean()
    L_rect = 0.0
    if rectifies(it, total, cfg):                     # rectification (train: (c))
        with torch.no_grad():
            r = extra.sample(xw, col_w, tau)                                         # DiffRect eq. (12)
            pl_rect, kept_rect = pseudo_label(common.hi(r).softmax(1), thr)
        L_rect = label_loss(f_w[B_l:], pl_rect[B_l:])                              # unsup_label_rect_loss
        pl, kept = pl_rect[B_l:], kept_rect[B_l:].float().mean()
    L["seg_u"] = w * L_u + L_rect
    info.update(pl=pl, kept=kept, tau=tau)
    return L, info


def step(model, extra, batch_l, batch_u, it, total, cfg):
    """One DiffRect step; returns (loss, stats) with cps_step's keys. Does not call backward.

    loss = λ_seg (seg_l + seg_u + seg_c) + λ_cls cls_l (parts: `losses`); seg_c trains only the rectifier, seg_l
    and seg_u only the model. Statistics: pl_acc_pix_* = accuracy of the labels seg_u trains on (rectified
    once rectification runs); kept_pix = their fraction above the threshold; tau = transport 1's calibration
    guidance (SSL4MIS Dice loss of the labeled images' weak pseudo-labels)."""
    L, info = losses(model, extra, batch_l, batch_u, it, total, cfg)
    coefficients = {**dict.fromkeys(L, 0.0), "seg_l": cfg.lambda_seg, "seg_u": cfg.lambda_seg,
                    "seg_c": cfg.lambda_seg, "cls_l": cfg.lambda_cls}
    loss = total_loss(L, coefficients)
    stats = common.make_stats(L, loss, it, total, cfg, info["pl"], batch_u[2], info["kept"])
    stats["tau"] = info["tau"].detach().float().clone()
    return loss, stats
