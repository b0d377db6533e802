"""Speed and memory of one training step: SupOnly, the floor, full Hermes, and Hermes with each component off.

    python -m tools.bench                              # CPU, 224 px, 8 labeled + 8 unlabeled (the paper's batch)
    python -m tools.bench --sizes 64 96 --threads 1 2 --precisions fp32 bf16 bf16+cl fp32+cl --pieces
    python -m tools.bench --device cuda --precisions fp32 bf16  # CUDA, fp32 and bf16 autocast side by side
    python -m tools.bench --dataset busi --data-root ../shared/data/BUSI/Dataset_BUSI_with_GT --no-pretrained
    python -m tools.bench --device cuda --concurrent 2 4 8 # N training processes side by side on one GPU

Every variant x precision x thread count of one image size runs in one process, interleaved step by step
(round r runs step r of each in turn, so a change in the machine's load hits them all alike), on the same batches;
variants of one memory format share the networks and optimizers (weights do not change the cost of a step).
A step is what train.py does per iteration (`train.train_step`: `hermes_step`, eq. (15), one backward, the two
optimizer steps). "Floor" is SupOnly with Hermes' network passes: the 2B labeled + strong images forward and
backward in one batch and the B weak views forward without gradient, supervised losses only, no saliency: what the
method cannot avoid; "Floor + SM/ITA" adds the saliency maps (eq. (6)) of all 3B images and inter-task attention.
Reported: median seconds per step over --steps after --warmup, the process's CPU seconds per step (user +
system, steadier than wall time on a shared machine), images per second (labeled + unlabeled), the
step's peak memory above its start (RSS sampled every 5 ms on CPU, torch.cuda.max_memory_allocated on CUDA), and
ratios to SupOnly and to the floor. The memory banks start full (fill_banks), as in a long run. --pieces: CPU time
per step inside the full Hermes step of saliency maps, the teacher pass, the two contrastive terms, bank writes,
backward and optimizer steps. Also: time to load and cache the dataset, and the data pipeline's time per step
as a share of the Hermes step, for train.py's default (whole batches augmented on the device,
augment.DeviceBatches) and for the per-image torchvision path (--augment cpu).

--concurrent N ...: instead, N processes (and 1, the baseline) each run train.py's steps with on-device batches,
timed over the same window: s/step per run, aggregate steps/s and images/s, throughput against one run.
"""
import argparse
import copy
import os
import statistics
import sys
import threading
import time

import torch

if __package__ in (None, ""):  # run by path (python tools/NAME.py): the project's modules are one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import augment
import cli
import data
import hermes
import losses
import models
import runner
import train
from models import HermesNet

TRAIN_DEFAULTS = vars(train.build_parser().parse_args([]))  # lr, momentum, weight decay as train.py uses them
FLOOR = "Floor"   # SupOnly through Hermes' passes (floor_step)
FLOOR_SM = "Floor + SM/ITA"   # the same with the saliency maps and inter-task attention of every pass
VARIANTS = {
    "SupOnly": dict(dtcl=False, ias=False, itcl=False),
    FLOOR: dict(dtcl=False, ias=False, itcl=False),
    FLOOR_SM: dict(dtcl=False, ias=True, itcl=False),
    "Hermes": dict(),
    "Hermes w/o DTCL": dict(dtcl=False),
    "Hermes w/o SM/ITA": dict(ias=False),
    "Hermes w/o ITCL": dict(itcl=False),
}
PRECISIONS = {"fp32": (False, False), "bf16": (True, False), "fp32+cl": (False, True), "bf16+cl": (True, True)}
# (bf16 autocast, channels-last model and batches)


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled from /proc every 5 ms."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _rss(self):
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: fall back to the process-wide high-water mark
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fill_banks(banks, seed=0):
    """Both memory banks filled with random unit vectors, as they are after the first few dozen steps of a run:
    the contrastive terms then cost what they cost in a long run (fresh banks make the first steps cheaper)."""
    g = torch.Generator().manual_seed(seed)
    for bank in (banks.pixel, banks.image):
        n, dev = bank.num_classes * bank.size, bank.feats.device
        feats = torch.nn.functional.normalize(torch.randn(n, bank.dim, generator=g), dim=1)
        bank.push(feats.to(dev), torch.arange(bank.num_classes).repeat_interleave(bank.size).to(dev))
    return banks


