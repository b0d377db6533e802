"""End-to-end tests of train.py on tiny generated data (CPU, 64 px, a few steps)."""
import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import runner
import train

# The run machinery is tested with the paper's settings (cheaper steps than the scratch recipe's separate
# BatchNorm passes); the default recipe has its own tests (test_config, test_methods, test_one_truth).
TINY = ["--dataset", "demo", "--demo-size", "40", "--image-size", "32", "--labels", "4", "--batch-size", "2",
        "--seg-encoder", "resnet18", "--n-anchors", "16", "--pixel-bank-size", "64", "--image-bank-size", "8",
        "--log-every", "1",
        "--recipe", "paper"]


def run(tmp_path, *extra, name="run"):
    out = str(tmp_path / name)
    return out, train.train(TINY + ["--out", out, *extra])


def read_log(out, kind="train"):
    with open(os.path.join(out, "log.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


def resumed_like_full(full, part, rel):
    """Check that the resumed run `part` logged steps 1-4 with the losses of `full` (to `rel`); returns the final
    model weights of both (full, part)."""
    a, b = read_log(full), read_log(part)
    assert [r["iter"] for r in b] == ["1", "2", "3", "4"]
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=rel, abs=1e-6), ra["iter"]
    return tuple(torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True)["model"] for d in (full, part))


def test_three_steps_write_every_output(tmp_path):
    out, result = run(tmp_path, "--iters", "3", "--eval-every", "3")
    for f in ["config.json", "split.json", "log.csv", "checkpoint.pt", "best.pt", "metrics.json"]:
        assert os.path.isfile(os.path.join(out, f)), f
    rows = read_log(out)
    assert [int(r["iter"]) for r in rows] == [1, 2, 3]
    for r in rows:
        for k in ["loss", "seg_l", "cls_l", "kappa", "tau", "kept_pix", "lr_seg", "sec_per_step"]:
            assert math.isfinite(float(r[k])), (k, r[k])
    assert len(read_log(out, "eval")) == 1
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["iter"] == 3 and 0 <= metrics["dice_mean"] <= 1
    assert "evaluation split" in metrics["best"]["selected_on"]
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["labels"] == 4 and "git_commit" in cfg
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["iter"] == 3
    assert "pixel.feats" in ckpt["banks"] and "image.ptr" in ckpt["banks"]         # banks under their own key
    assert not any("bank" in k for k in ckpt["model"])
    assert ckpt["final"] and not {"opt_seg", "opt_cls", "rng"} & set(ckpt)           # lean: no optimizer state
    assert ckpt["metrics"]["dice_mean"] == pytest.approx(metrics["dice_mean"])


@pytest.mark.parametrize("augment", ["device", "cpu"])
def test_resume_continues_as_if_never_stopped(tmp_path, augment):
    full, _ = run(tmp_path, "--iters", "4", "--eval-every", "100", "--augment", augment, name="full")
    part, stopped = run(tmp_path, "--iters", "4", "--eval-every", "100", "--ckpt-every", "1", "--stop-after", "2",
                        "--augment", augment, name="part")
    assert stopped is None
    ckpt_path = os.path.join(part, "checkpoint.pt")
    assert torch.load(ckpt_path, weights_only=True)["iter"] == 2
    if augment == "cpu":            # a run made before --augment existed resumes with the per-image path
        ckpt = torch.load(ckpt_path, weights_only=True)
        del ckpt["config"]["augment"]
        torch.save(ckpt, ckpt_path)
    train.train(["--out", part, "--resume", "--workers", "1"])  # batches do not depend on the workers
    wa, wb = resumed_like_full(full, part, rel=1e-5)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)



def test_resume_loads_the_state_of_unfused_optimizers(tmp_path, monkeypatch):
    """A checkpoint written by the per-parameter (unfused) Adam of earlier versions resumes with the fused one:
    the same run within float rounding, and Adam stays fused after loading the old state."""
    # 64 px: at 32 px fused and unfused Adam's rounding differences grow to 1.5e-3 of the loss by step 2
    size = ["--image-size", "64"]
    full, _ = run(tmp_path, "--iters", "4", "--eval-every", "100", *size, name="full")
    fused_make = train.make_optimizers

    def unfused(model, cfg, peer=None):   # the constructors as they were before fused=True
        return {"seg": torch.optim.Adam(model.seg_parameters(), lr=cfg["lr"]),
                "cls": torch.optim.SGD(model.cls_parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                       weight_decay=cfg["weight_decay"])}

    monkeypatch.setattr(train, "make_optimizers", unfused)
    part, _ = run(tmp_path, "--iters", "4", "--eval-every", "100", "--ckpt-every", "1", "--stop-after", "2", *size,
                  name="part")
    ckpt = torch.load(os.path.join(part, "checkpoint.pt"), weights_only=True)
    assert not ckpt["opt_seg"]["param_groups"][0]["fused"] and not ckpt["opt_cls"]["param_groups"][0]["fused"]
    made = []
    monkeypatch.setattr(train, "make_optimizers", lambda *a, **k: made.append(fused_make(*a, **k)) or made[-1])
    train.train(["--out", part, "--resume"])
    assert all(g["fused"] for g in made[0]["seg"].param_groups)
    assert all(torch.is_tensor(s["step"]) for s in made[0]["seg"].state.values())
    wa, wb = resumed_like_full(full, part, rel=1e-4)
    # Adam moves a weight by about lr (1e-4) per step whatever the size of its gradient, so a rounding difference
    # that flips the sign of a near-zero gradient moves that weight by up to 2 lr per step after the resume
    diffs = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa if wa[k].is_floating_point()])
    assert diffs.max() <= 4e-4 and (diffs > 1e-5).float().mean() < 0.01, (diffs.max(), (diffs > 1e-5).float().mean())


