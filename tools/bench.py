"""Speed and memory of one training step: SupOnly, full Hermes, and Hermes with each component off.

    python -m tools.bench                              # CPU, 224 px, 8 labeled + 8 unlabeled (the paper's batch)
    python -m tools.bench --device cuda --amp-compare  # CUDA, fp32 and bf16 autocast side by side
    python -m tools.bench --dataset busi --data-root ../shared/data/BUSI/Dataset_BUSI_with_GT --no-pretrained
    python -m tools.bench --device cuda --concurrent 2 4 8 # N training processes side by side on one GPU

All variants run in one process on the same networks, the same batches and the same initial weights (restored
before each variant). A step is what train.py does per iteration (`train.train_step`: `hermes_step`, eq. 15, one
backward, the two optimizer steps). Reported: median seconds per step over --steps after --warmup, images per
second (labeled + unlabeled images in the batch), peak memory during the variant's steps (RSS sampled every
5 ms on CPU, torch.cuda.max_memory_allocated on CUDA), and the ratio to SupOnly; on CPU also the process's CPU
seconds per step. The memory banks start full (fill_banks), as in a long run. Also: time to load and cache
the dataset, and the data pipeline's time per step as a share of the Hermes step, for train.py's default (whole
batches augmented on the device, augment.DeviceBatches) and for the per-image torchvision path (--augment cpu).

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
import runner
import train
from models import HermesNet

TRAIN_DEFAULTS = vars(train.build_parser().parse_args([]))  # lr, momentum, weight decay as train.py uses them
VARIANTS = {
    "SupOnly": dict(dtcl=False, ias=False, itcl=False),
    "Hermes": dict(),
    "Hermes w/o DTCL": dict(dtcl=False),
    "Hermes w/o SM/ITA": dict(ias=False),
    "Hermes w/o ITCL": dict(itcl=False),
}


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


def time_variant(model, init_state, batches, cfg, device, steps, warmup, amp):
    model.load_state_dict(init_state)
    model.train()
    banks = fill_banks(hermes.make_banks(model, cfg))
    opts = train.make_optimizers(model, TRAIN_DEFAULTS)
    times, cpu_times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        for i in range(warmup + steps):
            batch_l, batch_u = batches[i % len(batches)]
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            train.train_step(model, banks, opts, batch_l, batch_u, i, 3000, cfg, amp)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss.peak
    return statistics.median(times), peak, statistics.median(cpu_times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dataset", default="demo")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=224, help="paper §4.1: 224")
    p.add_argument("--batch-size", type=int, default=8, help="labeled, and as many unlabeled (paper §4.1: 8)")
    p.add_argument("--seg-encoder", default="resnet34", choices=["resnet34", "resnet18"])
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS),
                   help="default: all (--concurrent: SupOnly and Hermes)")
    p.add_argument("--amp-compare", action="store_true", help="CUDA: time each variant in fp32 and bf16 autocast")
    p.add_argument("--profile", action="store_true",
                   help="also profile one full Hermes step and print where its time goes")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; --concurrent N: cores / N per run)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help=f"show the Python traceback of an error (or {cli.DEBUG_ENV}=1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.keep_mmap:
        runner.keep_freed_memory()            # as train.py does on CPU
    torch.manual_seed(args.seed)

    t = time.perf_counter()
    ds = data.load_dataset(args.dataset, args.data_root, image_size=args.image_size, seed=args.seed)
    load_s = time.perf_counter() - t
    if args.concurrent:
        print_concurrent(concurrent_runs(args, ds), args, ds)
        return
    args.variants = args.variants or list(VARIANTS)
    split = data.make_split(ds, train.DEFAULT_LABELS.get(args.dataset, 40), args.seed)
    idx_l, idx_u, _ = data.split_indices(ds, split)
    B = args.batch_size
    device_batches = augment.DeviceBatches(ds, idx_l, idx_u, B, args.seed, device)   # train.py's default
    per_image = augment.StepBatches(augment.LabeledSet(ds, idx_l, train=True), augment.UnlabeledSet(ds, idx_u), B, args.seed)
    n_batches = 4
    device_batches(n_batches)                                                      # warm-up (CUDA context, ...)
    sync(device)
    data_s = {}
    for name, make in (("device", device_batches), ("cpu", lambda i: tuple(train.to_device(b, device)
                                                                           for b in per_image[i]))):
        times = []
        for i in range(n_batches):
            t = time.perf_counter()
            batch = make(i)
            sync(device)
            times.append(time.perf_counter() - t)
        data_s[name] = statistics.median(times)
    batches = [device_batches(i) for i in range(n_batches)]

    model = HermesNet(seg_encoder=args.seg_encoder, pretrained=args.pretrained).to(device)
    init_state = copy.deepcopy(model.state_dict())
    if args.compile:
        model.compile(mode=args.compile)   # in place: state_dict keys unchanged; warm-up steps absorb compiling

    amps = [False, True] if (args.amp_compare and device.type == "cuda") else [False]
    rows = []
    for amp in amps:
        for name in args.variants:
            cfg = hermes.HermesConfig(**VARIANTS[name])
            sec, peak, cpu = time_variant(model, init_state, batches, cfg, device, args.steps, args.warmup, amp)
            rows.append((name + (" (bf16)" if amp else ""), amp, sec, peak, cpu))
            print(f"  {rows[-1][0]}: {sec:.3f} s/step", flush=True)

    what = "peak CUDA memory" if device.type == "cuda" else "peak RSS"
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"\n{args.dataset}: {len(ds.labels)} images loaded and cached at {args.image_size} px in {load_s:.2f} s")
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{threads} threads'}), "
          f"{args.image_size} px, batch {B} labeled + {B} unlabeled, seg encoder {args.seg_encoder}, "
          f"median of {args.steps} steps after {args.warmup} warm-up\n")
    # CPU: also the process's CPU seconds per step (user + system), steadier than wall time on a shared machine
    cpu_col = device.type == "cpu"
    print(f"| variant | s/step | images/s | {what} (MiB) | time vs SupOnly | memory vs SupOnly |"
          + (" CPU s/step | CPU time vs SupOnly |" if cpu_col else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if cpu_col else ""))
    base = {amp: next((r for r in rows if r[1] == amp and r[0].startswith("SupOnly")), None) for amp in amps}
    for name, amp, sec, peak, cpu in rows:
        b = base[amp]
        ratio = lambda i, v: f"{v / b[i]:.2f}×" if b else "-"
        print(f"| {name} | {sec:.3f} | {2 * B / sec:.1f} | {peak / 2**20:.0f} | {ratio(2, sec)} | {ratio(3, peak)} |"
              + (f" {cpu:.3f} | {ratio(4, cpu)} |" if cpu_col else ""))
    hermes_sec = next((r[2] for r in rows if r[0] == "Hermes"), None)
    share = lambda s: f" = {100 * s / (s + hermes_sec):.1f}% of a Hermes step" if hermes_sec else ""
    print(f"\ndata pipeline, one labeled + one unlabeled batch on {device} (median of {n_batches}):")
    print(f"  on the device, whole batches (train.py --augment device, default): {data_s['device']:.4f} s/step"
          f"{share(data_s['device'])}")
    print(f"  torchvision per image, one process (--augment cpu, --workers 0): {data_s['cpu']:.4f} s/step"
          f"{share(data_s['cpu'])}")
    if device.type == "cuda":
        syncs = count_syncs(model, init_state, device_batches, amp=False)
        print(f"\nhost-device synchronisations in one Hermes step as train.py runs it (batch, step, backward, "
              f"optimizers; torch.cuda sync debug mode): {len(syncs)}")
        for s in sorted(set(syncs))[:5]:
            print(f"  {s}")
    if args.profile:
        profile_step(model, init_state, batches[0], device)


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
