"""The control method (comparators/cps.py, losses.cross_pseudo_supervision_loss) and the from-scratch recipe switches
(--burn-in, --lr-seg, --lr-cls): hand-worked values, the loss against its parts, and runs that resume exactly."""
import math
import os

import pytest
import torch

from comparators import cps
import hermes
import losses
import train
from models import HermesNet
from test_train import TINY, read_log, run


def test_cross_pseudo_supervision_loss_by_hand():
    # one image, two pixels; channel 0 = 0, channel 1 = d, so p_lesion = sigmoid(d)
    a = torch.tensor([[[[0.0, 0.0]], [[1.0, -2.0]]]], dtype=torch.float64)    # argmax: 1, 0
    b = torch.tensor([[[[0.0, 0.0]], [[-1.0, 3.0]]]], dtype=torch.float64)    # argmax: 0, 1
    sp = lambda v: math.log1p(math.exp(v))                                       # -log sigmoid(-v)
    # CE(a, argmax b): pixel 1 target 0 -> log(1+e^1); pixel 2 target 1 -> log(1+e^2)
    # CE(b, argmax a): pixel 1 target 1 -> log(1+e^1); pixel 2 target 0 -> log(1+e^3)
    want = (sp(1) + sp(2)) / 2 + (sp(1) + sp(3)) / 2
    assert float(losses.cross_pseudo_supervision_loss(a, b)) == pytest.approx(want, rel=1e-12)


def test_cross_pseudo_supervision_loss_pseudo_labels_carry_no_gradient():
    a = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    losses.cross_pseudo_supervision_loss(a, b).backward()
    # the gradient w.r.t. a is CE's alone with b's labels fixed: softmax(a) - onehot(argmax b), over B*H*W
    want = (a.softmax(1) - torch.nn.functional.one_hot(b.argmax(1), 2).permute(0, 3, 1, 2)) / (2 * 4 * 4)
    torch.testing.assert_close(a.grad, want.detach())
    # agreeing networks on one-hot-confident logits: a loss near 0, and an empty batch is an exact 0
    z = torch.zeros(0, 2, 4, 4, requires_grad=True)
    assert float(losses.cross_pseudo_supervision_loss(z, z).detach()) == 0.0


def _batches(B=2, S=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, S, S, generator=g)
    y = (torch.rand(B, S, S, generator=g) > 0.7).long()
    z = torch.tensor([0, 1])[:B]
    x_w = torch.randn(B, 3, S, S, generator=g)
    return (x, y, z), (x_w, x_w + 0.1, (torch.rand(B, S, S, generator=g) > 0.7).long(), z.flip(0))


def test_cps_step_is_its_equation():
    torch.manual_seed(0)
    model, peer = HermesNet(seg_encoder="resnet18", ias=False), cps.PeerSegNet("resnet18")
    cfg = hermes.HermesConfig(method="cps", dtcl=False, ias=False, itcl=False)
    (x, y, z), batch_u = _batches()
    loss, stats = cps.cps_step(model, peer, (x, y, z), batch_u, it=0, total=10, cfg=cfg)
    # the same forward again (BatchNorm in train mode normalises by the batch, so outputs repeat)
    xx = torch.cat([x, batch_u[0]])
    f1, f2 = model.forward_seg(xx)["seg_logits"], peer(xx)
    L_s = losses.seg_supervised_loss(f1[:2], y) + losses.seg_supervised_loss(f2[:2], y)
    L_cps = losses.cross_pseudo_supervision_loss(f1, f2)
    L_cls = losses.cls_supervised_loss(model.forward_cls(x)["cls_logits"], z)
    want = 0.5 * (L_s + 1.5 * L_cps) + 1.0 * L_cls
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert float(stats["seg_u"]) == pytest.approx(1.5 * L_cps.item(), rel=1e-5)
    pl_acc = (f2[2:].argmax(1) == batch_u[2]).float().mean()
    assert float(stats["pl_acc_pix_all"]) == pytest.approx(float(pl_acc))
    loss.backward()
    assert all(p.grad is not None for p in peer.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.ita.parameters())       # no inter-task attention in CPS