def test_non_finite_loss_is_caught_before_anything_is_saved(tmp_path, monkeypatch):
    step = train.hermes.hermes_step

    def nan_at_step_1(model, banks, batch_l, batch_u, it, *a, **kw):
        loss, stats = step(model, banks, batch_l, batch_u, it, *a, **kw)
        return (loss * float("nan") if it == 1 else loss), stats

    monkeypatch.setattr(train.hermes, "hermes_step", nan_at_step_1)
    out = str(tmp_path / "nan")
    with pytest.raises(SystemExit, match="non-finite loss at step 1 "):
        train.train(TINY + ["--out", out, "--iters", "6", "--log-every", "3", "--eval-every", "100"])
    assert not os.path.exists(os.path.join(out, "checkpoint.pt")) and read_log(out) == []  # checked at step 3
    watch = runner.FiniteWatch(torch.device("cpu"))
    for it, v in enumerate([1.0, float("inf"), float("nan"), 2.0]):
        watch.update(torch.tensor(v), it)
    assert int(watch.first) == 1

def test_existing_out_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(cli.DataError, match="not empty"):
        train.train(TINY + ["--out", str(out), "--iters", "1"])


def test_killed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    runner.save_atomic({"iter": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoi")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        runner.save_atomic({"iter": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iter"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


# Table 3's rows (DTCL, SM/ITA, ITCL), its single-task columns, and the three pseudo-label selections.
ABLATIONS = [
    ["--no-dtcl", "--no-ias", "--no-itcl"],
    ["--no-ias", "--no-itcl"],
    ["--no-dtcl", "--no-itcl"],
    ["--no-dtcl"],
    ["--no-itcl"],
    [],
    ["--task", "seg", "--no-ias", "--no-itcl"],
    ["--task", "cls", "--no-ias", "--no-itcl"],
    ["--task", "seg", "--no-dtcl", "--no-ias", "--no-itcl"],
    ["--threshold", "confidence"],
    ["--threshold", "none"],
]


@pytest.mark.parametrize("flags", ABLATIONS, ids=lambda f: " ".join(f) or "hermes")
def test_every_ablation_runs_a_step(tmp_path, flags):
    out, result = run(tmp_path, "--iters", "1", *flags)
    assert math.isfinite(float(read_log(out)[0]["loss"]))
    assert result["iter"] == 1


def test_corrupt_image_in_folder_dataset_is_named(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,label"]
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        m = np.zeros((40, 40), np.uint8)
        m[10:30, 10:30] = 255
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
        rows.append(f"im{i}.png,{i % 2}")
    (root / "images" / "im5.png").write_bytes(b"this is not a png")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(Exception, match="im5.png"):
        train.train(["--dataset", "folder", "--data-root", str(root), "--no-pretrained", "--labels", "2",
                     "--image-size", "32", "--out", str(tmp_path / "run"), "--iters", "1"])


def test_init_from_an_earlier_run(tmp_path):
    src, _ = run(tmp_path, "--iters", "1", name="src")
    ckpt = torch.load(os.path.join(src, "best.pt"), weights_only=True)["model"]
    cfg = vars(train.resolve(train.build_parser().parse_args(
        TINY + ["--out", str(tmp_path / "dst"), "--init", os.path.join(src, "best.pt")])))
    model = train.build_model(cfg)
    state = model.state_dict()
    for k in ("seg_encoder.stem.0.weight", "seg_decoder.head.weight", "ita.2.W_s.bias", "cls_net.fc.bias"):
        assert torch.equal(state[k], ckpt[k]), k
    assert not torch.equal(state["image_head.0.weight"], ckpt["image_head.0.weight"])  # heads: only --init-heads
    final = train.build_model({**cfg, "init": os.path.join(src, "checkpoint.pt")}).state_dict()  # lean final one
    assert torch.equal(final["cls_net.fc.bias"], ckpt["cls_net.fc.bias"])
    cfg["init"] = str(tmp_path / "missing.pt")
    with pytest.raises(cli.DataError, match="not found"):
        train.build_model(cfg)