def floor_step(model, opts, batch_l, batch_u, amp, ias=False):
    """The floor: SupOnly through Hermes' network passes. The B weak views forward without gradient (the teacher's
    pass), the B labeled + B strong images forward and backward in one batch (the student's), supervised losses on
    all 2B (the unlabeled images' ground truth stands in for pseudo-labels), both optimizers; no saliency, or
    (ias) the saliency maps (eq. (6)) of all 3B images and inter-task attention, as Hermes computes them."""
    x, y, z = batch_l
    x_w, x_s, y_u, z_u = batch_u
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            model(x_w, ias=ias)                                                    # teacher pass
        out = model(torch.cat([x, x_s]), ias=ias)                                  # student pass, 2B images
        loss = (losses.seg_supervised_loss(out["seg_logits"], torch.cat([y, y_u]))
                + losses.cls_supervised_loss(out["cls_logits"], torch.cat([z, z_u])))
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts.values():
        o.step()
    return loss


class Pieces:
    """Time per step spent inside pieces of the Hermes step, by wrapping their functions while `on` (CPU: the
    process's CPU seconds; CUDA: wall seconds between synchronisations). Pieces nest: the teacher pass holds the
    weak views' saliency, the contrastive terms hold their bank writes."""

    def __init__(self, device, opts):
        self.device, self.on, self.t, self._undo = device, False, {}, []
        self.wrap(models, "saliency", "saliency maps (eq. (6)), all 3B images: cls forward + input gradient")
        self.wrap(hermes, "_teacher", "teacher pass (B weak views, no gradient; incl. their saliency)")
        self.wrap(hermes, "_pixel_contrast", "pixel contrast eq. (11) forward (anchors, loss, bank write)")
        self.wrap(hermes, "_image_contrast", "image contrast eqs. (12)–(13) forward (loss, bank write)")
        self.wrap(hermes.MemoryBank, "push", "memory-bank writes (both banks)")
        self.wrap(torch.autograd, "backward", "backward (whole step)")
        for o in opts.values():
            pre = o.register_step_pre_hook(lambda *a: self._start("optimizer steps (Adam + SGD)"))
            post = o.register_step_post_hook(lambda *a: self._stop("optimizer steps (Adam + SGD)"))
            self._undo += [pre.remove, post.remove]
        self._open = {}

    def clock(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def _start(self, name):
        if self.on:
            self._open[name] = self.clock()

    def _stop(self, name):
        if self.on and name in self._open:
            self.t[name] = self.t.get(name, 0.0) + self.clock() - self._open.pop(name)

    def wrap(self, owner, attr, name):
        fn = getattr(owner, attr)

        def timed(*a, **k):
            if not self.on:
                return fn(*a, **k)
            c = self.clock()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] = self.t.get(name, 0.0) + self.clock() - c
        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, fn))

    def remove(self):
        for undo in reversed(self._undo):
            undo()


