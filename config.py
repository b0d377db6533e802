"""Every setting of a run, declared once. No torch here: tools/ import it without paying for torch.

Each setting is a dataclass field whose metadata says
    help     what it does (the --help line)
    paper    the paper's value and section ("§4.1: 1e-4"), None when the setting is not in the paper, or ""
             when it is no part of the method (where files are, how often to log)
    group    its section of `python train.py --help` (COMMON first)
    resume   MATCH: a resumed run must keep its own value; GIVEN: may change on resume when given;
             COMMAND: always taken from the resuming command line (given or not)
    results  False when it does not change what a run computes (reports and sweeps ignore it)
    per_run  True for what differs between the seeds of one table cell (seed, split)
    missing  the value a run made before the setting existed resumes with
    note     how a method's name mentions a value other than `paper_value` ("separate BN"); `tag`: the
             setting's short name in tools/reproduce.py's run folders
and the flag's own details (type, choices, metavar, action). train.py's parser, the resume rules, the keys
reports group by, the "not in the paper" notes and tools/reproduce.py's options are all built from these
fields (tests/test_config.py fails on a flag declared anywhere else).

`HermesConfig` holds what one training step computes (hermes.hermes_step and the comparators read it);
`Settings` adds everything around the step. `RECIPES` are the two ways to train: the paper's fine-tuning
settings and the from-scratch recipe (docs/gain-study.md).
"""
import argparse
import os
from dataclasses import dataclass, field, fields

MATCH, GIVEN, COMMAND = "match", "given", "command"
UNSET = object()
LABELS_ALL = "all"
COMMON, DATA, OPTIM, MODEL, METHOD, EXTRA, COMPARATORS, INIT, RUNNING = (
    "common options", "data (§4.1)", "optimisation (§4.1)", "model (§3.1–3.2)",
    "method: Hermes (Table 3 switches, eq. (15) weights, §3.4)",
    "not in the paper (docs/when-does-hermes-help.md; the defaults are the paper's objective)",
    "comparators (not Hermes)", "initialisation from files (offline stand-ins for --pretrained)", "running")
GROUPS = (COMMON, DATA, OPTIM, MODEL, METHOD, EXTRA, COMPARATORS, INIT, RUNNING)

# Smallest label budget of each dataset in the paper's Tables 1-2 (§4.1); demo: 40 of its 168 train images.
DEFAULT_LABELS = {"demo": 40, "busi": 72, "udiat": 20, "sztus": 60, "folder": 40}
DATASETS = tuple(DEFAULT_LABELS)
DEMO_IMAGE_SIZE, PAPER_IMAGE_SIZE = 96, 224    # the demo is CPU-sized; §4.1: "resized to 224×224"
DEMO_ITERS, PAPER_ITERS = 120, 3000


# The comparators of Tables 1-2 (`--method`; comparators/): segmentation methods train the
# classification branch as SupOnly's, classification methods the segmentation branch.
SEG_METHODS = {"cps": "CPS", "abd": "ABD", "admt": "AD-MT", "ssnet": "SS-Net", "dcnet": "DCNet",
               "diffrect": "DiffRect"}
CLS_METHODS = {"shrinkmatch": "ShrinkMatch", "interlude": "InterLUDE", "infomatch": "InfoMatch",
               "pefat": "PEFAT"}
METHODS = {**SEG_METHODS, **CLS_METHODS}


def image_size_for(dataset):
    """The one image-size rule: the demo at 96 px, every real dataset at the paper's 224 px."""
    return DEMO_IMAGE_SIZE if dataset == "demo" else PAPER_IMAGE_SIZE


def parse_labels(value):
    """--labels: a positive even budget (labels/2 per class), or "all" (every annotated training image)."""
    if str(value).strip().lower() == LABELS_ALL:
        return LABELS_ALL
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an even number of labeled images or {LABELS_ALL!r}, "
                                         f"got {value!r}") from None


def setting(default, help, *, group, paper=None, resume=MATCH, results=True, per_run=False, missing=UNSET,
            note=None, paper_value=UNSET, tag=None, comparator=None, **flag):
    return field(default=default, metadata=dict(
        help=help, group=group, paper=paper, resume=resume, results=results, per_run=per_run, missing=missing,
        note=note, paper_value=default if paper_value is UNSET else paper_value, tag=tag,
        comparator=comparator,
        flag=flag))