def test_cps_burn_in_drops_the_cross_term_and_the_unlabeled_images():
    torch.manual_seed(0)
    model, peer = HermesNet(seg_encoder="resnet18", ias=False), cps.PeerSegNet("resnet18")
    cfg = hermes.HermesConfig(method="cps", dtcl=False, ias=False, itcl=False, burn_in=3)
    batch_l, batch_u = _batches()
    _, stats = cps.cps_step(model, peer, batch_l, batch_u, it=2, total=10, cfg=cfg)
    assert float(stats["seg_u"]) == 0.0 and float(stats["kept_pix"]) == 0.0
    _, stats = cps.cps_step(model, peer, batch_l, batch_u, it=3, total=10, cfg=cfg)
    assert float(stats["seg_u"]) > 0.0 and float(stats["kept_pix"]) == 1.0


def test_hermes_burn_in_step_is_the_labeled_only_step():
    """During burn-in no teacher pass and no unlabeled image: the step is Hermes without DTCL and ITCL."""
    batch_l, batch_u = _batches()
    cfg_small = dict(n_anchors=16, pixel_bank_size=64, image_bank_size=8)
    out = {}
    for name, cfg in (("burn", hermes.HermesConfig(burn_in=5, **cfg_small)),
                      ("labeled", hermes.HermesConfig(dtcl=False, itcl=False, **cfg_small))):
        torch.manual_seed(0)
        model = HermesNet(seg_encoder="resnet18")
        banks = hermes.make_banks(model, cfg)
        out[name] = hermes.hermes_step(model, banks, batch_l, batch_u, it=4, total=10, cfg=cfg)
    assert out["burn"][0].item() == out["labeled"][0].item()
    assert float(out["burn"][1]["kept_pix"]) == 0.0 and float(out["burn"][1]["itc"]) == 0.0
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18")
    cfg = hermes.HermesConfig(burn_in=5, **cfg_small)
    _, stats = hermes.hermes_step(model, hermes.make_banks(model, cfg), batch_l, batch_u, it=5, total=10, cfg=cfg)
    assert float(stats["itc"]) > 0.0 and float(stats["cls_c"]) > 0.0   # teacher and unlabeled images back


def test_per_branch_learning_rates_follow_the_poly_schedule(tmp_path):
    out, _ = run(tmp_path, "--iters", "2", "--eval-every", "100", "--lr-seg", "1e-3", "--lr-cls", "1e-2")
    rows = read_log(out)
    # the logged lr is that of the step (poly decay from the step's start, §4.1)
    assert float(rows[1]["lr_seg"]) == pytest.approx(train.poly_lr(1e-3, 1, 2, 0.9), rel=1e-5)
    assert float(rows[1]["lr_cls"]) == pytest.approx(train.poly_lr(1e-2, 1, 2, 0.9), rel=1e-5)


def test_cps_run_resumes_exactly_and_evaluates_with_one_network(tmp_path):
    full, result = run(tmp_path, "--iters", "3", "--eval-every", "100", "--method", "cps", name="full")
    part, _ = run(tmp_path, "--iters", "3", "--eval-every", "100", "--ckpt-every", "1", "--stop-after", "1",
                  "--method", "cps", name="part")
    train.train(["--out", part, "--resume"])
    a, b = read_log(full), read_log(part)
    assert [r["iter"] for r in b] == ["1", "2", "3"]
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5, abs=1e-6), ra["iter"]
        assert float(ra["seg_u"]) > 0.0 and float(ra["seg_c"]) == 0.0
    ckpt = torch.load(os.path.join(full, "checkpoint.pt"), weights_only=True)
    assert "peer" in ckpt and ckpt["config"]["ias"] is False
    assert math.isfinite(result["dice_mean"])
