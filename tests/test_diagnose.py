"""tools/diagnose.py: per-term gradient norms against a naive loop (one fresh step and backward per term)."""
import copy
import math

import pytest
import torch

import cli
import hermes
from models import HermesNet
from tools import diagnose


def batches(S=32):
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, S, S, dtype=torch.long)
    y[:, :, S // 2:] = 1
    x_w = torch.randn(2, 3, S, S, generator=g)
    return ((torch.randn(2, 3, S, S, generator=g), y, torch.tensor([0, 1])),
            (x_w, x_w + 0.2 * torch.randn(2, 3, S, S, generator=g), y.clone(), torch.tensor([1, 0])))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", pretrained=False).train()
    cfg = hermes.HermesConfig(threshold="none", n_anchors=8, pixel_bank_size=32, image_bank_size=8,
                              unsup_weight=0.5, gamma_ramp=20)
    banks = hermes.make_banks(model, cfg)
    hermes.hermes_step(model, banks, *batches(), 0, 10, cfg)                       # banks hold keys
    return model, banks, cfg


def test_weighted_terms_sum_to_eq15(setup):
    model, banks, cfg = setup
    torch.manual_seed(1)
    loss, st = hermes.hermes_step(model, copy.deepcopy(banks), *batches(), 3, 10, cfg, keep_terms=True)
    assert set(st["terms"]) == set(hermes.PARTS)
    assert sum(st["terms"].values()).item() == pytest.approx(loss.item(), rel=1e-6)
    # the coefficients the step used, by hand: μ = 0.5 on the unlabeled terms, γ ramped (3 of 20 steps)
    c = hermes.eq15_coefficients(cfg, 3)
    assert c["seg_u"] == 0.5 * 0.5 and c["cls_u"] == 1.0 * 0.5 and c["seg_l"] == 0.5
    assert c["itc"] == pytest.approx(0.1 * math.exp(-5 * (1 - 3 / 20) ** 2))
    assert st["terms"]["seg_u"].item() == pytest.approx(c["seg_u"] * st["seg_u"].item(), rel=1e-6)
    assert st["terms"]["itc"].item() == pytest.approx(c["itc"] * st["itc"].item(), rel=1e-6)


def test_term_gradient_norms_vs_naive_backward(setup):
    model, banks, cfg = setup
    state = copy.deepcopy(model.state_dict())    # BN running statistics move with every step (saliency reads them)
    torch.manual_seed(2)
    got = diagnose.term_gradient_norms(model, copy.deepcopy(banks), *batches(), 3, 10, cfg)
    assert all(p.grad is None for p in model.parameters())                        # .grad untouched
    for k in hermes.PARTS:                                                         # naive: one fresh step per term
        model.load_state_dict(state)
        torch.manual_seed(2)
        _, st = hermes.hermes_step(model, copy.deepcopy(banks), *batches(), 3, 10, cfg, keep_terms=True)
        model.zero_grad(set_to_none=True)
        term = st["terms"][k]
        if term.requires_grad:
            term.backward()
        for g, names in diagnose.GROUPS.items():
            sq = sum(float((p.grad.double() ** 2).sum()) for n in names for p in getattr(model, n).parameters()
                     if p.grad is not None)
            assert got[k][g] == pytest.approx(sq ** 0.5, rel=1e-4, abs=1e-9), (k, g)
    model.zero_grad(set_to_none=True)
    assert got["seg_l"]["seg encoder"] > 0 and got["seg_l"]["cls network"] == 0   # eq. (1) stays in its branch
    assert got["cls_l"]["cls network"] > 0 and got["seg_c"]["seg encoder"] > 0


def test_cli_names_a_missing_run_folder(tmp_path):
    with pytest.raises(cli.MissingFileError, match="config.json not found"):
        diagnose.main([str(tmp_path)])


@pytest.mark.parametrize("form", ["paper", "residual"])
def test_ita_gain_per_stage_against_a_naive_recomputation(form):
    """ita_gain: per stage the means of M_c, M_s and ||x_out|| / ||x_cls||, recomputed here image by image from
    the attention module's own inputs; the paper's product of two sigmoids can only shrink the features (gain in
    (0, 1)), the residual form x_cls (1 + M_c M_s) only grow them (gain in (1, 2))."""
    torch.manual_seed(0)
    model = HermesNet(seg_encoder="resnet18", pretrained=False, ita_form=form).train()
    x = torch.randn(3, 3, 32, 32)
    got = diagnose.ita_gain(model, x)
    assert model.training and [r["stage"] for r in got] == [1, 2, 3]
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for m in model.ita]
    model.eval()
    with torch.no_grad():
        model(x, ias=True)
    for h in hooks:
        h.remove()
    for r, (x_cls, (x_out, m_c, m_s)) in zip(got, seen):
        gains = [float(x_out[b].norm() / x_cls[b].norm()) for b in range(x.shape[0])]
        assert r["gain"] == pytest.approx(sum(gains) / len(gains), rel=1e-5)
        assert r["M_c"] == pytest.approx(float(m_c.mean()), rel=1e-5) and 0 < r["M_s"] < 1
        assert (0 < r["gain"] < 1) if form == "paper" else (1 < r["gain"] < 2)