@dataclass
class HermesConfig:
    """Switches and weights of one training step (hermes.hermes_step; cps.cps_step and the comparators read
    their own fields here). Paper defaults: §4.1, §3.4 and supplementary §6."""
    method: str = setting("hermes", "hermes (the paper), or a comparator trained with the same networks and "
                          "data, its classification branch as SupOnly's: cps = cross pseudo supervision "
                          "(Chen et al. 2021; Table 1)", group=COMMON, paper="Table 1", missing="hermes",
                          choices=["hermes", *METHODS])
    dtcl: bool = setting(True, "dual-threshold contrastive learning and the unlabeled losses (all three of "
                         "--dtcl --ias --itcl off = SupOnly)", group=METHOD, paper="Table 3")
    ias: bool = setting(True, "inter-task attention and saliency", group=METHOD, paper="Table 3 (SM/ITA)")
    itcl: bool = setting(True, "inter-task consistency learning, eq. (14)", group=METHOD, paper="Table 3")
    task: str = setting("joint", "train both branches, or one (Table 3's SS / SC columns)", group=METHOD,
                        paper="Table 3", choices=["joint", "seg", "cls"])
    threshold: str = setting("dual", "pseudo-label selection: eq. (7), max p ≥ τ only, or keep all",
                             group=METHOD,
                             paper="eq. (7); Fig. 1, Fig. 6", choices=["dual", "confidence", "none"])
    lambda_seg: float = setting(0.5, "λ_seg of eq. (15)", group=METHOD, paper="§4.1: 0.5")
    lambda_cls: float = setting(1.0, "λ_cls of eq. (15)", group=METHOD, paper="§4.1: 1.0")
    alpha: float = setting(0.8, "α, weight of the pixel contrast in eq. (15)", group=METHOD,
                           paper="§4.1: 0.8")
    beta: float = setting(0.2, "β, weight of the image contrast in eq. (15)", group=METHOD, paper="§4.1: 0.2")
    gamma: float = setting(0.1, "γ, weight of the inter-task consistency in eq. (15)", group=METHOD,
                           paper="§4.1: 0.1")
    temperature: float = setting(0.07, "temperature of eqs. (11)–(12)", group=METHOD, paper="§3.4: 0.07")
    eta_max: float = setting(0.75, "η_max of eq. (16)", group=METHOD, paper="supp. §6: 0.75")
    eta_min: float = setting(0.25, "η_min of eq. (16)", group=METHOD, paper="supp. §6: 0.25")
    n_anchors: int = setting(256, "anchors per class and step, half hard, half easy", group=METHOD,
                             paper="§3.4 (n)")
    pixel_bank_size: int = setting(4096, "pixel memory bank entries per class", group=METHOD,
                                   paper="§3.4 (size not given)")
    image_bank_size: int = setting(256, "image memory bank entries per class", group=METHOD,
                                   paper="§3.4 (size not given)")
    lr_seg: float = setting(None, "initial lr of the segmentation branch (Adam), default --lr (README: from "
                            "scratch)", group=OPTIM, type=float, tag="lrseg")
    lr_cls: float = setting(None, "initial lr of the classification branch (SGD), default --lr (README: from "
                            "scratch)", group=OPTIM, type=float, tag="lrcls")
    burn_in: int = setting(0, "first N steps trained with SupOnly's losses (no teacher pass, no unlabeled term; "
                              "the IAS module stays on unless --ias-warmup), then the full objective; same total "
                              "steps (Unbiased Teacher's burn-in)", group=OPTIM, missing=0, tag="burnin")
    unlabeled_bn: str = setting(
        "shared", "shared: labeled + strong unlabeled images in one BatchNorm batch and the teacher pass "
        "updating the running statistics; separate: unlabeled passes use their own batch statistics and "
        "leave the running ones (used at evaluation) to the labeled images", group=EXTRA, note="{} BN",
        tag="bn",
        choices=["shared", "separate"])
    unsup_seg_loss: str = setting("dice", "L^u_seg: eq. (9)'s Dice over kept pixels (the paper), or pixel "
                                  "cross-entropy over kept pixels / all pixels (FixMatch's form), or their "
                                  "mean",
                                  group=EXTRA, note="L^u_seg {}", tag="useg",
                                  choices=["dice", "ce", "dice+ce"])
    unsup_weight: float = setting(1.0, "factor on L^u_seg and L^u_cls (the authors' code: 0.1)", group=EXTRA,
                                  note="unlabeled ×{:g}", tag="uw")
    unsup_weight_cls: float = setting(None, "factor on L^u_cls alone, default --unsup-weight "
                                      "(docs/classifier-study.md)", group=EXTRA, type=float, missing=None,
                                      note="L^u_cls ×{:g}", tag="uwc")
    teacher: str = setting("self", "who makes the pseudo-labels and the weak-view keys: self = the model's own "
                           "weak-view pass (the paper: no EMA teacher); ema = an exponential moving average "
                           "of the model's weights (mean teacher, docs/classifier-study.md)", group=EXTRA,
                           missing="self", note="{} teacher", tag="teacher", choices=["self", "ema"])
    teacher_decay: float = setting(0.99, "--teacher ema: teacher <- a teacher + (1 - a) model after every "
                                   "step, a = min(1 - 1/(t + 1), decay) at step t", group=EXTRA, missing=0.99,
                                   note="teacher EMA {:g}", tag="tdecay")
    contrast_warmup: int = setting(0, "steps before the contrastive terms count (the authors' code: 10 "
                                      "epochs)",
                                   group=EXTRA, note="contrast warm-up {}", tag="cwarm")
    ias_warmup: int = setting(0, "the IAS module (saliency into the segmentation branch, inter-task attention "
                              "into the classifier) is off for the first N steps and weighs in linearly over "
                              "the next N (docs/classifier-study.md); 0 = from the first step (the paper)",
                              group=EXTRA, missing=0, note="IAS warm-up {}", tag="iasw")
    pseudo_label_prior: str = setting(
        "labeled", "the malignant share at which the teacher decides each unlabeled image's class pseudo-label: "
        "labeled = the labeled set's (eq. (7) as in the paper); unlabeled = the unlabeled images' share, "
        "estimated by EM (Saerens et al. 2002) from the teacher's last 256 scores, added as log-odds to the "
        "malignant logit of the teacher before eq. (7) and of the student inside L^u_cls (logit adjustment; "
        "docs/classifier-study.md)", group=EXTRA, missing="labeled", note="pseudo-labels at the {} share",
        tag="plprior", choices=["labeled", "unlabeled"])
    gamma_ramp: int = setting(0, "γ·exp(-5(1 - it/R)²) until step R (the authors' code: R = 4000); 0 = "
                                 "constant γ",
                              group=EXTRA, note="γ ramp {}", tag="gramp")
    cps_weight: float = setting(1.5, "--method cps: λ of CPS (Chen et al.: 1.5 on PASCAL VOC, 6 on "
                                     "Cityscapes)",
                                group=COMPARATORS, paper="not Hermes", missing=1.5, note="λ_cps {:g}")

    # --method abd: comparators/abd.py
    abd_cons_weight: float = setting(
        0.1, 'ABD: weight of the cross-teaching Dice terms (baseline + ABD-R)', group=COMPARATORS,
        paper='not Hermes: ABD code train_ACDC_Cross_Teaching.py --consistency 0.1', comparator='abd')
    abd_rampup: float = setting(
        1.0, 'ABD: fraction of the run over which that weight ramps up (sigmoid ramp)', group=COMPARATORS,
        paper='not Hermes: ABD code: sigmoid_rampup(iter // 150, 200), i.e. over all 30,000 ' 'iterations',
        comparator='abd')
    abd_grid: int = setting(
        4, 'ABD: patches per image side (the image is cut into grid x grid patches)', group=COMPARATORS,
        paper='not Hermes: ABD code: patch_size 56 at 224 px, h_size = w_size = 4', comparator='abd')
    abd_top_k: int = setting(
        4, 'ABD-R: candidate patches (most confident) among which the KL rule picks', group=COMPARATORS,
        paper='not Hermes: ABD code --top_num 4', comparator='abd')
    abd_i_weight: float = setting(
        2.0, 'ABD-I: weight of the supervised loss on the displaced labeled images', group=COMPARATORS,
        paper='not Hermes: ABD code: model1_loss = loss1 + 2 * loss3 + ...', comparator='abd')
    abd_i_prob: float = setting(
        0.5, 'ABD-I: probability that a labeled image is displaced', group=COMPARATORS,
        paper='not Hermes: ABD code: random.random() < 0.5 per labeled image', comparator='abd')
    abd_i_stop: float = setting(
        0.6666666666666666, 'ABD-I: fraction of the run after which its loss is dropped', group=COMPARATORS,
        paper='not Hermes: ABD code: loss3 = loss4 = 0 once iter_num > 20000 of 30000', comparator='abd')
    # --method admt: comparators/admt.py
    admt_cons_weight: float = setting(
        2.0, 'AD-MT: weight of the unlabeled Dice term', group=COMPARATORS,
        paper='not Hermes: AD-MT cfgs/config_2d_aut.yml consistency: 2.0', comparator='admt')
    admt_rampup: float = setting(
        0.25, 'AD-MT: fraction of the run over which that weight ramps up (sigmoid ramp)', group=COMPARATORS,
        paper='not Hermes: AD-MT code: sigmoid_rampup(iter // 150, 50) = 7,500 of 30,000 iterations',
        comparator='admt')
    admt_threshold: float = setting(
        0.95, 'AD-MT: confidence threshold τ of the pseudo-labels', group=COMPARATORS,
        paper='not Hermes: config conf_threshold', comparator='admt')
    admt_ema_decay: float = setting(
        0.99, 'AD-MT: EMA decay of the active teacher', group=COMPARATORS,
        paper='not Hermes: config ema_decay', comparator='admt')
    admt_ema_copy: int = setting(
        50, 'AD-MT: the active teacher copies the student while it // 2 < this many steps', group=COMPARATORS,
        paper='not Hermes: AD-MT code update_ema_variables: α = 0 while global_step (= iter // 2) < '
        'consistency_rampup (50)', comparator='admt')
    admt_period: int = setting(
        50, 'AD-MT: the longest alternation period P in steps (each period ~ U{1..P})', group=COMPARATORS,
        paper='not Hermes: config alt_param_updating_period_iters 50, '
        'alt_flag_updating_period_random True', comparator='admt')
    admt_cutmix_prob: float = setting(
        1.0, 'AD-MT: probability of CutMix in a teacher-2 step', group=COMPARATORS,
        paper='not Hermes: config cutmix_prob 1.0', comparator='admt')
    admt_ensemble: str = setting(
        'mean', "AD-MT: teachers' ensemble, 'mean' (the code's arithmetic) or 'entropy' (per-teacher "
        'weights exp(-H_k))', group=COMPARATORS,
        paper='not Hermes: AD-MT code weights both teachers by exp(-(H_1 + H_2)), i.e. a mean',
        comparator='admt')
    # --method ssnet: comparators/ssnet.py
    ssnet_cons_weight: float = setting(
        0.1, 'SS-Net: weight w of the VAT and class-separation terms', group=COMPARATORS,
        paper='not Hermes: SS-Net train_ss_2d.py --consistency 0.1', comparator='ssnet')
    ssnet_rampup: float = setting(
        1.0, 'SS-Net: fraction of the run over which w ramps up (sigmoid ramp)', group=COMPARATORS,
        paper='not Hermes: SS-Net code: sigmoid_rampup(iter // 150, 200) = all 30,000 iterations',
        comparator='ssnet')
    ssnet_xi: float = setting(
        10.0, "SS-Net: VAT's probe step ξ", group=COMPARATORS,
        paper='not Hermes: SS-Net utils/losses.py VAT2d(xi=10.0)', comparator='ssnet')
    ssnet_epsilon: float = setting(
        6.0, "SS-Net: VAT's perturbation norm ε (per image)", group=COMPARATORS,
        paper='not Hermes: train_ss_2d.py --magnitude 6.0', comparator='ssnet')
    ssnet_contrast_weight: float = setting(
        0.1, 'SS-Net: factor on the class-separation terms inside w(...)', group=COMPARATORS,
        paper='not Hermes: train_ss_2d.py: consistency_weight * (loss_lds + 0.1 * '
        '(loss_contr_labeled + loss_contr_unlabeled))', comparator='ssnet')
    ssnet_memory: int = setting(
        32, 'SS-Net: prototypes kept per class', group=COMPARATORS,
        paper='not Hermes: FeatureMemory(elements_per_class=32)', comparator='ssnet')
    ssnet_dim: int = setting(
        32, 'SS-Net: dimension of the projected pixel features', group=COMPARATORS,
        paper='not Hermes: not fixed by the paper; ours', comparator='ssnet')
    # --method dcnet: comparators/dcnet.py
    dcnet_ce_weight: float = setting(
        0.3, 'DCNet: weight of the cross-entropy on the consistent (confident) part', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: loss = ... + 0.3 * loss_cer', comparator='dcnet')
    dcnet_cons_weight: float = setting(
        0.1, 'DCNet: w(t) = this · sigmoid ramp; MSE weight mse_scale·w, attention at_scale·(1 - w)',
        group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py --consistency 0.1', comparator='dcnet')
    dcnet_rampup: float = setting(
        1.0, 'DCNet: fraction of the run over which w ramps up (sigmoid ramp)', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: sigmoid_rampup(iter_num // 150, 200), i.e. all '
        '30,000 iterations', comparator='dcnet')
    dcnet_mse_scale: float = setting(
        1000.0, 'DCNet: factor on the MSE of the inconsistent part (times w)', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: consistency_weight * (1000 * loss_dc0)', comparator='dcnet')
    dcnet_at_scale: float = setting(
        1000.0, 'DCNet: factor on the attention-transfer term (times 1 - w)', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: (1 - consistency_weight) * (1000 * loss_at_kd)',
        comparator='dcnet')
    dcnet_temperature: float = setting(
        0.5, "DCNet: softmax temperature of the MSE's probabilities", group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: softmax(output / 0.5); train_dcnet_prostate.py uses ' '1',
        comparator='dcnet')
    dcnet_all_pixels: float = setting(
        0.95, "DCNet: mean max-probability (the lower decoder's) from which the CE covers all pixels",
        group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: if mean_max_values >= 0.95', comparator='dcnet')
    dcnet_thr_min: float = setting(
        0.25, 'DCNet: lower clip of the dynamic threshold', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: torch.clip(cur_threshold, 0.25, 0.95)', comparator='dcnet')
    dcnet_thr_max: float = setting(
        0.95, 'DCNet: upper clip of the dynamic threshold', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: torch.clip(cur_threshold, 0.25, 0.95)', comparator='dcnet')
    dcnet_decouple: str = setting(
        'code', "DCNet: 'code': masks per class channel as the code (the larger probability of each class "
        "is the MSE target; CE on channel-masked logits over all pixels); 'pixel': a pixel is "
        'consistent when both decoders predict the same class above t (CE there, summed over all '
        'pixels), elsewhere the more confident decoder is the MSE target on all channels', group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: mask_high = (output1_soft > t) & (output2_soft > t),'
        ' per channel', comparator='dcnet')
    dcnet_at_decoder: int = setting(
        2, "DCNet: the decoder whose features teach the encoder's attention (1 or 2)", group=COMPARATORS,
        paper='not Hermes: train_dcnet_acdc.py: criterion_att(encoder_features, decoder_features2); '
        'the prostate script uses 1', comparator='dcnet')
    dcnet_decoder2_up: str = setting(
        'transposed',
        "DCNet: decoder 2's upsampling, 'transposed' (learned 2x2 stride-2 transposed conv) or "
        "'bilinear' (as decoder 1)", group=COMPARATORS,
        paper='not Hermes: networks/unet.py MCNet2d_KD: decoder1 bilinear (up_type 1), decoder2 '
        'ConvTranspose2d (up_type 0)', comparator='dcnet')
    # --method diffrect: comparators/diffrect.py
    diffrect_cons_weight: float = setting(
        0.1, 'DiffRect: weight w of the unlabeled terms (segmentation network and rectifier)',
        group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py --consistency 0.1 (--ref_consistency_weight -1: the '
        'same w for the rectifier)', comparator='diffrect')
    diffrect_rampup: float = setting(
        1.0, 'DiffRect: fraction of the run over which w ramps up (sigmoid ramp)', group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py: sigmoid_rampup(iter_num // 150, 200), i.e. all 30,000 '
        'iterations', comparator='diffrect')
    diffrect_threshold: float = setting(
        0.8, "DiffRect: pseudo-label threshold on the min-max normalised probabilities "
        "((p_c - min p) / max p; a pixel with no class above it is labeled background)", group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py --conf_thresh 0.8', comparator='diffrect')
    diffrect_rect_start: float = setting(
        0.03333333333333333, 'DiffRect: fraction of the run after which the rectified pseudo-labels '
        'train the segmentation network', group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py --refine_start 1000 of 30,000 iterations',
        comparator='diffrect')
    diffrect_timesteps: int = setting(
        10, "DiffRect: diffusion steps T of the latent diffusion (cosine schedule)", group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py --ts 10 --ldm_beta_sch cosine', comparator='diffrect')
    diffrect_sample_steps: int = setting(
        2, 'DiffRect: DDIM steps when the rectifier samples a rectified latent', group=COMPARATORS,
        paper='not Hermes: train_diffrect_ACDC.py --ts_sample 2', comparator='diffrect')
    diffrect_width: int = setting(
        8, "DiffRect: channels of the rectifier's first level (x2 per level, 4 levels; the latent has 8x "
        "this many at 1/8 of the image side)", group=COMPARATORS,
        paper='not Hermes: ours, CPU-sized (networks/unet_de.py UNet_LDMV2: 16 channels, 5 levels, a 256-'
        'channel latent at 1/16)', comparator='diffrect')
    # --method shrinkmatch: comparators/shrinkmatch.py
    shrinkmatch_tau: float = setting(
        0.95, 'confidence threshold τ of L_u and of the shrunk space', group=COMPARATORS,
        paper='not Hermes: ShrinkMatch §3 / code --threshold 0.95', comparator='shrinkmatch')
    shrinkmatch_lambda_u: float = setting(
        1.0, 'weight of the FixMatch term L_u', group=COMPARATORS,
        paper='not Hermes: ShrinkMatch eq. (7) / code: 1', comparator='shrinkmatch')
    shrinkmatch_lambda_shrink: float = setting(
        1.0, 'weight of the shrunk-space term L_s', group=COMPARATORS,
        paper='not Hermes: ShrinkMatch eq. (7) / code: 1', comparator='shrinkmatch')
    shrinkmatch_ratio_momentum: float = setting(
        0.999, 'EMA momentum of the certain fraction (reweighting principle 2)', group=COMPARATORS,
        paper='not Hermes: ShrinkMatch eq. (6) / code: 0.999', comparator='shrinkmatch')
    # --method interlude: comparators/interlude.py
    interlude_tau: float = setting(
        0.95, 'confidence threshold of L_u', group=COMPARATORS,
        paper='not Hermes: InterLUDE code --threshold 0.95', comparator='interlude')
    interlude_T: float = setting(
        1.0, "temperature of the weak view's pseudo-label", group=COMPARATORS,
        paper='not Hermes: InterLUDE code launch scripts: 1.0', comparator='interlude')
    interlude_lambda_u: float = setting(
        1.0, 'weight of L_u', group=COMPARATORS,
        paper='not Hermes: InterLUDE code --lambda_u_max (CIFAR 1; TMED2 0.5)', comparator='interlude')
    interlude_lambda_delta: float = setting(
        1.0, 'weight of the delta-consistency loss L_δ', group=COMPARATORS,
        paper='not Hermes: InterLUDE code --lambda_relative_loss 1', comparator='interlude')
    interlude_alpha: float = setting(
        0.1, 'embedding-fusion strength α', group=COMPARATORS,
        paper='not Hermes: InterLUDE code --pn_strength 0.1', comparator='interlude')
    # --method infomatch: comparators/infomatch.py
    infomatch_lambda_u: float = setting(
        2.0, 'weight of the unlabeled likelihood terms L_u', group=COMPARATORS,
        paper='not Hermes: InfoMatch code: loss = Lx + 2 Lu', comparator='infomatch')
    infomatch_ema: float = setting(
        0.999, 'EMA momentum of the self-adaptive threshold', group=COMPARATORS,
        paper='not Hermes: InfoMatch code: 0.999', comparator='infomatch')
    infomatch_lambda_mi: float = setting(
        0.1, 'weight of the InfoNCE entropy estimate L_nce', group=COMPARATORS,
        paper='not Hermes: ours (code: 0.001 on an MSE form that is flat for 2 classes)',
        comparator='infomatch')
    infomatch_mi_temperature: float = setting(
        0.5, 'temperature T of the InfoNCE entropy estimate', group=COMPARATORS,
        paper='not Hermes: ours (not found)', comparator='infomatch')
    # --method pefat: comparators/pefat.py
    pefat_warmup: float = setting(
        0.1, 'fraction of the steps in the warm-up stage (labeled CE + InfoNCE)', group=COMPARATORS,
        paper='not Hermes: PEFAT code: 30 warm-up epochs; a fraction here (no epochs)', comparator='pefat')
    pefat_nce_temperature: float = setting(
        0.05, 'temperature of the warm-up InfoNCE', group=COMPARATORS,
        paper='not Hermes: PEFAT code contrastive_loss T=0.05', comparator='pefat')
    pefat_trust: float = setting(
        0.7, 'GMM posterior of the low-loss component above which an unlabeled image is trusted',
        group=COMPARATORS,
        paper='not Hermes: PEFAT code: prob_comb > 0.70', comparator='pefat')
    pefat_queue: int = setting(
        256, 'labeled per-image losses kept for the GMM fit', group=COMPARATORS,
        paper='not Hermes: ours (the code: the labeled set)', comparator='pefat')
    pefat_lambda_fat_t: float = setting(
        0.3, "weight of FAT's CE on the trustworthy set", group=COMPARATORS,
        paper='not Hermes: PEFAT code: 0.3', comparator='pefat')
    pefat_lambda_fat_u: float = setting(
        0.1, "weight of FAT's KL on the uncertain set", group=COMPARATORS,
        paper='not Hermes: PEFAT code: 0.1', comparator='pefat')
    pefat_xi: float = setting(
        0.001, 'VAT step ξ of the power iteration', group=COMPARATORS,
        paper='not Hermes: PEFAT code (uncertain branch): 1e-3', comparator='pefat')
    pefat_eps: float = setting(
        1.0, 'norm ε of the adversarial feature perturbation', group=COMPARATORS,
        paper='not Hermes: PEFAT code: unit-norm gradient', comparator='pefat')
    pefat_power_iters: int = setting(
        8, 'power iterations K', group=COMPARATORS,
        paper='not Hermes: PEFAT code --K 8', comparator='pefat')
    def __post_init__(self):
        for f in fields(HermesConfig):
            allowed = f.metadata["flag"].get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"HermesConfig.{f.name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, f.name)!r}")
        if self.burn_in < 0:
            raise ValueError(f"HermesConfig.burn_in must be >= 0 steps, got {self.burn_in}")
        if self.ias_warmup < 0:
            raise ValueError(f"HermesConfig.ias_warmup must be >= 0 steps, got {self.ias_warmup}")


@dataclass
class Settings(HermesConfig):
    """Every setting of train.py: the step's (HermesConfig) and everything around it."""
    # common options (the method is HermesConfig's)
    recipe: str = setting("auto", "how to train: paper = §4.1's fine-tuning settings; scratch = the "
                                  "from-scratch "
                          "recipe (RECIPES: per-branch lrs, burn-in a quarter of the steps, separate "
                          "BatchNorm for unlabeled passes, residual inter-task attention, no L^u_cls, the "
                          "unlabeled images' class prior, the IAS module warmed up after the burn-in; "
                          "docs/gain-study.md, "
                          "docs/classifier-study.md); auto = scratch when both "
                          "encoders start from random weights (no --pretrained, no --init*), else paper. "
                          "Options given on the command line win over the recipe's", group=COMMON,
                          missing="paper", choices=["auto", "paper", "scratch"])
    dataset: str = setting("demo", "dataset; demo is generated and needs no --data-root; folder is your own "
                           "images", group=COMMON, paper="§4.1", metavar="{" + ",".join(DATASETS) + "}")
    data_root: str = setting(None, "folder of the dataset as its publisher ships it (README: Datasets)",
                             group=COMMON, paper="", resume=GIVEN, results=False)
    labels: object = setting(None, "labeled images, half per class (paper: BUSI 72/144/216, UDIAT 20/40/60, "
                             "SZ-TUS 60/120; default: the smallest budget of the dataset, demo 40); 'all': "
                             "every annotated training image, with the real unlabeled images as the "
                             "unlabeled set (docs/your-own-data.md)", group=COMMON, paper="Tables 1–2",
                             type=parse_labels)
    seed: int = setting(0, "seed of the split, initialisation, augmentation and sampling", group=COMMON,
                        paper="seeds 0, 1, 2", per_run=True)
    iters: int = setting(None, f"training iterations (default {PAPER_ITERS}; demo: {DEMO_ITERS}, CPU-sized)",
                         group=COMMON, paper=f"§4.1: {PAPER_ITERS}", type=int)
    image_size: int = setting(None, f"side S of the S×S input (default {PAPER_IMAGE_SIZE}; demo: "
                              f"{DEMO_IMAGE_SIZE})", group=COMMON, paper=f"§4.1: {PAPER_IMAGE_SIZE}",
                              type=int)
    batch_size: int = setting(8, "labeled images per step, and as many unlabeled", group=COMMON,
                              paper="§4.1: 8 + 8")
    out: str = setting(None, "run folder (default runs/DATASET-LABELS-seedSEED); refused if non-empty unless "
                       "--resume", group=COMMON, paper="", resume=GIVEN, results=False)
    resume: bool = setting(False, "continue the run in --out from its checkpoint.pt", group=COMMON, paper="",
                           resume=GIVEN, results=False, action="store_true")
    device: str = setting("auto", "auto = cuda when available", group=COMMON, paper="", resume=COMMAND,
                          results=False, choices=["auto", "cpu", "cuda"])
    # data
    unlabeled_dir: list = setting(None, "add every image under DIR (recursively, no labels or masks) to the "
                                  "unlabeled pool; repeatable", group=DATA, missing=None, action="append",
                                  metavar="DIR")
    demo_size: int = setting(240, "number of generated demo images (demo only)", group=DATA, paper="")
    split: str = setting(None, "reuse a split.json instead of drawing one from --seed", group=DATA,
                         paper="§4.1 (7:3, seeded)", per_run=True)
    # model
    seg_encoder: str = setting("resnet34", "ResNet encoder of the U-Net", group=MODEL,
                               paper="§4.1: 'pre-trained U-Net'", choices=["resnet34", "resnet18"])
    pretrained: bool = setting(None, "ImageNet weights for both encoders (default on for real data, off for "
                               "demo)", group=MODEL, paper="§4.1: pretrained",
                               action=argparse.BooleanOptionalAction)
    contrast_level: int = setting(3, "seg-encoder level of the pixel contrast (Conv3 = layer3, best)",
                                  group=MODEL, paper="Table 5: Conv3", choices=[1, 2, 3, 4])
    cross_grad: bool = setting(False, "let features crossing branches carry gradient (default: detached)",
                               group=MODEL, action="store_true")
    ita_form: str = setting("paper", "inter-task attention output: eq. (5) (paper) or x_cls + eq. (5) "
                            "(residual, not in the paper)", group=MODEL, paper="eq. (5)", note="{} ITA",
                            choices=["paper", "residual"])
    class_prior: str = setting(
        "labeled", "the malignant share that the evaluation's benign/malignant decision assumes: labeled = the "
        "labeled set's (half, by the split), as the classifier was trained; unlabeled = the training images' "
        "share estimated from the classifier's outputs on the unlabeled images (EM of Saerens et al. 2002), the "
        "decision moved by log-odds(unlabeled) - log-odds(labeled). AUC and Dice do not change; runs with no "
        "unlabeled set (SupOnly) keep labeled unless given (docs/classifier-study.md)", group=EXTRA,
        missing="labeled", note="class prior: {}", tag="prior", choices=["labeled", "unlabeled"])
    # optimisation (lr_seg, lr_cls, burn_in: HermesConfig's, so that a method is one object)
    lr: float = setting(1e-4, "initial lr of both branches", group=OPTIM, paper="§4.1 and Table 4: 1e-4",
                        note="lr {:g}")
    poly_power: float = setting(0.9, "poly decay lr·(1 - it/total)^power", group=OPTIM, paper="§4.1: 0.9")
    momentum: float = setting(0.9, "SGD momentum of the classification branch", group=OPTIM,
                              paper="§4.1: 0.9")
    weight_decay: float = setting(1e-4, "SGD weight decay of the classification branch", group=OPTIM,
                                  paper="§4.1: 1e-4")
    # initialisation from files
    init: str = setting(None, "start both branches from an earlier run's checkpoint.pt / best.pt (strict "
                        "shapes)", group=INIT, metavar="CKPT",
                        note=lambda v: f"init {os.path.basename(os.path.dirname(os.path.abspath(v)))}")
    init_heads: bool = setting(False, "with --init: also the projection heads (pixel, image, consistency)",
                               group=INIT, action="store_true")
    init_seg_encoder: str = setting(None, "torchvision-format ResNet state_dict for the U-Net encoder (e.g. "
                                    "the ImageNet resnet34 file)", group=INIT, metavar="FILE")
    init_cls_encoder: str = setting(None, "torchvision-format ResNet-18 state_dict for the classification "
                                    "branch (fc is dropped)", group=INIT, metavar="FILE")
    # running
    amp: bool = setting(None, "bf16 autocast (losses, thresholds, banks and BatchNorm statistics stay fp32). "
                        "Default: on for a CPU with AMX (bf16 matrix units), off elsewhere and on CUDA; "
                        "--no-amp forces fp32 (README: Speed)", group=RUNNING, paper="",
                        action=argparse.BooleanOptionalAction)
    channels_last: bool = setting(None, "model and image batches in channels-last memory format. Default: on "
                                  "with CUDA or bf16, off for fp32 on a CPU (README: Speed)", group=RUNNING,
                                  paper="", missing=False, action=argparse.BooleanOptionalAction)
    augment: str = setting("device", "device: whole batches augmented on the training device; cpu: "
                           "torchvision per image in --workers processes (runs made before the flag existed)",
                           group=RUNNING, paper="§4.1 (weak/strong views)", missing="cpu",
                           choices=["device", "cpu"])
    workers: int = setting(None, "--augment cpu: processes preparing batches ahead (default 0 on CPU, 4 on "
                           "CUDA; results do not depend on it)", group=RUNNING, paper="", resume=COMMAND,
                           results=False, type=int)
    eval_every: int = setting(None, "evaluate and checkpoint every N steps (default iters/10)", group=RUNNING,
                              paper="", resume=GIVEN, results=False, type=int)
    ckpt_every: int = setting(None, "write checkpoint.pt every N steps (default: --eval-every)",
                              group=RUNNING,
                              paper="", resume=GIVEN, results=False, type=int)
    ckpt_minutes: float = setting(10.0, "also write checkpoint.pt every N minutes of wall time (0 = only "
                                  "--ckpt-every)", group=RUNNING, paper="", resume=COMMAND, results=False)
    log_every: int = setting(10, "write a log.csv row every N steps", group=RUNNING, paper="", resume=GIVEN,
                             results=False)
    progress_seconds: float = setting(60.0, "when the output is no terminal (nohup, Slurm): a progress line "
                                      "(step, loss, s/step, ETA) every N seconds", group=RUNNING, paper="",
                                      resume=COMMAND, results=False)
    keep_optimizer: bool = setting(False, "keep the resumable checkpoint.pt (optimizer and RNG states) at "
                                          "the "
                                   "end; default: a lean final one", group=RUNNING, paper="", resume=COMMAND,
                                   results=False, action="store_true")
    stop_after: int = setting(None, argparse.SUPPRESS, group=RUNNING, paper="", resume=COMMAND, results=False,
                              type=int)   # simulate a kill after N steps (tests)
    debug: bool = setting(False, "show the Python traceback of an error (or HERMES_DEBUG=1)", group=RUNNING,
                          paper="", resume=GIVEN, results=False, action="store_true")


SETTINGS = {f.name: f for f in fields(Settings)}

# The two ways to train (README: Training). paper: §4.1 as written (every setting's own default). scratch: the
# from-scratch recipe of docs/gain-study.md (BUSI-72, 64 px, 2,000 steps, 3 seeds: +6.3 Dice for SupOnly,
# +11.7 for Hermes over the paper's settings; with separate BatchNorm Hermes +1.8 over SupOnly with the
# recipe) and docs/classifier-study.md (residual inter-task attention: with eq. (5)'s product a spatial gate
# closed at 0 cut the classifier off its own features in 1 of 3 seeds, which then ended predicting one class;
# L^u_cls weighted 0: from random weights the kept image pseudo-labels are right ~3/4 of the time, and
# without the term Hermes classified at least as well as with it: 3 CPU seeds, final; 8 GPU seeds, step 1,750);
# class_prior "unlabeled": the labeled set is half malignant by the split while the data are not (BUSI ~1/3),
# so a classifier trained on it calls too many images malignant; the unlabeled images' estimated share moves
# the decision (docs/classifier-study.md); SupOnly has no unlabeled set and keeps "labeled"; ias_warmup =
# the burn-in: the IAS module fed by two branches that have not learned yet held both back at the burn-in's end,
# and with the warm-up Hermes' classifier follows SupOnly's (12 CPU seeds: docs/classifier-study.md).
# "quarter" = a quarter of --iters, "burn_in" = the run's burn-in. Applied to every method alike (SupOnly,
# CPS, comparators, Hermes; only Hermes has inter-task attention and the IAS module).
RECIPES = {"paper": {},
           "scratch": {"lr_seg": 1e-3, "lr_cls": 1e-2, "burn_in": "quarter", "unlabeled_bn": "separate",
                       "ita_form": "residual", "unsup_weight_cls": 0.0, "class_prior": "unlabeled",
                       "ias_warmup": "burn_in"}}


def _getter(cfg):
    """get(key, default) on a config dict or an argparse namespace."""
    return cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)


def uses_unlabeled(cfg):
    """Whether a run (config dict or namespace) trains on its unlabeled images: a comparator, or Hermes with
    DTCL or ITCL on. SupOnly (and "IAS only") does not, so it has no unlabeled prior to estimate."""
    get = _getter(cfg)
    return get("method", "hermes") != "hermes" or bool(get("dtcl", True)) or (
        bool(get("itcl", True)) and get("task", "joint") == "joint")


def has_ias(cfg):
    """Whether a run (config dict or namespace) is Hermes with the IAS module on."""
    get = _getter(cfg)
    return get("method", "hermes") == "hermes" and bool(get("ias", True))


# Recipe settings that only apply to some runs: setting -> whether run `cfg` has what it acts on.
RECIPE_APPLIES = {"class_prior": uses_unlabeled, "ias_warmup": has_ias}


def recipe_settings(recipe, cfg):
    """RECIPES[recipe] as it applies to run `cfg` (RECIPE_APPLIES: no class_prior where the run has no
    unlabeled set, no ias_warmup where it has no IAS module)."""
    return {k: v for k, v in RECIPES.get(recipe, {}).items() if RECIPE_APPLIES.get(k, lambda c: True)(cfg)}


def recipe_value(value, cfg):
    """A recipe value as run `cfg` (dict or namespace, burn_in already set) takes it: "quarter" -> iters // 4,
    "burn_in" -> its burn-in, anything else as is."""
    get = _getter(cfg)
    if value == "quarter":
        return (get("iters") or 0) // 4
    return get("burn_in", 0) if value == "burn_in" else value


def resolve_recipe(args, given):
    """args.recipe "auto" -> "scratch" or "paper" (by where the encoders start), then the recipe's settings on
    every one not given on the command line. -> the sentence that says which recipe and why."""
    from_files = [n for n in ("init", "init_seg_encoder", "init_cls_encoder") if getattr(args, n, None)]
    if args.recipe == "auto":
        args.recipe = "paper" if args.pretrained or from_files else "scratch"
        why = ("the encoders start from "
               + ("ImageNet weights" if args.pretrained else "--" + from_files[0].replace(
                   "_", "-")) if args.recipe == "paper" else "both encoders start from random weights")
    else:
        why = "--recipe " + args.recipe
    recipe = recipe_settings(args.recipe, args)
    for name, value in recipe.items():
        if name not in given:
            setattr(args, name, recipe_value(value, args))   # in RECIPES' order: burn_in first
    what = ", ".join(f"{flag(n)} {getattr(args, n)}" for n in recipe) or "§4.1's settings"
    return f"recipe {args.recipe} ({why}): {what}"
METHOD_KEYS = tuple(f.name for f in fields(HermesConfig))


def comparator_settings(method):
    """(name, default, help, source) of each setting of comparator `method`, as its module reads them."""
    return tuple((n, f.default, f.metadata["help"], f.metadata["paper"].removeprefix("not Hermes: "))
                 for n, f in SETTINGS.items() if f.metadata["comparator"] == method)


def meta(name, key):
    return SETTINGS[name].metadata[key]


def flag(name):
    return "--" + name.replace("_", "-")


def defaults():
    """{name: default} of every setting (dataset-dependent ones None until `resolve_defaults`)."""
    return {name: f.default for name, f in SETTINGS.items()}


# ---------------------------------------------------------------------------------------- derived lists
# Recorded in config.json beside the settings; never a reason to call two runs different.
RECORDED = ("git_commit",)
# Keys a resumed run may take from its command line (GIVEN: when given; COMMAND: always).
RESUME_OVERRIDABLE = frozenset(n for n, f in SETTINGS.items() if f.metadata["resume"] != MATCH)
RESUME_FROM_COMMAND = tuple(n for n, f in SETTINGS.items() if f.metadata["resume"] == COMMAND)
# Values a run made before a setting existed resumes with.
RESUME_MISSING = {n: f.metadata["missing"] for n, f in SETTINGS.items() if f.metadata["missing"] is not UNSET}
# Keys that never change what a run computes; with PER_RUN, those a table cell's runs may differ in.
NEUTRAL_KEYS = frozenset(n for n, f in SETTINGS.items() if not f.metadata["results"]) | set(RECORDED)
PER_RUN = frozenset(n for n, f in SETTINGS.items() if f.metadata["per_run"])
# Settings that change a run and are noted in its method name when they differ from the paper's value.
NOT_IN_PAPER = tuple((n, f.metadata["paper_value"], f.metadata["note"]) for n, f in SETTINGS.items()
                     if f.metadata["note"] is not None)
# Settings a tools/reproduce.py row may add (not in the paper): name -> (default, type, tag in run names).
RECIPE_OPTIONS = {n: (f.default, f.metadata["flag"].get("type") or type(f.default), f.metadata["tag"])
                  for n, f in SETTINGS.items() if f.metadata["tag"] is not None}


def note_of(name, value):
    """The method-name note of `value` of setting `name` ("separate BN")."""
    note = meta(name, "note")
    return note(value) if callable(note) else note.format(value)


# -------------------------------------------------------------------------------------------- the parser
def build_parser(description=None):
    """train.py's parser, grouped as GROUPS (common options first), every line from a field's metadata."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="python train.py [--dataset D --data-root PATH --labels N] [options]")
    sections = {g: p.add_argument_group(g) for g in GROUPS}
    for name, f in SETTINGS.items():
        m, kw = f.metadata, dict(f.metadata["flag"])
        helptext = m["help"]
        if helptext is not argparse.SUPPRESS and m["paper"] != "":
            helptext += f" (paper: {m['paper']})" if m["paper"] else " (not in the paper)"
        if isinstance(f.default, bool) and "action" not in kw:
            kw["action"] = argparse.BooleanOptionalAction
        elif "action" not in kw and "type" not in kw and f.default is not None:
            kw["type"] = type(f.default)
        sections[m["group"]].add_argument(flag(name), default=f.default, help=helptext, **kw)
    return p
