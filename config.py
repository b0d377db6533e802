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
            note=None, paper_value=UNSET, tag=None, **flag):
    return field(default=default, metadata=dict(
        help=help, group=group, paper=paper, resume=resume, results=results, per_run=per_run, missing=missing,
        note=note, paper_value=default if paper_value is UNSET else paper_value, tag=tag, flag=flag))


@dataclass
class HermesConfig:
    """Switches and weights of one training step (hermes.hermes_step; cps.cps_step and the comparators read
    their own fields here). Paper defaults: §4.1, §3.4 and supplementary §6."""
    method: str = setting("hermes", "hermes (the paper), or a comparator trained with the same networks and "
                          "data, its classification branch as SupOnly's: cps = cross pseudo supervision (Chen "
                          "et al. 2021; Table 1)", group=COMMON, paper="Table 1", missing="hermes",
                          choices=["hermes", "cps"])
    dtcl: bool = setting(True, "dual-threshold contrastive learning and the unlabeled losses (all three of "
                         "--dtcl --ias --itcl off = SupOnly)", group=METHOD, paper="Table 3")
    ias: bool = setting(True, "inter-task attention and saliency", group=METHOD, paper="Table 3 (SM/ITA)")
    itcl: bool = setting(True, "inter-task consistency learning, eq. (14)", group=METHOD, paper="Table 3")
    task: str = setting("joint", "train both branches, or one (Table 3's SS / SC columns)", group=METHOD,
                        paper="Table 3", choices=["joint", "seg", "cls"])
    threshold: str = setting("dual", "pseudo-label selection: eq. (7), max p ≥ τ only, or keep all", group=METHOD,
                             paper="eq. (7); Fig. 1, Fig. 6", choices=["dual", "confidence", "none"])
    lambda_seg: float = setting(0.5, "λ_seg of eq. (15)", group=METHOD, paper="§4.1: 0.5")
    lambda_cls: float = setting(1.0, "λ_cls of eq. (15)", group=METHOD, paper="§4.1: 1.0")
    alpha: float = setting(0.8, "α, weight of the pixel contrast in eq. (15)", group=METHOD, paper="§4.1: 0.8")
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
    burn_in: int = setting(0, "first N steps trained as SupOnly (no teacher pass, no unlabeled term), then the "
                           "full objective; same total steps (Unbiased Teacher's burn-in)", group=OPTIM,
                           missing=0, tag="burnin")
    unlabeled_bn: str = setting(
        "shared", "shared: labeled + strong unlabeled images in one BatchNorm batch and the teacher pass "
        "updating the running statistics; separate: unlabeled passes use their own batch statistics and leave "
        "the running ones (used at evaluation) to the labeled images", group=EXTRA, note="{} BN", tag="bn",
        choices=["shared", "separate"])
    unsup_seg_loss: str = setting("dice", "L^u_seg: eq. (9)'s Dice over kept pixels (the paper), or pixel "
                                  "cross-entropy over kept pixels / all pixels (FixMatch's form), or their mean",
                                  group=EXTRA, note="L^u_seg {}", tag="useg", choices=["dice", "ce", "dice+ce"])
    unsup_weight: float = setting(1.0, "factor on L^u_seg and L^u_cls (the authors' code: 0.1)", group=EXTRA,
                                  note="unlabeled ×{:g}", tag="uw")
    contrast_warmup: int = setting(0, "steps before the contrastive terms count (the authors' code: 10 epochs)",
                                   group=EXTRA, note="contrast warm-up {}", tag="cwarm")
    gamma_ramp: int = setting(0, "γ·exp(-5(1 - it/R)²) until step R (the authors' code: R = 4000); 0 = constant γ",
                              group=EXTRA, note="γ ramp {}", tag="gramp")
    cps_weight: float = setting(1.5, "--method cps: λ of CPS (Chen et al.: 1.5 on PASCAL VOC, 6 on Cityscapes)",
                                group=COMPARATORS, paper="not Hermes", missing=1.5, note="λ_cps {:g}")

    def __post_init__(self):
        for f in fields(HermesConfig):
            allowed = f.metadata["flag"].get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"HermesConfig.{f.name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, f.name)!r}")
        if self.burn_in < 0:
            raise ValueError(f"HermesConfig.burn_in must be >= 0 steps, got {self.burn_in}")