def step_memory(fn, device):
    """Peak tensor memory of one call of fn above its lowest point: CUDA max_memory_allocated above the start; CPU
    from torch.profiler's
    allocations and frees (each operator's own, at its start) in time order (RSS cannot say it:
    train.keep_freed_memory keeps freed blocks)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.profiler.function_events)
    peak = low = now = 0
    for _, b in allocs:
        now += b
        peak, low = max(peak, now), min(low, now)
    return peak - low   # zero_grad(set_to_none) frees the last step's gradients first: count from the lowest point


def side_by_side(args, ds, device):
    """Every (threads, precision, variant) of one image size, interleaved step by step. Returns rows
    (threads, precision, variant, median s/step, median CPU s/step, step memory bytes) and the pieces."""
    split = data.make_split(ds, train.DEFAULT_LABELS.get(args.dataset, 40), args.seed)
    idx_l, idx_u, _ = data.split_indices(ds, split)
    make = augment.DeviceBatches(ds, idx_l, idx_u, args.batch_size, args.seed, device)
    raw = [make(i) for i in range(4)]
    formats = sorted({PRECISIONS[p][1] for p in args.precisions})
    batches = {cl: [augment.memory_format(b, cl) for b in raw] for cl in formats}
    torch.manual_seed(args.seed)
    base = HermesNet(seg_encoder=args.seg_encoder, pretrained=args.pretrained).to(device)
    nets, opts = {}, {}
    for cl in formats:
        nets[cl] = copy.deepcopy(base).train()
        if cl:
            nets[cl] = nets[cl].to(memory_format=torch.channels_last)
        if args.compile:
            nets[cl].compile(mode=args.compile)
        opts[cl] = train.make_optimizers(nets[cl], TRAIN_DEFAULTS)
    del base
    banks = {v: fill_banks(hermes.make_banks(nets[formats[0]], hermes.HermesConfig(**VARIANTS[v])))
             for v in args.variants}
    runs = [(t, p, v) for t in args.threads for p in args.precisions for v in args.variants]
    wall, cpu = {r: [] for r in runs}, {r: [] for r in runs}
    pieces = {cl: Pieces(device, opts[cl]) for cl in formats} if args.pieces else {}
    piece_t = {}
    total = 3000

    def step(run, it):
        threads, prec, variant = run
        amp, cl = PRECISIONS[prec]
        bl, bu = batches[cl][it % len(raw)]
        if variant in (FLOOR, FLOOR_SM):
            return floor_step(nets[cl], opts[cl], bl, bu, amp, ias=variant == FLOOR_SM)
        cfg = hermes.HermesConfig(**VARIANTS[variant])
        return train.train_step(nets[cl], banks[variant], opts[cl], bl, bu, it, total, cfg, amp)[0]

    try:
        for it in range(args.warmup + args.steps):
            for run in runs:
                if device.type == "cpu":
                    torch.set_num_threads(run[0])
                timed = it >= args.warmup
                pc = pieces.get(PRECISIONS[run[1]][1])
                if pc is not None:
                    pc.on, pc.t = timed and run[2] == "Hermes", {}
                sync(device)
                t, c = time.perf_counter(), time.process_time()
                step(run, it)
                sync(device)
                if timed:
                    wall[run].append(time.perf_counter() - t)
                    cpu[run].append(time.process_time() - c)
                if pc is not None and pc.on:
                    pc.on = False
                    for name, sec in pc.t.items():
                        piece_t.setdefault((run[0], run[1], name), []).append(sec)
            print(f"  round {it + 1}/{args.warmup + args.steps} done", flush=True)
        mem = {}
        for run in runs:
            if device.type == "cpu":
                torch.set_num_threads(run[0])
            mem[run] = step_memory(lambda: step(run, 0), device)
    finally:
        for pc in pieces.values():
            pc.remove()
    rows = [(*run, statistics.median(wall[run]), statistics.median(cpu[run]), mem[run]) for run in runs]
    return rows, {k: statistics.median(v) for k, v in piece_t.items()}


def print_side_by_side(rows, pieces, args, ds, device, size, load_s):
    B = args.batch_size
    what = "peak CUDA memory of a step" if device.type == "cuda" else "peak tensor memory of a step"
    amx = "yes" if runner.native_bf16(device) else "no"
    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"cpu ({torch.backends.cpu.get_cpu_capability()}, AMX {amx})")
    print(f"\n{args.dataset}: {len(ds.labels)} images loaded and cached at {size} px in {load_s:.2f} s")
    print(f"{dev}, {size} px, batch {B} labeled + {B} unlabeled, seg encoder {args.seg_encoder}, median of "
          f"{args.steps} steps after {args.warmup} warm-up, all rows interleaved step by step in one process; "
          f"load average before: {os.getloadavg()[0]:.1f}\n" if hasattr(os, "getloadavg") else "\n")
    print(f"| threads | precision | variant | s/step | CPU s/step | images/s | {what} (MiB) | time vs SupOnly | "
          f"time vs floor | CPU time vs SupOnly | CPU time vs floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads, prec, variant, sec, cpu, mem in rows:
        ref = {v: next((r for r in rows if r[:3] == (threads, prec, v)), None) for v in ("SupOnly", FLOOR)}
        ratio = lambda v, i, x: f"{x / ref[v][i]:.2f}×" if ref[v] else "-"
        print(f"| {threads if device.type == 'cpu' else '-'} | {prec} | {variant} | {sec:.3f} | {cpu:.3f} | "
              f"{2 * B / sec:.1f} | {mem / 2**20:.0f} | {ratio('SupOnly', 3, sec)} | {ratio(FLOOR, 3, sec)} | "
              f"{ratio('SupOnly', 4, cpu)} | {ratio(FLOOR, 4, cpu)} |")
    fp32 = [r for r in rows if r[1] == "fp32"]
    for threads, prec, variant, sec, cpu, _ in rows:
        if variant == "Hermes" and prec != "fp32":
            ref = next((r for r in fp32 if r[0] == threads and r[2] == "Hermes"), None)
            if ref:
                print(f"  Hermes, {threads} thread(s): {prec} vs fp32: {ref[3] / sec:.2f}× the speed "
                      f"(CPU time {ref[4] / cpu:.2f}×)")
    if pieces:
        unit = "CPU s" if device.type == "cpu" else "s"
        print(f"\nPieces of the full Hermes step ({unit} per step, median; they nest, see Pieces):\n")
        print(f"| threads | precision | piece | {unit}/step | share of the Hermes step |")
        print("|---|---|---|---|---|")
        for (threads, prec, name), sec in pieces.items():
            step_s = next(r[4 if device.type == "cpu" else 3] for r in rows if r[:3] == (threads, prec, "Hermes"))
            print(f"| {threads if device.type == 'cpu' else '-'} | {prec} | {name} | {sec:.3f} | "
                  f"{100 * sec / step_s:.0f} % |")


def print_parameter_counts(net):
    """Parameters of each part of a HermesNet, in millions."""
    count = lambda params: sum(p.numel() for p in params)
    rows = [("seg encoder", net.seg_encoder.parameters()), ("seg decoder + head", net.seg_decoder.parameters()),
            ("pixel head", net.pixel_head.parameters()), ("itc_seg head", net.itc_seg_head.parameters()),
            ("cls ResNet-18 (2-class fc)", net.cls_net.parameters()), ("ITA x3 (incl. adapters)", net.ita.parameters()),
            ("image head", net.image_head.parameters()), ("itc_cls head", net.itc_cls_head.parameters()),
            ("seg branch total", net.seg_parameters()), ("cls branch total", net.cls_parameters()),
            ("total", net.parameters())]
    for name, params in rows:
        n = count(params)
        print(f"{name:30s} {n:>12,d}  ({n / 1e6:.2f} M)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=224, help="paper §4.1: 224")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="PX",
                   help="several image sizes, one after the other (default: --image-size)")
    p.add_argument("--batch-size", type=int, default=8, help="labeled, and as many unlabeled (paper §4.1: 8)")
    p.add_argument("--seg-encoder", default="resnet34", choices=["resnet34", "resnet18"])
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    p.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS),
                   help="default: all (--concurrent: SupOnly and Hermes)")
    p.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                   help="fp32, bf16 (autocast), fp32+cl / bf16+cl (channels-last model and batches); default fp32")
    p.add_argument("--amp-compare", action="store_true", help="the same as --precisions fp32 bf16")
    p.add_argument("--pieces", action="store_true",
                   help="also the time of each piece of the full Hermes step (saliency, teacher pass, contrastive "
                        "terms, bank writes, backward, optimizers)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one full Hermes step and print where its time goes")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch CPU threads, one or several (rows for each; default: torch's choice; "
                        "--concurrent N: cores / N per run, or the first value given)")
    p.add_argument("--concurrent", type=int, nargs="+", default=None, metavar="N",
                   help="instead of the table above: N training processes side by side on the device, for each N "
                        "given and 1; aggregate steps/s and s/step per run")
    p.add_argument("--amp", action="store_true", help="--concurrent on CUDA: bf16 autocast")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the model in place first (MODE: default, reduce-overhead, ...); on the "
                        "2-core CPU it did not pay (docs/speed.md)")
    p.add_argument("--keep-mmap", action="store_true",
                   help="CPU: leave glibc's malloc as it is (blocks > 32 MiB mmapped and page-faulted anew every "
                        "step) instead of train.py's runner.keep_freed_memory()")
    p.add_argument("--params", action="store_true", help="only print the networks' parameter counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help=f"show the Python traceback of an error (or {cli.DEBUG_ENV}=1)")
    args = p.parse_args(argv)
    if args.params:
        return print_parameter_counts(HermesNet(seg_encoder=args.seg_encoder))
    device = torch.device(args.device)
    given_threads = args.threads
    args.threads = args.threads if (args.threads and device.type == "cpu") else [torch.get_num_threads()]
    torch.set_num_threads(args.threads[0])
    if device.type == "cpu" and not args.keep_mmap:
        runner.keep_freed_memory()            # as train.py does on CPU
    torch.manual_seed(args.seed)
    sizes = args.sizes or [args.image_size]

    for n, size in enumerate(sizes):
        t = time.perf_counter()
        ds = data.load_dataset(args.dataset, args.data_root, image_size=size, seed=args.seed)
        load_s = time.perf_counter() - t
        if args.concurrent:
            conc = argparse.Namespace(**{**vars(args), "threads": given_threads[0] if given_threads else None,
                                         "image_size": size})
            print_concurrent(concurrent_runs(conc, ds), conc, ds)
            continue
        args.variants = args.variants or list(VARIANTS)
        args.precisions = args.precisions or (["fp32", "bf16"] if args.amp_compare else ["fp32"])
        rows, pieces = side_by_side(args, ds, device)
        print_side_by_side(rows, pieces, args, ds, device, size, load_s)
        if n == 0:
            data_pipeline(args, ds, device, rows)

    if args.profile and not args.concurrent:
        model = HermesNet(seg_encoder=args.seg_encoder, pretrained=args.pretrained).to(device)
        profile_step(model, copy.deepcopy(model.state_dict()), data_batches(args, ds, device)[0], device)


def data_batches(args, ds, device, n=4):
    split = data.make_split(ds, train.DEFAULT_LABELS.get(args.dataset, 40), args.seed)
    idx_l, idx_u, _ = data.split_indices(ds, split)
    make = augment.DeviceBatches(ds, idx_l, idx_u, args.batch_size, args.seed, device)
    return [make(i) for i in range(n)]


def data_pipeline(args, ds, device, rows):
    """The data pipeline's time per step for train.py's two paths, as a share of the Hermes step; on CUDA also
    the host-device synchronisations of one Hermes step."""
    split = data.make_split(ds, train.DEFAULT_LABELS.get(args.dataset, 40), args.seed)
    idx_l, idx_u, _ = data.split_indices(ds, split)
    B = args.batch_size
    device_batches = augment.DeviceBatches(ds, idx_l, idx_u, B, args.seed, device)   # train.py's default
    per_image = augment.StepBatches(augment.LabeledSet(ds, idx_l, train=True), augment.UnlabeledSet(ds, idx_u), B,
                                    args.seed)
    n_batches = 4
    device_batches(n_batches)                                                      # warm-up (CUDA context, ...)
    sync(device)
    data_s = {}
    for name, make in (("device", device_batches), ("cpu", lambda i: tuple(train.to_device(b, device)
                                                                           for b in per_image[i]))):
        times = []
        for i in range(n_batches):
            t = time.perf_counter()
            make(i)
            sync(device)
            times.append(time.perf_counter() - t)
        data_s[name] = statistics.median(times)
    hermes_sec = next((r[3] for r in rows if r[2] == "Hermes" and r[1] == "fp32"), None)
    share = lambda s: f" = {100 * s / (s + hermes_sec):.1f}% of a Hermes step" if hermes_sec else ""
    print(f"\ndata pipeline, one labeled + one unlabeled batch on {device} (median of {n_batches}):")
    print(f"  on the device, whole batches (train.py --augment device, default): {data_s['device']:.4f} s/step"
          f"{share(data_s['device'])}")
    print(f"  torchvision per image, one process (--augment cpu, --workers 0): {data_s['cpu']:.4f} s/step"
          f"{share(data_s['cpu'])}")
    if device.type == "cuda":
        model = HermesNet(seg_encoder=args.seg_encoder, pretrained=args.pretrained).to(device)
        syncs = count_syncs(model, copy.deepcopy(model.state_dict()), device_batches, amp=False)
        print(f"\nhost-device synchronisations in one Hermes step as train.py runs it (batch, step, backward, "
              f"optimizers; torch.cuda sync debug mode): {len(syncs)}")
        for s in sorted(set(syncs))[:5]:
            print(f"  {s}")


def count_syncs(model, init_state, batches, amp):
    """CUDA: messages of the synchronising calls made by one train.py iteration (after one warm-up)."""
    import warnings
    model.load_state_dict(init_state)
    cfg = hermes.HermesConfig()
    banks, opts = hermes.make_banks(model, cfg), train.make_optimizers(model, TRAIN_DEFAULTS)
    watch = runner.FiniteWatch(torch.device("cuda"))
    for it in (0, 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn" if it else "default")
            try:
                loss, _ = train.train_step(model, banks, opts, *batches(it), it, 3000, cfg, amp)
                watch.update(loss, it)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]


def profile_step(model, init_state, batch, device):
    """torch.profiler over one full Hermes step (step + backward): top operators and the convolutions' share."""
    model.load_state_dict(init_state)
    model.train()
    cfg = hermes.HermesConfig()
    banks = hermes.make_banks(model, cfg)
    opts = train.make_optimizers(model, TRAIN_DEFAULTS)
    train.train_step(model, banks, opts, *batch, 0, 3000, cfg)  # warm-up
    with torch.profiler.profile() as prof:
        train.train_step(model, banks, opts, *batch, 1, 3000, cfg)
        sync(device)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(f"\nprofile of one Hermes step: convolution operators (forward and backward) take "
          f"{100 * conv / total:.0f}% of self CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


# ------------------------------------------------------------------------------ runs side by side (--concurrent)
def _concurrent_worker(rank, opts, ds, barrier, results):
    """One training process of --concurrent: what train.py does per step (on-device batches, train_step) for
    `warmup` steps, then, once every process is ready, `steps` timed steps."""
    torch.set_num_threads(opts["threads"])
    torch.manual_seed(opts["seed"] + rank)
    device = torch.device(opts["device"])
    if device.type == "cpu" and not opts["keep_mmap"]:
        runner.keep_freed_memory()
    split = data.make_split(ds, train.DEFAULT_LABELS.get(ds.name, 40), opts["seed"])
    idx_l, idx_u, _ = data.split_indices(ds, split)
    batches = augment.DeviceBatches(ds, idx_l, idx_u, opts["batch_size"], opts["seed"] + rank, device)
    cfg = hermes.HermesConfig(**VARIANTS[opts["variant"]])
    model = HermesNet(seg_encoder=opts["seg_encoder"], pretrained=False).to(device).train()
    banks, optimizers = fill_banks(hermes.make_banks(model, cfg)), train.make_optimizers(model, TRAIN_DEFAULTS)
    total = opts["warmup"] + opts["steps"]
    step = lambda t: train.train_step(model, banks, optimizers, *batches(t), t, 3000, cfg, opts["amp"])
    for t in range(opts["warmup"]):
        step(t)
    sync(device)
    barrier.wait()                       # all processes start timing together
    start = time.monotonic()             # system-wide clock: comparable across processes
    for t in range(opts["warmup"], total):
        step(t)
    sync(device)
    end = time.monotonic()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.put((rank, start, end, peak))


def concurrent_runs(args, ds):
    """--concurrent N ...: N training processes side by side on one device, for each N (and N = 1 as the
    baseline); returns rows (variant, N, median s/step per process, aggregate steps/s, peak memory per process)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")        # CUDA cannot be used in forked children
    counts = sorted(set([1] + args.concurrent))
    variants = args.variants or ["SupOnly", "Hermes"]
    rows = []
    for variant in variants:
        for n in counts:
            threads = args.threads or max(1, (os.cpu_count() or 1) // n)
            opts = dict(device=args.device, batch_size=args.batch_size, seg_encoder=args.seg_encoder,
                        seed=args.seed, variant=variant, warmup=args.warmup, steps=args.steps, threads=threads,
                        amp=args.amp and args.device == "cuda", keep_mmap=args.keep_mmap)
            barrier, results = ctx.Barrier(n), ctx.Queue()
            procs = [ctx.Process(target=_concurrent_worker, args=(r, opts, ds, barrier, results)) for r in range(n)]
            for p in procs:
                p.start()
            out = [results.get() for _ in procs]
            for p in procs:
                p.join()
                if p.exitcode != 0:
                    raise SystemExit(f"--concurrent: a training process exited with code {p.exitcode}")
            per_run = statistics.median((end - start) / args.steps for _, start, end, _ in out)
            window = max(o[2] for o in out) - min(o[1] for o in out)
            rows.append((variant, n, per_run, n * args.steps / window, max(o[3] for o in out)))
            print(f"  {variant}, {n} side by side: {per_run:.3f} s/step per run, "
                  f"{rows[-1][3]:.2f} steps/s in all", flush=True)
    return rows


def print_concurrent(rows, args, ds):
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {os.cpu_count()} cores"
    what = "peak CUDA memory per run" if args.device == "cuda" else "peak RSS per run"
    print(f"\n{ds.name} at {args.image_size} px, batch {args.batch_size} + {args.batch_size}, seg encoder "
          f"{args.seg_encoder}, {'bf16 autocast' if args.amp and args.device == 'cuda' else 'fp32'}, device "
          f"{device}; each run: on-device batches + train.py's step, {args.steps} timed steps after {args.warmup} "
          f"warm-up, all runs timed over the same window\n")
    print(f"| variant | runs side by side | s/step per run | aggregate steps/s | aggregate images/s | "
          f"throughput vs 1 run | {what} (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for variant, n, per_run, agg, peak in rows:
        one = next(r[3] for r in rows if r[0] == variant and r[1] == 1)
        print(f"| {variant} | {n} | {per_run:.3f} | {agg:.2f} | {agg * 2 * args.batch_size:.1f} | "
              f"{agg / one:.2f}× | {peak / 2**20:.0f} |")


if __name__ == "__main__":
    cli.cli_main(main)