@dataclass
class Settings(HermesConfig):
    """Every setting of train.py: the step's (HermesConfig) and everything around it."""
    # common options (the method is HermesConfig's)
    dataset: str = setting("demo", "dataset; demo is generated and needs no --data-root; folder is your own "
                           "images", group=COMMON, paper="§4.1", metavar="{" + ",".join(DATASETS) + "}")
    data_root: str = setting(None, "folder of the dataset as its publisher ships it (README: Datasets)",
                             group=COMMON, paper="", resume=GIVEN, results=False)
    labels: object = setting(None, "labeled images, half per class (paper: BUSI 72/144/216, UDIAT 20/40/60, "
                             "SZ-TUS 60/120; default: the smallest budget of the dataset, demo 40); 'all': every "
                             "annotated training image, with the real unlabeled images as the unlabeled set "
                             "(docs/your-own-data.md)", group=COMMON, paper="Tables 1–2", type=parse_labels)
    seed: int = setting(0, "seed of the split, initialisation, augmentation and sampling", group=COMMON,
                        paper="seeds 0, 1, 2", per_run=True)
    iters: int = setting(None, f"training iterations (default {PAPER_ITERS}; demo: {DEMO_ITERS}, CPU-sized)",
                         group=COMMON, paper=f"§4.1: {PAPER_ITERS}", type=int)
    image_size: int = setting(None, f"side S of the S×S input (default {PAPER_IMAGE_SIZE}; demo: "
                              f"{DEMO_IMAGE_SIZE})", group=COMMON, paper=f"§4.1: {PAPER_IMAGE_SIZE}", type=int)
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
                               "demo)", group=MODEL, paper="§4.1: pretrained", action=argparse.BooleanOptionalAction)
    contrast_level: int = setting(3, "seg-encoder level of the pixel contrast (Conv3 = layer3, best)",
                                  group=MODEL, paper="Table 5: Conv3", choices=[1, 2, 3, 4])
    cross_grad: bool = setting(False, "let features crossing branches carry gradient (default: detached)",
                               group=MODEL, action="store_true")
    ita_form: str = setting("paper", "inter-task attention output: eq. (5) (paper) or x_cls + eq. (5) "
                            "(residual, not in the paper)", group=MODEL, paper="eq. (5)", note="{} ITA",
                            choices=["paper", "residual"])
    # optimisation (lr_seg, lr_cls, burn_in: HermesConfig's, so that a method is one object)
    lr: float = setting(1e-4, "initial lr of both branches", group=OPTIM, paper="§4.1 and Table 4: 1e-4",
                        note="lr {:g}")
    poly_power: float = setting(0.9, "poly decay lr·(1 - it/total)^power", group=OPTIM, paper="§4.1: 0.9")
    momentum: float = setting(0.9, "SGD momentum of the classification branch", group=OPTIM, paper="§4.1: 0.9")
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
                        "Default: on for a CPU with AMX (bf16 matrix units), off elsewhere and on CUDA; --no-amp "
                        "forces fp32 (README: Speed)", group=RUNNING, paper="", action=argparse.BooleanOptionalAction)
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
    ckpt_every: int = setting(None, "write checkpoint.pt every N steps (default: --eval-every)", group=RUNNING,
                              paper="", resume=GIVEN, results=False, type=int)
    ckpt_minutes: float = setting(10.0, "also write checkpoint.pt every N minutes of wall time (0 = only "
                                  "--ckpt-every)", group=RUNNING, paper="", resume=COMMAND, results=False)
    log_every: int = setting(10, "write a log.csv row every N steps", group=RUNNING, paper="", resume=GIVEN,
                             results=False)
    progress_seconds: float = setting(60.0, "when the output is no terminal (nohup, Slurm): a progress line "
                                      "(step, loss, s/step, ETA) every N seconds", group=RUNNING, paper="",
                                      resume=COMMAND, results=False)
    keep_optimizer: bool = setting(False, "keep the resumable checkpoint.pt (optimizer and RNG states) at the "
                                   "end; default: a lean final one", group=RUNNING, paper="", resume=COMMAND,
                                   results=False, action="store_true")
    stop_after: int = setting(None, argparse.SUPPRESS, group=RUNNING, paper="", resume=COMMAND, results=False,
                              type=int)   # simulate a kill after N steps (tests)
    debug: bool = setting(False, "show the Python traceback of an error (or HERMES_DEBUG=1)", group=RUNNING,
                          paper="", resume=GIVEN, results=False, action="store_true")


SETTINGS = {f.name: f for f in fields(Settings)}
METHOD_KEYS = tuple(f.name for f in fields(HermesConfig))


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
